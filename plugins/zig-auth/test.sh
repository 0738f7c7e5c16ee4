#!/usr/bin/env bash
# Runs the unit tests of the token logic (token.zig) natively with `zig test`.
# Needs Zig 0.17.1: python3 -m pip install --user ziglang==0.17.1 (ZIG overrides the command).
set -euo pipefail
cd "$(dirname "$0")"
read -r -a zig <<<"${ZIG:-python3 -m ziglang}"
"${zig[@]}" test token.zig
# The sources are in `zig fmt` style.
"${zig[@]}" fmt --check token.zig zig_auth.zig
