#!/usr/bin/env bash
# Tests the daemon against its own OpenAPI document with schemathesis (every check:
# schema-valid requests must be accepted, schema-violating ones refused, answers must
# match the document, 5xx never), and fails on any failure it finds.
#
# It builds `oncelyd`, starts it on 127.0.0.1 (a port the OS picks) with a bearer
# token and a temporary data directory, runs a seeded, bounded schemathesis run
# against /v1/openapi.json (about 10 s), then kills the daemon and removes the
# directory. schemathesis is installed into a virtualenv under ~/.cache/oncely the
# first time (PyPI), pinned to the version this was written against
# (ONCELY_SCHEMATHESIS_VENV places it elsewhere; the daemon, which refuses unknown
# ONCELY_* settings, is started without it).
#
#   scripts/schemathesis.sh                      # the run make test makes
#   scripts/schemathesis.sh --max-examples 300   # extra arguments go to `st run`
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/venv.sh
. scripts/venv.sh

ST_VERSION=4.32.5
VENV="${ONCELY_SCHEMATHESIS_VENV:-${HOME:-/root}/.cache/oncely/schemathesis-$ST_VERSION}"
CARGO="${CARGO:-cargo}"
TARGET="${CARGO_TARGET_DIR:-target}"

if [ ! -x "$VENV/bin/st" ]; then
    make_venv "$VENV"
    "$VENV/bin/pip" install --quiet "schemathesis==$ST_VERSION"
fi

"$CARGO" build --locked -q -p oncelyd --bin oncelyd

work="$(mktemp -d)"
daemon=""
cleanup() {
    # SIGKILL: a clean stop would snapshot every open filter first, and the run
    # creates namespaces with large ones. Nothing of this daemon is kept.
    [ -n "$daemon" ] && kill -KILL "$daemon" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

token="st-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
env -u ONCELY_SCHEMATHESIS_VENV "$TARGET/debug/oncelyd" serve --listen 127.0.0.1:0 --data-dir "$work/data" \
    --token "$token" >"$work/daemon.log" 2>&1 &
daemon=$!
# Killed on purpose at the end: no job report for it.
disown "$daemon"
addr=""
for _ in $(seq 1 100); do
    addr="$(sed -n 's/.*listen=\([0-9.]*:[0-9]*\).*/\1/p' "$work/daemon.log" | head -n 1)"
    [ -n "$addr" ] && break
    kill -0 "$daemon" 2>/dev/null || { cat "$work/daemon.log" >&2; exit 1; }
    sleep 0.1
done
[ -n "$addr" ] || { echo "error: oncelyd did not start" >&2; cat "$work/daemon.log" >&2; exit 1; }

# In the work directory, so that schemathesis's example database goes with it.
cd "$work"
"$VENV/bin/st" run "http://$addr/v1/openapi.json" \
    --checks all \
    -H "Authorization: Bearer $token" \
    --seed 1 \
    --no-color \
    "$@"
