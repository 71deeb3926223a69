#!/usr/bin/env python3
"""Oncely's PostgreSQL store against raw inserts into PostgreSQL, one after the other.

Started by benches/peers/postgres.sh, which installs PostgreSQL and builds the
binaries. One throwaway PostgreSQL server serves the whole run: initdb in a temporary
directory, 127.0.0.1 on a free port, fsync on and synchronous_commit on (a commit is
acknowledged once its WAL is fsynced, concurrent commits sharing the fsync), run as the
postgres user when this runs as root. Each (side, workload) pair gets a database of its
own on it, so every run starts from empty tables.

Sides:
  * Oncely: `oncelyd serve --store postgres://.../db` (release build, default pool of
    16 connections), one namespace with every generation exact (as benches/peers uses),
    driven by `oncelyd load`: each request is one PostgreSQL transaction that marks
    its IDs in the namespace's open generation.
  * raw: `pg_insert` (benches/src/bin/pg_insert.rs): the same IDs in the same batches
    over the same number of connections, each batch one
    `INSERT INTO raw_ids SELECT unnest($1) ON CONFLICT DO NOTHING` into
    `raw_ids (id bytea PRIMARY KEY)`, prepared once per connection: PostgreSQL's own
    cost for what every mark must at least do.

  * Oncely over RESP: the same daemon with `--resp-listen`, its `SET` marking in that
    namespace, driven by `redis-benchmark -c 8 --threads 1 -P DEPTH SET
    s:__rand_int__ 1 NX PX 3600000` (random 12-digit keys, so a handful repeat), the
    number of requests sized from a short probe so that the run lasts --duration.

Workloads, each for --duration seconds, unique IDs (32 hex characters):
  * batched: 1,000 IDs per request or statement, 4 connections.
  * single: 1 ID per request or statement, 8 connections; over RESP, -P 1.
  * pipelined: 16 IDs in flight per connection, 8 connections: over RESP, -P 16 (the
    commands a connection's read holds go to the tracker as one call); raw, 16 IDs
    per statement.

RAM per ID is the daemon's resident memory after the run minus before it, divided by
the IDs stored (PostgreSQL's own memory is its shared_buffers, fixed by its
configuration); disk per ID is the database's growth (pg_database_size) divided by
the same.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# Beside this file: redis-benchmark's output and the namespace's file, read and
# written as benches/peers/run.sh does.
from peers import benchmark_csv, namespace_toml, oncely_stored

# The Oncely namespace of benches/peers: an exact table for every ID of a run.
NAMESPACE = {
    "generations": 4,
    "exact_generations": 4,
    "generation_capacity": 10_000_000,
    "generation_span": "1h",
    "fp_rate": 0.01,
}
WORKLOADS = {"batched": (1000, 4), "single": (1, 8), "pipelined": (16, 8)}
# Which Oncely faces drive each workload: HTTP through `oncelyd load` (it sends one
# request at a time per connection), RESP through redis-benchmark at the workload's
# depth.
FACES = {"batched": ("http",), "single": ("http", "resp"), "pipelined": ("resp",)}
# Requests of the short RESP probe that sizes a run, per request in flight.
RESP_PROBE_PER_SLOT = 250

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


def bindir(given: str | None) -> Path:
    if given:
        return Path(given)
    versions = sorted(
        (int(p.name), p / "bin")
        for p in Path("/usr/lib/postgresql").glob("*")
        if p.name.isdigit() and (p / "bin" / "initdb").exists()
    )
    if not versions:
        raise RuntimeError("no PostgreSQL under /usr/lib/postgresql/<version>/bin (--bindir)")
    return versions[-1][1]


def as_postgres():
    """preexec_fn dropping to the postgres user when root (initdb refuses root)."""
    if os.getuid() != 0:
        return None
    pw = pwd.getpwnam("postgres")

    def drop():
        os.setgid(pw.pw_gid)
        os.setuid(pw.pw_uid)

    return drop


def start(cmd: list[str], log: Path, **kw) -> subprocess.Popen:
    out = open(log, "wb")
    p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **kw)
    children.append(p)
    return p


def stop(p: subprocess.Popen, sig=signal.SIGTERM) -> None:
    if p.poll() is None:
        os.killpg(p.pid, sig)
        try:
            p.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    if p in children:
        children.remove(p)


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


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Postgres:
    """A throwaway server for the whole run."""

    def __init__(self, bins: Path, tmp: Path):
        self.bins = bins
        self.dir = tmp / "pg"
        self.dir.mkdir()
        data, sockets = self.dir / "data", self.dir / "sockets"
        data.mkdir()
        sockets.mkdir()
        if os.getuid() == 0:
            pw = pwd.getpwnam("postgres")
            for d in (tmp, self.dir, data, sockets):
                os.chown(d, pw.pw_uid, pw.pw_gid)
        subprocess.run([str(bins / "initdb"), "-D", str(data), "-U", "postgres", "-A", "trust",
                        "-E", "UTF8", "--no-instructions"], check=True,
                       stdout=subprocess.DEVNULL, preexec_fn=as_postgres())
        self.port = free_port()
        self.log = self.dir / "server.log"
        self.server = start([str(bins / "postgres"), "-D", str(data), "-p", str(self.port),
                             "-c", "listen_addresses=127.0.0.1",
                             "-c", f"unix_socket_directories={sockets}",
                             "-c", "fsync=on", "-c", "synchronous_commit=on",
                             "-c", "max_connections=100"],
                            self.log, preexec_fn=as_postgres())
        deadline = time.monotonic() + 60
        while subprocess.run([str(bins / "pg_isready"), "-h", "127.0.0.1", "-p",
                              str(self.port), "-q"]).returncode != 0:
            if time.monotonic() > deadline or self.server.poll() is not None:
                raise RuntimeError(f"PostgreSQL did not start; see {self.log}")
            time.sleep(0.1)

    def url(self, db: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{db}"

    def psql(self, db: str, sql: str) -> str:
        return run([str(self.bins / "psql"), "-X", "-q", "-t", "-A", "-d", self.url(db), "-c", sql],
                   timeout=120).strip()

    def create(self, db: str) -> None:
        self.psql("postgres", f"CREATE DATABASE {db}")

    def size(self, db: str) -> int:
        return int(self.psql(db, "SELECT pg_database_size(current_database())"))

    def version(self) -> str:
        return self.psql("postgres", "SHOW server_version")

    def close(self) -> None:
        stop(self.server, signal.SIGQUIT)


@dataclass
class Result:
    side: str
    workload: str
    ids: int
    ids_per_sec: float
    p50_us: float
    p99_us: float
    stored: int
    ram_bytes: int | None
    disk_bytes: int

    def per_id(self, n: int | None) -> str:
        if n is None or not self.stored:
            return "—"
        return f"{n / self.stored:.1f}"


def start_oncely(args, pg: Postgres, db: str, log: Path, extra: list[str]
                 ) -> tuple[subprocess.Popen, str]:
    """`oncelyd serve` on database `db` (created here), once ready; its process and URL."""
    pg.create(db)
    port = free_port()
    server = start([args.oncelyd, "serve", "--listen", f"127.0.0.1:{port}",
                    "--store", pg.url(db), "--drain-delay", "0s", *extra], log)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/readyz", timeout=1).read()
            return server, url
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                stop(server)
                raise RuntimeError(f"oncelyd did not start; see {log}:\n{log.read_text()[-2000:]}")
            time.sleep(0.1)


def oncely(args, pg: Postgres, workload: str, tmp: Path) -> Result:
    batch, conns = WORKLOADS[workload]
    db = f"oncely_{workload}"
    server, url = start_oncely(args, pg, db, tmp / f"oncely-{workload}.log", [])
    try:
        req = urllib.request.Request(f"{url}/v1/namespaces/peers", method="PUT",
                                     data=json.dumps(NAMESPACE).encode(),
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=30).read()
        before_rss, before_disk = rss_bytes(server.pid), pg.size(db)
        out = run([args.oncelyd, "load", "--url", url, "--namespace", "peers",
                   "--batch", str(batch), "--concurrency", str(conns),
                   "--duration", f"{args.duration}s", "--duplicates", "0",
                   "--seed", "7", "--json"], timeout=args.duration + 120)
        r = json.loads(out)
        after_rss = rss_bytes(server.pid)
        failed = r["failed_ids"]
        unexpected = sum(r["unexpected"].values()) if isinstance(r["unexpected"], dict) else 0
        if failed or unexpected:
            raise RuntimeError(f"oncely: {failed} failed IDs, {unexpected} unexpected verdicts")
        stored = r["verdicts"]["new"]
        return Result("Oncely on PostgreSQL over HTTP", workload, r["ids"], r["ids_per_sec"],
                      r["latency_us"]["p50"], r["latency_us"]["p99"], stored,
                      after_rss - before_rss, pg.size(db) - before_disk)
    finally:
        stop(server)


def redis_benchmark(port: int, n: int, depth: int, conns: int, timeout: float) -> dict:
    """redis-benchmark's CSV line for `n` SET NX PX requests. It exits non-zero at the
    first error reply, which then fails the run with that reply."""
    out = run(["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-r", "1000000000",
               "-n", str(n), "-c", str(conns), "--threads", "1", "-P", str(depth), "--csv",
               "-q", "SET", "s:__rand_int__", "1", "NX", "PX", "3600000"], timeout=timeout)
    return benchmark_csv(out)


def oncely_resp(args, pg: Postgres, workload: str, tmp: Path) -> Result:
    depth, conns = WORKLOADS[workload]
    db = f"oncely_resp_{workload}"
    # RESP's SET marks in a namespace that must exist at start-up: declared in a file.
    config = tmp / f"oncely-resp-{workload}.toml"
    config.write_text(namespace_toml("peers", NAMESPACE))
    resp_port = free_port()
    server, url = start_oncely(args, pg, db, tmp / f"oncely-resp-{workload}.log",
                               ["--config", str(config), "--resp-listen",
                                f"127.0.0.1:{resp_port}", "--resp-namespace", "peers"])
    try:
        probe = RESP_PROBE_PER_SLOT * depth * conns
        rate = float(redis_benchmark(resp_port, probe, depth, conns, 120)["rps"])
        n = max(probe, int(rate * args.duration))
        before_rss, before_disk, before = rss_bytes(server.pid), pg.size(db), oncely_stored(url)
        r = redis_benchmark(resp_port, n, depth, conns, args.duration * 4 + 120)
        after_rss = rss_bytes(server.pid)
        return Result(f"Oncely on PostgreSQL over RESP (-P {depth})", workload, n,
                      float(r["rps"]), float(r["p50_latency_ms"]) * 1000,
                      float(r["p99_latency_ms"]) * 1000, oncely_stored(url) - before,
                      after_rss - before_rss, pg.size(db) - before_disk)
    finally:
        stop(server)


def raw(args, pg: Postgres, workload: str) -> Result:
    batch, conns = WORKLOADS[workload]
    db = f"raw_{workload}"
    pg.create(db)
    before = pg.size(db)
    out = run([args.pg_insert, "--url", pg.url(db), "--batch", str(batch),
               "--concurrency", str(conns), "--duration", str(args.duration), "--seed", "7"],
              timeout=args.duration + 120)
    r = json.loads(out)
    if r["inserted"] != r["ids"]:
        raise RuntimeError(f"raw: {r['ids']} unique IDs sent, {r['inserted']} inserted")
    return Result("raw INSERT ... ON CONFLICT DO NOTHING", workload, r["ids"], r["ids_per_sec"],
                  r["latency_us"]["p50"], r["latency_us"]["p99"], r["inserted"], None,
                  pg.size(db) - before)


def fmt_us(us: float) -> str:
    return f"{us / 1000:.2f} ms" if us >= 1000 else f"{us:.0f} µs"


def table(results: list[Result], args, pg_version: str) -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    version = run([args.oncelyd, "--version"], timeout=10).strip()
    lines = [
        "# Oncely's PostgreSQL store beside raw PostgreSQL inserts",
        "",
        f"Run {now} on {os.cpu_count()} cores ({cpu}), Linux {platform.release()}.",
        f"Versions: {version}; PostgreSQL {pg_version}.",
        f"Command: `benches/peers/postgres.sh --duration {args.duration}` (one throwaway "
        "server, fsync and synchronous_commit on; a database per row; one load-generator "
        "thread each).",
        "",
        "Batched: 1,000 IDs per request or statement over 4 connections; single: 1 ID over "
        "8 connections (over RESP: `redis-benchmark -c 8 --threads 1 -P 1` sending `SET "
        "s:__rand_int__ 1 NX PX 3600000`); pipelined: 16 IDs in flight on each of 8 "
        "connections (RESP `-P 16`; raw: 16 IDs per statement); unique IDs. \"÷ raw\" is "
        "Oncely's IDs/s over the raw inserts' in the "
        "same workload. RAM per ID is the daemon's RSS growth per stored ID (PostgreSQL's "
        "memory is its fixed shared_buffers); disk per ID is the database's growth per "
        "stored ID, heap and index.",
        "",
        "| workload | side | IDs/s | ÷ raw | p50 | p99 | daemon RAM B/ID | disk B/ID |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for w in WORKLOADS:
        rows = [r for r in results if r.workload == w]
        base = next((r for r in rows if r.side.startswith("raw")), None)
        for r in rows:
            ratio = f"{r.ids_per_sec / base.ids_per_sec:.2f}x" if base else "—"
            lines.append(
                f"| {w} | {r.side} | {r.ids_per_sec:,.0f} | {ratio} | {fmt_us(r.p50_us)} | "
                f"{fmt_us(r.p99_us)} | {r.per_id(r.ram_bytes)} | {r.per_id(r.disk_bytes)} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--oncelyd", required=True, help="the release oncelyd binary")
    ap.add_argument("--pg-insert", required=True, help="the release pg_insert binary")
    ap.add_argument("--bindir", help="PostgreSQL's programs [newest /usr/lib/postgresql/*/bin]")
    ap.add_argument("--duration", type=int, default=15, help="seconds per workload and side")
    ap.add_argument("--workloads", default=",".join(WORKLOADS), help="batched,single,pipelined")
    ap.add_argument("--out", help="also write the table here")
    args = ap.parse_args()
    for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, on_signal)
    tmp = Path(tempfile.mkdtemp(prefix="oncely-pg-bench-"))
    results: list[Result] = []
    pg = None
    try:
        pg = Postgres(bindir(args.bindir), tmp)
        sides = {"http": oncely, "resp": oncely_resp}
        for w in args.workloads.split(","):
            if w not in WORKLOADS:
                raise SystemExit(f"unknown workload {w!r}; the workloads: {', '.join(WORKLOADS)}")
            for side in (*FACES[w], "raw"):
                print(f"{w}: {side} ...", file=sys.stderr, flush=True)
                r = raw(args, pg, w) if side == "raw" else sides[side](args, pg, w, tmp)
                print(f"  {r.ids_per_sec:,.0f} IDs/s", file=sys.stderr, flush=True)
                results.append(r)
        text = table(results, args, pg.version())
    finally:
        if pg:
            pg.close()
        stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
