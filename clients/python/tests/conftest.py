"""Fixtures: a real oncelyd per test session (and one with a token), started on a
free loopback port with a temporary data directory and killed at the end."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

import oncely


def oncelyd_binary() -> Path:
    explicit = os.environ.get("ONCELYD")
    if explicit:
        return Path(explicit)
    home = os.environ.get("HOME") or "/root"
    target = os.environ.get("CARGO_TARGET_DIR") or f"{home}/.cache/oncely/target"
    return Path(target) / "debug" / "oncelyd"


@dataclass
class Daemon:
    url: str
    token: str | None
    log: Path


def _start(
    tmp: Path, token: str | None, extra: Sequence[str] = (), scheme: str = "http"
) -> tuple[subprocess.Popen[bytes], Daemon]:
    binary = oncelyd_binary()
    if not binary.exists():
        pytest.fail(
            f"{binary} does not exist: build it with "
            "`cargo build --locked -p oncelyd --bin oncelyd` (or set ONCELYD)"
        )
    log = tmp / "daemon.log"
    cmd = [str(binary), "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp / "data")]
    if token is not None:
        cmd += ["--token", token]
    cmd += list(extra)
    # oncelyd reads every ONCELY_* variable as a setting and refuses unknown ones
    # (ONCELY_URL, which the examples read, say): it gets none of the caller's.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ONCELY_")}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        m = re.search(r"listen=([0-9.]+:[0-9]+)", log.read_text(errors="replace"))
        if m:
            return proc, Daemon(f"{scheme}://{m.group(1)}", token, log)
        if proc.poll() is not None:
            pytest.fail(f"oncelyd exited with {proc.returncode}:\n{log.read_text()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail(f"oncelyd did not report its address:\n{log.read_text()}")


@pytest.fixture(scope="session")
def daemon() -> Iterator[Daemon]:
    with tempfile.TemporaryDirectory(prefix="oncely-py-") as tmp:
        proc, d = _start(Path(tmp), None)
        try:
            yield d
        finally:
            # SIGKILL: nothing of this daemon is kept.
            proc.send_signal(signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def daemon_with_token() -> Iterator[Daemon]:
    with tempfile.TemporaryDirectory(prefix="oncely-py-auth-") as tmp:
        proc, d = _start(Path(tmp), "py-" + uuid.uuid4().hex)
        try:
            yield d
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


@pytest.fixture
def client(daemon: Daemon) -> Iterator[oncely.Client]:
    with oncely.Client(daemon.url) as c:
        yield c


@pytest.fixture
def ns(client: oncely.Client) -> Iterator[str]:
    """A fresh namespace for one test, deleted after it."""
    name = "py-" + uuid.uuid4().hex[:12]
    client.put_namespace(name, oncely.NamespaceConfig())
    yield name
    with contextlib.suppress(oncely.UnknownNamespace):
        client.delete_namespace(name)


def fresh(prefix: str = "id") -> str:
    return f"{prefix}-{uuid.uuid4().hex}"
