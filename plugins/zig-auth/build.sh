#!/usr/bin/env bash
# Builds zig-auth.wasm (a WebAssembly component, world `authenticator` of
# mqtt-broker:plugin@0.2.0) from zig_auth.zig and token.zig, after running the unit tests.
# Needs (see ../../.ci/plugins.sh):
#   Zig 0.17.1 from PyPI:  python3 -m pip install --user ziglang==0.17.1   (run as `python3 -m ziglang`)
#   wasm-tools:            cargo install --locked wasm-tools@1.254.2
# Set ZIG to use another zig binary (e.g. ZIG=zig for one on PATH).
set -euo pipefail
cd "$(dirname "$0")"
ZIG_VERSION=0.17.1
read -r -a zig <<<"${ZIG:-python3 -m ziglang}"
have=$("${zig[@]}" version 2>/dev/null) || {
    echo "zig-auth: Zig is missing: python3 -m pip install --user ziglang==$ZIG_VERSION" >&2
    exit 1
}
[ "$have" = "$ZIG_VERSION" ] || echo "zig-auth: warning: built and tested with Zig $ZIG_VERSION, this is $have" >&2
command -v wasm-tools >/dev/null || {
    echo "zig-auth: wasm-tools is missing: cargo install --locked wasm-tools@1.254.2" >&2
    exit 1
}

ZIG="${zig[*]}" ./test.sh

rm -rf gen
mkdir gen
# A core module with no entry point (a library of exports) and no libc or WASI. Its export
# names are the ones the canonical ABI fixes for the `authenticator` world; a small stack
# (64 KiB) keeps the instance's memory at 2 pages.
"${zig[@]}" build-exe zig_auth.zig -target wasm32-freestanding -fno-entry -O ReleaseSmall -fstrip \
    --stack 65536 \
    --export=cabi_realloc \
    '--export=mqtt-broker:plugin/lifecycle@0.2.0#init' \
    '--export=cabi_post_mqtt-broker:plugin/lifecycle@0.2.0#init' \
    '--export=mqtt-broker:plugin/authenticate@0.2.0#authenticate' \
    '--export=cabi_post_mqtt-broker:plugin/authenticate@0.2.0#authenticate' \
    -femit-bin=gen/core.wasm
# Attach the world's type information, then wrap the core module into a component.
wasm-tools component embed ../../wit/v0.2 --world authenticator gen/core.wasm -o gen/embedded.wasm
wasm-tools component new gen/embedded.wasm -o zig-auth.wasm
wasm-tools validate zig-auth.wasm
echo "built $(pwd)/zig-auth.wasm"
