#!/usr/bin/env bash
# Builds audit.wasm (a WebAssembly component, world `observer` of mqtt-broker:plugin@0.2.0)
# from audit.c and audit_core.c.
# Needs (see ../../.ci/plugins.sh): Debian clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32,
# and `cargo install --locked wit-bindgen-cli@0.60.0 wasm-tools@1.254.2`.
set -euo pipefail
cd "$(dirname "$0")"
rm -rf gen
wit-bindgen c ../../wit/v0.2 --world observer --out-dir gen
# Reactor: a library of exports, no main(). The component-type object carries the WIT.
clang-19 --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror -Wno-unused-parameter \
    -Wl,--strip-all audit.c audit_core.c gen/observer.c gen/observer_component_type.o -o gen/core.wasm
if command -v wasm-tools >/dev/null; then
    wasm-tools component new gen/core.wasm -o audit.wasm
else
    # Same operation through the jco that plugins/topic-rewrite pins, when wasm-tools is absent.
    ../topic-rewrite/node_modules/.bin/jco new gen/core.wasm -o audit.wasm
fi
echo "built $(pwd)/audit.wasm"
