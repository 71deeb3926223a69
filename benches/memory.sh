#!/usr/bin/env bash
# Resident memory of oncelyd per remembered ID: starts a release `oncelyd serve` in a
# temporary directory on 127.0.0.1, creates one namespace of 4 generations x 10M IDs
# (2 exact), marks STEPS x 10M fresh IDs with `oncelyd load` and prints the daemon's
# RSS after each step. Bounded (each step stops after 10M IDs or 300 s) and leaves
# nothing behind.
#
#   benches/memory.sh            # 4 steps: 10M to 40M remembered IDs
#   STEPS=2 benches/memory.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
steps="${STEPS:-4}"
port="${PORT:-17270}"

"$root/scripts/ensure-deps.sh" curl=curl
cargo build --release --locked -p oncelyd --bin oncelyd
bin="${CARGO_TARGET_DIR:-$root/target}/release/oncelyd"

. "$root/benches/lib.sh"

"$bin" serve --listen "127.0.0.1:$port" --data-dir "$dir/data" >"$dir/serve.log" 2>&1 &
pid=$!
wait_ready "http://127.0.0.1:$port"
rss() { awk '/^VmRSS/ {printf "%.1f MiB", $2 / 1024}' "/proc/$pid/status"; }
echo "start-up: $(rss)"
put_namespace "http://127.0.0.1:$port" mem \
    '{"generations":4,"exact_generations":2,"generation_capacity":10000000,"generation_span":"1h","fp_rate":0.01}'
for i in $(seq "$steps"); do
    "$bin" load --url "http://127.0.0.1:$port" --namespace mem --batch 1000 --concurrency 4 \
        --ids 10000000 --duration 300s --duplicates 0 --seed "$i" --json >/dev/null
    echo "after $((i * 10))M IDs: $(rss)"
done
