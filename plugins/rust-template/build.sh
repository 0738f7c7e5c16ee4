#!/usr/bin/env bash
# Builds rust-template.wasm: a core module for wasm32-unknown-unknown, wrapped into a
# component by wasm-tools. Needs `rustup target add wasm32-unknown-unknown` and
# `cargo install --locked wasm-tools@1.254.2`. The logic is tested natively: `cargo test`.
set -euo pipefail
cd "$(dirname "$0")"
cargo build --release --target wasm32-unknown-unknown
wasm-tools component new target/wasm32-unknown-unknown/release/rust_template.wasm -o rust-template.wasm
wasm-tools validate rust-template.wasm
echo "built $(pwd)/rust-template.wasm"
