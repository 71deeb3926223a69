#!/usr/bin/env bash
# What each part of a single ID's mark costs PostgreSQL, without Oncely: pgbench runs
# the statement shapes of this directory, 8 clients, prepared, against a database it
# creates (`oncely_shapes`, dropped first) on the server at URL, and prints each one's
# transactions per second and its ratio to the bare insert (`raw.sql`), in two
# alternating rounds.
#
#   benches/peers/pg_statements/run.sh postgres://postgres@127.0.0.1:5432/postgres [SECONDS]
#
# Start a throwaway server for it (fsync on): the database grows by every insert.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
url="${1:?usage: run.sh POSTGRES_URL [SECONDS]}"
secs="${2:-6}"
psql -X -q -d "$url" -c 'DROP DATABASE IF EXISTS oncely_shapes' -c 'CREATE DATABASE oncely_shapes'
db="$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/oncely_shapes")))' "$url")"
psql -X -q -v ON_ERROR_STOP=1 -d "$db" -f "$here/schema.sql"
shapes=(raw func pipe pipecount pipesum one onelock)
results="$(mktemp)"
trap 'rm -f "$results"' EXIT
for round in 1 2; do
    for s in "${shapes[@]}"; do
        pgbench -n -M prepared -c 8 -j 2 -T "$secs" -f "$here/$s.sql" "$db" 2>&1 \
            | awk -v r="$round" -v s="$s" '/^tps/ { print r, s, $3 }' >>"$results"
    done
done
python3 - "$results" <<'PY'
import sys
runs = {}
for line in open(sys.argv[1]):
    r, s, t = line.split()
    runs.setdefault(s, {})[r] = float(t)
print("| shape | transactions/s | ÷ raw |")
print("|---|---:|---:|")
for s, by in runs.items():
    rounds = sorted(by)
    tps = " / ".join(f"{by[r]:,.0f}" for r in rounds)
    ratio = " / ".join(f"{by[r] / runs['raw'][r]:.2f}x" for r in rounds)
    print(f"| {s}.sql | {tps} | {ratio} |")
PY
psql -X -q -d "$url" -c 'DROP DATABASE oncely_shapes'
