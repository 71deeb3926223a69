#!/usr/bin/env bash
# Installs what building and testing Oncely needs on a Debian machine with Rust, when
# missing: libclang (the rocksdb crate generates its bindings with bindgen), a C++
# compiler, PostgreSQL's server programs (the PostgreSQL store's tests and examples
# start throwaway servers with initdb; none is left running), nats-server (the
# JetStream example starts its own) and promtool (daemon/tests/prometheus.rs checks
# /metrics and the rules in deploy/prometheus/ with it; Debian ships it in the
# prometheus package, whose server is not started by the tests). As root it installs with apt-get; otherwise it
# names the packages to install.
#
# Arguments COMMAND=PACKAGE add tools a caller needs (benches/peers/run.sh: the peers):
# PACKAGE is installed when COMMAND is not on PATH. A COMMAND with a `/` is a path:
# PACKAGE is installed when no file is there.
set -euo pipefail

missing=()
for wanted in "$@"; do
    what=${wanted%%=*}
    package=${wanted#*=}
    case $what in
        */*) [ -e "$what" ] && continue ;;
        *) command -v "$what" >/dev/null 2>&1 && continue ;;
    esac
    case " ${missing[*]} " in
        *" $package "*) ;;
        *) missing+=("$package") ;;
    esac
done
have_libclang() {
    [ -n "${LIBCLANG_PATH:-}" ] && return 0
    ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/*/libclang*.so* >/dev/null 2>&1
}
have_libclang || missing+=(libclang-dev)
# Debian keeps initdb out of PATH, under /usr/lib/postgresql/<version>/bin, where
# oncely-testkit looks for it (or in ONCELY_PG_BINDIR).
have_initdb() {
    [ -n "${ONCELY_PG_BINDIR:-}" ] && [ -x "$ONCELY_PG_BINDIR/initdb" ] && return 0
    ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1
}
have_initdb || missing+=(postgresql)
command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
command -v c++ >/dev/null 2>&1 || missing+=(g++)
# The RESP face's tests drive it with redis-cli and redis-benchmark.
{ command -v redis-cli && command -v redis-benchmark; } >/dev/null 2>&1 || missing+=(redis-tools)
command -v make >/dev/null 2>&1 || missing+=(make)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
# daemon/tests/systemd.rs checks deploy/oncelyd.service with systemd-analyze (verify,
# and security --offline); no running systemd is needed.
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)

if ! command -v cargo >/dev/null 2>&1; then
    echo "error: cargo is not on PATH; install Rust first (https://rustup.rs)" >&2
    exit 1
fi

if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "error: missing packages: ${missing[*]}" >&2
    echo "install them as root:  apt-get install -y ${missing[*]}" >&2
    exit 1
fi

echo "installing: ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y --no-install-recommends "${missing[@]}" \
    || { apt-get update && apt-get install -y --no-install-recommends "${missing[@]}"; }
