# What the bench scripts share; sourced after `set -euo pipefail`. A temporary
# directory `$dir`, removed on exit with the daemon `$pid` (and anything else a script
# adds to `cleanup`) stopped first; a free loopback port; a daemon's readiness; a
# namespace.

dir="$(mktemp -d)"
pid=""

# stop PID: kills a background process, if any, and reaps it.
stop() {
    if [ -n "$1" ]; then kill "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; fi
}

cleanup() {
    stop "$pid"
    rm -rf "$dir"
}
trap cleanup EXIT

# free_port: a port nothing listens on, on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_ready URL: until the daemon at URL answers /readyz (10 s at most).
wait_ready() {
    for _ in $(seq 100); do
        curl -sf "$1/readyz" >/dev/null && return 0
        sleep 0.1
    done
    echo "no answer from $1/readyz" >&2
    return 1
}

# put_namespace URL NAME CONFIG_JSON: creates (or reconfigures) a namespace.
put_namespace() {
    curl -sf -X PUT -H 'content-type: application/json' -d "$3" "$1/v1/namespaces/$2" >/dev/null
}
