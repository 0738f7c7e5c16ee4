#!/usr/bin/env bash
# Builds topic-rewrite.wasm (a WebAssembly component) from topic-rewrite.js with jco's
# QuickJS backend. Needs Node 20+ and npm; the pinned jco comes from package-lock.json.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x node_modules/.bin/jco ]; then
    npm ci --no-audit --no-fund
fi
# jco wants the WIT folder inside the current directory.
rm -rf wit
cp -r ../../wit wit
# --backend-qjs-disable-async: plain synchronous exports (the broker's host does not enable
# the component-model async ABI); --backend-qjs-stub-wasi: no WASI imports at all.
node_modules/.bin/jco componentize topic-rewrite.js -w wit -n transformer \
    --backend quickjs --backend-qjs-disable-async --backend-qjs-stub-wasi \
    -o topic-rewrite.wasm
echo "built $(pwd)/topic-rewrite.wasm"
