#!/usr/bin/env bash
# Builds device-auth.wasm (a WebAssembly component) from app.py with componentize-py.
# Needs: pip install componentize-py==0.25.1   (see ../../.ci/plugins.sh)
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v componentize-py >/dev/null; then
    echo "componentize-py not found; run: pip install componentize-py==0.25.1" >&2
    exit 1
fi
# --stub-wasi: the plugin needs no WASI, so the component imports nothing but the broker's
# host interface.
componentize-py -d ../../wit -w authenticator componentize app -p . --stub-wasi -o device-auth.wasm
echo "built $(pwd)/device-auth.wasm"
