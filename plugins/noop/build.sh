#!/usr/bin/env bash
# Builds the do-nothing plugins examples/plugin_bench.rs measures call costs with:
# noop-acl-0.1.wasm, noop-transform-0.1.wasm (API 0.1, records lowered on every call) and
# noop-acl-0.2.wasm, noop-transform-0.2.wasm (API 0.2, handles); and echo.wasm, a test
# plugin that republishes every event hook call (tests/plugins_v02.rs).
# Needs what plugins/device-acl needs (see ../../.ci/plugins.sh): clang-19 + wasi-libc,
# wit-bindgen and wasm-tools.
set -euo pipefail
cd "$(dirname "$0")"
rm -rf gen
build() { # api(1|2) wit-dir world hook-macro output
    local out="gen/$5"
    wit-bindgen c "$2" --world "$3" --out-dir "$out" >/dev/null
    clang-19 --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror \
        -DAPI="$1" -D"$4" -DWORLD_HEADER="\"$out/$3.h\"" -DSTRING_T="$3_string_t" \
        -Wl,--strip-all noop.c "$out/$3.c" "$out/$3_component_type.o" -o "$out/core.wasm"
    wasm-tools component new "$out/core.wasm" -o "$5.wasm"
    echo "built $(pwd)/$5.wasm"
}
build 1 ../../wit authorizer HOOK_AUTHORIZE noop-acl-0.1
build 1 ../../wit transformer HOOK_TRANSFORM noop-transform-0.1
build 2 ../../wit/v0.2 authorizer HOOK_AUTHORIZE noop-acl-0.2
build 2 ../../wit/v0.2 transformer HOOK_TRANSFORM noop-transform-0.2
# challenge-auth.wasm and refuse-auth.wasm: test plugins for enhanced authentication and
# for refusal reasons (test_auth.c; tests/plugins_v02.rs).
build_auth() { # world macro output
    local out="gen/$3"
    wit-bindgen c ../../wit/v0.2 --world "$1" --out-dir "$out" >/dev/null
    local c=${1//-/_}
    clang-19 --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror \
        -D"$2" -DWORLD_HEADER="\"$out/$c.h\"" -DSTRING_T="${c}_string_t" \
        -Wl,--strip-all test_auth.c "$out/$c.c" "$out/${c}_component_type.o" -o "$out/core.wasm"
    wasm-tools component new "$out/core.wasm" -o "$3.wasm"
    echo "built $(pwd)/$3.wasm"
}
build_auth enhanced-authenticator CHALLENGE challenge-auth
build_auth authenticator REFUSE refuse-auth
# echo.wasm: republishes every event (a test plugin for event hooks, tests/plugins_v02.rs).
wit-bindgen c ../../wit/v0.2 --world observer --out-dir gen/echo >/dev/null
clang-19 --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror \
    -Wl,--strip-all echo.c gen/echo/observer.c gen/echo/observer_component_type.o -o gen/echo/core.wasm
wasm-tools component new gen/echo/core.wasm -o echo.wasm
echo "built $(pwd)/echo.wasm"
