#!/usr/bin/env python3
"""Drive Oncely, Redis and NATS JetStream with the same dedup workload, one at a time.

Started by benches/peers/run.sh, which installs the peers and builds the binaries. Each
(peer, workload) pair gets a fresh server in a fresh temporary directory on 127.0.0.1,
so every run starts from an empty dedup table; the server is killed afterwards.

Durability, comparable across the three:
  * Oncely: durability `flush` (the default): a mark is acknowledged once it is in
    RocksDB's write-ahead log, written to the OS. Survives kill -9, not power loss.
  * Redis: AOF with `appendfsync everysec`: each write is in the AOF (written to the OS)
    before the reply; fsync once a second. Survives kill -9, not power loss.
  * NATS JetStream: file storage. Its file store writes messages through the OS's
    file-system buffers and forces an fsync only every `sync_interval` (2 minutes by
    default, per docs.nats.io; `always` fsyncs every write, at a large cost in
    throughput). Debian 12's nats-server 2.9 runs with its default. An acknowledged
    publish therefore survives a crash of the server process but not necessarily a
    crash of the machine: the same class as the other two.

Workloads, each for --duration seconds (Redis: a fixed number of requests sized from a
calibration run, as redis-benchmark counts requests rather than time):
  * batched-unique: unique 16-byte IDs (32 hex characters); Oncely 1,000-ID batches,
    Redis pipelines of 1,000 SET NX PX, NATS 1,000 publishes awaiting acks; 4 connections.
  * batched-dup10: the same with about 10% repeats of IDs already stored.
  * single: one fresh ID per request, 8 connections, one request in flight on each.
    Oncely with wrk (-t1, benches/peers/single.lua posts one fresh ID per
    check-and-mark), and the same wrk command against `ceiling`
    (benches/src/bin/ceiling.rs): the daemon's HTTP stack answering the same request
    without the tracker, the ceiling the single-ID path can reach. Redis with
    `redis-benchmark -P 1 -c 8 SET k:__rand_int__ 1 NX PX 3600000` and -r 2e9 (without
    -r, __rand_int__ is not replaced and every SET after the first is a no-op NX on one
    key). NATS with 8 synchronous publishers.
  * pipelined (only when asked for: --only pipelined): the single-ID requests of
    `single`, but 16 in flight on each connection: HTTP/1.1 pipelining
    (benches/peers/single.lua with DEPTH=16) against Oncely and `ceiling`,
    `redis-benchmark -P 16` against Redis.
  * single-1-worker (only when asked for): `single` with Oncely and `ceiling` on one
    worker thread (`--worker-threads 1`), as suits a server sharing two cores with
    its load generator (Redis runs as in `single`: one thread serves its clients).
  * resp-p1: over RESP, `redis-benchmark -r 1000000000 -n N -c 8 --threads 1 -P 1
    SET s:__rand_int__ 1 NX PX 3600000` against Redis, Oncely's RESP face (`oncelyd
    serve --resp-listen`, SET marking in the peers namespace) on one worker thread and
    on the default workers, and `resp_ceiling` (benches/src/bin/resp_ceiling.rs): the
    daemon's RESP parser and runtime answering +OK without the tracker. The same N for
    every server, sized from Redis's calibration; 3 alternating rounds, a fresh server
    for each run, the median reported, beside Redis's (DESIGN.md, "Targets": RESP).
  * resp-p16 (only when named): the same at -P 16.
  * resp-madd (only when named): `BF.MADD peers` with 1,000 fresh IDs per call, 4
    connections, -P 1, against Oncely's RESP face only (both thread settings), in
    IDs/s, beside Redis's and Oncely's batched-unique rates when that ran too.
  * client: Oncely through its typed client (benches/src/bin/client_batching.rs): 64
    tasks each marking one fresh ID per call, with the client's auto-batching off and
    on, and the batched reference: 4 tasks marking 1,000 fresh IDs per call. One
    fresh daemon per mode.

Load: `oncelyd load` for Oncely's batched workloads, wrk for single IDs,
`redis-benchmark` (Redis's own tool) for Redis and for every server over RESP, and
`nats_dedup` (benches/src/bin/nats_dedup.rs) for NATS, which has no standard tool
that publishes with Nats-Msg-Id. Each uses one thread. wrk, like redis-benchmark, times a request
from its sending, with each connection sending as soon as its last answer is in.

RAM per ID is the server's resident memory after the run minus before it (Redis also
reports INFO used_memory), divided by the IDs it stored; disk per ID is the size of its
data directory divided by the same. Oncely's resident memory includes its filters,
allocated whole for the namespace's configured capacity, and its memtable budget.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CONNECTIONS = 4
# Single-ID requests: 8 connections, as Oncely's target states it.
SINGLE_CONNECTIONS = 8
# The pipelined workload: requests in flight on each of those connections.
PIPELINE_DEPTH = 16
BATCH = 1000
# The client workload: tasks sharing one typed client.
CLIENT_TASKS = 64
CLIENT_BATCHED_TASKS = 4
# Keys of 32 characters, like Oncely's 16-byte IDs in hex. redis-benchmark replaces each
# __rand_int__ with its own 12-digit random number below -r.
REDIS_UNIQUE_KEY = "oncelyid__rand_int____rand_int__"
REDIS_DUP_KEY = "oncelyidoncelyidoncely__rand_int__"
# Single-ID requests: the command of Oncely's single-ID target.
REDIS_SINGLE_KEY = "k:__rand_int__"
REDIS_TTL_MS = "3600000"
# The Oncely namespace: an exact table for every ID of a run (no Bloom-only answers),
# like the peers, which keep every key exactly.
ONCELY_NAMESPACE = {
    "generations": 4,
    "exact_generations": 4,
    "generation_capacity": 10_000_000,
    "generation_span": "1h",
    "fp_rate": 0.01,
}

children: list[subprocess.Popen] = []


def stop_all() -> None:
    for p in children:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()
    children.clear()


def on_signal(signum, _frame) -> None:
    stop_all()
    sys.exit(128 + signum)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd: list[str], log: Path) -> subprocess.Popen:
    out = open(log, "wb")
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    children.append(p)
    return p


def stop(p: subprocess.Popen) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    if p in children:
        children.remove(p)


def wait_port(p: subprocess.Popen, port: int, log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise RuntimeError(f"server exited with {p.returncode}; see {log}:\n{log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {port} within {timeout} s; see {log}")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run(cmd: list[str], timeout: float) -> str:
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    children.append(p)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise RuntimeError(f"{cmd[0]} ran over {timeout} s and was killed")
    finally:
        if p in children:
            children.remove(p)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{err[-2000:]}")
    return out


@dataclass
class Result:
    peer: str
    workload: str
    ids: int
    ids_per_sec: float
    p50_us: float
    p99_us: float | None
    stored: int
    duplicates_expected: int
    duplicates_answered: int
    ram_bytes: int | None
    disk_bytes: int | None
    extra: dict = field(default_factory=dict)

    @property
    def ram_per_id(self) -> float:
        return self.ram_bytes / self.stored if self.stored and self.ram_bytes is not None else math.nan

    @property
    def disk_per_id(self) -> float:
        return self.disk_bytes / self.stored if self.stored and self.disk_bytes is not None else math.nan


# --- Oncely -------------------------------------------------------------------------


def worker_args(workload: str) -> list[str]:
    """The HTTP servers' thread flags for a workload."""
    return ["--worker-threads", "1"] if workload == "single-1-worker" else []


def start_oncely(args, tmp: Path, extra: tuple[str, ...] | list[str] = ()
                 ) -> tuple[subprocess.Popen, str, Path]:
    """A fresh oncelyd with the peers namespace; its process, URL and data directory."""
    port = free_port()
    data = tmp / "oncely-data"
    log = tmp / "oncely.log"
    # No drain delay: nothing balances load here, and each stop would wait for it.
    server = start([args.oncelyd, "serve", "--listen", f"127.0.0.1:{port}",
                    "--data-dir", str(data), "--drain-delay", "0s", *extra], log)
    try:
        wait_port(server, port, log)
        url = f"http://127.0.0.1:{port}"
        req = urllib.request.Request(f"{url}/v1/namespaces/peers", method="PUT",
                                     data=json.dumps(ONCELY_NAMESPACE).encode(),
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=10).read()
    except BaseException:
        stop(server)
        raise
    return server, url, data


def oncely_stored(url: str) -> int:
    """New IDs the peers namespace holds, over its live generations."""
    with urllib.request.urlopen(f"{url}/v1/namespaces/peers", timeout=10) as r:
        view = json.loads(r.read())
    return sum(g["ids"] for g in view["generations"])


def depth(workload: str) -> int:
    """Requests in flight on each connection of a single-ID workload."""
    return PIPELINE_DEPTH if workload == "pipelined" else 1


def wrk_single(args, url: str, run_number: int, workload: str) -> dict:
    """wrk posting one fresh ID per request to url for --duration, `depth(workload)`
    requests in flight per connection; its ONCELY_WRK line."""
    env_run = os.environ.copy()
    env_run["ONCELY_WRK_RUN"] = str(run_number)
    env_run["DEPTH"] = str(depth(workload))
    p = subprocess.run(["wrk", "-t1", f"-c{SINGLE_CONNECTIONS}", f"-d{args.duration}s",
                        "--timeout", "10s", "-s", str(args.wrk_script), url],
                       capture_output=True, text=True, env=env_run,
                       timeout=args.duration + 60)
    if p.returncode != 0:
        raise RuntimeError(f"wrk failed ({p.returncode}):\n{p.stderr[-2000:]}")
    for line in p.stdout.splitlines():
        if line.startswith("ONCELY_WRK "):
            r = json.loads(line.removeprefix("ONCELY_WRK "))
            if any(r["errors"].values()):
                raise RuntimeError(f"wrk saw errors: {r['errors']}\n{p.stdout[-2000:]}")
            if depth(workload) > 1:
                # Pipelined, wrk times only the last answer of each group while counting
                # every answer, and its high percentiles come out as 0: none is quoted.
                r["p99_us"] = None
            return r
    raise RuntimeError(f"no ONCELY_WRK line from wrk:\n{p.stdout[-2000:]}")


def oncely_single(args, workload: str, tmp: Path) -> Result:
    server, url, data = start_oncely(args, tmp, worker_args(workload))
    try:
        before = rss_bytes(server.pid)
        r = wrk_single(args, f"{url}/v1/namespaces/peers/check-and-mark", 1, workload)
        after = rss_bytes(server.pid)
        stored = oncely_stored(url)
        # Every answered request marked its fresh ID; requests still in flight when wrk
        # stopped may have marked theirs without being counted.
        in_flight = SINGLE_CONNECTIONS * depth(workload)
        if not r["requests"] <= stored <= r["requests"] + in_flight:
            raise RuntimeError(f"oncely {workload}: {stored} IDs stored for {r['requests']} requests")
        stop(server)
        snapshots = dir_bytes(data / "snapshots")
        rate = r["requests"] / (r["duration_us"] / 1e6)
        return Result("Oncely (wrk)", workload, r["requests"], rate, r["p50_us"], r["p99_us"],
                      stored, 0, 0, after - before, dir_bytes(data) - snapshots,
                      {"filter_snapshot_bytes": snapshots, "wrk": r})
    finally:
        stop(server)


def ceiling(args, workload: str, tmp: Path) -> list[Result]:
    if workload not in SINGLE_WORKLOADS:
        return []
    port = free_port()
    log = tmp / "ceiling.log"
    server = start([args.ceiling, "--listen", f"127.0.0.1:{port}", *worker_args(workload)], log)
    try:
        wait_port(server, port, log)
        r = wrk_single(args, f"http://127.0.0.1:{port}/v1/namespaces/peers/check-and-mark", 2,
                       workload)
        rate = r["requests"] / (r["duration_us"] / 1e6)
        return [Result("HTTP stack, no tracker (wrk)", workload, r["requests"], rate,
                       r["p50_us"], r["p99_us"], 0, 0, 0, None, None, {"wrk": r})]
    finally:
        stop(server)


def oncely_client(args, mode: str, tmp: Path) -> Result:
    server, url, _ = start_oncely(args, tmp)
    try:
        tasks = CLIENT_BATCHED_TASKS if mode == "batched" else CLIENT_TASKS
        out = run([args.client_batching, "--url", url, "--namespace", "peers",
                   "--tasks", str(tasks), "--duration", str(args.duration), "--mode", mode,
                   "--batch", str(BATCH), "--seed", "7"], timeout=args.duration + 120)
        r = json.loads(out)
        stored = oncely_stored(url)
        if stored != r["ids"]:
            raise RuntimeError(f"oncely client {mode}: {stored} IDs stored for {r['ids']} marked")
        name = {"off": f"{tasks} tasks x 1 ID, auto-batching off",
                "on": f"{tasks} tasks x 1 ID, auto-batching on",
                "batched": f"{tasks} tasks x {BATCH:,} IDs per call"}[mode]
        return Result(name, "client", r["ids"], r["ids_per_sec"], r["latency_us"]["p50"],
                      r["latency_us"]["p99"], stored, 0, 0, None, None,
                      {"client": r, "requests_per_call": r["requests"] / max(1, r["calls"])})
    finally:
        stop(server)


def oncely(args, workload: str, tmp: Path) -> list[Result]:
    if workload in SINGLE_WORKLOADS:
        return [oncely_single(args, workload, tmp)]
    if workload == "client":
        results = []
        for mode in ("off", "on", "batched"):
            with tempfile.TemporaryDirectory(prefix=f"oncely-peers-client-{mode}-") as t:
                results.append(oncely_client(args, mode, Path(t)))
        return results
    return [oncely_batched(args, workload, tmp)]


def oncely_batched(args, workload: str, tmp: Path) -> Result:
    server, url, data = start_oncely(args, tmp)
    try:
        before = rss_bytes(server.pid)
        batch, dup = {"batched-unique": (BATCH, 0.0), "batched-dup10": (BATCH, 0.1)}[workload]
        out = run([args.oncelyd, "load", "--url", url, "--namespace", "peers",
                   "--batch", str(batch), "--concurrency", str(CONNECTIONS),
                   "--duration", f"{args.duration}s", "--duplicates", str(dup),
                   "--seed", "7", "--json"], timeout=args.duration + 120)
        r = json.loads(out)
        after = rss_bytes(server.pid)
        stored = r["verdicts"]["new"]
        unexpected = sum(r["unexpected"].values())
        failed = r["failed_ids"]
        if unexpected or failed:
            raise RuntimeError(f"oncely: {unexpected} unexpected verdicts, {failed} failed IDs")
        stop(server)  # a clean shutdown flushes; the size on disk is then settled
        # Filter snapshots have the size of the namespace's configured capacity, however
        # few IDs a run stored: reported apart, not per ID.
        snapshots = dir_bytes(data / "snapshots")
        return Result("Oncely", workload, r["ids"], r["ids_per_sec"],
                      r["latency_us"]["p50"], r["latency_us"]["p99"], stored,
                      r["repeated_ids"], r["verdicts"]["duplicate"], after - before,
                      dir_bytes(data) - snapshots, {"filter_snapshot_bytes": snapshots})
    finally:
        stop(server)


# --- Redis --------------------------------------------------------------------------


def redis_cmd(port: int, *words: str) -> str:
    """One command over RESP; answers an integer, a simple or a bulk string."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        payload = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
        s.sendall(payload.encode())
        data = b""
        while True:
            chunk = s.recv(1 << 16)
            if not chunk:
                raise RuntimeError(f"redis closed the connection during {words[0]}")
            data += chunk
            head, sep, rest = data.partition(b"\r\n")
            if not sep:
                continue
            if not head.startswith(b"$"):
                break
            length = int(head[1:])
            if length < 0 or len(rest) >= length + 2:
                break
    text = data.decode()
    if text.startswith("-"):
        raise RuntimeError(f"redis: {text.strip()}")
    if text.startswith(":") or text.startswith("+"):
        return text[1:].strip()
    return text.split("\r\n", 1)[1][:-2]


def redis_info(port: int, field_name: str) -> int:
    for line in redis_cmd(port, "INFO", "memory").splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split(":", 1)[1])
    raise RuntimeError(f"redis INFO has no {field_name}")


def keyspace_for_repeats(n: int, fraction: float) -> int:
    """The -r keyspace for which n uniform draws repeat about `fraction` of the time."""
    def repeats(r: float) -> float:
        return 1 - (r / n) * (1 - math.exp(-n / r))
    lo, hi = 1.0, n * 1e6
    for _ in range(200):
        mid = math.sqrt(lo * hi)
        if repeats(mid) > fraction:
            lo = mid
        else:
            hi = mid
    return int(round(lo))


def redis_benchmark(port: int, n: int, pipeline: int, key: str, keyspace: int,
                    timeout: float, connections: int = CONNECTIONS) -> dict:
    out = run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(connections),
               "-P", str(pipeline), "-n", str(n), "-r", str(keyspace), "--csv", "-q",
               "SET", key, "1", "NX", "PX", REDIS_TTL_MS], timeout=timeout)
    lines = [line for line in out.splitlines() if line.strip()]
    header = [h.strip('"') for h in lines[0].split(",")]
    values = [v.strip('"') for v in lines[-1].split(",")]
    return dict(zip(header, values))


def start_redis(port: int, data: Path, log: Path) -> subprocess.Popen:
    data.mkdir(parents=True)
    server = start(["redis-server", "--bind", "127.0.0.1", "--port", str(port),
                    "--dir", str(data), "--appendonly", "yes", "--appendfsync", "everysec",
                    "--save", "", "--protected-mode", "no", "--daemonize", "no"], log)
    wait_port(server, port, log)
    return server


def redis_calibrate(pipeline: int, key: str, connections: int, tmp: Path) -> float:
    tmp.mkdir()
    port = free_port()
    server = start_redis(port, tmp / "data", tmp / "redis.log")
    try:
        probe = redis_benchmark(port, 20_000 if pipeline == 1 else 400_000, pipeline,
                                key, 2_000_000_000, timeout=120, connections=connections)
        return float(probe["rps"])
    finally:
        stop(server)


def redis(args, workload: str, tmp: Path) -> list[Result]:
    if workload == "client":
        return []
    pipeline, dup = {"batched-unique": (BATCH, 0.0), "batched-dup10": (BATCH, 0.1),
                     "single": (1, 0.0), "single-1-worker": (1, 0.0),
                     "pipelined": (PIPELINE_DEPTH, 0.0)}[workload]
    single = workload in SINGLE_WORKLOADS
    connections = SINGLE_CONNECTIONS if single else CONNECTIONS
    unique_key = REDIS_SINGLE_KEY if single else REDIS_UNIQUE_KEY
    rate = args.redis_calibration.get(pipeline)
    if rate is None:
        # redis-benchmark counts requests, not time: size the run from a short
        # calibration, on a server of its own, so that it lasts about --duration.
        rate = redis_calibrate(pipeline, unique_key, connections, tmp / "calibration")
        args.redis_calibration[pipeline] = rate
    port, data, log = free_port(), tmp / "redis-data", tmp / "redis.log"
    server = start_redis(port, data, log)
    try:
        n = max(10_000, int(rate * args.duration))
        if dup:
            key, keyspace = REDIS_DUP_KEY, keyspace_for_repeats(n, dup)
        else:
            key, keyspace = unique_key, 2_000_000_000
        time.sleep(0.2)
        before = redis_info(port, "used_memory")
        rss_before = rss_bytes(server.pid)
        r = redis_benchmark(port, n, pipeline, key, keyspace, timeout=args.duration * 10 + 120,
                            connections=connections)
        stored = int(redis_cmd(port, "DBSIZE"))
        used = redis_info(port, "used_memory") - before
        rss = rss_bytes(server.pid) - rss_before
        # AOF everysec: give the last second's writes to the file before measuring it.
        time.sleep(1.5)
        disk = dir_bytes(data)
        # redis-benchmark sends whole pipelines, so up to CONNECTIONS x pipeline more than
        # n requests: the repeats answered nil are about n - DBSIZE, and none when unique.
        repeats = max(0, n - stored) if dup else 0
        name = f"Redis (-P {pipeline})" if single else "Redis"
        return [Result(name, workload, n, float(r["rps"]), float(r["p50_latency_ms"]) * 1000,
                       float(r["p99_latency_ms"]) * 1000, stored, repeats, repeats,
                       rss, disk, {"used_memory_per_key": used / stored if stored else None,
                                   "keyspace": keyspace, "connections": connections})]
    finally:
        stop(server)


# --- NATS ---------------------------------------------------------------------------


def nats(args, workload: str, tmp: Path) -> list[Result]:
    if workload == "client":
        return []
    inflight, dup = {"batched-unique": (BATCH, 0.0), "batched-dup10": (BATCH, 0.1),
                     "single": (1, 0.0)}[workload]
    connections = SINGLE_CONNECTIONS if workload == "single" else CONNECTIONS
    port = free_port()
    data = tmp / "nats-data"
    log = tmp / "nats.log"
    server = start(["nats-server", "-a", "127.0.0.1", "-p", str(port), "-js",
                    "-sd", str(data)], log)
    try:
        wait_port(server, port, log)
        time.sleep(0.3)  # JetStream finishes starting after the port opens
        before = rss_bytes(server.pid)
        out = run([args.nats_dedup, "--url", f"nats://127.0.0.1:{port}",
                   "--concurrency", str(connections), "--inflight", str(inflight),
                   "--duration", f"{args.duration}s", "--duplicates", str(dup), "--seed", "7"],
                  timeout=args.duration + 180)
        r = json.loads(out)
        after = rss_bytes(server.pid)
        if r["errors"] or r["unexpected_fresh_duplicate"] or r["unexpected_repeat_new"]:
            raise RuntimeError(f"nats: errors or unexpected flags: {r}")
        stop(server)
        return [Result("NATS JetStream", workload, r["ids"], r["ids_per_sec"],
                       r["latency_us"]["p50"], r["latency_us"]["p99"], r["acks_new"],
                       r["repeated_ids"], r["acks_duplicate"], after - before, dir_bytes(data),
                       {"server_version": r["server_version"]})]
    finally:
        stop(server)


# --- RESP ---------------------------------------------------------------------------

# The RESP workloads (DESIGN.md, "Targets": RESP): the same redis-benchmark command
# against every server, in alternating rounds, a fresh server for each run.
RESP_ROUNDS = 3
RESP_CONNECTIONS = 8
RESP_MADD_CONNECTIONS = 4
RESP_SET_KEY = "s:__rand_int__"
RESP_SET_KEYSPACE = 1_000_000_000
# BF.MADD: BATCH items per call, each with its own two random numbers (redis-benchmark
# replaces every __rand_int__ on its own), so no two IDs of a run repeat in practice.
RESP_MADD_ITEM = REDIS_UNIQUE_KEY
RESP_MADD_KEYSPACE = 2_000_000_000
# Requests of the short run that sizes BF.MADD runs (no Redis to calibrate against).
RESP_MADD_PROBE = 300


def resp_servers(workload: str, peers: list[str]) -> list[tuple[str, str]]:
    """The servers a RESP workload drives, in the order of each round: (key, label)."""
    default_workers = len(os.sched_getaffinity(0))
    servers = []
    if "redis" in peers and workload != "resp-madd":
        servers.append(("redis", "Redis (AOF everysec)"))
    if "oncely" in peers:
        servers += [("oncely-w1", "Oncely, --worker-threads 1"),
                    ("oncely", f"Oncely, {default_workers} workers (the default)")]
    if "ceiling" in peers and workload != "resp-madd":
        servers.append(("ceiling", "RESP stack, no tracker (resp_ceiling)"))
    return servers


def start_resp(args, key: str, tmp: Path):
    """A fresh server speaking RESP: its process, its RESP port, and a function
    counting the IDs it stored (None for resp_ceiling, which keeps none)."""
    port = free_port()
    log = tmp / f"{key}.log"
    if key == "redis":
        server = start_redis(port, tmp / "redis-data", log)
        return server, port, lambda: int(redis_cmd(port, "DBSIZE"))
    if key == "ceiling":
        server = start([args.resp_ceiling, "--listen", f"127.0.0.1:{port}"], log)
        try:
            wait_port(server, port, log)
        except BaseException:
            stop(server)
            raise
        return server, port, None
    # Oncely: RESP's SET marks in the peers namespace (exact for every ID of a run, as
    # Redis keeps its keys), which must exist at start-up: declared in a configuration
    # file. BF.MADD names it.
    config = tmp / "oncely.toml"
    config.write_text(namespace_toml("peers", ONCELY_NAMESPACE))
    workers = ["--worker-threads", "1"] if key == "oncely-w1" else []
    server, url, _ = start_oncely(args, tmp, ["--config", str(config),
                                              "--resp-listen", f"127.0.0.1:{port}",
                                              "--resp-namespace", "peers", *workers])
    try:
        wait_port(server, port, tmp / "oncely.log")
    except BaseException:
        stop(server)
        raise
    return server, port, lambda: oncely_stored(url)


def resp_command(workload: str) -> tuple[int, int, int, list[str]]:
    """A RESP workload's pipeline depth, connections, -r keyspace and command."""
    if workload == "resp-madd":
        return (1, RESP_MADD_CONNECTIONS, RESP_MADD_KEYSPACE,
                ["BF.MADD", "peers", *[RESP_MADD_ITEM] * BATCH])
    return ({"resp-p1": 1, "resp-p16": PIPELINE_DEPTH}[workload], RESP_CONNECTIONS,
            RESP_SET_KEYSPACE, ["SET", RESP_SET_KEY, "1", "NX", "PX", REDIS_TTL_MS])


def resp_benchmark(port: int, n: int, workload: str, timeout: float) -> dict:
    """redis-benchmark's CSV line for one run of a RESP workload. It exits non-zero at
    the first error reply, which then fails the run with that reply."""
    pipeline, connections, keyspace, cmd = resp_command(workload)
    out = run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-r", str(keyspace),
               "-n", str(n), "-c", str(connections), "--threads", "1", "-P", str(pipeline),
               "--csv", "-q", *cmd], timeout=timeout)
    return benchmark_csv(out)


def benchmark_csv(out: str) -> dict:
    """The last line of redis-benchmark's `--csv` output, by its header's names; an
    error when it gives no rate (benches/peers/postgres.py reads it too)."""
    lines = [line for line in out.splitlines() if line.strip()]
    header = [h.strip('"') for h in lines[0].split(",")]
    values = [v.strip('"') for v in lines[-1].split(",")]
    r = dict(zip(header, values))
    if "rps" not in r or float(r["rps"]) <= 0:
        raise RuntimeError(f"redis-benchmark gave no rate:\n{out[-2000:]}")
    return r


def namespace_toml(name: str, config: dict) -> str:
    """A configuration file declaring namespace `name` (RESP's `SET` namespace must
    exist at start-up)."""
    return f"[namespaces.{name}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items())


def resp_requests(args, workload: str, tmp: Path) -> int:
    """Requests per run, the same for every server, sized so that a run of Redis (of
    Oncely, for BF.MADD) lasts about --duration."""
    if workload == "resp-madd":
        with tempfile.TemporaryDirectory(prefix="oncely-peers-resp-probe-", dir=tmp) as t:
            server, port, _ = start_resp(args, "oncely", Path(t))
            try:
                rate = float(resp_benchmark(port, RESP_MADD_PROBE, workload, 120)["rps"])
            finally:
                stop(server)
        return max(RESP_MADD_PROBE, int(rate * args.duration))
    pipeline = resp_command(workload)[0]
    rate = args.redis_calibration.get(pipeline)
    if rate is None:
        # The calibration of `single` (or `pipelined`): the same connections and depth.
        rate = redis_calibrate(pipeline, RESP_SET_KEY, RESP_CONNECTIONS, tmp / "calibration")
        args.redis_calibration[pipeline] = rate
    return max(10_000, int(rate * args.duration))


def distinct(n: int, keyspace: int) -> float:
    """The expected number of distinct values among n uniform draws from keyspace."""
    return keyspace * -math.expm1(-n / keyspace)


def resp(args, workload: str, peers: list[str], tmp: Path) -> list[Result]:
    servers = resp_servers(workload, peers)
    if not servers:
        return []
    n = resp_requests(args, workload, tmp)
    pipeline, connections, keyspace, cmd = resp_command(workload)
    per_request = BATCH if workload == "resp-madd" else 1
    rounds: dict[str, list[dict]] = {key: [] for key, _ in servers}
    for round_number in range(1, RESP_ROUNDS + 1):
        for key, label in servers:
            print(f"peers: {workload} round {round_number}/{RESP_ROUNDS}: {label} "
                  f"({n:,} requests) ...", file=sys.stderr, flush=True)
            with tempfile.TemporaryDirectory(prefix=f"oncely-peers-{key}-", dir=tmp) as t:
                server, port, stored_ids = start_resp(args, key, Path(t))
                try:
                    r = resp_benchmark(port, n, workload, timeout=args.duration * 10 + 120)
                    stored = stored_ids() if stored_ids else None
                finally:
                    stop(server)
            if stored is not None:
                # Every request answered marked its IDs once; redis-benchmark may send up
                # to a pipeline more per connection than -n. SET's keys repeat by chance.
                ids = n * per_request
                low = ids if workload == "resp-madd" else 0.995 * distinct(n, keyspace)
                high = (n + connections * pipeline) * per_request
                if not low <= stored <= high:
                    raise RuntimeError(f"{label} / {workload}: {stored:,} IDs stored for "
                                       f"{n:,} requests (expected {low:,.0f} to {high:,})")
            rounds[key].append({"rps": float(r["rps"]),
                                "p50_us": float(r["p50_latency_ms"]) * 1000,
                                "p99_us": float(r["p99_latency_ms"]) * 1000,
                                "stored": stored})
            print(f"peers: {label} / {workload}: {float(r['rps']):,.0f} requests/s, "
                  f"p50 {r['p50_latency_ms']} ms", file=sys.stderr, flush=True)
    results = []
    for key, label in servers:
        runs = rounds[key]
        rps = statistics.median(x["rps"] for x in runs)
        stored = [x["stored"] for x in runs]
        results.append(Result(
            label, workload, n * per_request, rps * per_request,
            statistics.median(x["p50_us"] for x in runs),
            statistics.median(x["p99_us"] for x in runs),
            0 if stored[0] is None else int(statistics.median(stored)), 0, 0, None, None,
            {"server": key, "requests": n, "per_request": per_request, "pipeline": pipeline,
             "connections": connections, "command": cmd[:2], "rounds": runs}))
    return results


# --- report -------------------------------------------------------------------------


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def fmt_us(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x / 1000:.2f} ms" if x >= 1000 else f"{x:.0f} µs"


def is_oncely(r: Result) -> bool:
    return r.peer.startswith("Oncely")


def table(results: list[Result]) -> str:
    """The dedup workloads, each peer beside Oncely."""
    oncely_rate = {r.workload: r.ids_per_sec for r in results
                   if is_oncely(r) and r.workload not in RESP_WORKLOADS}
    rows = ["| workload | peer | IDs/s | Oncely ÷ peer | p50 | p99 | RAM B/ID | disk B/ID | duplicates found |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if r.workload == "client" or r.workload in RESP_WORKLOADS:
            continue
        ratio = oncely_rate.get(r.workload)
        ratio_s = "1.00x" if is_oncely(r) else (f"{ratio / r.ids_per_sec:.2f}x" if ratio else "-")
        stateless = r.ram_bytes is None
        dups = "-" if stateless else f"{r.duplicates_answered:,} / {r.duplicates_expected:,}"
        ram = "-" if stateless else f"{r.ram_per_id:.1f}"
        disk = "-" if r.disk_bytes is None else f"{r.disk_per_id:.1f}"
        rows.append(f"| {r.workload} | {r.peer} | {fmt_rate(r.ids_per_sec)} | {ratio_s} | "
                    f"{fmt_us(r.p50_us)} | {fmt_us(r.p99_us)} | {ram} | {disk} | {dups} |")
    return "\n".join(rows)


def client_table(results: list[Result]) -> str:
    """The client workload: auto-batching off and on beside the batched reference."""
    rows = [r for r in results if r.workload == "client"]
    if not rows:
        return ""
    reference = next((r.ids_per_sec for r in rows if "per call" in r.peer), None)
    out = ["| through oncely-client | IDs/s | ÷ batched | requests per call | p50 | p99 |",
           "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = f"{r.ids_per_sec / reference:.2f}x" if reference else "-"
        out.append(f"| {r.peer} | {fmt_rate(r.ids_per_sec)} | {ratio} | "
                   f"{r.extra['requests_per_call']:.3f} | {fmt_us(r.p50_us)} | "
                   f"{fmt_us(r.p99_us)} |")
    return "\n".join(out)


def resp_table(results: list[Result]) -> str:
    """The RESP workloads: each server's median beside Redis's."""
    rows = [r for r in results if r.workload in RESP_WORKLOADS]
    redis_rate = {r.workload: r.ids_per_sec for r in rows if r.extra["server"] == "redis"}
    batched = {r.peer: r for r in results if r.workload == "batched-unique"}
    redis_batched = batched.get("Redis")
    out = ["| workload | server | rate | vs Redis | p50 | p99 | each round |",
           "|---|---|---:|---:|---:|---:|---|"]

    def ratio(rate: float, base: float | None) -> str:
        return f"{rate / base:.2f}x" if base else "-"

    for r in rows:
        madd = r.workload == "resp-madd"
        unit = "IDs/s" if madd else "requests/s"
        base = (redis_batched.ids_per_sec if redis_batched else None) if madd \
            else redis_rate.get(r.workload)
        each = " / ".join(fmt_rate(x["rps"] * r.extra["per_request"]) for x in r.extra["rounds"])
        out.append(f"| {r.workload} | {r.peer} | {fmt_rate(r.ids_per_sec)} {unit} | "
                   f"{ratio(r.ids_per_sec, base)} | {fmt_us(r.p50_us)} | {fmt_us(r.p99_us)} | "
                   f"{each} |")
    if any(r.workload == "resp-madd" for r in rows):
        # The same run's batched workload, for reference: one run each, not rounds.
        for peer, label in (("Oncely", "Oncely over HTTP, batched-unique (one run)"),
                            ("Redis", "Redis, batched-unique (one run)")):
            if (r := batched.get(peer)) is not None:
                base = redis_batched.ids_per_sec if redis_batched else None
                out.append(f"| resp-madd | {label} | {fmt_rate(r.ids_per_sec)} IDs/s | "
                           f"{ratio(r.ids_per_sec, base)} | {fmt_us(r.p50_us)} | "
                           f"{fmt_us(r.p99_us)} | - |")
    return "\n".join(out)


def resp_section(args, results: list[Result], own_header: list[str]) -> str:
    """The report's RESP section; own_header is its run line when it stands alone."""
    rows = [r for r in results if r.workload in RESP_WORKLOADS]
    n = {r.workload: r.extra["requests"] for r in rows}
    text = ["## Over RESP: SET NX PX and BF.MADD beside Redis", "", *own_header]
    text += [
        f"Every server is driven by the same `redis-benchmark` command (one thread), in "
        f"{RESP_ROUNDS} alternating rounds with a fresh server for each run; reported: the "
        f"median of the rounds' rates (each round's in order under \"each round\"), p50 and "
        f"p99 the medians of theirs, and \"vs Redis\", the rate over Redis's in the same "
        f"workload. Redis with AOF `appendfsync everysec`; Oncely with durability `flush` (the "
        f"default), RESP's `SET` marking in the peers namespace (exact for every ID, as Redis "
        f"keeps its keys), on one worker thread and on the default workers (one per core: "
        f"on two cores shared with the load generator, one worker may answer unpipelined "
        f"commands faster); \"RESP stack, no tracker\" is benches/src/bin/resp_ceiling.rs, "
        f"the daemon's RESP parser and runtime answering `+OK` to every command without "
        f"the tracker: what the RESP stack alone can reach.",
        "",
    ]
    sets = [w for w in ("resp-p1", "resp-p16") if w in n]
    if sets:
        sizes = " and ".join(f"{n[w]:,} at -P {resp_command(w)[0]}" for w in sets)
        depths = "|".join(str(resp_command(w)[0]) for w in sets)
        depths = f"{{{depths}}}" if len(sets) > 1 else depths
        text += [
            f"{', '.join(sets)}: `redis-benchmark -h 127.0.0.1 -p PORT -r {RESP_SET_KEYSPACE} "
            f"-n N -c {RESP_CONNECTIONS} --threads 1 -P {depths} -q "
            f"SET {RESP_SET_KEY} 1 NX PX {REDIS_TTL_MS}`, N = {sizes} (a run of Redis "
            f"lasts about {args.duration} s). Requests/s are IDs/s; p50 and p99 are per request, "
            f"from its sending.",
            "",
        ]
    if "resp-madd" in n:
        batched = any(r.workload == "batched-unique" for r in results)
        text += [
            f"resp-madd, Oncely only: `redis-benchmark -h 127.0.0.1 -p PORT "
            f"-r {RESP_MADD_KEYSPACE} -n {n['resp-madd']} -c {RESP_MADD_CONNECTIONS} "
            f"--threads 1 -P 1 -q BF.MADD peers {RESP_MADD_ITEM} ...`, {BATCH:,} items per "
            f"call (redis-benchmark gives each __rand_int__ its own random number, so no ID "
            f"repeats: {len(RESP_MADD_ITEM)} characters, like the batched workloads' IDs), N "
            f"sized from a short run of Oncely. IDs/s; p50 and p99 per call. "
            + (f"\"vs Redis\" is over Redis's batched-unique rate in the same run (pipelines "
               f"of {BATCH:,} SET NX PX over {CONNECTIONS} connections), shown below beside "
               f"Oncely's over HTTP ({BATCH:,}-ID check-and-mark batches, `oncelyd load`)."
               if batched else
               "\"vs Redis\" would be over Redis's batched-unique rate, and Oncely's HTTP "
               "batched rate would be shown beside it, had batched-unique run."),
            "",
        ]
    return "\n".join(text) + "\n" + resp_table(results) + "\n"


RESP_HEADING = "## Over RESP:"


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{os.cpu_count()} cores ({model}), {platform.system()} {platform.release()}"


def versions(args) -> str:
    redis_v = run(["redis-server", "--version"], 30).split()[2].removeprefix("v=")
    nats_v = run(["nats-server", "--version"], 30).strip()
    oncely_v = run([args.oncelyd, "--version"], 30).strip()
    return f"{oncely_v}; Redis {redis_v}; {nats_v}"


PEERS = ("oncely", "ceiling", "redis", "nats")
WORKLOADS = ("batched-unique", "batched-dup10", "single", "resp-p1", "client")
# Run only when named (--only pipelined, --only single-1-worker, ...): not part of
# the full run's report. resp-p16 and resp-madd would take the full run, 15 s per
# workload, past ten minutes.
OPTIONAL_WORKLOADS = ("pipelined", "single-1-worker", "resp-p16", "resp-madd")
# Over RESP, against Redis, Oncely's RESP face and resp_ceiling in alternating rounds.
RESP_WORKLOADS = ("resp-p1", "resp-p16", "resp-madd")
# The peers a RESP run needs for its report to stand for all of them.
RESP_PEERS = ("oncely", "ceiling", "redis")
# One ID per request, against the HTTP servers and Redis not pipelined (or pipelined).
SINGLE_WORKLOADS = ("single", "single-1-worker", "pipelined")


def command(args) -> str:
    """The run.sh command line that reproduces this run."""
    words = ["benches/peers/run.sh", "--duration", str(args.duration)]
    if args.peers != ",".join(PEERS):
        words += ["--peers", args.peers]
    if args.workloads != ",".join(WORKLOADS):
        words += ["--only", args.workloads]
    return " ".join(words)


def workload_notes(args) -> dict[str, str]:
    """What the report says of each single-ID workload, when it ran."""
    return {
        "single": (
            f"Single IDs: one fresh ID per request, {SINGLE_CONNECTIONS} connections with "
            f"one request in flight on each. Oncely and \"HTTP stack, no tracker\" (the "
            f"daemon's axum stack, body parsing and JSON answer without the tracker: "
            f"benches/src/bin/ceiling.rs) are driven by the same command, "
            f"`wrk -t1 -c{SINGLE_CONNECTIONS} -d{args.duration}s -s benches/peers/single.lua`; "
            f"Redis by `redis-benchmark -P 1 -c {SINGLE_CONNECTIONS} -r 2000000000 "
            f"SET {REDIS_SINGLE_KEY} 1 NX PX {REDIS_TTL_MS}`; NATS by "
            f"{SINGLE_CONNECTIONS} synchronous publishers. For single IDs, IDs/s is "
            f"requests/s, and p50 and p99 are per request, from its sending."),
        "single-1-worker": (
            "single-1-worker: the single-ID requests of `single` (one fresh ID per request, "
            f"{SINGLE_CONNECTIONS} connections, the same commands), with Oncely and the HTTP "
            "stack on one worker thread (`--worker-threads 1`) instead of one per core."),
        "pipelined": (
            f"Pipelined: the single-ID requests of `single` with {PIPELINE_DEPTH} in flight on "
            f"each connection, written together before their answers are read (HTTP/1.1 "
            f"pipelining: the same wrk command with DEPTH={PIPELINE_DEPTH}; Redis "
            f"`-P {PIPELINE_DEPTH}`). wrk's p50 is per group of {PIPELINE_DEPTH}, from its "
            f"sending to its last answer, and its p99 is not quoted (wrk miscounts it when "
            f"pipelining); Redis's are per request."),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--oncelyd", required=True, help="the release oncelyd binary")
    parser.add_argument("--nats-dedup", required=True, help="the release nats_dedup binary")
    parser.add_argument("--ceiling", required=True, help="the release ceiling binary")
    parser.add_argument("--client-batching", required=True,
                        help="the release client_batching binary")
    parser.add_argument("--resp-ceiling", required=True, help="the release resp_ceiling binary")
    parser.add_argument("--wrk-script", default=str(Path(__file__).with_name("single.lua")),
                        help="wrk's script for single-ID requests")
    parser.add_argument("--duration", type=int, default=15, help="seconds per workload (default 15)")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"comma-separated subset of {','.join(PEERS)}")
    parser.add_argument("--workloads", "--only", dest="workloads", default=",".join(WORKLOADS),
                        help=f"comma-separated subset of {','.join(WORKLOADS + OPTIONAL_WORKLOADS)} "
                             "(--only single: a quick run of single-ID requests; "
                             f"{', '.join(OPTIONAL_WORKLOADS)} run only when named)")
    parser.add_argument("--out", help="also write the Markdown report to this file")
    parser.add_argument("--json", help="also write the raw results to this file")
    args = parser.parse_args()
    if args.duration < 1 or args.duration > 600:
        parser.error("--duration must be 1 to 600 seconds")
    drivers = {"oncely": oncely, "ceiling": ceiling, "redis": redis, "nats": nats}
    peers = args.peers.split(",")
    workloads = args.workloads.split(",")
    for p in peers:
        if p not in drivers:
            parser.error(f"unknown peer {p!r}")
    for w in workloads:
        if w not in WORKLOADS + OPTIONAL_WORKLOADS:
            parser.error(f"unknown workload {w!r}")
    args.redis_calibration = {}

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    started = datetime.datetime.now(datetime.timezone.utc)
    results: list[Result] = []
    try:
        for w in workloads:
            if w in RESP_WORKLOADS:
                # One workload over every server at once: rounds alternate between them.
                with tempfile.TemporaryDirectory(prefix=f"oncely-peers-{w}-") as tmp:
                    results.extend(resp(args, w, peers, Path(tmp)))
                continue
            for p in peers:
                # The ceiling answers single IDs only; the client workload is Oncely's;
                # NATS's publishers here await each ack, so they have no pipelined form,
                # and it has no worker threads to set.
                if ((p == "ceiling" and w not in SINGLE_WORKLOADS)
                        or (p in ("redis", "nats") and w == "client")
                        or (p == "nats" and w in OPTIONAL_WORKLOADS)):
                    continue
                print(f"peers: {p} / {w} ...", file=sys.stderr, flush=True)
                with tempfile.TemporaryDirectory(prefix=f"oncely-peers-{p}-") as tmp:
                    done = drivers[p](args, w, Path(tmp))
                for r in done:
                    print(f"peers: {r.peer} / {w}: {fmt_rate(r.ids_per_sec)} IDs/s",
                          file=sys.stderr, flush=True)
                results.extend(done)
        run_lines = [f"Run {started:%Y-%m-%d %H:%M} UTC on {machine()}.",
                     f"Versions: {versions(args)}."]
        main_results = [r for r in results if r.workload not in RESP_WORKLOADS]
        resp_results = [r for r in results if r.workload in RESP_WORKLOADS]
        header = [
            "# Oncely, Redis and NATS JetStream side by side",
            "",
            *run_lines,
            f"Command: `{command(args)}` ({CONNECTIONS} connections and batches of {BATCH} "
            f"for the batched workloads, {SINGLE_CONNECTIONS} connections for single IDs; one "
            f"load-generator thread each).",
            "",
            "Durability: Oncely `flush`, Redis AOF `appendfsync everysec`, NATS JetStream file "
            "storage (see benches/peers/peers.py). RAM per ID is the server's RSS growth over "
            "the run per stored ID; disk per ID is its data directory per stored ID. "
            "\"Oncely ÷ peer\" is Oncely's IDs/s over the peer's in the same workload. "
            "Duplicates found: repeats answered as such / repeats sent (Redis: requests minus "
            "keys stored, as redis-benchmark does not count nil replies).",
            "",
        ]
        snaps = [r.extra["filter_snapshot_bytes"] for r in results if "filter_snapshot_bytes" in r.extra]
        if snaps:
            header += [
                f"Oncely's RAM per ID includes its filters, allocated whole for the namespace's "
                f"capacity ({ONCELY_NAMESPACE['generations']} x "
                f"{ONCELY_NAMESPACE['generation_capacity']:,} IDs at fp "
                f"{ONCELY_NAMESPACE['fp_rate']}), and its memtable budget, so it falls as a run "
                f"stores more IDs. Its disk per ID leaves out the filter snapshots, "
                f"{max(snaps) / 2**20:.0f} MiB whatever the IDs stored, and is taken at a "
                f"clean stop right after the run, before compaction has merged the level-0 "
                f"files (`cargo bench -p oncely-benches --bench tracker` reports it after).",
                "",
            ]
        for workload, note in workload_notes(args).items():
            if any(r.workload == workload for r in results):
                header += [note, ""]
        report = ""
        if main_results or not resp_results:
            report = "\n".join(header) + "\n" + table(results) + "\n"
        if any(r.workload == "client" for r in results):
            report += "\n" + "\n".join([
                f"Through the typed client (benches/src/bin/client_batching.rs, one thread): "
                f"{CLIENT_TASKS} tasks sharing one `oncely-client` `Client`, each marking one "
                f"fresh ID per `check_and_mark` call, with auto-batching off and on (its "
                f"defaults), and the batched reference: {CLIENT_BATCHED_TASKS} tasks marking "
                f"{BATCH:,} fresh IDs per call. A fresh daemon for each; p50 and p99 are per "
                f"call. \"÷ batched\" is IDs/s over the reference's.",
                "",
                client_table(results),
            ]) + "\n"
        section = ""
        if resp_results:
            # Standing alone, the section says which run it comes from.
            own = [] if report else [*run_lines, f"Command: `{command(args)}`.", ""]
            section = resp_section(args, results, own)
            report = f"{report}\n{section}" if report else section
        print(report)
        # Only a whole run replaces the report: a quick look at one workload must not
        # overwrite the figures of the others. A run of every RESP workload against
        # every RESP peer, and nothing else, replaces the report's RESP section alone.
        complete = set(peers) == set(PEERS) and set(WORKLOADS) <= set(workloads)
        resp_complete = (not main_results and set(RESP_PEERS) <= set(peers)
                         and set(workloads) == set(RESP_WORKLOADS))
        if args.out and complete:
            Path(args.out).write_text(report)
        elif args.out and resp_complete:
            out = Path(args.out)
            kept = out.read_text() if out.exists() else ""
            if (at := kept.find(f"\n{RESP_HEADING}")) >= 0:
                kept = kept[:at]
            out.write_text(f"{kept.rstrip()}\n\n{section}" if kept.strip() else section)
            print(f"peers: the RESP section of {args.out} replaced", file=sys.stderr)
        elif args.out:
            print(f"peers: a partial run; {args.out} is left as it was", file=sys.stderr)
        if args.json:
            Path(args.json).write_text(json.dumps([r.__dict__ | {
                "ram_per_id": r.ram_per_id, "disk_per_id": r.disk_per_id} for r in results],
                indent=2))
    finally:
        stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
