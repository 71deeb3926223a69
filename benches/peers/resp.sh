#!/usr/bin/env bash
# Oncely's RESP face beside Redis 7 and beside the bare RESP stack (resp_ceiling:
# the daemon's parser and runtime answering +OK with no tracker), all driven by the
# same redis-benchmark lines, in alternating rounds, the median reported
# (DESIGN.md, "Targets": RESP).
#
#   SET s:__rand_int__ 1 NX PX 3600000   -r 1000000000 -c 8 --threads 1, at -P 1 and -P 16
#   BF.MADD default (1,000 x i:__rand_int__)   -c 4 -P 1, in IDs/s (Oncely only)
#
# Redis runs with AOF appendfsync everysec, Oncely with durability flush (the
# default), once with --worker-threads 1 and once with two workers: on two cores
# shared with the load generator, one worker answers unpipelined SETs faster.
# Every server starts on loopback in a temporary directory and is killed on exit.
#
#   benches/peers/resp.sh                 # 3 rounds, 300,000 requests at -P 1, 1,000,000 at -P 16
#   ROUNDS=1 N1=100000 N16=300000 benches/peers/resp.sh    # shorter
#   benches/peers/resp.sh --out benches/peers/RESP_RESULTS.md
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
rounds="${ROUNDS:-3}"
n1="${N1:-300000}"
n16="${N16:-1000000}"
nmadd="${NMADD:-2000}"
out=""
if [ "${1:-}" = "--out" ]; then out="$2"; fi

"$root/scripts/ensure-deps.sh" redis-server=redis-server redis-benchmark=redis-tools python3=python3
cargo build --release --locked -p oncelyd -p oncely-benches --bin oncelyd --bin resp_ceiling
target="${CARGO_TARGET_DIR:-$root/target}/release"
. "$root/benches/lib.sh"

pids=()
cleanup() {
    for p in "${pids[@]}"; do stop "$p"; done
    rm -rf "$dir"
}

# up NAME PORT COMMAND...: starts a server, waits for PING.
up() {
    local name="$1" port="$2"
    shift 2
    "$@" >"$dir/$name.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 100); do
        redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && return 0
        sleep 0.1
    done
    echo "$name did not start: $(tail -5 "$dir/$name.log")" >&2
    exit 1
}

declare -A port
port[redis]=$(free_port)
mkdir -p "$dir/redis"
up redis "${port[redis]}" redis-server --port "${port[redis]}" --bind 127.0.0.1 --save '' \
    --appendonly yes --appendfsync everysec --dir "$dir/redis"
for w in 1 2; do
    port[oncely-w$w]=$(free_port)
    up "oncely-w$w" "${port[oncely-w$w]}" "$target/oncelyd" serve --listen "127.0.0.1:$(free_port)" \
        --resp-listen "127.0.0.1:${port[oncely-w$w]}" --data-dir "$dir/oncely-w$w" \
        --worker-threads "$w" --drain-delay 0s
done
port[ceiling]=$(free_port)
up ceiling "${port[ceiling]}" "$target/resp_ceiling" --listen "127.0.0.1:${port[ceiling]}"
servers=(redis oncely-w1 oncely-w2 ceiling)

# bench PORT PIPELINE N CONNECTIONS COMMAND...: "requests/s p50_ms".
bench() {
    local p="$1" depth="$2" n="$3" c="$4"
    shift 4
    timeout 600 redis-benchmark -h 127.0.0.1 -p "$p" -r 1000000000 -n "$n" -c "$c" --threads 1 \
        -P "$depth" -q "$@" 2>/dev/null | tr '\r' '\n' | grep 'requests per second' | tail -1 \
        | sed -E 's/.*: ([0-9.]+) requests per second, p50=([0-9.]+) msec.*/\1 \2/'
}

results="$dir/results"
: >"$results"
for r in $(seq "$rounds"); do
    for s in "${servers[@]}"; do
        echo "round $r/$rounds: $s" >&2
        echo "P1 $s $(bench "${port[$s]}" 1 "$n1" 8 SET 's:__rand_int__' 1 NX PX 3600000)" >>"$results"
        echo "P16 $s $(bench "${port[$s]}" 16 "$n16" 8 SET 's:__rand_int__' 1 NX PX 3600000)" >>"$results"
    done
    items=()
    for _ in $(seq 1000); do items+=('i:__rand_int__'); done
    for s in oncely-w1 oncely-w2; do
        echo "MADD $s $(bench "${port[$s]}" 1 "$nmadd" 4 BF.MADD default "${items[@]}")" >>"$results"
    done
done

table=$(python3 - "$results" "$rounds" "$n1" "$n16" "$nmadd" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if len(l.split()) == 4]
rounds, n1, n16, nmadd = sys.argv[2:]
def runs(w, s):
    return [(float(r[2]), float(r[3])) for r in rows if r[0] == w and r[1] == s]
def med(w, s):
    v = runs(w, s)
    return statistics.median(x for x, _ in v), statistics.median(p for _, p in v) * 1000, v
print(f"{rounds} alternating rounds; SET: {n1} requests at -P 1, {n16} at -P 16, 8 connections;")
print(f"BF.MADD: {nmadd} calls of 1,000 IDs, 4 connections. Medians, then each round.\n")
print("| workload | server | rate | vs Redis | p50 | rounds |")
print("|---|---|---:|---:|---:|---|")
names = {"redis": "Redis 7 (AOF everysec)", "oncely-w1": "Oncely, --worker-threads 1",
         "oncely-w2": "Oncely, two workers", "ceiling": "resp_ceiling (no tracker)"}
for w, label in (("P1", "SET NX PX, -P 1"), ("P16", "SET NX PX, -P 16")):
    base = med(w, "redis")[0]
    for s in ("redis", "oncely-w1", "oncely-w2", "ceiling"):
        m, p, v = med(w, s)
        each = " / ".join(f"{x:,.0f}" for x, _ in v)
        print(f"| {label} | {names[s]} | {m:,.0f} req/s | {m / base:.2f}x | {p:.0f} µs | {each} |")
for s in ("oncely-w1", "oncely-w2"):
    m, p, v = med("MADD", s)
    each = " / ".join(f"{x * 1000:,.0f}" for x, _ in v)
    print(f"| BF.MADD x 1,000, -c 4 | {names[s]} | {m * 1000:,.0f} IDs/s | | {p:.0f} µs | {each} |")
PY
)
echo "$table"
if [ -n "$out" ]; then
    {
        echo "# RESP beside Redis"
        echo
        echo "\`benches/peers/resp.sh\`, $(date -u +%Y-%m-%d), $(nproc) CPUs, $(redis-server --version | cut -d' ' -f3)."
        echo
        echo "$table"
    } >"$out"
fi
