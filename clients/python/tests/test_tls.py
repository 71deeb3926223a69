"""The client against a daemon serving TLS (``oncelyd serve --tls-cert --tls-key``):
a certificate authority and a server certificate for 127.0.0.1 and localhost made
here with the openssl command, and ``verify=`` given the CA as a path or as an
``ssl.SSLContext``; a client that does not trust the CA is refused at once."""

from __future__ import annotations

import asyncio
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import Daemon, _start

import oncely


@dataclass
class TlsDaemon:
    daemon: Daemon
    ca: Path
    """The PEM certificate of the CA the daemon's certificate is signed by."""
    other_ca: Path
    """Another CA's, which did not sign it."""


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _ca(dir: Path, name: str) -> Path:
    _openssl(
        "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "2",
        "-subj", f"/CN=Oncely Python test {name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=dir,
    )  # fmt: skip
    return dir / f"{name}.pem"


def _leaf(dir: Path, ca: str) -> tuple[Path, Path]:
    (dir / "leaf.ext").write_text(
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    _openssl(
        "req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-keyout", "key.pem", "-out", "leaf.csr", "-subj", "/CN=oncelyd test",
        cwd=dir,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", "leaf.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
        "-CAcreateserial", "-out", "cert.pem", "-days", "2", "-extfile", "leaf.ext",
        cwd=dir,
    )  # fmt: skip
    return dir / "cert.pem", dir / "key.pem"


@pytest.fixture(scope="module")
def tls_daemon() -> Iterator[TlsDaemon]:
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed to make the test certificates")
    with tempfile.TemporaryDirectory(prefix="oncely-py-tls-") as tmp:
        dir = Path(tmp)
        ca = _ca(dir, "ca")
        other = _ca(dir, "other")
        cert, key = _leaf(dir, "ca")
        proc, d = _start(
            dir, None, ["--tls-cert", str(cert), "--tls-key", str(key)], scheme="https"
        )
        try:
            assert 'tls="on"' in d.log.read_text(), d.log.read_text()
            yield TlsDaemon(d, ca, other)
        finally:
            proc.send_signal(signal.SIGKILL)
            proc.wait()


def test_the_sync_client_trusts_a_ca_given_by_path(tls_daemon: TlsDaemon) -> None:
    assert tls_daemon.daemon.url.startswith("https://")
    id_ = f"tls-{uuid.uuid4().hex}"
    # A str path and a pathlib.Path alike.
    with oncely.Client(tls_daemon.daemon.url, verify=str(tls_daemon.ca)) as c:
        assert c.check_and_mark("default", [id_])[0].is_new
    with oncely.Client(tls_daemon.daemon.url, verify=tls_daemon.ca) as c:
        assert c.check_and_mark("default", [id_])[0].verdict is oncely.Verdict.DUPLICATE
    # By name: the certificate's other SAN.
    port = tls_daemon.daemon.url.rsplit(":", 1)[1]
    with oncely.Client(f"https://localhost:{port}", verify=tls_daemon.ca) as c:
        assert c.check("default", [id_])[0].verdict is oncely.Verdict.DUPLICATE


def test_the_async_client_takes_an_ssl_context(tls_daemon: TlsDaemon) -> None:
    context = ssl.create_default_context(cafile=str(tls_daemon.ca))

    async def main() -> None:
        async with oncely.AsyncClient(tls_daemon.daemon.url, verify=context) as c:
            ids = [f"tls-async-{uuid.uuid4().hex}" for _ in range(4)]
            # Concurrent single-ID calls, batched over the TLS connections.
            got = await asyncio.gather(*(c.check_and_mark("default", [i]) for i in ids))
            assert all(m[0].is_new for m in got)

    asyncio.run(main())


@pytest.mark.parametrize("trust", ["system", "other"])
def test_a_client_not_trusting_the_ca_is_refused_at_once(tls_daemon: TlsDaemon, trust: str) -> None:
    verify: ssl.SSLContext | bool = (
        True if trust == "system" else ssl.create_default_context(cafile=str(tls_daemon.other_ca))
    )
    id_ = f"tls-refused-{uuid.uuid4().hex}"
    started = time.monotonic()
    client = oncely.Client(tls_daemon.daemon.url, verify=verify)
    with client, pytest.raises(oncely.Unavailable) as refused:
        client.check_and_mark("default", [id_])
    # No retries: the certificate will not change between attempts.
    assert refused.value.attempts == 1
    assert "certificate" in str(refused.value).lower()
    assert time.monotonic() - started < 3
    # Nothing was marked.
    with oncely.Client(tls_daemon.daemon.url, verify=tls_daemon.ca) as c:
        assert c.check("default", [id_])[0].verdict is oncely.Verdict.NEW


def test_async_refusal_is_the_same(tls_daemon: TlsDaemon) -> None:
    async def main() -> None:
        async with oncely.AsyncClient(
            tls_daemon.daemon.url, verify=str(tls_daemon.other_ca), batching=None
        ) as c:
            with pytest.raises(oncely.Unavailable) as refused:
                await c.check_and_mark("default", ["x"])
            assert refused.value.attempts == 1

    asyncio.run(main())


def test_a_verify_path_that_does_not_exist_is_refused() -> None:
    with pytest.raises(ValueError, match="no such CA file"):
        oncely.Client("https://127.0.0.1:1", verify="/nonexistent/ca.pem")
