#!/usr/bin/env bash
# Two `oncelyd` binaries compared by alternating runs, so that the shared machine's
# drift hits both alike: ROUNDS times each, a fresh `oncelyd serve` on 127.0.0.1 with
# a fresh data directory and a namespace of 4 × 10M exact IDs, driven by `oncelyd
# load` (the newer binary's, for both) for SECS seconds. Prints each run's IDs/s, p50
# and p99 in microseconds, then each binary's medians.
#
#   benches/ab.sh OLD_ONCELYD NEW_ONCELYD                   # 3 rounds of 10 s, 1,000-ID batches on 4 connections
#   ROUNDS=3 SECS=8 BATCH=1 CONNECTIONS=1 benches/ab.sh OLD NEW   # single IDs on one connection
#   NEW_ARGS="--worker-threads 1" BATCH=1 CONNECTIONS=8 benches/ab.sh B B   # one binary, two settings
#
# OLD_ARGS and NEW_ARGS are extra `serve` flags for each (split on blanks).
#
# Build the older binary from a worktree of its commit (`git worktree add`, then
# `cargo build --release -p oncelyd` there). Bounded, and leaves nothing behind.
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: $0 OLD_ONCELYD NEW_ONCELYD" >&2; exit 2; }
old="$1"
new="$2"
rounds="${ROUNDS:-3}"
secs="${SECS:-10}"
batch="${BATCH:-1000}"
connections="${CONNECTIONS:-4}"

. "$(dirname "$0")/lib.sh"

run() {
    local bin="$1" label="$2" round="$3" port url extra=()
    if [ "$label" = old ]; then read -r -a extra <<<"${OLD_ARGS:-}"; else read -r -a extra <<<"${NEW_ARGS:-}"; fi
    port=$(free_port)
    url="http://127.0.0.1:$port"
    rm -rf "$dir/data"
    # Older daemons have no --drain-delay; newer ones wait for it at shutdown.
    local drain=()
    if "$bin" serve --help | grep -q -- --drain-delay; then drain=(--drain-delay 0s); fi
    "$bin" serve --listen "127.0.0.1:$port" --data-dir "$dir/data" "${drain[@]}" "${extra[@]}" \
        >"$dir/serve.log" 2>&1 &
    pid=$!
    wait_ready "$url"
    put_namespace "$url" ab \
        '{"generations":4,"exact_generations":4,"generation_capacity":10000000,"generation_span":"1h","fp_rate":0.01}'
    "$new" load --url "$url" --namespace ab --batch "$batch" --concurrency "$connections" \
        --duration "${secs}s" --duplicates 0 --seed "$round" --json >"$dir/load.json"
    python3 - "$dir/load.json" "$label" >>"$dir/results" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["errors"]["total"] == 0, r["errors"]
print(sys.argv[2], round(r["ids_per_sec"]), r["latency_us"]["p50"], r["latency_us"]["p99"])
EOF
    tail -1 "$dir/results"
    stop "$pid"
    pid=""
}

for round in $(seq "$rounds"); do
    run "$old" old "$round"
    run "$new" new "$round"
done

python3 - "$dir/results" <<'EOF'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
for label in ("old", "new"):
    mine = [r for r in rows if r[0] == label]
    print(f"{label}: median {statistics.median(int(r[1]) for r in mine):,} IDs/s, "
          f"p50 {statistics.median(int(r[2]) for r in mine)} us, "
          f"p99 {statistics.median(int(r[3]) for r in mine)} us")
old = statistics.median(int(r[1]) for r in rows if r[0] == "old")
new = statistics.median(int(r[1]) for r in rows if r[0] == "new")
print(f"new / old: {new / old:.3f}")
EOF
