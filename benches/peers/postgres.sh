#!/usr/bin/env bash
# Oncely's PostgreSQL store against PostgreSQL itself: IDs per second through one
# `oncelyd serve --store postgres://...` driven by `oncelyd load` (HTTP) and by
# `redis-benchmark` (RESP's `SET NX`, unpipelined and 16 deep), beside the same
# batches written as raw `INSERT ... ON CONFLICT DO NOTHING` into a plain keyed table
# (benches/src/bin/pg_insert.rs), same connections, same server, same run.
#
# Installs PostgreSQL when missing (as root; otherwise it names the package), builds
# the release binaries, then runs benches/peers/postgres.py, which starts a throwaway
# PostgreSQL (initdb in a temporary directory, fsync on, as the postgres user when
# run as root), drives both, stops everything, and prints a Markdown table (also
# written to benches/peers/POSTGRES.md).
#
#   benches/peers/postgres.sh                  # the documented run: 15 s per workload
#   benches/peers/postgres.sh --duration 5     # shorter
#   benches/peers/postgres.sh --help           # every option
#
# Every server and load generator is bounded in time and killed on exit, whatever the
# outcome. Run it on an otherwise idle machine.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

"$root/scripts/ensure-deps.sh" python3=python3

target="${CARGO_TARGET_DIR:-$root/target}"
cargo build --release --locked -p oncelyd -p oncely-benches --bin oncelyd --bin pg_insert

exec python3 "$root/benches/peers/postgres.py" \
    --oncelyd "$target/release/oncelyd" \
    --pg-insert "$target/release/pg_insert" \
    --out "$root/benches/peers/POSTGRES.md" \
    "$@"
