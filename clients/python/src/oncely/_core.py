"""What the sync and async clients share: each call as a request to make and a way
to read its answer (an :class:`Op`), and the retry rules of one call
(:class:`Attempts`), free of any I/O so that both clients run the same code."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import os
import random
import secrets
import ssl
import time
import urllib.parse
from collections.abc import Mapping, Sequence
from typing import Any, Callable, Generic, TypeVar, Union

import httpx

from ._errors import (
    REFUSED_UNDONE,
    DecodeError,
    Error,
    HttpError,
    Timeout,
    Unavailable,
    http_error,
)
from ._retry import RetryPolicy, parse_retry_after
from ._types import (
    CONFIG_FIELDS,
    Claim,
    ClaimVerdict,
    Marked,
    NamespaceConfig,
    NamespaceView,
    Result,
    Span,
    Verdict,
    from_ms,
    span_to_wire,
)

T = TypeVar("T")

__version__ = "0.1.0"

MAX_ID_BYTES = 256
"""The longest event ID the API takes, in bytes of UTF-8 (the daemon's rule)."""

Lease = Union[float, int, _dt.timedelta]


class _Unset(enum.Enum):
    UNSET = "UNSET"

    def __repr__(self) -> str:
        return "UNSET"


UNSET = _Unset.UNSET
"""The default of ``set_checkpoint``'s ``expected``: no precondition."""


def random_owner() -> str:
    """A fresh owner token: 128 random bits from the operating system (never from a
    seeded generator: two clients sharing a token would read each other's marks as
    their own retries)."""
    return "client-" + secrets.token_hex(16)


class Settled(enum.Enum):
    """Which error answer to a retry means that an earlier attempt did the work, when
    that attempt may have reached the daemon (its answer was lost)."""

    NEVER = "never"
    BY_UNKNOWN_NAMESPACE = "unknown_namespace"
    """404 ``unknown_namespace``: an earlier attempt deleted the namespace."""
    BY_CONFLICT = "conflict"
    """409 ``conflict``: an earlier attempt released the claim, and another owner has
    claimed (or completed) the ID since."""

    def matches(self, e: HttpError) -> bool:
        return self is not Settled.NEVER and e.code == self.value


@dataclasses.dataclass(frozen=True)
class Op(Generic[T]):
    """One call: its request and how to read the answer."""

    method: str
    path: tuple[str, ...]
    body: bytes | None
    parse: Callable[[str, int, bytes], T]
    """Reads a success answer (url, status, body)."""
    settled: Settled = Settled.NEVER
    on_settled: Callable[[], T] | None = None
    """The value when :attr:`settled` says an earlier attempt did the work."""
    on_error: Callable[[HttpError], T] | None = None
    """Turns a final (not retried) error answer into a value, or raises it."""


@dataclasses.dataclass(frozen=True)
class Step(Generic[T]):
    """What to do after an attempt: return ``value`` (``done``), or wait ``wait``
    seconds and try again."""

    done: bool
    value: T | None = None
    wait: float = 0.0


class Attempts(Generic[T]):
    """The retry rules of one call (those of the Rust client, clients/rust/src/client.rs
    ``send_until``):

    * retried: connection errors, timeouts, answers cut off, and 502, 503 and 504;
      never another status (a 4xx or 500 is the call's answer);
    * waits per :class:`RetryPolicy`, honouring ``Retry-After``; the deadline bounds
      attempts and waits;
    * when an earlier attempt may have done the work (it may have reached the daemon
      and its answer was lost: anything but a connection that never opened and the
      daemon's own 503, which says nothing was done), the op's ``settled`` error answer
      counts as success.
    """

    def __init__(
        self,
        op: Op[T],
        url: str,
        policy: RetryPolicy,
        timeout: float,
        clock: Callable[[], float],
        unit: Callable[[], float],
        end: float | None = None,
    ) -> None:
        self.op = op
        self.url = url
        self.policy = policy
        self.timeout = timeout
        self.clock = clock
        self.unit = unit
        self.end = clock() + policy.deadline if end is None else end
        self.attempt = 0
        self.maybe_done = False

    def start(self) -> float:
        """Counts an attempt; how long it may take."""
        self.attempt += 1
        return max(0.001, min(self.timeout, self.end - self.clock()))

    def answered(self, status: int, body: bytes, retry_after: str | None) -> Step[T]:
        if 200 <= status < 300:
            return Step(True, self.op.parse(self.url, status, body))
        error = http_error(self.url, status, body, self.attempt)
        if self.maybe_done and self.op.settled.matches(error) and self.op.on_settled:
            return Step(True, self.op.on_settled())
        if status not in (502, 503, 504):
            if self.op.on_error is not None:
                return Step(True, self.op.on_error(error))
            raise error
        if not (status == 503 and error.code in REFUSED_UNDONE):
            self.maybe_done = True
        final = Unavailable(
            f"{self.url}: {error.message} (after {self.attempt} attempts)",
            status=status,
            code=error.code,
            attempts=self.attempt,
        )
        return self._again(final, parse_retry_after(retry_after))

    def failed(self, exc: httpx.TransportError, timeout: float) -> Step[T]:
        if _certificate_refused(exc):
            # The daemon's certificate is not trusted (or the handshake was refused):
            # no request was sent, and every retry would be refused the same way.
            raise Unavailable(
                f"cannot reach the daemon at {self.url}: TLS certificate verification "
                f"failed ({exc!r}); pass verify= a CA bundle the daemon's certificate "
                "is signed by",
                attempts=self.attempt,
            ) from exc
        # A connection that never opened, or never came from the pool, carried no
        # request; anything later may have reached the daemon.
        if not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)):
            self.maybe_done = True
        final: Error
        if isinstance(exc, httpx.TimeoutException):
            final = Timeout(
                f"no answer from {self.url} within {timeout:.3f} s "
                f"({self.attempt} attempts): {exc!r}",
                timeout=timeout,
                attempts=self.attempt,
            )
        else:
            final = Unavailable(
                f"cannot reach the daemon at {self.url} ({self.attempt} attempts): {exc!r}",
                attempts=self.attempt,
            )
        try:
            return self._again(final, None)
        except Error as e:
            raise e from exc

    def _again(self, final: Error, retry_after: float | None) -> Step[T]:
        if self.attempt >= self.policy.attempts:
            raise final
        wait = self.policy.delay(self.attempt, self.unit(), retry_after)
        if self.clock() + wait >= self.end:
            # The retry could not start before the deadline: give up now rather than
            # sleep to no purpose.
            raise final
        return Step(False, wait=wait)


Verify = Union[ssl.SSLContext, str, "os.PathLike[str]", bool]
"""What ``verify=`` takes: ``True`` (the system's CA certificates), ``False`` (no
verification: never outside tests), the path of a PEM CA bundle (or of a directory
of hashed CA certificates), or an :class:`ssl.SSLContext` of your own."""


def ssl_context(verify: Verify) -> ssl.SSLContext | bool:
    """``verify`` as httpx takes it: a path becomes an SSL context trusting that
    bundle (httpx deprecates paths)."""
    if isinstance(verify, (bool, ssl.SSLContext)):
        return verify
    path = os.fspath(verify)
    if os.path.isdir(path):
        return ssl.create_default_context(capath=path)
    if not os.path.isfile(path):
        raise ValueError(f"verify={path!r}: no such CA file or directory")
    return ssl.create_default_context(cafile=path)


def _certificate_refused(exc: BaseException) -> bool:
    """Whether a transport error is, at its root, a TLS certificate failure."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ssl.SSLCertVerificationError):
            return True
        e = e.__cause__ or e.__context__
    return False


class Base:
    """Settings and helpers both clients share."""

    def __init__(
        self,
        url: str,
        token: str | None,
        timeout: float,
        connect_timeout: float,
        retry: RetryPolicy,
        jitter_seed: int | None,
        clock: Callable[[], float] | None,
    ) -> None:
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ValueError(f"url {url!r}: want http(s)://host[:port][/prefix]")
        if parsed.query or parsed.fragment:
            raise ValueError(f"url {url!r}: want http(s)://host[:port][/prefix], no query")
        if not timeout > 0 or not connect_timeout > 0:
            raise ValueError("timeouts must be more than 0")
        self._base = url.rstrip("/")
        self._timeout = float(timeout)
        self._connect_timeout = float(connect_timeout)
        self._retry = retry
        self._headers = {"user-agent": f"oncely-python/{__version__}"}
        if token is not None:
            if not token or not all(0x21 <= ord(c) <= 0x7E for c in token):
                raise ValueError("token must be visible ASCII")
            self._headers["authorization"] = f"Bearer {token}"
        self._rng = random.Random(jitter_seed)
        self._clock = time.monotonic if clock is None else clock

    @property
    def base_url(self) -> str:
        return self._base

    @property
    def retry_policy(self) -> RetryPolicy:
        return self._retry

    def __repr__(self) -> str:
        # Never the token.
        auth = "authorization" in self._headers
        return f"{type(self).__name__}({self._base!r}, auth={auth}, retry={self._retry!r})"

    def _url(self, path: Sequence[str]) -> str:
        """The base URL with each segment percent-encoded, so that a name with a ``/``,
        ``?`` or a dot segment reaches the daemon as a (refused) name, not another
        route."""
        parts = []
        for seg in path:
            enc = urllib.parse.quote(seg, safe="")
            if enc in (".", ".."):
                enc = enc.replace(".", "%2E")
            parts.append(enc)
        return self._base + "/" + "/".join(parts)

    def _attempts(self, op: Op[T], end: float | None = None) -> tuple[str, Attempts[T]]:
        url = self._url(op.path)
        return url, Attempts(
            op, url, self._retry, self._timeout, self._clock, self._rng.random, end
        )

    def _httpx_timeout(self, timeout: float) -> httpx.Timeout:
        return httpx.Timeout(timeout, connect=min(self._connect_timeout, timeout))

    def _headers_for(self, op: Op[Any]) -> dict[str, str]:
        if op.body is None:
            return self._headers
        return {**self._headers, "content-type": "application/json"}


# ---------------------------------------------------------------------------------
# Requests and answers, one function per route.


def _body(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


def _json(url: str, body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError as e:
        raise DecodeError(f"unexpected answer from {url}: not JSON: {e}") from None


def _ids(ids: Sequence[str]) -> list[str]:
    if isinstance(ids, (str, bytes)):
        raise TypeError("ids is a sequence of IDs, not one string")
    out = list(ids)
    for i, x in enumerate(out):
        if not isinstance(x, str):
            raise TypeError(f"event IDs are str, got {type(x).__name__} at index {i}")
    return out


def invalid_id(ids: Sequence[str]) -> HttpError | None:
    """The daemon's ID rule (1 to 256 bytes of UTF-8), worded as the daemon words it,
    for the first ID that breaks it; ``None`` when all keep it."""
    for index, id_ in enumerate(ids):
        n = len(id_.encode("utf-8", "surrogatepass"))
        if n == 0:
            reason = "empty"
        elif n > MAX_ID_BYTES:
            reason = f"{n} bytes, over the limit of {MAX_ID_BYTES}"
        else:
            continue
        return HttpError(400, "invalid_id", f"invalid event id at index {index}: {reason}")
    return None


def _results(url: str, sent: Sequence[str], body: bytes, marking: bool) -> list[Result]:
    doc = _json(url, body)
    try:
        rows = doc["results"]
        if len(rows) != len(sent):
            raise DecodeError(
                f"unexpected answer from {url}: {len(rows)} results for {len(sent)} IDs"
            )
        out = []
        for row, id_ in zip(rows, sent):
            if row["id"] != id_:
                raise DecodeError(
                    f"unexpected answer from {url}: result for {row['id']!r} where {id_!r} was sent"
                )
            verdict = Verdict(row["verdict"])
            until = None
            if verdict is Verdict.IN_PROGRESS:
                until = from_ms(int(row["until_ms"]))
            replayed = bool(row.get("replayed", False)) if marking else False
            out.append(Result(id_, verdict, replayed, until))
        return out
    except (KeyError, TypeError, ValueError) as e:
        if isinstance(e, DecodeError):
            raise
        raise DecodeError(f"unexpected answer from {url}: {e!r}") from None


def mark_op(namespace: str, ids: Sequence[str], owner: str) -> Op[Marked]:
    # FINGERPRINTS: the daemon will take `"fingerprints": [...]` (one per ID, the
    # SHA-256 hex of each payload) here; add it when it does. Today it refuses
    # unknown fields with 400, so nothing is sent.
    sent = list(ids)
    return Op(
        "POST",
        ("v1", "namespaces", namespace, "check-and-mark"),
        _body({"ids": sent, "owner": owner}),
        lambda url, _s, body: Marked(owner, _results(url, sent, body, True)),
    )


def check_and_mark(namespace: str, ids: Sequence[str], owner: str | None) -> Op[Marked]:
    return mark_op(namespace, _ids(ids), random_owner() if owner is None else owner)


def check(namespace: str, ids: Sequence[str]) -> Op[list[Result]]:
    # FINGERPRINTS: `"fingerprints"` goes here too once the daemon takes it.
    sent = _ids(ids)
    return Op(
        "POST",
        ("v1", "namespaces", namespace, "check"),
        _body({"ids": sent}),
        lambda url, _s, body: _results(url, sent, body, False),
    )


def forget(namespace: str, ids: Sequence[str]) -> Op[list[bool]]:
    sent = _ids(ids)

    def parse(url: str, _s: int, body: bytes) -> list[bool]:
        doc = _json(url, body)
        try:
            rows = doc["results"]
            if len(rows) != len(sent) or any(r["id"] != i for r, i in zip(rows, sent)):
                raise DecodeError(f"unexpected answer from {url}: results do not match the IDs")
            return [bool(r["forgotten"]) for r in rows]
        except (KeyError, TypeError) as e:
            raise DecodeError(f"unexpected answer from {url}: {e!r}") from None

    return Op("POST", ("v1", "namespaces", namespace, "forget"), _body({"ids": sent}), parse)


def lease_ms(lease: Lease) -> int:
    """A lease in whole milliseconds (at least 1 for any positive lease)."""
    if isinstance(lease, bool):
        raise TypeError("lease is seconds (a number) or a timedelta")
    seconds = lease.total_seconds() if isinstance(lease, _dt.timedelta) else float(lease)
    if not seconds > 0:
        raise ValueError(f"lease must be more than 0, not {lease!r}")
    return max(1, round(seconds * 1000))


def claim(namespace: str, id: str, lease: Lease, owner: str | None) -> Op[Claim]:
    owner = random_owner() if owner is None else owner
    # FINGERPRINTS: `"fingerprint"` (the SHA-256 hex of the payload) goes here once the
    # daemon takes it (422 `fingerprint_mismatch` -> FingerprintMismatch).
    body = _body({"id": id, "owner": owner, "lease_ms": lease_ms(lease)})

    def parse(url: str, _s: int, raw: bytes) -> Claim:
        doc = _json(url, raw)
        try:
            verdict = ClaimVerdict(doc["verdict"])
            until = None
            if verdict in (ClaimVerdict.ACQUIRED, ClaimVerdict.IN_PROGRESS):
                until = from_ms(int(doc["until_ms"]))
            return Claim(
                id=id,
                verdict=verdict,
                owner=owner,
                until=until,
                replayed=bool(doc.get("replayed") or False),
                taken_over=bool(doc.get("taken_over") or False),
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DecodeError(f"unexpected answer from {url}: {e!r}") from None

    return Op("POST", ("v1", "namespaces", namespace, "claims"), body, parse)


def _none(_url: str, _s: int, _b: bytes) -> None:
    return None


def complete(namespace: str, id: str, owner: str) -> Op[None]:
    # RESULTS: `"result"` (a string of at most max_result_bytes) goes here once the
    # daemon stores results; today it would refuse the field with 400.
    return Op(
        "POST",
        ("v1", "namespaces", namespace, "claims", "complete"),
        _body({"id": id, "owner": owner}),
        _none,
    )


def release(namespace: str, id: str, owner: str) -> Op[None]:
    # Retried after an attempt that may have released the claim, a 409 `conflict`
    # means another owner has claimed the ID since: the claim was given back, which
    # is what was asked. A 409 no earlier attempt can explain is an error.
    return Op(
        "POST",
        ("v1", "namespaces", namespace, "claims", "release"),
        _body({"id": id, "owner": owner}),
        _none,
        settled=Settled.BY_CONFLICT,
        on_settled=lambda: None,
    )


def set_checkpoint(
    namespace: str, consumer: str, position: str, expected: str | _Unset | None
) -> Op[None]:
    doc: dict[str, Any] = {"position": position}
    if expected is not UNSET:
        doc["expected"] = expected
    return Op("PUT", ("v1", "namespaces", namespace, "checkpoints", consumer), _body(doc), _none)


def checkpoint(namespace: str, consumer: str) -> Op[str | None]:
    def parse(url: str, _s: int, body: bytes) -> str | None:
        doc = _json(url, body)
        try:
            return str(doc["position"])
        except (KeyError, TypeError) as e:
            raise DecodeError(f"unexpected answer from {url}: {e!r}") from None

    def not_found(e: HttpError) -> str | None:
        if e.code == "checkpoint_not_found":
            return None
        raise e

    return Op(
        "GET",
        ("v1", "namespaces", namespace, "checkpoints", consumer),
        None,
        parse,
        on_error=not_found,
    )


def _view(url: str, status: int, body: bytes, created: bool | None) -> NamespaceView:
    doc = _json(url, body)
    try:
        return NamespaceView.from_wire(doc, created)
    except (KeyError, TypeError, ValueError) as e:
        raise DecodeError(f"unexpected answer from {url}: {e!r}") from None


def put_namespace(
    name: str, config: NamespaceConfig | Mapping[str, Any], drop_now: bool
) -> Op[NamespaceView]:
    if isinstance(config, NamespaceConfig):
        doc = config.to_wire()
    else:
        doc = _config_fields(config)
        missing = [f for f in CONFIG_FIELDS if f not in doc]
        if missing:
            raise ValueError(
                f"a PUT carries the whole configuration; missing: {', '.join(missing)} "
                "(patch_namespace changes some fields)"
            )
    if drop_now:
        doc["drop_now"] = True
    return Op(
        "PUT",
        ("v1", "namespaces", name),
        _body(doc),
        lambda url, status, body: _view(url, status, body, status == 201),
    )


def _config_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    unknown = sorted(set(fields) - set(CONFIG_FIELDS))
    if unknown:
        raise TypeError(
            f"unknown namespace configuration fields: {', '.join(unknown)} "
            f"(known: {', '.join(CONFIG_FIELDS)})"
        )
    doc = dict(fields)
    if "generation_span" in doc:
        span: Span = doc["generation_span"]
        doc["generation_span"] = span_to_wire(span)
    return doc


def patch_namespace(name: str, fields: Mapping[str, Any], drop_now: bool) -> Op[NamespaceView]:
    doc = _config_fields(fields)
    if drop_now:
        doc["drop_now"] = True
    return Op(
        "PATCH",
        ("v1", "namespaces", name),
        _body(doc),
        lambda url, status, body: _view(url, status, body, None),
    )


def namespace(name: str) -> Op[NamespaceView]:
    return Op(
        "GET",
        ("v1", "namespaces", name),
        None,
        lambda url, status, body: _view(url, status, body, None),
    )


def delete_namespace(name: str) -> Op[None]:
    # Retried after an attempt that may have deleted it, a 404 `unknown_namespace`
    # is success; a 404 no earlier attempt can explain is an error.
    return Op(
        "DELETE",
        ("v1", "namespaces", name),
        None,
        _none,
        settled=Settled.BY_UNKNOWN_NAMESPACE,
        on_settled=lambda: None,
    )


def namespaces() -> Op[list[str]]:
    def parse(url: str, _s: int, body: bytes) -> list[str]:
        doc = _json(url, body)
        try:
            return [str(n) for n in doc["namespaces"]]
        except (KeyError, TypeError) as e:
            raise DecodeError(f"unexpected answer from {url}: {e!r}") from None

    return Op("GET", ("v1", "namespaces"), None, parse)


def health(path: str) -> Op[str]:
    def parse(url: str, _s: int, body: bytes) -> str:
        doc = _json(url, body)
        try:
            return str(doc["status"])
        except (KeyError, TypeError) as e:
            raise DecodeError(f"unexpected answer from {url}: {e!r}") from None

    return Op("GET", (path,), None, parse)


def merge_fields(fields: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``patch_namespace``'s fields, from a mapping and keyword arguments."""
    out = dict(fields or {})
    out.update(kwargs)
    return out
