#!/usr/bin/env bash
# Builds jwt-auth.wasm (a WebAssembly component, WIT mqtt-broker:plugin@0.2.0, world
# access-control) from app.py + jwtcore.py with componentize-py, after running the native
# unit tests of the logic.
# Needs: python3 (3.11+), pip install componentize-py==0.25.1   (see ../../.ci/plugins.sh)
set -euo pipefail
cd "$(dirname "$0")"
if ! command -v componentize-py >/dev/null; then
    echo "componentize-py not found; run: pip install componentize-py==0.25.1" >&2
    exit 1
fi
python3 -m unittest -q test_jwtcore
# --stub-wasi: the plugin needs no WASI, so the component imports nothing but the broker's
# interfaces (host, http, kv). app.py runs every code path at import time for that reason.
componentize-py -d ../../wit/v0.2 -w access-control componentize app -p . --stub-wasi -o jwt-auth.wasm
echo "built $(pwd)/jwt-auth.wasm"
