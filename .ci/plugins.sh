#!/usr/bin/env bash
# Installs the plugin toolchains and builds every example plugin from source.
#
# Idempotent: tools already at the pinned versions are not reinstalled, and a plugin whose
# component is newer than its sources (and the WIT) is not rebuilt. Works on a fresh
# Debian 12 machine with Rust, Python 3.11+ with pip, Node 20+ with npm: everything else
# comes from Debian, crates.io, PyPI and npm.
#
#   bash .ci/plugins.sh                  # install what is missing, build what is stale
#   bash .ci/plugins.sh sensor-bridge    # only that plugin, with only the toolchain it needs
#   FORCE=1 bash .ci/plugins.sh          # rebuild every plugin
#
# Toolchains per plugin: device-auth, jwt-auth, http-auth (Python) need componentize-py from
# PyPI; zig-auth needs Zig from PyPI (ziglang) and wasm-tools; device-acl and noop (C) need
# clang 19 + wasi-libc from Debian and wit-bindgen /
# wasm-tools from crates.io;
# topic-rewrite and sensor-bridge (JavaScript) need only Node 20+ and npm (jco is pinned in
# their package-lock.json).
set -euo pipefail
cd "$(dirname "$0")/.."

PLUGINS=(device-auth device-acl topic-rewrite sensor-bridge noop jwt-auth http-auth zig-auth delivery-receipts presence sensor-bridge-c audit)
only="${1:-}"
if [ -n "$only" ] && [[ ! " ${PLUGINS[*]} " =~ " $only " ]]; then
    echo "unknown plugin '$only' (one of: ${PLUGINS[*]})" >&2
    exit 2
fi
# Whether plugin $1 is to be built in this run.
want() { [ -z "$only" ] || [ "$only" = "$1" ]; }
# Whether any of the plugins named is to be built (they share a toolchain).
want_any() { local p; for p in "$@"; do want "$p" && return 0; done; return 1; }
C_PLUGINS=(device-acl noop zig-auth delivery-receipts presence sensor-bridge-c audit)
PY_PLUGINS=(device-auth jwt-auth http-auth)

WIT_BINDGEN_VERSION=0.60.0      # wit-component 0.254, as wasmtime 48 (the broker's host)
WASM_TOOLS_VERSION=1.254.2
COMPONENTIZE_PY_VERSION=0.25.1
ZIGLANG_VERSION=0.17.1          # Zig from PyPI (plugins/zig-auth), run as `python3 -m ziglang`
APT_PACKAGES=(clang-19 lld-19 wasi-libc libclang-rt-19-dev-wasm32)

log() { echo "== plugins: $*"; }

# --- Debian packages: clang 19 for wasm32-wasi, its linker and runtime, and wasi-libc.
missing=()
want_any "${C_PLUGINS[@]}" || APT_PACKAGES=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q "${missing[@]}"
fi

# --- Rust tools from crates.io (pinned; --locked for reproducible builds).
export PATH="$HOME/.cargo/bin:$PATH"
cargo_tool() { # binary crate version
    local have
    have=$("$1" --version 2>/dev/null | awk '{print $2}') || true
    if [ "$have" != "$3" ]; then
        log "cargo install $2@$3 (have: ${have:-none}); this takes a few minutes"
        cargo install --locked "$2@$3"
    fi
}
if want_any "${C_PLUGINS[@]}"; then
    cargo_tool wit-bindgen wit-bindgen-cli "$WIT_BINDGEN_VERSION"
    cargo_tool wasm-tools wasm-tools "$WASM_TOOLS_VERSION"
fi

# --- componentize-py from PyPI.
have_py=$(python3 -m pip show componentize-py 2>/dev/null | awk '/^Version:/ {print $2}') || true
if want_any "${PY_PLUGINS[@]}" && [ "$have_py" != "$COMPONENTIZE_PY_VERSION" ]; then
    log "pip install componentize-py==$COMPONENTIZE_PY_VERSION (have: ${have_py:-none})"
    python3 -m pip install --quiet "componentize-py==$COMPONENTIZE_PY_VERSION"
fi
# --- Zig from PyPI's ziglang wheel (plugins/zig-auth). Debian's own Python refuses user
# installs (externally managed) unless told otherwise.
have_zig=$(python3 -m pip show ziglang 2>/dev/null | awk '/^Version:/ {print $2}') || true
if want zig-auth && [ "$have_zig" != "$ZIGLANG_VERSION" ]; then
    log "pip install ziglang==$ZIGLANG_VERSION (have: ${have_zig:-none})"
    python3 -m pip install --user --quiet "ziglang==$ZIGLANG_VERSION" 2>/dev/null \
        || python3 -m pip install --user --quiet --break-system-packages "ziglang==$ZIGLANG_VERSION"
fi

# pip may put console scripts in a directory that is not on PATH (user installs).
PY_SCRIPTS=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
export PATH="$PATH:$PY_SCRIPTS:$HOME/.local/bin"

# --- Build each plugin when its output is missing or older than an input.
stale() { # output inputs...
    local out=$1
    shift
    [ -n "${FORCE:-}" ] && return 0
    [ -f "$out" ] || return 0
    for f in "$@"; do
        [ "$f" -nt "$out" ] && return 0
    done
    return 1
}
build() { # name output inputs...
    local name=$1 out=$2
    shift 2
    if stale "$out" "$@" wit/plugin.wit wit/v0.2/plugin.wit "plugins/$name/build.sh"; then
        log "building $name"
        local started=$SECONDS
        bash "plugins/$name/build.sh"
        log "built $name in $((SECONDS - started)) s ($(stat -c %s "$out") bytes)"
    else
        log "$name is up to date"
    fi
}
if want device-auth; then
    build device-auth plugins/device-auth/device-auth.wasm plugins/device-auth/app.py
fi
if want device-acl; then
    build device-acl plugins/device-acl/device-acl.wasm plugins/device-acl/device_acl.c plugins/device-acl/policy.h
fi
if want topic-rewrite; then
    build topic-rewrite plugins/topic-rewrite/topic-rewrite.wasm plugins/topic-rewrite/topic-rewrite.js plugins/topic-rewrite/package-lock.json
fi
if want sensor-bridge; then
    build sensor-bridge plugins/sensor-bridge/sensor-bridge.wasm plugins/sensor-bridge/sensor-bridge.js \
        plugins/sensor-bridge/lib/bridge.js plugins/sensor-bridge/bundle.config.js plugins/sensor-bridge/package-lock.json
fi
if want noop; then
    build noop plugins/noop/echo.wasm plugins/noop/noop.c plugins/noop/echo.c plugins/noop/test_auth.c \
        plugins/noop/fast.c plugins/noop/both.c plugins/noop/wit-both/both.wit
fi
if want sensor-bridge-c; then
    build sensor-bridge-c plugins/sensor-bridge-c/sensor-bridge-c.wasm plugins/sensor-bridge-c/sensor_bridge.c \
        plugins/sensor-bridge-c/bridge.c plugins/sensor-bridge-c/bridge.h plugins/sensor-bridge-c/ceiling.c
fi
if want audit; then
    build audit plugins/audit/audit.wasm plugins/audit/audit.c plugins/audit/audit_core.c plugins/audit/audit_core.h
fi
if want presence; then
    build presence plugins/presence/presence.wasm plugins/presence/presence.c plugins/presence/presence_logic.c \
        plugins/presence/presence_logic.h
fi
if want delivery-receipts; then
    build delivery-receipts plugins/delivery-receipts/delivery-receipts.wasm plugins/delivery-receipts/receipts.c
fi
# zig-auth's build.sh runs its `zig test` unit tests first.
if want zig-auth; then
    build zig-auth plugins/zig-auth/zig-auth.wasm plugins/zig-auth/zig_auth.zig plugins/zig-auth/token.zig \
        plugins/zig-auth/test.sh
fi
# The Python plugins' build.sh runs their unit tests first.
if want jwt-auth; then
    build jwt-auth plugins/jwt-auth/jwt-auth.wasm plugins/jwt-auth/app.py plugins/jwt-auth/jwtcore.py \
        plugins/jwt-auth/test_jwtcore.py
fi
if want http-auth; then
    build http-auth plugins/http-auth/http-auth.wasm plugins/http-auth/app.py plugins/http-auth/httpauth.py \
        plugins/http-auth/test_httpauth.py
fi

# --- Plugin logic unit-tested natively (no wasm target needed).
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if want device-acl; then
    log "native tests: device-acl policy (C)"
    gcc -Wall -Wextra -Werror -o "$tmp/test_policy" plugins/device-acl/test_policy.c
    "$tmp/test_policy"
fi
if want audit; then
    log "native tests: audit logic (C)"
    bash plugins/audit/test.sh
fi
if want presence; then
    log "native tests: presence logic (C)"
    bash plugins/presence/test.sh
fi
if [ -z "$only" ]; then
    log "native tests: rust-template policy (Rust)"
    cargo test --quiet --manifest-path plugins/rust-template/Cargo.toml
fi
if want sensor-bridge; then
    log "native tests: sensor-bridge logic (Node)"
    node --test plugins/sensor-bridge/test/*.test.js
fi
log "${only:-all plugins} built and tested"
