#!/usr/bin/env bash
# Instructions per single-ID check-and-mark, counted by callgrind, for `oncelyd serve`
# and for `ceiling` (the daemon's HTTP stack without the tracker,
# benches/src/bin/ceiling.rs). Unlike times, instruction counts repeat to within a
# few per cent on a shared machine, so a change to the request path can be judged by
# one run.
#
# Each server runs under valgrind on 127.0.0.1; `wrk -t1 -c8` posts one fresh ID per
# request (benches/peers/single.lua), first for 3 s of warm-up, then, with the counts
# zeroed, for $SECS seconds. The counts are dumped and divided by the requests wrk
# saw answered. Everything counts: every thread of the server, RocksDB's background
# work included. Prints one line per server; with KEEP=DIR, leaves the profiles
# there for callgrind_annotate.
#
# With DEPTH=N, wrk pipelines N requests at a time on each connection (single.lua's
# DEPTH). With REDIS=1, the daemon's RESP face (`resp`) and `redis-server` (AOF
# written every second, as in benches/peers) are counted too, each driven by
# `redis-benchmark -c 8 -P $DEPTH` with the `SET NX PX` of benches/peers: $SECS ×
# 4,000 requests, the same count at any depth, as Redis's cost per key grows with
# its table. Callgrind counts user-space
# instructions only: the system calls that pipelining saves are not in them.
#
#   benches/callgrind.sh            # 15 s each
#   SECS=5 KEEP=/tmp/cg benches/callgrind.sh
#   DEPTH=16 REDIS=1 benches/callgrind.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
secs="${SECS:-15}"
depth="${DEPTH:-1}"
export DEPTH="$depth"

deps=(valgrind=valgrind wrk=wrk curl=curl)
[ "${REDIS:-0}" = 1 ] && deps+=(redis-server=redis-server redis-benchmark=redis-tools)
"$root/scripts/ensure-deps.sh" "${deps[@]}"
cargo build --release --locked -p oncelyd -p oncely-benches --bin oncelyd --bin ceiling
target="${CARGO_TARGET_DIR:-$root/target}/release"

. "$root/benches/lib.sh"

# count NAME URL COMMAND...: the server COMMAND, under callgrind, answering at URL.
count() {
    local name="$1" url="$2"
    shift 2
    valgrind --tool=callgrind --callgrind-out-file="$dir/$name.out" "$@" >"$dir/$name.log" 2>&1 &
    pid=$!
    local ready=""
    for _ in $(seq 600); do
        if curl -s -o /dev/null -X POST -H 'content-type: application/json' \
            -d '{"ids":["warm-up"]}' "$url"; then
            ready=1
            break
        fi
        sleep 0.2
    done
    [ -n "$ready" ] || { echo "$name did not start: $(tail -5 "$dir/$name.log")" >&2; exit 1; }
    wrk -t1 -c8 -d3s -s benches/peers/single.lua "$url" >/dev/null
    callgrind_control -z "$pid" >/dev/null
    ONCELY_WRK_RUN=1 wrk -t1 -c8 -d"${secs}s" -s benches/peers/single.lua "$url" >"$dir/$name.wrk"
    local requests
    requests=$(grep -oE '^ +[0-9]+ requests' "$dir/$name.wrk" | grep -oE '[0-9]+')
    report "$name" "$requests"
}

# report NAME REQUESTS: dumps the counts of the server $pid, stops it, and prints its
# instructions per request.
report() {
    local name="$1" requests="$2" instructions
    callgrind_control -d "$pid" >/dev/null
    stop "$pid"
    pid=""
    # The dump taken after the counted run: the file with the highest part number.
    instructions=$(callgrind_annotate "$(ls "$dir/$name.out".* | sort -t. -k3 -n | tail -1)" 2>/dev/null \
        | grep -m1 'PROGRAM TOTALS' | grep -oE '^[0-9,]+' | tr -d ,)
    printf '%-8s %8d requests  %14d instructions  %7d per request\n' \
        "$name" "$requests" "$instructions" $((instructions / requests))
    if [ -n "${KEEP:-}" ]; then
        mkdir -p "$KEEP"
        cp "$dir/$name".out* "$KEEP/"
    fi
}

p=$(free_port)
count oncelyd "http://127.0.0.1:$p/v1/namespaces/default/check-and-mark" \
    "$target/oncelyd" serve --listen "127.0.0.1:$p" --data-dir "$dir/data" --drain-delay 0s
p=$(free_port)
count ceiling "http://127.0.0.1:$p/v1/namespaces/default/check-and-mark" \
    "$target/ceiling" --listen "127.0.0.1:$p"

# count_resp NAME PORT COMMAND...: the RESP server COMMAND, under callgrind,
# answering on PORT, driven by redis-benchmark with the SET NX PX of benches/peers:
# a fixed count, as redis-benchmark has no duration.
count_resp() {
    local name="$1" port="$2"
    shift 2
    valgrind --tool=callgrind --callgrind-out-file="$dir/$name.out" "$@" >"$dir/$name.log" 2>&1 &
    pid=$!
    local ready=""
    for _ in $(seq 600); do
        if redis-cli -p "$port" ping 2>/dev/null | grep -q PONG; then
            ready=1
            break
        fi
        sleep 0.2
    done
    [ -n "$ready" ] || { echo "$name did not start: $(tail -5 "$dir/$name.log")" >&2; exit 1; }
    bench() {
        redis-benchmark -p "$port" -c 8 --threads 1 -P "$depth" -n "$1" -r 2000000000 -q \
            SET k:__rand_int__ 1 NX PX 3600000 >/dev/null
    }
    bench 20000
    callgrind_control -z "$pid" >/dev/null
    local n=$((secs * 4000))
    bench "$n"
    report "$name" "$n"
}

if [ "${REDIS:-0}" = 1 ]; then
    # The same daemon's RESP face (the same tracker as its HTTP face above).
    p=$(free_port)
    count_resp resp "$p" "$target/oncelyd" serve --listen "127.0.0.1:$(free_port)" \
        --resp-listen "127.0.0.1:$p" --data-dir "$dir/resp-data" --drain-delay 0s
    p=$(free_port)
    mkdir -p "$dir/redis"
    count_resp redis "$p" redis-server --port "$p" --bind 127.0.0.1 --save '' \
        --appendonly yes --appendfsync everysec --dir "$dir/redis"
fi
