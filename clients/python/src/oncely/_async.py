"""The asyncio client, on ``httpx.AsyncClient``, with auto-batching."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from typing import Any, Callable, TypeVar

import httpx

from . import _core
from ._core import UNSET, Lease, Op, Verify, _Unset
from ._errors import HttpError, InProgress
from ._retry import RetryPolicy
from ._types import Claim, ClaimVerdict, Marked, NamespaceConfig, NamespaceView, Result

T = TypeVar("T")
E = TypeVar("E", bound=BaseException)


@dataclasses.dataclass(frozen=True)
class Batching:
    """How :meth:`AsyncClient.check_and_mark` coalesces concurrent owner-less calls
    (the Rust client's ``Batching``).

    Owner-less calls to one namespace form a lane. A call whose lane has fewer than
    ``max_in_flight`` requests in flight is sent at once, alone: an idle client adds no
    wait. Otherwise it waits for batch mates, and the waiting calls go as one request
    as soon as one of the lane's requests is answered, when the first of them has
    waited ``window`` seconds, or when they hold ``max_ids`` IDs. Each call gets its
    own results in its own order and the owner token of its request; a request never
    carries the same ID twice; a call with a bad ID is refused before it joins (400
    ``invalid_id``, no request made), and a request the daemon refuses whole (400,
    413) marked nothing, so its calls are sent again one by one. Calls with an owner,
    and calls of more than ``max_ids`` IDs, are always sent alone.
    """

    max_in_flight: int = 4
    window: float = 0.001
    max_ids: int = 1000

    def __post_init__(self) -> None:
        if self.max_in_flight < 1:
            raise ValueError("batching.max_in_flight must be at least 1")
        if self.max_ids < 1:
            raise ValueError("batching.max_ids must be at least 1")
        if self.window < 0:
            raise ValueError("batching.window must not be negative")


@dataclasses.dataclass
class BatchStats:
    """What auto-batching has done so far."""

    calls: int = 0
    """Calls that went through batching."""
    requests: int = 0
    """Requests they went in (retries not counted)."""


class AsyncClient(_core.Base):
    """The asyncio twin of :class:`Client`: the same methods, awaited, and
    auto-batching of concurrent owner-less ``check_and_mark`` calls (``batching``;
    ``None`` turns it off). ``verify`` is :class:`Client`'s. Use it as an async
    context manager, or await :meth:`aclose`. ``sleep`` replaces ``asyncio.sleep``
    for the retry waits (tests)."""

    def __init__(
        self,
        url: str,
        token: str | None = None,
        timeout: float = 5.0,
        retry: RetryPolicy | None = None,
        *,
        connect_timeout: float = 2.0,
        batching: Batching | None = Batching(),
        verify: Verify = True,
        transport: httpx.AsyncBaseTransport | None = None,
        jitter_seed: int | None = None,
        sleep: Callable[[float], Awaitable[None]] | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(
            url, token, timeout, connect_timeout, retry or RetryPolicy(), jitter_seed, clock
        )
        self._sleep = asyncio.sleep if sleep is None else sleep
        self._http = httpx.AsyncClient(
            transport=transport,
            verify=_core.ssl_context(verify),
            follow_redirects=False,
            trust_env=False,
        )
        self._batcher = None if batching is None else _Batcher(self, batching)

    async def aclose(self) -> None:
        """Closes the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def batching_stats(self) -> BatchStats | None:
        """What auto-batching has done so far, or ``None`` when it is off."""
        if self._batcher is None:
            return None
        return dataclasses.replace(self._batcher.stats)

    async def _run(self, op: Op[T], end: float | None = None) -> T:
        url, attempts = self._attempts(op, end)
        headers = self._headers_for(op)
        while True:
            timeout = attempts.start()
            try:
                r = await self._http.request(
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
            await self._sleep(step.wait)

    # Marks ---------------------------------------------------------------------

    async def check_and_mark(
        self, namespace: str, ids: Sequence[str], owner: str | None = None
    ) -> Marked:
        """As :meth:`Client.check_and_mark`. Owner-less calls may share a request with
        concurrent ones (see :class:`Batching`): each still gets its own results, and
        ``owner`` is the token of the request that carried them."""
        if owner is None and self._batcher is not None:
            sent = _core._ids(ids)
            if 0 < len(sent) <= self._batcher.config.max_ids:
                return await self._batcher.mark(namespace, sent)
        return await self._run(_core.check_and_mark(namespace, ids, owner))

    async def check(self, namespace: str, ids: Sequence[str]) -> list[Result]:
        """As :meth:`Client.check`."""
        return await self._run(_core.check(namespace, ids))

    async def forget(self, namespace: str, ids: Sequence[str]) -> list[bool]:
        """As :meth:`Client.forget`."""
        return await self._run(_core.forget(namespace, ids))

    # Claims --------------------------------------------------------------------

    async def claim(self, namespace: str, id: str, lease: Lease, owner: str | None = None) -> Claim:
        """As :meth:`Client.claim`."""
        return await self._run(_core.claim(namespace, id, lease, owner))

    async def complete(self, namespace: str, id: str, owner: str) -> None:
        """As :meth:`Client.complete`."""
        await self._run(_core.complete(namespace, id, owner))

    async def release(self, namespace: str, id: str, owner: str) -> None:
        """As :meth:`Client.release`."""
        await self._run(_core.release(namespace, id, owner))

    @contextlib.asynccontextmanager
    async def claimed(
        self, namespace: str, id: str, lease: Lease, owner: str | None = None
    ) -> AsyncIterator[Claim]:
        """As :meth:`Client.claimed`, with ``async with``."""
        c = await self.claim(namespace, id, lease, owner)
        if c.verdict is ClaimVerdict.IN_PROGRESS:
            assert c.until is not None
            raise InProgress(namespace, id, c.until)
        if not c.acquired:
            yield c
            return
        try:
            yield c
        except BaseException:
            await self.release(namespace, id, c.owner)
            raise
        await self.complete(namespace, id, c.owner)

    # Checkpoints ---------------------------------------------------------------

    async def set_checkpoint(
        self,
        namespace: str,
        consumer: str,
        position: str,
        expected: str | _Unset | None = UNSET,
    ) -> None:
        """As :meth:`Client.set_checkpoint`."""
        await self._run(_core.set_checkpoint(namespace, consumer, position, expected))

    async def checkpoint(self, namespace: str, consumer: str) -> str | None:
        """As :meth:`Client.checkpoint`."""
        return await self._run(_core.checkpoint(namespace, consumer))

    # Namespaces ----------------------------------------------------------------

    async def put_namespace(
        self,
        name: str,
        config: NamespaceConfig | Mapping[str, Any],
        drop_now: bool = False,
    ) -> NamespaceView:
        """As :meth:`Client.put_namespace`."""
        return await self._run(_core.put_namespace(name, config, drop_now))

    async def patch_namespace(
        self,
        name: str,
        fields: Mapping[str, Any] | None = None,
        *,
        drop_now: bool = False,
        **kwargs: Any,
    ) -> NamespaceView:
        """As :meth:`Client.patch_namespace`."""
        return await self._run(
            _core.patch_namespace(name, _core.merge_fields(fields, kwargs), drop_now)
        )

    async def namespace(self, name: str) -> NamespaceView:
        """As :meth:`Client.namespace`."""
        return await self._run(_core.namespace(name))

    async def delete_namespace(self, name: str) -> None:
        """As :meth:`Client.delete_namespace`."""
        await self._run(_core.delete_namespace(name))

    async def namespaces(self) -> list[str]:
        """As :meth:`Client.namespaces`."""
        return await self._run(_core.namespaces())

    async def health(self) -> str:
        """As :meth:`Client.health`."""
        return await self._run(_core.health("healthz"))

    async def ready(self) -> str:
        """As :meth:`Client.ready`."""
        return await self._run(_core.health("readyz"))


# ---------------------------------------------------------------------------------
# Auto-batching (clients/rust/src/batch.rs, for owner-less calls).


@dataclasses.dataclass
class _Waiter:
    ids: list[str]
    future: asyncio.Future[Marked]
    start: int = 0
    stop: int = 0


@dataclasses.dataclass
class _Batch:
    opened: float
    waiters: list[_Waiter] = dataclasses.field(default_factory=list)
    seen: set[str] = dataclasses.field(default_factory=set)
    size: int = 0
    timer: asyncio.TimerHandle | None = None


@dataclasses.dataclass
class _Lane:
    in_flight: int = 0
    queue: deque[_Batch] = dataclasses.field(default_factory=deque)


def _clone(e: E) -> E:
    """A copy of an exception for one more caller (raising one instance in several
    tasks would tangle their tracebacks)."""
    try:
        new = type(e).__new__(type(e))
        new.__dict__.update(e.__dict__)
        new.args = e.args
        new.__cause__ = e.__cause__
        return new
    except Exception:  # pragma: no cover - an exception type that cannot be copied
        return e


class _Batcher:
    def __init__(self, client: AsyncClient, config: Batching) -> None:
        self.client = client
        self.config = config
        self.lanes: dict[str, _Lane] = {}
        self.stats = BatchStats()
        # Tasks sending batches, kept so that they are not collected mid-flight.
        self.tasks: set[asyncio.Task[None]] = set()

    async def mark(self, namespace: str, ids: list[str]) -> Marked:
        lane = self.lanes.setdefault(namespace, _Lane())
        self.stats.calls += 1
        if not lane.queue and lane.in_flight < self.config.max_in_flight:
            # An idle lane: alone, at once, from the caller's own task.
            lane.in_flight += 1
            self.stats.requests += 1
            try:
                return await self.client._run(_core.mark_op(namespace, ids, _core.random_owner()))
            finally:
                self._slot_freed(namespace)
        bad = _core.invalid_id(ids)
        if bad is not None:
            # Refused before it joins, so that it cannot fail its batch mates.
            raise bad
        loop = asyncio.get_running_loop()
        waiter = _Waiter(ids, loop.create_future())
        batch = lane.queue[-1] if lane.queue else None
        if (
            batch is None
            or batch.size + len(ids) > self.config.max_ids
            or any(i in batch.seen for i in ids)
        ):
            batch = _Batch(opened=self.client._clock())
            lane.queue.append(batch)
            batch.timer = loop.call_later(self.config.window, self._expire, namespace, batch)
        batch.waiters.append(waiter)
        batch.seen.update(ids)
        batch.size += len(ids)
        if batch.size >= self.config.max_ids:
            lane.queue.remove(batch)
            lane.in_flight += 1
            self._launch(namespace, batch)
        elif lane.in_flight < self.config.max_in_flight:
            lane.in_flight += 1
            self._launch(namespace, lane.queue.popleft())
        return await waiter.future

    def _launch(self, namespace: str, batch: _Batch) -> None:
        """Sends ``batch`` on a slot already counted in its lane's ``in_flight``."""
        if batch.timer is not None:
            batch.timer.cancel()
        task = asyncio.get_running_loop().create_task(self._send(namespace, batch))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def _expire(self, namespace: str, batch: _Batch) -> None:
        """The batch's window ended with it still waiting: it goes now."""
        lane = self.lanes.get(namespace)
        if lane is None or batch not in lane.queue:
            return
        lane.queue.remove(batch)
        lane.in_flight += 1
        self._launch(namespace, batch)

    def _slot_freed(self, namespace: str) -> None:
        """A request of the lane ended: its slot goes to the oldest waiting batch."""
        lane = self.lanes.get(namespace)
        if lane is None:  # pragma: no cover - a lane lives while it has requests
            return
        if lane.queue:
            self._launch(namespace, lane.queue.popleft())
            return
        lane.in_flight -= 1
        if lane.in_flight == 0:
            del self.lanes[namespace]

    async def _send(self, namespace: str, batch: _Batch) -> None:
        try:
            # Calls whose callers have gone (cancelled) are left out.
            waiters = [w for w in batch.waiters if not w.future.done()]
            if not waiters:
                return
            ids: list[str] = []
            for w in waiters:
                w.start = len(ids)
                ids.extend(w.ids)
                w.stop = len(ids)
            self.stats.requests += 1
            owner = _core.random_owner()
            end = batch.opened + self.client.retry_policy.deadline
            try:
                marked = await self.client._run(_core.mark_op(namespace, ids, owner), end)
            except HttpError as e:
                if len(waiters) > 1 and e.status in (400, 413):
                    # Nothing in the request was marked: each call goes again alone,
                    # with the same token, and gets the answer it would have had.
                    for w in waiters:
                        self.stats.requests += 1
                        self._alone(namespace, w, owner, end)
                    return
                self._fail(waiters, e)
            except Exception as e:
                self._fail(waiters, e)
            except BaseException as e:  # cancelled: the callers must not hang
                self._fail(waiters, e)
                raise
            else:
                for w in waiters:
                    if not w.future.done():
                        w.future.set_result(Marked(owner, marked[w.start : w.stop]))
        finally:
            self._slot_freed(namespace)

    def _alone(self, namespace: str, w: _Waiter, owner: str, end: float) -> None:
        async def run() -> None:
            try:
                marked = await self.client._run(_core.mark_op(namespace, w.ids, owner), end)
            except BaseException as e:
                self._fail([w], e)
                if not isinstance(e, Exception):
                    raise
            else:
                if not w.future.done():
                    w.future.set_result(marked)

        task = asyncio.get_running_loop().create_task(run())
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    @staticmethod
    def _fail(waiters: list[_Waiter], e: BaseException) -> None:
        for w in waiters:
            if w.future.done():
                continue
            if isinstance(e, asyncio.CancelledError):
                w.future.cancel()
            else:
                w.future.set_exception(_clone(e))
