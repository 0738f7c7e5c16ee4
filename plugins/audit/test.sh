#!/usr/bin/env bash
# Native tests of the audit plugin's pure logic (audit_core.c): builds test_audit.c with the
# host's clang-19 (warnings as errors, AddressSanitizer and UBSan when available) and runs
# it. Needs only Debian clang-19.
set -euo pipefail
cd "$(dirname "$0")"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
flags=(-std=c11 -O1 -g -Wall -Wextra -Werror)
# The sanitizers catch out-of-bounds reads and leaks in the parsers and the table; fall back
# without them where their runtime is not installed.
if echo 'int main(void){return 0;}' | clang-19 -x c - -fsanitize=address,undefined -o "$out/probe" 2>/dev/null; then
    flags+=(-fsanitize=address,undefined -fno-sanitize-recover=all)
fi
clang-19 "${flags[@]}" test_audit.c audit_core.c -o "$out/test_audit"
"$out/test_audit"
