"""The synchronous client, on ``httpx.Client``."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Callable, TypeVar

import httpx

from . import _core
from ._core import UNSET, Lease, Op, Verify, _Unset
from ._errors import InProgress
from ._retry import RetryPolicy
from ._types import Claim, ClaimVerdict, Marked, NamespaceConfig, NamespaceView, Result

T = TypeVar("T")


class Client(_core.Base):
    """A client of one ``oncelyd``, safe to share between threads (one connection
    pool). Use it as a context manager, or call :meth:`close`.

    ``timeout`` bounds one attempt (connecting and reading the answer), never more than
    what is left of the call's deadline (``retry.deadline``); ``connect_timeout``
    bounds connecting. ``verify`` checks an ``https://`` daemon's certificate: ``True``
    (the system's CA certificates, the default), the path of a PEM CA bundle (your own
    CA's, for ``oncelyd serve --tls-cert``), an :class:`ssl.SSLContext`, or ``False``
    (no check; tests only). A certificate that fails the check raises
    :class:`Unavailable` at once, without retries. ``transport`` replaces httpx's
    (tests use ``httpx.MockTransport``; ``verify`` does not apply then).
    ``jitter_seed``, ``sleep`` and ``clock`` make the retry waits reproducible in
    tests; owner tokens never come from the seed.

    Every method retries per :class:`RetryPolicy` where a retry is safe, which is
    everywhere: see the README's "Retries" section.
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        *,
        connect_timeout: float = 2.0,
        verify: Verify = True,
        transport: httpx.BaseTransport | None = None,
        jitter_seed: int | None = None,
        sleep: Callable[[float], None] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(
            url, token, timeout, connect_timeout, retry or RetryPolicy(), jitter_seed, clock
        )
        self._sleep = time.sleep if sleep is None else sleep
        self._http = httpx.Client(
            transport=transport,
            verify=_core.ssl_context(verify),
            follow_redirects=False,
            trust_env=False,
        )

    def close(self) -> None:
        """Closes the connection pool."""
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self, op: Op[T], end: float | None = None) -> T:
        url, attempts = self._attempts(op, end)
        headers = self._headers_for(op)
        while True:
            timeout = attempts.start()
            try:
                r = self._http.request(
                    op.method,
                    url,
                    content=op.body,
                    headers=headers,
                    timeout=self._httpx_timeout(timeout),
                )
            except httpx.TransportError as e:
                step = attempts.failed(e, timeout)
            else:
                step = attempts.answered(r.status_code, r.content, r.headers.get("retry-after"))
            if step.done:
                return step.value  # type: ignore[return-value]
            self._sleep(step.wait)

    # Marks ---------------------------------------------------------------------

    def check_and_mark(
        self, namespace: str, ids: Sequence[str], owner: str | None = None
    ) -> Marked:
        """Checks IDs and marks the new ones, atomically per ID: one :class:`Result` per
        ID, in order, and the owner token used.

        ``owner`` identifies one delivery attempt of these events: without one, a fresh
        token is drawn for this call and reused by its retries only, so that a retry
        whose first attempt marked the IDs gets ``new`` (``replayed``) back, not
        ``duplicate``. Pass ``marked.owner`` again to retry the same delivery yourself;
        draw a new token for every delivery, never one per worker.
        """
        return self._run(_core.check_and_mark(namespace, ids, owner))

    def check(self, namespace: str, ids: Sequence[str]) -> list[Result]:
        """Checks IDs without marking them (``new`` means unseen)."""
        return self._run(_core.check(namespace, ids))

    def forget(self, namespace: str, ids: Sequence[str]) -> list[bool]:
        """Forgets IDs so that the next caller gets ``new``: ``True`` per ID where an
        exact mark was deleted; ``False`` where nothing exact remembered it, a live claim
        holds it (left alone), it came earlier in the call, or it was forgotten already
        (a retry whose lost first attempt landed answers ``False``: forgotten all the
        same)."""
        return self._run(_core.forget(namespace, ids))

    # Claims --------------------------------------------------------------------

    def claim(self, namespace: str, id: str, lease: Lease, owner: str | None = None) -> Claim:
        """Claims ``id`` for ``lease`` (seconds or a ``timedelta``; 1 ms to 7 days):
        exclusive processing rights until then, or until :meth:`complete` or
        :meth:`release`. ``owner`` is one delivery attempt (a fresh one is drawn when
        none is given; it is in the answer's ``owner``). Claiming again with the same
        owner renews the lease (``replayed``)."""
        return self._run(_core.claim(namespace, id, lease, owner))

    def complete(self, namespace: str, id: str, owner: str) -> None:
        """Turns ``owner``'s claim into a done mark: the ID answers ``duplicate`` from
        then on. Raises :class:`Conflict` when another owner holds or completed it, or
        there is no claim."""
        self._run(_core.complete(namespace, id, owner))

    def release(self, namespace: str, id: str, owner: str) -> None:
        """Gives ``owner``'s claim back so that a redelivery can claim the ID. Returning
        means the caller no longer holds a claim on it (see the README for the retried
        release that meets another owner's claim). Raises :class:`Conflict` when another
        owner holds it or it is done."""
        self._run(_core.release(namespace, id, owner))

    @contextlib.contextmanager
    def claimed(
        self, namespace: str, id: str, lease: Lease, owner: str | None = None
    ) -> Iterator[Claim]:
        """At-least-once processing of one event: claims it, and yields the claim.

        When ``claim.acquired``, process the event in the block: leaving it normally
        completes the claim, an exception releases it (so that a redelivery processes
        the event) and propagates. When the event is done already (``duplicate``,
        ``probable_duplicate``) the block sees ``claim.acquired`` false: skip it. When
        another owner holds a live claim, :class:`InProgress` is raised before the
        block: leave the message to be redelivered after ``until``.
        """
        c = self.claim(namespace, id, lease, owner)
        if c.verdict is ClaimVerdict.IN_PROGRESS:
            assert c.until is not None
            raise InProgress(namespace, id, c.until)
        if not c.acquired:
            yield c
            return
        try:
            yield c
        except BaseException:
            self.release(namespace, id, c.owner)
            raise
        self.complete(namespace, id, c.owner)

    # Checkpoints ---------------------------------------------------------------

    def set_checkpoint(
        self,
        namespace: str,
        consumer: str,
        position: str,
        expected: str | _Unset | None = UNSET,
    ) -> None:
        """Stores ``consumer``'s last processed position. With ``expected``, only if
        the stored position is that one (``expected=None``: only if none is stored);
        else :class:`CheckpointConflict` with the stored one in ``current``, nothing
        changed. A retry whose first attempt landed succeeds."""
        self._run(_core.set_checkpoint(namespace, consumer, position, expected))

    def checkpoint(self, namespace: str, consumer: str) -> str | None:
        """``consumer``'s stored position, or ``None`` when it has none."""
        return self._run(_core.checkpoint(namespace, consumer))

    # Namespaces ----------------------------------------------------------------

    def put_namespace(
        self,
        name: str,
        config: NamespaceConfig | Mapping[str, Any],
        drop_now: bool = False,
    ) -> NamespaceView:
        """Creates a namespace or sets its whole configuration (every field);
        ``view.created`` says which. A change that would forget remembered IDs at once
        needs ``drop_now=True`` (else 409 ``would_drop``)."""
        return self._run(_core.put_namespace(name, config, drop_now))

    def patch_namespace(
        self,
        name: str,
        fields: Mapping[str, Any] | None = None,
        *,
        drop_now: bool = False,
        **kwargs: Any,
    ) -> NamespaceView:
        """Changes some fields of an existing namespace (a dict, or keyword arguments:
        ``generations``, ``generation_capacity``, ``generation_span``, ``fp_rate``,
        ``exact_generations``); the others are kept. Never creates one (404)."""
        return self._run(_core.patch_namespace(name, _core.merge_fields(fields, kwargs), drop_now))

    def namespace(self, name: str) -> NamespaceView:
        """A namespace's configuration and live statistics."""
        return self._run(_core.namespace(name))

    def delete_namespace(self, name: str) -> None:
        """Deletes a namespace with its marks and checkpoints (409 ``refused`` for
        ``default``)."""
        self._run(_core.delete_namespace(name))

    def namespaces(self) -> list[str]:
        """Every namespace, sorted by name."""
        return self._run(_core.namespaces())

    def health(self) -> str:
        """Liveness (``GET /healthz``, no token needed): ``"ok"``."""
        return self._run(_core.health("healthz"))

    def ready(self) -> str:
        """Readiness (``GET /readyz``): ``"ready"``; :class:`Unavailable` while the
        store fails or the daemon shuts down (after retries)."""
        return self._run(_core.health("readyz"))
