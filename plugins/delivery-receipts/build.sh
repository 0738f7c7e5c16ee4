#!/usr/bin/env bash
# Builds delivery-receipts.wasm (plugin API 0.2, world delivery-observer) from receipts.c.
# Needs what plugins/device-acl needs (see ../../.ci/plugins.sh): clang-19 + wasi-libc,
# wit-bindgen and wasm-tools.
set -euo pipefail
cd "$(dirname "$0")"
rm -rf gen
wit-bindgen c ../../wit/v0.2 --world delivery-observer --out-dir gen >/dev/null
clang-19 --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror \
    -Wl,--strip-all receipts.c gen/delivery_observer.c gen/delivery_observer_component_type.o -o gen/core.wasm
wasm-tools component new gen/core.wasm -o delivery-receipts.wasm
echo "built $(pwd)/delivery-receipts.wasm"
