#!/usr/bin/env bash
# Native unit tests of the rule logic (bridge.c), with the host's clang and sanitizers.
# Needs clang-19 (Debian `clang-19`) and a C library for the host (libc6-dev).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p gen
clang-19 -std=c11 -O1 -g -fsanitize=address,undefined -fno-sanitize-recover=all \
    -Wall -Wextra -Werror -Wno-unused-parameter \
    test_bridge.c bridge.c -lm -o gen/test_bridge
gen/test_bridge
