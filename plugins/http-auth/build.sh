#!/usr/bin/env bash
# Builds http-auth.wasm (a WebAssembly component, WIT mqtt-broker:plugin@0.2.0, world
# authenticator) from app.py + httpauth.py with componentize-py, after running the native
# unit tests of the logic.
# Needs: python3 (3.11+), pip install componentize-py==0.25.1   (see ../../.ci/plugins.sh)
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v componentize-py >/dev/null; then
    echo "componentize-py not found; run: pip install componentize-py==0.25.1" >&2
    exit 1
fi
python3 -m unittest -q test_httpauth
# --stub-wasi: the plugin needs no WASI, so the component imports nothing but the broker's
# interfaces (host, http, kv: it uses http). app.py runs every code path at import time
# for that reason.
componentize-py -d ../../wit/v0.2 -w authenticator componentize app -p . --stub-wasi -o http-auth.wasm
echo "built $(pwd)/http-auth.wasm"
