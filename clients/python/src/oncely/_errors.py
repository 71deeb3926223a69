"""The exceptions of the client, and how an error answer becomes one."""

from __future__ import annotations

import datetime as _dt
import json
from typing import Any


class Error(Exception):
    """Every error this client raises.

    ``attempts`` is the number of requests the call made, retries included (0 when
    none was made, for example an ID refused before it was sent).
    """

    def __init__(self, message: str, *, attempts: int = 0) -> None:
        super().__init__(message)
        self.message = message
        self.attempts = attempts


class HttpError(Error):
    """The daemon answered with an error: ``{"error": {"code", "message"}}``.

    ``code`` is the daemon's stable error code (``invalid_id``, ``unknown_namespace``,
    ``conflict``, ...); an answer that is not the daemon's error shape (a proxy's page)
    keeps its status with code ``http_<status>``.
    """

    def __init__(self, status: int, code: str, message: str, *, attempts: int = 0) -> None:
        super().__init__(message, attempts=attempts)
        self.status = status
        self.code = code

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


class UnknownNamespace(HttpError):
    """404 ``unknown_namespace``: no namespace of that name."""


class Conflict(HttpError):
    """409 ``conflict``: the ID's state does not allow the operation (a claim held or
    completed by another owner, or no claim to complete)."""


class CheckpointConflict(HttpError):
    """409 ``checkpoint_conflict``: a checkpoint write's ``expected`` position is not
    the stored one. Nothing changed; ``current`` is the stored position (``None``: none
    is stored). Resume from it."""

    def __init__(
        self, current: str | None, message: str, *, status: int = 409, attempts: int = 0
    ) -> None:
        super().__init__(status, "checkpoint_conflict", message, attempts=attempts)
        self.current = current


class Unavailable(Error):
    """The daemon could not do the call: the retries ran out on answers that say so
    (503 ``overloaded``, ``storage_unavailable``, ``shutting_down``, ``busy``; a proxy's
    502, 503 or 504; the daemon's 504 ``deadline_exceeded``) or on connection errors.

    ``status`` and ``code`` are the last answer's (``None`` when the last attempt got no
    answer: a refused, reset or cut-off connection). After a connection broken
    mid-request, or a 502/504, the call may have been done: retry it with the same
    owner token to find out.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        attempts: int = 0,
    ) -> None:
        super().__init__(message, attempts=attempts)
        self.status = status
        self.code = code

    def __str__(self) -> str:
        if self.status is None:
            return self.message
        return f"{self.status} {self.code}: {self.message}"


class Timeout(Error):
    """No answer in time: the last attempt ran out of its timeout, or of what was left
    of the call's deadline. The call may or may not have been done."""

    def __init__(self, message: str, *, timeout: float, attempts: int = 0) -> None:
        super().__init__(message, attempts=attempts)
        self.timeout = timeout


class InProgress(Error):
    """Another owner holds a live claim on the ID until ``until``: raised by
    :meth:`Client.claimed` (the at-least-once helper), so that a handler leaves the
    message to be redelivered after the lease. :meth:`Client.claim` itself returns the
    ``in_progress`` verdict rather than raising."""

    def __init__(self, namespace: str, id: str, until: _dt.datetime) -> None:
        super().__init__(f"{id!r} in namespace {namespace!r} is claimed until {until.isoformat()}")
        self.namespace = namespace
        self.id = id
        self.until = until


class FingerprintMismatch(HttpError):
    """DECLARED FOR A COMING DAEMON FEATURE, NEVER RAISED YET.

    Will be raised for 422 ``fingerprint_mismatch`` once the daemon takes payload
    fingerprints (DESIGN.md, "Idempotency keys"): the same ID marked or claimed again
    with a different payload. Today's daemon has no such code and this client sends no
    fingerprints, so nothing raises it."""


class ResultUnavailable(Error):
    """DECLARED FOR A COMING DAEMON FEATURE, NEVER RAISED YET.

    Will be raised when a ``duplicate`` answer's stored result was left out
    (``"result_omitted": true``, DESIGN.md "Stored results") and the caller asked for
    it. Today's daemon stores no results and this client asks for none."""


class DecodeError(Error):
    """An answer that is not what the API promises (another service on the port, or an
    incompatible version)."""


# The daemon's error codes (clients/rust/src/api.rs, `error_codes!`) that have an
# exception of their own; every other code is an HttpError carrying it.
_BY_CODE: dict[str, type[HttpError]] = {
    "unknown_namespace": UnknownNamespace,
    "conflict": Conflict,
    # FINGERPRINTS / RESULTS: when the daemon sends `fingerprint_mismatch`, map it
    # here to FingerprintMismatch. Not before: today no such code exists.
}

# Codes of the daemon's own 503, which says that nothing in the request was done.
REFUSED_UNDONE = frozenset({"overloaded", "storage_unavailable", "shutting_down", "busy"})


def http_error(url: str, status: int, body: bytes, attempts: int) -> HttpError:
    """An error answer as the exception for its code."""
    try:
        doc: Any = json.loads(body)
        err = doc["error"]
        code = err["code"]
        message = err["message"]
        if not isinstance(code, str) or not isinstance(message, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        snippet = body[:200].decode("utf-8", "replace")
        return HttpError(
            status,
            f"http_{status}",
            f"{url} answered {status} without the daemon's error body: {snippet!r}",
            attempts=attempts,
        )
    if code == "checkpoint_conflict" and "current" in err:
        current = err["current"]
        return CheckpointConflict(
            current if isinstance(current, str) else None,
            message,
            status=status,
            attempts=attempts,
        )
    cls = _BY_CODE.get(code, HttpError)
    return cls(status, code, message, attempts=attempts)
