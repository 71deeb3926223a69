#!/usr/bin/env bash
# Oncely side by side with Redis (SET NX PX) and NATS JetStream (Nats-Msg-Id dedup),
# single-ID requests beside the daemon's own HTTP stack without the tracker, the typed
# client with auto-batching off and on, and Oncely's RESP face beside Redis and beside
# its own RESP stack without the tracker (redis-benchmark SET NX PX, BF.MADD).
#
# Installs the peers and wrk from Debian's packages when missing (as root; otherwise it
# names the packages), builds the release binaries it drives, then runs
# benches/peers/peers.py, which starts each server on loopback in a temporary directory,
# drives it, stops it, and prints Markdown tables (also written to
# benches/peers/RESULTS.md).
#
#   benches/peers/run.sh                            # the documented run: 15 s per workload
#   benches/peers/run.sh --duration 5               # shorter
#   benches/peers/run.sh --duration 5 --only single # single-ID requests only
#   benches/peers/run.sh --only single,single-1-worker,pipelined --peers oncely,ceiling,redis
#       # and, only when named: the HTTP servers on one worker thread; pipelined 16 deep
#   benches/peers/run.sh --only resp-p1,resp-p16,resp-madd
#       # over RESP: SET NX PX at -P 1 (in the full run) and, only when named, -P 16 and
#       # BF.MADD of 1,000 IDs; this run replaces only the RESP section of RESULTS.md
#   benches/peers/run.sh --help                     # every option
#
# Every server and load generator is bounded in time and killed on exit, whatever the
# outcome. Run it on an otherwise idle machine: the three servers share it with their
# load generators, one after the other, never at the same time.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

"$root/scripts/ensure-deps.sh" redis-server=redis-server redis-benchmark=redis-tools \
    nats-server=nats-server wrk=wrk python3=python3

target="${CARGO_TARGET_DIR:-$root/target}"
cargo build --release --locked -p oncelyd -p oncely-benches --bin oncelyd --bin nats_dedup \
    --bin ceiling --bin client_batching --bin resp_ceiling

exec python3 "$root/benches/peers/peers.py" \
    --oncelyd "$target/release/oncelyd" \
    --nats-dedup "$target/release/nats_dedup" \
    --ceiling "$target/release/ceiling" \
    --client-batching "$target/release/client_batching" \
    --resp-ceiling "$target/release/resp_ceiling" \
    --out "$root/benches/peers/RESULTS.md" \
    "$@"
