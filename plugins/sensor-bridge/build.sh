#!/usr/bin/env bash
# Builds sensor-bridge.wasm (a WebAssembly component) from sensor-bridge.js and lib/bridge.js
# with jco's QuickJS backend. The logic's unit tests run apart: `node --test test/`.
# Needs Node 20+ and npm; the pinned jco comes from package-lock.json.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x node_modules/.bin/jco ]; then
    npm ci --no-audit --no-fund
fi
# jco wants the WIT folder inside the current directory.
rm -rf wit
cp -r ../../wit wit
# --bundle: one module from sensor-bridge.js and lib/bridge.js (bundle.config.js keeps the host
# import an import of the component); --backend-qjs-disable-async: plain synchronous exports (the
# broker's host does not enable the component-model async ABI); --backend-qjs-stub-wasi: no
# WASI imports at all.
node_modules/.bin/jco componentize sensor-bridge.js -w wit -n transformer \
    --bundle --bundle-config bundle.config.js \
    --backend quickjs --backend-qjs-disable-async --backend-qjs-stub-wasi \
    -o sensor-bridge.wasm
echo "built $(pwd)/sensor-bridge.wasm"
