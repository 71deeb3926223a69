#!/usr/bin/env bash
# Oncely side by side with Redis (SET NX PX) and NATS JetStream (Nats-Msg-Id dedup).
#
# Installs the peers from Debian's packages when missing (as root; otherwise it names
# the packages), builds the release binaries it drives, then runs benches/peers/peers.py,
# which starts each server on loopback in a temporary directory, drives it, stops it,
# and prints a Markdown table (also written to benches/peers/RESULTS.md).
#
#   benches/peers/run.sh                    # the documented run: 15 s per workload
#   benches/peers/run.sh --duration 5       # shorter
#   benches/peers/run.sh --help             # every option
#
# Every server and load generator is bounded in time and killed on exit, whatever the
# outcome. Run it on an otherwise idle machine: the three servers share it with their
# load generators, one after the other, never at the same time.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"

"$root/scripts/ensure-deps.sh" redis-server=redis-server redis-benchmark=redis-tools \
    nats-server=nats-server python3=python3

target="${CARGO_TARGET_DIR:-$root/target}"
cargo build --release --locked -p oncelyd -p oncely-benches --bin oncelyd --bin nats_dedup

exec python3 "$root/benches/peers/peers.py" \
    --oncelyd "$target/release/oncelyd" \
    --nats-dedup "$target/release/nats_dedup" \
    --out "$root/benches/peers/RESULTS.md" \
    "$@"
