"""The client against a real oncelyd (started by the session fixture)."""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
import time
import uuid

import httpx
import pytest
from conftest import Daemon, fresh

import oncely


def test_health_and_readiness(client: oncely.Client) -> None:
    assert client.health() == "ok"
    assert client.ready() == "ready"


def test_check_and_mark_verdicts_in_order_with_replay(client: oncely.Client, ns: str) -> None:
    a, b, c = fresh("a"), fresh("b"), fresh("c")
    first = client.check_and_mark(ns, [a, b])
    assert [r.id for r in first] == [a, b]
    assert [r.verdict for r in first] == [oncely.Verdict.NEW, oncely.Verdict.NEW]
    assert all(r.is_new and not r.replayed and r.until is None for r in first)
    assert first.owner.startswith("client-")

    # Same owner: the original new, replayed (a retry of the same delivery).
    again = client.check_and_mark(ns, [b, c, a], owner=first.owner)
    assert [(r.id, r.verdict, r.replayed) for r in again] == [
        (b, oncely.Verdict.NEW, True),
        (c, oncely.Verdict.NEW, False),
        (a, oncely.Verdict.NEW, True),
    ]
    # A fresh owner (a redelivery): duplicates.
    other = client.check_and_mark(ns, [a, b, c])
    assert other.owner != first.owner
    assert [r.verdict for r in other] == [oncely.Verdict.DUPLICATE] * 3
    assert not any(r.is_new for r in other)
    # check answers without marking.
    unseen = fresh("u")
    assert [r.verdict for r in client.check(ns, [a, unseen])] == ["duplicate", "new"]
    assert client.check(ns, [unseen])[0].verdict is oncely.Verdict.NEW


def test_bad_input_is_the_daemons_400(client: oncely.Client, ns: str) -> None:
    with pytest.raises(oncely.HttpError) as e:
        client.check_and_mark(ns, ["ok", ""])
    assert e.value.status == 400 and e.value.code == "invalid_id"
    assert "index 1" in e.value.message and e.value.attempts == 1
    # Nothing of the refused request was marked.
    assert client.check(ns, ["ok"])[0].verdict is oncely.Verdict.NEW
    with pytest.raises(oncely.UnknownNamespace) as u:
        client.check_and_mark("no-such-" + uuid.uuid4().hex[:8], ["x"])
    assert u.value.status == 404


def test_claims_acquire_block_complete_and_release(client: oncely.Client, ns: str) -> None:
    id_ = fresh("job")
    before = dt.datetime.now(dt.timezone.utc)
    mine = client.claim(ns, id_, dt.timedelta(seconds=30))
    assert mine.acquired and not mine.replayed and not mine.taken_over
    assert mine.until is not None and mine.until.tzinfo is not None
    assert before + dt.timedelta(seconds=25) < mine.until < before + dt.timedelta(seconds=40)

    renewed = client.claim(ns, id_, 30, owner=mine.owner)
    assert renewed.acquired and renewed.replayed

    theirs = client.claim(ns, id_, 30)
    assert theirs.verdict is oncely.ClaimVerdict.IN_PROGRESS and not theirs.acquired
    assert theirs.until is not None
    # A mark of a claimed ID answers in_progress with the lease end.
    r = client.check_and_mark(ns, [id_])[0]
    assert r.verdict is oncely.Verdict.IN_PROGRESS and r.until is not None
    assert abs((r.until - theirs.until).total_seconds()) < 1

    with pytest.raises(oncely.Conflict) as e:
        client.complete(ns, id_, theirs.owner)
    assert e.value.status == 409 and e.value.code == "conflict"

    client.release(ns, id_, mine.owner)
    client.release(ns, id_, mine.owner)  # releasing twice is fine
    again = client.claim(ns, id_, 30)
    assert again.acquired
    client.complete(ns, id_, again.owner)
    client.complete(ns, id_, again.owner)  # completing twice is fine
    assert client.claim(ns, id_, 30).verdict is oncely.ClaimVerdict.DUPLICATE
    assert client.check_and_mark(ns, [id_])[0].verdict is oncely.Verdict.DUPLICATE


def test_an_expired_lease_is_taken_over(client: oncely.Client, ns: str) -> None:
    id_ = fresh("lease")
    assert client.claim(ns, id_, 0.05).acquired
    time.sleep(0.2)
    next_ = client.claim(ns, id_, 30)
    assert next_.acquired and next_.taken_over


def test_claimed_completes_releases_and_raises_in_progress(client: oncely.Client, ns: str) -> None:
    id_ = fresh("ctx")
    with pytest.raises(RuntimeError), client.claimed(ns, id_, 30):
        raise RuntimeError("failed mid-way")
    # Released: the next delivery gets it.
    with client.claimed(ns, id_, 30) as claim:
        assert claim.acquired
        held = client.claim(ns, id_, 30)
        assert held.verdict is oncely.ClaimVerdict.IN_PROGRESS
    assert client.claim(ns, id_, 30).verdict is oncely.ClaimVerdict.DUPLICATE
    other = fresh("ctx")
    holder = client.claim(ns, other, 30)
    with pytest.raises(oncely.InProgress) as e, client.claimed(ns, other, 30):
        pass
    assert e.value.until == holder.until and e.value.id == other


def test_checkpoints_with_and_without_preconditions(client: oncely.Client, ns: str) -> None:
    assert client.checkpoint(ns, "c1") is None
    with pytest.raises(oncely.CheckpointConflict) as e:
        client.set_checkpoint(ns, "c1", "p2", expected="p1")
    assert e.value.current is None
    client.set_checkpoint(ns, "c1", "p1", expected=None)
    client.set_checkpoint(ns, "c1", "p1", expected=None)  # a retry that landed: 200
    with pytest.raises(oncely.CheckpointConflict) as e:
        client.set_checkpoint(ns, "c1", "p3", expected=None)
    assert e.value.current == "p1" and e.value.status == 409
    client.set_checkpoint(ns, "c1", "p2", expected="p1")
    assert client.checkpoint(ns, "c1") == "p2"
    client.set_checkpoint(ns, "c1", "p0")  # no precondition: stored whatever was
    assert client.checkpoint(ns, "c1") == "p0"
    with pytest.raises(oncely.UnknownNamespace):
        client.checkpoint("no-such-" + uuid.uuid4().hex[:8], "c1")


def test_forget_gives_ids_back(client: oncely.Client, ns: str) -> None:
    a, b, never = fresh("a"), fresh("b"), fresh("n")
    client.check_and_mark(ns, [a, b])
    held = fresh("h")
    client.claim(ns, held, 30)
    assert client.forget(ns, [a, never, held, a]) == [True, False, False, False]
    assert client.check_and_mark(ns, [a, b]).results[0].is_new
    assert client.check(ns, [b])[0].verdict is oncely.Verdict.DUPLICATE


def test_namespace_administration(client: oncely.Client) -> None:
    name = "py-admin-" + uuid.uuid4().hex[:8]
    cfg = oncely.NamespaceConfig(
        generations=5,
        generation_capacity=1,
        generation_span=dt.timedelta(minutes=15),
        fp_rate=0.02,
        exact_generations=3,
    )
    created = client.put_namespace(name, cfg)
    assert created.created is True and created.name == name and created.config == cfg
    assert created.remembers_at_least.duration == dt.timedelta(hours=1)
    assert created.remembers_at_least.ids == 4
    assert created.generations and created.generations[0].sealed_at is None
    assert created.generations[0].opened_at.tzinfo is not None
    assert client.put_namespace(name, cfg).created is False
    assert name in client.namespaces()

    # One ID per generation: the ring fills, and three generations keep exact tables.
    for i in range(6):
        assert client.check_and_mark(name, [f"g{i}"])[0].is_new
    assert sum(g.exact for g in client.namespace(name).generations) == 3
    with pytest.raises(oncely.HttpError) as e:
        client.patch_namespace(name, exact_generations=2)
    assert e.value.status == 409 and e.value.code == "would_drop"
    patched = client.patch_namespace(name, {"exact_generations": 2}, drop_now=True)
    assert patched.config.exact_generations == 2 and patched.config.generations == 5
    assert sum(g.exact for g in patched.generations) == 2
    patched = client.patch_namespace(name, generation_span="30m", fp_rate=0.01)
    assert patched.config.generation_span == dt.timedelta(minutes=30)
    assert client.namespace(name).config == patched.config

    with pytest.raises(oncely.HttpError) as e:
        client.put_namespace(name, {**cfg.to_wire(), "generations": 0})
    assert e.value.status == 400

    client.delete_namespace(name)
    assert name not in client.namespaces()
    with pytest.raises(oncely.UnknownNamespace):
        client.delete_namespace(name)  # no earlier attempt explains it: an error
    with pytest.raises(oncely.UnknownNamespace):
        client.patch_namespace(name, generations=3)  # a PATCH never creates
    with pytest.raises(oncely.HttpError) as e:
        client.delete_namespace("default")
    assert e.value.status == 409 and e.value.code == "refused"


def test_the_daemon_refuses_fields_it_does_not_know(daemon: Daemon) -> None:
    # Why the client sends no `fingerprints` or `result` yet.
    r = httpx.post(
        f"{daemon.url}/v1/namespaces/default/check-and-mark",
        json={"ids": [fresh()], "fingerprints": ["x"]},
    )
    assert r.status_code == 400


def test_tokens(daemon_with_token: Daemon) -> None:
    url, token = daemon_with_token.url, daemon_with_token.token
    with oncely.Client(url) as anonymous:
        assert anonymous.health() == "ok"  # needs no token
        with pytest.raises(oncely.HttpError) as e:
            anonymous.check_and_mark("default", [fresh()])
        assert e.value.status == 401 and e.value.code == "unauthorized"
    with oncely.Client(url, token="wrong-token") as wrong, pytest.raises(oncely.HttpError) as e:
        wrong.namespaces()
    assert e.value.status == 401
    with oncely.Client(url, token=token) as authed:
        assert authed.check_and_mark("default", [fresh()])[0].is_new
        assert "default" in authed.namespaces()

    async def main() -> None:
        async with oncely.AsyncClient(url, token=token) as c:
            assert (await c.check_and_mark("default", [fresh()]))[0].is_new

    asyncio.run(main())


def test_no_daemon_is_unavailable_within_the_deadline() -> None:
    # A port nothing listens on: connection refused, retried, then Unavailable.
    with oncely.Client(
        "http://127.0.0.1:9", retry=oncely.RetryPolicy(attempts=3, deadline=5.0)
    ) as c:
        t0 = time.monotonic()
        with pytest.raises(oncely.Unavailable) as e:
            c.check_and_mark("default", ["x"])
        assert time.monotonic() - t0 < 5.0
    assert e.value.attempts == 3 and e.value.status is None


# --- concurrency: exactly one new ---------------------------------------------------


def test_eight_threads_marking_one_id_get_exactly_one_new(client: oncely.Client, ns: str) -> None:
    for _round in range(5):
        id_ = fresh("race")
        barrier = threading.Barrier(8)
        verdicts: list[oncely.Verdict] = []
        lock = threading.Lock()

        def mark(
            id_: str,
            barrier: threading.Barrier,
            verdicts: list[oncely.Verdict],
            lock: threading.Lock,
        ) -> None:
            barrier.wait()
            v = client.check_and_mark(ns, [id_])[0].verdict
            with lock:
                verdicts.append(v)

        threads = [
            threading.Thread(target=mark, args=(id_, barrier, verdicts, lock)) for _ in range(8)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(verdicts) == 8
        assert verdicts.count(oncely.Verdict.NEW) == 1, verdicts
        assert verdicts.count(oncely.Verdict.DUPLICATE) == 7, verdicts


@pytest.mark.parametrize("batching", [True, False])
def test_eight_tasks_marking_one_id_get_exactly_one_new(daemon: Daemon, batching: bool) -> None:
    async def main() -> None:
        async with oncely.AsyncClient(
            daemon.url, batching=oncely.Batching() if batching else None
        ) as c:
            for _round in range(5):
                id_ = fresh("arace")
                out = await asyncio.gather(*(c.check_and_mark("default", [id_]) for _ in range(8)))
                verdicts = [m[0].verdict for m in out]
                assert verdicts.count(oncely.Verdict.NEW) == 1, verdicts
                assert verdicts.count(oncely.Verdict.DUPLICATE) == 7, verdicts

    asyncio.run(main())


def test_async_batching_against_the_daemon(daemon: Daemon) -> None:
    async def main() -> None:
        async with oncely.AsyncClient(
            daemon.url, batching=oncely.Batching(max_in_flight=2, window=0.005)
        ) as c:
            run = uuid.uuid4().hex
            ids = [f"{run}-{i}" for i in range(300)]
            calls = [c.check_and_mark("default", [i]) for i in ids]
            calls.insert(100, c.check_and_mark("default", ["x" * 300]))
            out = await asyncio.gather(*calls, return_exceptions=True)
            bad = out.pop(100)
            assert isinstance(bad, oncely.HttpError) and bad.code == "invalid_id"
            assert all(isinstance(m, oncely.Marked) for m in out)
            marked = [m for m in out if isinstance(m, oncely.Marked)]
            assert [m[0].id for m in marked] == ids
            assert all(m[0].is_new for m in marked)
            stats = c.batching_stats()
            assert stats is not None and stats.calls == 301
            assert stats.requests < 300, stats
            # Each call's owner replays its own ID.
            again = await c.check_and_mark("default", [ids[7]], owner=marked[7].owner)
            assert again[0].replayed
            # And everything is marked.
            checked = await c.check("default", ids)
            assert all(r.verdict is oncely.Verdict.DUPLICATE for r in checked)

    asyncio.run(main())


def test_async_client_covers_every_route(daemon: Daemon) -> None:
    async def main() -> None:
        async with oncely.AsyncClient(daemon.url) as c:
            assert await c.health() == "ok" and await c.ready() == "ready"
            name = "py-async-" + uuid.uuid4().hex[:8]
            view = await c.put_namespace(name, oncely.NamespaceConfig(generations=3))
            assert view.created
            assert (await c.patch_namespace(name, generations=4)).config.generations == 4
            assert (await c.namespace(name)).config.generations == 4
            assert name in await c.namespaces()
            id_ = fresh("j")
            async with c.claimed(name, id_, 30) as claim:
                assert claim.acquired
            assert (await c.claim(name, id_, 30)).verdict is oncely.ClaimVerdict.DUPLICATE
            other = await c.claim(name, fresh("k"), 30)
            await c.release(name, other.id, other.owner)
            await c.complete(name, (await c.claim(name, other.id, 30, owner="o-1")).id, "o-1")
            await c.set_checkpoint(name, "c", "p1", expected=None)
            assert await c.checkpoint(name, "c") == "p1"
            assert await c.forget(name, [id_]) == [True]
            assert (await c.check(name, [id_]))[0].verdict is oncely.Verdict.NEW
            await c.delete_namespace(name)
            with pytest.raises(oncely.UnknownNamespace):
                await c.namespace(name)

    asyncio.run(main())
