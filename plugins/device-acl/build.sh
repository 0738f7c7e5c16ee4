#!/usr/bin/env bash
# Builds device-acl.wasm (a WebAssembly component) from device_acl.c.
# Needs (see ../../.ci/plugins.sh): Debian clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32,
# and `cargo install --locked wit-bindgen-cli@0.60.0 wasm-tools@1.254.2`.
set -euo pipefail
cd "$(dirname "$0")"
rm -rf gen
wit-bindgen c ../../wit --world authorizer --out-dir gen
# Reactor: a library of exports, no main(). The component-type object carries the WIT.
clang-19 --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror -Wno-unused-parameter \
    -Wl,--strip-all device_acl.c gen/authorizer.c gen/authorizer_component_type.o -o gen/core.wasm
if command -v wasm-tools >/dev/null; then
    wasm-tools component new gen/core.wasm -o device-acl.wasm
else
    # Same operation through the jco that plugins/topic-rewrite pins, when wasm-tools is absent.
    ../topic-rewrite/node_modules/.bin/jco new gen/core.wasm -o device-acl.wasm
fi
echo "built $(pwd)/device-acl.wasm"
