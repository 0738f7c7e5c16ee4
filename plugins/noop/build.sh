#!/usr/bin/env bash
# Builds the do-nothing plugins examples/plugin_bench.rs measures call costs with:
# noop-acl-0.1.wasm, noop-transform-0.1.wasm (API 0.1, records lowered on every call) and
# noop-acl-0.2.wasm, noop-transform-0.2.wasm (API 0.2, handles), noop-fast-transform-0.2.wasm
# (API 0.2 fast-transform: no handles, a number back); and test plugins for
# tests/plugins_v02.rs: echo.wasm, which republishes every event hook call, challenge-auth.wasm
# and refuse-auth.wasm, fast-rules.wasm (fast-transform rules) and both-transforms.wasm (a
# component the broker refuses).
# Needs what plugins/device-acl needs (see ../../.ci/plugins.sh): clang-19 + wasi-libc,
# wit-bindgen and wasm-tools.
set -euo pipefail
cd "$(dirname "$0")"
rm -rf gen
build() { # api(1|2) wit-dir world hook-macro output
    local out="gen/$5"
    wit-bindgen c "$2" --world "$3" --out-dir "$out" >/dev/null
    local c=${3//-/_}
    clang-19 --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror \
        -DAPI="$1" -D"$4" -DWORLD_HEADER="\"$out/$c.h\"" -DSTRING_T="${c}_string_t" \
        -Wl,--strip-all noop.c "$out/$c.c" "$out/${c}_component_type.o" -o "$out/core.wasm"
    wasm-tools component new "$out/core.wasm" -o "$5.wasm"
    echo "built $(pwd)/$5.wasm"
}
build 1 ../../wit authorizer HOOK_AUTHORIZE noop-acl-0.1
build 1 ../../wit transformer HOOK_TRANSFORM noop-transform-0.1
build 2 ../../wit/v0.2 authorizer HOOK_AUTHORIZE noop-acl-0.2
build 2 ../../wit/v0.2 transformer HOOK_TRANSFORM noop-transform-0.2
build 2 ../../wit/v0.2 fast-transformer HOOK_FAST_TRANSFORM noop-fast-transform-0.2
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
# fast-rules.wasm: a fast-transform plugin with one rule per topic prefix, all through the
# `current` interface (fast.c; tests/plugins_v02.rs).
wit-bindgen c ../../wit/v0.2 --world fast-transformer --out-dir gen/fast-rules >/dev/null
clang-19 --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror \
    -Wl,--strip-all fast.c gen/fast-rules/fast_transformer.c gen/fast-rules/fast_transformer_component_type.o \
    -o gen/fast-rules/core.wasm
wasm-tools component new gen/fast-rules/core.wasm -o fast-rules.wasm
echo "built $(pwd)/fast-rules.wasm"
# both-transforms.wasm: exports transform and fast-transform, which the broker refuses
# (both.c; tests/plugins_v02.rs). Its world (wit-both/both.wit) is outside the plugin
# package and uses it as a dependency: wit-bindgen finds it in the world's deps/ folder.
mkdir -p gen/wit-both/deps
cp wit-both/both.wit gen/wit-both/
cp ../../wit/v0.2/plugin.wit gen/wit-both/deps/
wit-bindgen c gen/wit-both --world both-transforms --out-dir gen/both-transforms >/dev/null
clang-19 --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror \
    -Wl,--strip-all both.c gen/both-transforms/both_transforms.c \
    gen/both-transforms/both_transforms_component_type.o -o gen/both-transforms/core.wasm
wasm-tools component new gen/both-transforms/core.wasm -o both-transforms.wasm
echo "built $(pwd)/both-transforms.wasm"
# echo.wasm (built last: .ci/plugins.sh takes it as the stamp of this whole build):
# republishes every event (a test plugin for event hooks, tests/plugins_v02.rs).
wit-bindgen c ../../wit/v0.2 --world observer --out-dir gen/echo >/dev/null
clang-19 --target=wasm32-wasi -mexec-model=reactor -O2 -Wall -Wextra -Werror \
    -Wl,--strip-all echo.c gen/echo/observer.c gen/echo/observer_component_type.o -o gen/echo/core.wasm
wasm-tools component new gen/echo/core.wasm -o echo.wasm
echo "built $(pwd)/echo.wasm"
