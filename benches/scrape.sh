#!/usr/bin/env bash
# Does a metrics scrape slow marking? Starts a release `oncelyd serve` on 127.0.0.1 per
# run, with a fresh data directory and one namespace of 50M capacity per generation
# (4 generations, fp 0.001: about 110 MB per filter), and runs
# `oncelyd load --batch 1000 --concurrency 4 --duration $SECS` against it, ROUNDS
# times each without and with `GET /metrics` scraped every 100 ms, alternating so
# that the shared machine's drift hits both alike. Prints each run's IDs/s and batch
# p99, the medians, their ratio, and how long the scrapes took. Bounded, and leaves
# nothing behind.
#
#   benches/scrape.sh                 # 3 rounds of 15 s each way
#   ROUNDS=1 SECS=10 benches/scrape.sh
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
rounds="${ROUNDS:-3}"
secs="${SECS:-15}"
port="${PORT:-17271}"
url="http://127.0.0.1:$port"

"$root/scripts/ensure-deps.sh" curl=curl python3=python3
cargo build --release --locked -p oncelyd --bin oncelyd
bin="${CARGO_TARGET_DIR:-$root/target}/release/oncelyd"

. "$root/benches/lib.sh"
scraper=""
stop_daemon() {
    stop "$scraper"
    stop "$pid"
    scraper=""
    pid=""
}
cleanup() {
    stop_daemon
    rm -rf "$dir"
}

# One run: "scraped" or "quiet"; appends "IDs/s p99_us" to $dir/<kind>.
run() {
    local kind="$1" n="$2"
    rm -rf "$dir/data"
    "$bin" serve --listen "127.0.0.1:$port" --data-dir "$dir/data" --drain-delay 0s \
        >"$dir/serve.log" 2>&1 &
    pid=$!
    wait_ready "$url"
    put_namespace "$url" big \
        '{"generations":4,"exact_generations":2,"generation_capacity":50000000,"generation_span":"1h","fp_rate":0.001}'
    if [ "$kind" = scraped ]; then
        # One process on one keep-alive connection, as Prometheus scrapes: a curl
        # started every 100 ms cost the shared two cores more than the scrapes did
        # (0.934 of the unscraped rate that way, in the first run of this script).
        python3 - "$port" "$dir/scrape-times" <<'EOF' &
import http.client, sys, time
conn = http.client.HTTPConnection("127.0.0.1", int(sys.argv[1]), timeout=10)
with open(sys.argv[2], "a") as out:
    while True:
        start = time.perf_counter()
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        r.read()
        assert r.status == 200, r.status
        print(time.perf_counter() - start, file=out, flush=True)
        time.sleep(0.1)
EOF
        scraper=$!
    fi
    "$bin" load --url "$url" --namespace big --batch 1000 --concurrency 4 \
        --duration "${secs}s" --duplicates 0 --seed "$n" --json >"$dir/load.json"
    python3 - "$dir/load.json" "$kind" "$n" >>"$dir/$kind" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
assert r["errors"]["total"] == 0, r["errors"]
print(f'{r["ids_per_sec"]:.0f} {r["latency_us"]["p99"]}')
print(f'{sys.argv[2]:>7} run {sys.argv[3]}: {r["ids_per_sec"]:>12,.0f} IDs/s  p99 {r["latency_us"]["p99"] / 1000:6.2f} ms', file=sys.stderr)
EOF
    stop_daemon
}

for n in $(seq "$rounds"); do
    run quiet "$n"
    run scraped "$n"
done

python3 - "$dir" <<'EOF'
import statistics, sys
d = sys.argv[1]
def load(kind):
    rows = [tuple(map(float, l.split())) for l in open(f"{d}/{kind}")]
    return statistics.median(r[0] for r in rows), statistics.median(r[1] for r in rows)
q_rate, q_p99 = load("quiet")
s_rate, s_p99 = load("scraped")
times = sorted(float(l) for l in open(f"{d}/scrape-times"))
print(f"median unscraped: {q_rate:,.0f} IDs/s, p99 {q_p99 / 1000:.2f} ms")
print(f"median scraped:   {s_rate:,.0f} IDs/s, p99 {s_p99 / 1000:.2f} ms")
print(f"scraped / unscraped: throughput {s_rate / q_rate:.3f}, p99 {s_p99 / q_p99:.3f}")
print(f"{len(times)} scrapes: median {statistics.median(times) * 1000:.2f} ms, "
      f"p99 {times[int(len(times) * 0.99)] * 1000:.2f} ms, max {times[-1] * 1000:.2f} ms (one keep-alive connection, end to end)")
EOF
