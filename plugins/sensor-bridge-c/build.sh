#!/usr/bin/env bash
# Builds sensor-bridge-c.wasm (a WebAssembly component, WIT mqtt-broker:plugin@0.2.0, world
# `fast-transformer`) from sensor_bridge.c and bridge.c, after running the native unit tests
# (test.sh). Needs (see ../../.ci/plugins.sh): Debian clang-19 lld-19 wasi-libc
# libclang-rt-19-dev-wasm32, and `cargo install --locked wit-bindgen-cli@0.60.0 wasm-tools@1.254.2`.
set -euo pipefail
cd "$(dirname "$0")"
bash test.sh
rm -rf gen/*.c gen/*.h gen/*.o gen/*.wasm
mkdir -p gen
wit-bindgen c ../../wit/v0.2 --world fast-transformer --out-dir gen
# Reactor: a library of exports, no main(). The component-type object carries the WIT.
# A 1 MiB stack leaves room for deeply nested JSON payloads (parsed recursively, at most 1000 levels).
clang-19 --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror -Wno-unused-parameter \
    -Wl,--strip-all -Wl,-z,stack-size=1048576 \
    sensor_bridge.c bridge.c gen/fast_transformer.c gen/fast_transformer_component_type.o -o gen/core.wasm
if command -v wasm-tools >/dev/null; then
    wasm-tools component new gen/core.wasm -o sensor-bridge-c.wasm
else
    # Same operation through the jco that plugins/topic-rewrite pins, when wasm-tools is absent.
    ../topic-rewrite/node_modules/.bin/jco new gen/core.wasm -o sensor-bridge-c.wasm
fi
echo "built $(pwd)/sensor-bridge-c.wasm ($(wc -c < sensor-bridge-c.wasm) bytes)"
# The benchmark's ceiling (see ceiling.c): the bridge's output shape without its work.
clang-19 --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror -Wl,--strip-all \
    ceiling.c gen/fast_transformer.c gen/fast_transformer_component_type.o -o gen/ceiling.core.wasm
if command -v wasm-tools >/dev/null; then
    wasm-tools component new gen/ceiling.core.wasm -o gen/ceiling.wasm
else
    ../topic-rewrite/node_modules/.bin/jco new gen/ceiling.core.wasm -o gen/ceiling.wasm
fi
echo "built $(pwd)/gen/ceiling.wasm (benchmark only)"
