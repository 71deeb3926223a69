"""AsyncClient's auto-batching, against an async ``httpx.MockTransport`` that plays a
daemon: answers check-and-mark like one (one ``new`` per ID), slowly enough that
concurrent calls queue up."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

import oncely

URL = "http://oncely.test"


class FakeDaemon:
    def __init__(self, delay: float = 0.01, refuse: str | None = None) -> None:
        self.delay = delay
        self.refuse = refuse
        self.marked: dict[str, str] = {}
        self.requests: list[dict[str, Any]] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        doc = json.loads(request.content)
        self.requests.append(doc)
        await asyncio.sleep(1.0 if "slow" in doc["ids"] else self.delay)
        ids, owner = doc["ids"], doc["owner"]
        if len(ids) != len(set(ids)):
            raise AssertionError(f"one request carried an ID twice: {ids}")
        if self.refuse is not None and self.refuse in ids:
            return httpx.Response(
                400, json={"error": {"code": "invalid_request", "message": "refused whole"}}
            )
        results = []
        for i in ids:
            if i not in self.marked:
                self.marked[i] = owner
                results.append({"id": i, "verdict": "new", "replayed": False})
            elif self.marked[i] == owner:
                results.append({"id": i, "verdict": "new", "replayed": True})
            else:
                results.append({"id": i, "verdict": "duplicate", "replayed": False})
        return httpx.Response(200, json={"results": results})


def make(fake: FakeDaemon, **batching: Any) -> oncely.AsyncClient:
    return oncely.AsyncClient(
        URL, transport=httpx.MockTransport(fake), batching=oncely.Batching(**batching)
    )


def test_an_idle_client_sends_each_call_alone_at_once() -> None:
    fake = FakeDaemon(delay=0)

    async def main() -> None:
        async with make(fake) as c:
            for i in range(3):
                marked = await c.check_and_mark("ns", [f"e{i}"])
                assert marked[0].is_new
            stats = c.batching_stats()
            assert stats is not None and (stats.calls, stats.requests) == (3, 3)

    asyncio.run(main())
    assert [r["ids"] for r in fake.requests] == [["e0"], ["e1"], ["e2"]]


def test_concurrent_calls_share_requests_and_each_gets_its_own_results() -> None:
    fake = FakeDaemon(delay=0.02)

    async def main() -> list[oncely.Marked]:
        async with make(fake, max_in_flight=2, window=0.5) as c:
            calls = [c.check_and_mark("ns", [f"a{i}", f"b{i}"]) for i in range(50)]
            out = await asyncio.gather(*calls)
            stats = c.batching_stats()
            assert stats is not None and stats.calls == 50
            assert stats.requests == len(fake.requests)
            return out

    out = asyncio.run(main())
    assert len(fake.requests) < 10, len(fake.requests)  # 2 alone, the rest coalesced
    for i, marked in enumerate(out):
        assert [r.id for r in marked] == [f"a{i}", f"b{i}"]
        assert all(r.is_new and not r.replayed for r in marked)
        # The owner returned is the one its request carried.
        assert fake.marked[f"a{i}"] == marked.owner


def test_a_batch_is_sent_when_it_holds_max_ids() -> None:
    fake = FakeDaemon(delay=0.05)

    async def main() -> None:
        async with make(fake, max_in_flight=1, window=10.0, max_ids=4) as c:
            await asyncio.gather(*(c.check_and_mark("ns", [f"e{i}"]) for i in range(9)))

    asyncio.run(main())
    sizes = sorted(len(r["ids"]) for r in fake.requests)
    assert sizes == [1, 4, 4]  # never waited for the 10 s window


def test_the_window_sends_a_waiting_batch_while_the_lane_is_busy() -> None:
    fake = FakeDaemon(delay=0.05)  # 1 s for the "slow" request

    async def main() -> float:
        async with make(fake, max_in_flight=1, window=0.01) as c:
            loop = asyncio.get_running_loop()
            first = asyncio.ensure_future(c.check_and_mark("ns", ["slow"]))
            await asyncio.sleep(0)
            t0 = loop.time()
            await c.check_and_mark("ns", ["next"])
            waited = loop.time() - t0
            await first
            return waited

    waited = asyncio.run(main())
    # Sent after its 10 ms window (and answered in 50 ms), not after the first
    # request's 1 s.
    assert 0.05 <= waited < 0.6, waited
    assert len(fake.requests) == 2


def test_the_same_id_never_goes_twice_in_one_request() -> None:
    fake = FakeDaemon(delay=0.02)

    async def main() -> list[oncely.Marked]:
        async with make(fake, max_in_flight=1, window=0.05) as c:
            return await asyncio.gather(*(c.check_and_mark("ns", ["same"]) for _ in range(8)))

    out = asyncio.run(main())
    assert sum(m[0].is_new for m in out) == 1
    assert sum(m[0].verdict is oncely.Verdict.DUPLICATE for m in out) == 7


def test_a_bad_id_fails_its_own_call_only() -> None:
    fake = FakeDaemon(delay=0.02)

    async def main() -> list[Any]:
        async with make(fake, max_in_flight=1, window=0.05) as c:
            calls = [c.check_and_mark("ns", [f"e{i}"]) for i in range(3)]
            calls.insert(2, c.check_and_mark("ns", ["ok", ""]))
            calls.append(c.check_and_mark("ns", ["x" * 257]))
            return await asyncio.gather(*calls, return_exceptions=True)

    out = asyncio.run(main())
    bad, long = out[2], out[4]
    assert isinstance(bad, oncely.HttpError) and bad.code == "invalid_id" and bad.attempts == 0
    assert bad.message == "invalid event id at index 1: empty"
    assert isinstance(long, oncely.HttpError)
    assert long.message == "invalid event id at index 0: 257 bytes, over the limit of 256"
    for i in (0, 1, 3):
        assert isinstance(out[i], oncely.Marked) and out[i][0].is_new
    assert all("" not in r["ids"] for r in fake.requests)


def test_a_request_refused_whole_is_sent_again_call_by_call() -> None:
    fake = FakeDaemon(delay=0.02, refuse="poison")

    async def main() -> list[Any]:
        async with make(fake, max_in_flight=1, window=0.05) as c:
            calls = [c.check_and_mark("ns", [f"e{i}"]) for i in range(4)]
            calls.insert(2, c.check_and_mark("ns", ["poison"]))
            return await asyncio.gather(*calls, return_exceptions=True)

    out = asyncio.run(main())
    poisoned = out[2]
    assert isinstance(poisoned, oncely.HttpError) and poisoned.status == 400
    for i in (0, 1, 3, 4):
        assert isinstance(out[i], oncely.Marked) and out[i][0].is_new, out[i]
    # The refused batch went again, each call alone.
    assert ["poison"] in [r["ids"] for r in fake.requests]


def test_shared_failures_reach_every_call_as_their_own_exception() -> None:
    async def down(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(0.01)
        raise httpx.ConnectError("refused")

    async def main() -> list[Any]:
        async with oncely.AsyncClient(
            URL,
            transport=httpx.MockTransport(down),
            retry=oncely.RetryPolicy.none(),
            batching=oncely.Batching(max_in_flight=1, window=0.05),
        ) as c:
            return await asyncio.gather(
                *(c.check_and_mark("ns", [f"e{i}"]) for i in range(4)), return_exceptions=True
            )

    out = asyncio.run(main())
    assert all(isinstance(e, oncely.Unavailable) for e in out)
    assert len({id(e) for e in out}) == 4


def test_a_cancelled_waiting_call_is_left_out() -> None:
    fake = FakeDaemon(delay=0.05)

    async def main() -> None:
        async with make(fake, max_in_flight=1, window=1.0) as c:
            first = asyncio.ensure_future(c.check_and_mark("ns", ["first"]))
            await asyncio.sleep(0)
            gone = asyncio.ensure_future(c.check_and_mark("ns", ["gone"]))
            kept = asyncio.ensure_future(c.check_and_mark("ns", ["kept"]))
            await asyncio.sleep(0.01)
            gone.cancel()
            await first
            assert (await kept)[0].is_new
            with pytest.raises(asyncio.CancelledError):
                await gone

    asyncio.run(main())
    sent = [i for r in fake.requests for i in r["ids"]]
    assert "gone" not in sent and "kept" in sent


def test_calls_with_an_owner_are_never_coalesced() -> None:
    fake = FakeDaemon(delay=0.02)

    async def main() -> None:
        async with make(fake, max_in_flight=1, window=0.5) as c:
            out = await asyncio.gather(
                *(c.check_and_mark("ns", [f"e{i}"], owner=f"o{i}") for i in range(5))
            )
            assert [m.owner for m in out] == [f"o{i}" for i in range(5)]

    asyncio.run(main())
    assert len(fake.requests) == 5


def test_batching_settings_are_validated() -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        oncely.Batching(max_in_flight=0)
    with pytest.raises(ValueError, match="max_ids"):
        oncely.Batching(max_ids=0)
    assert oncely.AsyncClient(URL, batching=None).batching_stats() is None
