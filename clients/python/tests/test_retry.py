"""The retry rules, the request shapes and the error mapping, against
``httpx.MockTransport``: deterministic (the sleep, the clock and the jitter seed are
injected), no daemon needed."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

import oncely

URL = "http://oncely.test"


class Fake:
    """A clock that only the injected sleep moves, and the sleeps asked for."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


Handler = Callable[[httpx.Request], httpx.Response]


def scripted(*answers: httpx.Response | Exception) -> tuple[Handler, list[httpx.Request]]:
    """A handler that gives ``answers`` in turn (an exception is raised), and the
    requests it saw."""
    seen: list[httpx.Request] = []
    queue: Iterator[httpx.Response | Exception] = iter(answers)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        a = next(queue)
        if isinstance(a, Exception):
            raise a
        return a

    return handle, seen


def err(status: int, code: str, retry_after: str | None = None, **extra: Any) -> httpx.Response:
    headers = {"retry-after": retry_after} if retry_after is not None else {}
    return httpx.Response(
        status, json={"error": {"code": code, "message": f"m-{code}", **extra}}, headers=headers
    )


def marks(*ids: str, verdict: str = "new", replayed: bool = False) -> httpx.Response:
    return httpx.Response(
        200, json={"results": [{"id": i, "verdict": verdict, "replayed": replayed} for i in ids]}
    )


OK_ACTION = httpx.Response(200, json={"id": "a", "state": "released"})


def client(
    handler: Handler,
    fake: Fake,
    retry: oncely.RetryPolicy | None = None,
    seed: int = 7,
    **kw: Any,
) -> oncely.Client:
    return oncely.Client(
        URL,
        retry=retry,
        transport=httpx.MockTransport(handler),
        jitter_seed=seed,
        sleep=fake.sleep,
        clock=fake.clock,
        **kw,
    )


def body(request: httpx.Request) -> Any:
    return json.loads(request.content)


# --- the policy's arithmetic (the Rust client's own cases) -------------------------


def test_backoff_doubles_and_is_capped() -> None:
    p = oncely.RetryPolicy(attempts=10, base_delay=0.1, max_delay=1.0)
    assert p.delay(1, 0.0, None) == pytest.approx(0.05)
    assert p.delay(1, 1.0, None) == pytest.approx(0.1)
    assert p.delay(3, 1.0, None) == pytest.approx(0.4)
    assert p.delay(5, 1.0, None) == pytest.approx(1.0)
    assert p.delay(40, 0.5, None) == pytest.approx(0.75)
    assert p.delay(10_000, 1.0, None) == pytest.approx(1.0)  # no overflow


def test_retry_after_is_a_floor_with_jitter_on_top() -> None:
    p = oncely.RetryPolicy(attempts=10, base_delay=0.1, max_delay=1.0)
    assert p.delay(1, 0.0, 1.0) == pytest.approx(1.0)
    assert p.delay(1, 0.5, 1.0) == pytest.approx(1.5)
    assert p.delay(1, 0.999, 1.0) == pytest.approx(1.999)
    assert p.delay(1, 0.0, 5.0) == pytest.approx(5.0)  # longer than max_delay: honoured
    assert p.delay(5, 1.0, 0.01) == pytest.approx(1.01)  # short: the backoff's spread


def test_policies_are_validated() -> None:
    with pytest.raises(ValueError, match="attempts"):
        oncely.RetryPolicy(attempts=0)
    with pytest.raises(ValueError, match="deadline"):
        oncely.RetryPolicy(deadline=0)
    assert oncely.RetryPolicy.none().attempts == 1


# --- what is retried, and how long the waits are -----------------------------------


def test_a_503_with_retry_after_is_retried_after_it_plus_seeded_jitter() -> None:
    fake = Fake()
    handler, seen = scripted(err(503, "overloaded", retry_after="1"), marks("a"))
    with client(handler, fake, seed=42) as c:
        marked = c.check_and_mark("ns", ["a"])
    assert marked[0].is_new and len(seen) == 2
    # The wait is Retry-After plus up to max(Retry-After, 50 ms backoff) of jitter,
    # the jitter drawn from the seeded generator.
    unit = random.Random(42).random()
    assert fake.sleeps == [pytest.approx(1.0 + 1.0 * unit)]


def test_waits_without_retry_after_back_off_exponentially_with_half_jitter() -> None:
    fake = Fake()
    handler, seen = scripted(
        httpx.ConnectError("refused"),
        err(502, "http_502"),
        err(504, "deadline_exceeded"),
        marks("a"),
    )
    with client(handler, fake, seed=3) as c:
        assert c.check_and_mark("ns", ["a"])[0].is_new
    assert len(seen) == 4
    rng = random.Random(3)
    expected = [n / 2 + n / 2 * rng.random() for n in (0.05, 0.1, 0.2)]
    assert fake.sleeps == [pytest.approx(w) for w in expected]


def test_one_seed_one_sequence_of_waits() -> None:
    def run(seed: int) -> list[float]:
        fake = Fake()
        handler, _ = scripted(*[err(503, "overloaded")] * 4)
        with client(handler, fake, seed=seed) as c, pytest.raises(oncely.Unavailable):
            c.check("ns", ["a"])
        return fake.sleeps

    assert run(1) == run(1)
    assert run(1) != run(2)
    assert len(run(1)) == 3


@pytest.mark.parametrize("status", [400, 401, 404, 409, 413, 415, 500])
def test_other_statuses_are_never_retried(status: int) -> None:
    fake = Fake()
    handler, seen = scripted(err(status, "whatever"))
    with client(handler, fake) as c, pytest.raises(oncely.HttpError) as e:
        c.check_and_mark("ns", ["a"])
    assert len(seen) == 1 and fake.sleeps == []
    assert e.value.status == status and e.value.code == "whatever" and e.value.attempts == 1


def test_retries_run_out_on_503_as_unavailable() -> None:
    fake = Fake()
    handler, seen = scripted(*[err(503, "storage_unavailable")] * 4)
    with client(handler, fake) as c, pytest.raises(oncely.Unavailable) as e:
        c.claim("ns", "a", 30, owner="o")
    assert len(seen) == 4
    assert e.value.status == 503 and e.value.code == "storage_unavailable"
    assert e.value.attempts == 4


def test_retries_run_out_on_connection_errors_as_unavailable() -> None:
    fake = Fake()
    handler, seen = scripted(*[httpx.ConnectError("refused")] * 4)
    with client(handler, fake) as c, pytest.raises(oncely.Unavailable) as e:
        c.health()
    assert len(seen) == 4 and e.value.status is None and e.value.attempts == 4
    assert isinstance(e.value.__cause__, httpx.ConnectError)


def test_retries_run_out_on_timeouts_as_timeout() -> None:
    fake = Fake()
    handler, seen = scripted(httpx.ReadTimeout("slow"), httpx.ReadTimeout("slow"))
    with (
        client(handler, fake, retry=oncely.RetryPolicy(attempts=2)) as c,
        pytest.raises(oncely.Timeout) as e,
    ):
        c.check("ns", ["a"])
    assert len(seen) == 2 and e.value.attempts == 2 and e.value.timeout == 5.0


def test_the_deadline_bounds_attempts_and_waits() -> None:
    fake = Fake()
    # Retry-After 2 s would end past a 1.5 s deadline: no sleep, the error at once.
    handler, seen = scripted(err(503, "overloaded", retry_after="2"), marks("a"))
    policy = oncely.RetryPolicy(deadline=1.5)
    with client(handler, fake, retry=policy) as c, pytest.raises(oncely.Unavailable):
        c.check_and_mark("ns", ["a"])
    assert len(seen) == 1 and fake.sleeps == []


def test_an_attempt_gets_at_most_what_is_left_of_the_deadline() -> None:
    fake = Fake()
    handler, seen = scripted(err(503, "overloaded", retry_after="1"), marks("a"))
    policy = oncely.RetryPolicy(deadline=3.0)
    with client(handler, fake, retry=policy, timeout=2.5, seed=0) as c:
        c.check_and_mark("ns", ["a"])
    first, second = (r.extensions["timeout"] for r in seen)
    assert first["read"] == pytest.approx(2.5)  # the per-attempt timeout
    left = 3.0 - fake.sleeps[0]
    assert second["read"] == pytest.approx(left)  # what the deadline leaves
    assert second["connect"] == pytest.approx(min(2.0, left))


def test_a_call_retries_with_its_own_owner_and_the_next_call_draws_a_new_one() -> None:
    fake = Fake()
    handler, seen = scripted(
        httpx.ReadError("reset"), marks("a", replayed=True), marks("a", verdict="duplicate")
    )
    with client(handler, fake) as c:
        first = c.check_and_mark("ns", ["a"])
        second = c.check_and_mark("ns", ["a"])
    owners = [body(r)["owner"] for r in seen]
    assert owners[0] == owners[1] == first.owner
    assert owners[2] == second.owner != first.owner
    assert first[0].replayed and first[0].is_new
    assert second[0].verdict is oncely.Verdict.DUPLICATE and not second[0].is_new


# --- Settled: a retried release / delete whose first attempt may have landed -------


def test_release_retried_after_a_lost_answer_takes_409_as_done() -> None:
    fake = Fake()
    handler, seen = scripted(httpx.ReadError("reset"), err(409, "conflict"))
    with client(handler, fake) as c:
        c.release("ns", "a", "o")
    assert len(seen) == 2


def test_release_409_that_no_earlier_attempt_explains_is_an_error() -> None:
    fake = Fake()
    # First attempt: the daemon's own 503, which says nothing was done.
    handler, seen = scripted(err(503, "overloaded"), err(409, "conflict"))
    with client(handler, fake) as c, pytest.raises(oncely.Conflict) as e:
        c.release("ns", "a", "o")
    assert len(seen) == 2 and e.value.attempts == 2
    handler, _ = scripted(err(409, "conflict"))
    with client(handler, fake) as c, pytest.raises(oncely.Conflict):
        c.release("ns", "a", "o")
    # A connection that never opened carried nothing either.
    handler, _ = scripted(httpx.ConnectError("refused"), err(409, "conflict"))
    with client(handler, fake) as c, pytest.raises(oncely.Conflict):
        c.release("ns", "a", "o")


def test_release_after_a_proxy_503_may_have_landed() -> None:
    fake = Fake()
    handler, _ = scripted(
        httpx.Response(503, text="<html>bad gateway</html>"), err(409, "conflict")
    )
    with client(handler, fake) as c:
        c.release("ns", "a", "o")


def test_complete_never_takes_409_as_done() -> None:
    fake = Fake()
    handler, _ = scripted(httpx.ReadError("reset"), err(409, "conflict"))
    with client(handler, fake) as c, pytest.raises(oncely.Conflict):
        c.complete("ns", "a", "o")


def test_delete_retried_after_a_lost_answer_takes_404_as_done() -> None:
    fake = Fake()
    handler, seen = scripted(httpx.ReadTimeout("slow"), err(404, "unknown_namespace"))
    with client(handler, fake) as c:
        c.delete_namespace("gone")
    assert [r.method for r in seen] == ["DELETE", "DELETE"]
    handler, _ = scripted(err(503, "shutting_down"), err(404, "unknown_namespace"))
    with client(handler, fake) as c, pytest.raises(oncely.UnknownNamespace):
        c.delete_namespace("gone")
    handler, _ = scripted(err(404, "unknown_namespace"))
    with client(handler, fake) as c, pytest.raises(oncely.UnknownNamespace):
        c.delete_namespace("gone")


# --- error mapping ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (404, "unknown_namespace", oncely.UnknownNamespace),
        (409, "conflict", oncely.Conflict),
        (409, "would_drop", oncely.HttpError),
        (400, "invalid_id", oncely.HttpError),
        (401, "unauthorized", oncely.HttpError),
    ],
)
def test_errors_map_by_code(status: int, code: str, cls: type[oncely.HttpError]) -> None:
    handler, _ = scripted(err(status, code))
    with client(handler, Fake()) as c, pytest.raises(oncely.HttpError) as e:
        c.namespace("x")
    assert type(e.value) is cls
    assert (e.value.status, e.value.code, e.value.message) == (status, code, f"m-{code}")
    assert str(e.value) == f"{status} {code}: m-{code}"


def test_checkpoint_conflict_carries_current() -> None:
    handler, seen = scripted(
        err(409, "checkpoint_conflict", current="p-9"),
        err(409, "checkpoint_conflict", current=None),
    )
    with client(handler, Fake()) as c:
        with pytest.raises(oncely.CheckpointConflict) as e:
            c.set_checkpoint("ns", "c", "p-2", expected="p-1")
        assert e.value.current == "p-9" and e.value.status == 409
        with pytest.raises(oncely.CheckpointConflict) as e:
            c.set_checkpoint("ns", "c", "p-2", expected="p-1")
        assert e.value.current is None
    assert len(seen) == 2  # a 409 is never retried


def test_a_body_that_is_not_the_daemons_keeps_the_status() -> None:
    handler, _ = scripted(httpx.Response(418, text="teapot"))
    with client(handler, Fake()) as c, pytest.raises(oncely.HttpError) as e:
        c.health()
    assert e.value.status == 418 and e.value.code == "http_418"


def test_answers_that_do_not_match_the_request_are_decode_errors() -> None:
    handler, _ = scripted(marks("a", "b"), marks("b"), httpx.Response(200, text="not json"))
    with client(handler, Fake()) as c:
        for _ in range(3):
            with pytest.raises(oncely.DecodeError):
                c.check_and_mark("ns", ["a"])


def test_checkpoint_not_found_is_none_and_unknown_namespace_is_an_error() -> None:
    handler, _ = scripted(
        err(404, "checkpoint_not_found"),
        err(404, "unknown_namespace"),
        httpx.Response(200, json={"namespace": "ns", "consumer": "c", "position": "p"}),
    )
    with client(handler, Fake()) as c:
        assert c.checkpoint("ns", "c") is None
        with pytest.raises(oncely.UnknownNamespace):
            c.checkpoint("ns", "c")
        assert c.checkpoint("ns", "c") == "p"


def test_declared_exceptions_are_errors() -> None:
    assert issubclass(oncely.FingerprintMismatch, oncely.HttpError)
    assert issubclass(oncely.ResultUnavailable, oncely.Error)
    for cls in (oncely.Unavailable, oncely.Timeout, oncely.InProgress, oncely.HttpError):
        assert issubclass(cls, oncely.Error)


# --- request shapes -----------------------------------------------------------------


def test_requests_carry_exactly_the_fields_the_daemon_knows() -> None:
    ok_claim = httpx.Response(
        200, json={"verdict": "acquired", "until_ms": 1_700_000_000_000, "replayed": False}
    )
    ckpt = httpx.Response(200, json={"namespace": "n", "consumer": "c", "position": "p"})
    handler, seen = scripted(
        marks("a", "b"),
        httpx.Response(200, json={"results": [{"id": "a", "verdict": "new"}]}),
        ok_claim,
        ok_claim,
        OK_ACTION,
        OK_ACTION,
        ckpt,
        ckpt,
        ckpt,
        httpx.Response(200, json={"results": [{"id": "a", "forgotten": True}]}),
    )
    with client(handler, Fake(), token="s3cret") as c:
        c.check_and_mark("n", ["a", "b"], owner="own")
        c.check("n", ["a"])
        claim = c.claim("n", "a", dt.timedelta(seconds=1.5), owner="own")
        c.claim("n", "a", 0.25, owner="own")
        c.complete("n", "a", "own")
        c.release("n", "a", "own")
        c.set_checkpoint("n", "c", "p")
        c.set_checkpoint("n", "c", "p", expected=None)
        c.set_checkpoint("n", "c", "p", expected="q")
        assert c.forget("n", ["a"]) == [True]
    bodies = [body(r) for r in seen]
    assert bodies == [
        {"ids": ["a", "b"], "owner": "own"},
        {"ids": ["a"]},
        {"id": "a", "owner": "own", "lease_ms": 1500},
        {"id": "a", "owner": "own", "lease_ms": 250},
        {"id": "a", "owner": "own"},
        {"id": "a", "owner": "own"},
        {"position": "p"},
        {"position": "p", "expected": None},
        {"position": "p", "expected": "q"},
        {"ids": ["a"]},
    ]
    assert [r.url.path for r in seen] == [
        "/v1/namespaces/n/check-and-mark",
        "/v1/namespaces/n/check",
        "/v1/namespaces/n/claims",
        "/v1/namespaces/n/claims",
        "/v1/namespaces/n/claims/complete",
        "/v1/namespaces/n/claims/release",
        "/v1/namespaces/n/checkpoints/c",
        "/v1/namespaces/n/checkpoints/c",
        "/v1/namespaces/n/checkpoints/c",
        "/v1/namespaces/n/forget",
    ]
    for r in seen:
        assert r.headers["authorization"] == "Bearer s3cret"
        assert r.headers["content-type"] == "application/json"
    assert claim.until == dt.datetime(2023, 11, 14, 22, 13, 20, tzinfo=dt.timezone.utc)
    assert claim.until is not None and claim.until.tzinfo is not None
    assert claim.acquired and claim.owner == "own"


def test_path_segments_are_percent_encoded() -> None:
    handler, seen = scripted(err(400, "invalid_namespace"), err(400, "invalid_namespace"))
    with client(handler, Fake()) as c:
        for name in ("a/b?c", ".."):
            with pytest.raises(oncely.HttpError):
                c.namespace(name)
    assert seen[0].url.raw_path == b"/v1/namespaces/a%2Fb%3Fc"
    assert seen[1].url.raw_path == b"/v1/namespaces/%2E%2E"


def test_namespace_calls_send_config_fields_and_drop_now() -> None:
    view = {
        "name": "n",
        "config": {
            "generations": 6,
            "generation_capacity": 10,
            "generation_span": "10m",
            "fp_rate": 0.01,
            "exact_generations": 2,
        },
        "remembers_at_least": {"ms": 3_000_000, "ids": 50},
        "generations": [],
        "estimated_fp": 0.0,
        "memory_bytes": 8,
        "charged_bytes": 16,
        "filter_budget": {"charged_bytes": 16, "allocated_bytes": 8},
        "something_newer": 1,
    }
    handler, seen = scripted(
        httpx.Response(201, json=view),
        httpx.Response(200, json=view),
        httpx.Response(200, json=view),
    )
    cfg = oncely.NamespaceConfig(
        generations=6, generation_capacity=10, generation_span=dt.timedelta(minutes=10)
    )
    with client(handler, Fake()) as c:
        v = c.put_namespace("n", cfg)
        assert v.created is True
        assert v.config == cfg
        assert v.remembers_at_least.duration == dt.timedelta(minutes=50)
        assert v.filter_budget is not None and v.filter_budget.budget_bytes is None
        assert v.raw["something_newer"] == 1
        assert c.put_namespace("n", cfg, drop_now=True).created is False
        assert (
            c.patch_namespace("n", {"generations": 2}, fp_rate=0.5, drop_now=True).created is None
        )
        with pytest.raises(TypeError, match="fingerprints"):
            c.patch_namespace("n", fingerprints=True)
        with pytest.raises(ValueError, match="missing: fp_rate, exact_generations"):
            c.put_namespace("n", {"generations": 1, "generation_capacity": 1, "generation_span": 1})
    assert body(seen[0]) == {
        "generations": 6,
        "generation_capacity": 10,
        "generation_span": "10m",
        "fp_rate": 0.01,
        "exact_generations": 2,
    }
    assert body(seen[1])["drop_now"] is True
    assert body(seen[2]) == {"generations": 2, "fp_rate": 0.5, "drop_now": True}
    assert [r.method for r in seen] == ["PUT", "PUT", "PATCH"]


def test_bad_arguments_are_refused_before_sending() -> None:
    handler, seen = scripted()
    with client(handler, Fake()) as c:
        with pytest.raises(TypeError):
            c.check_and_mark("n", "abc")
        with pytest.raises(TypeError):
            c.check("n", [1])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="lease"):
            c.claim("n", "a", 0)
    assert seen == []
    with pytest.raises(ValueError, match="url"):
        oncely.Client("ftp://x")
    with pytest.raises(ValueError, match="token"):
        oncely.Client(URL, token="two words")
    assert "s3cret" not in repr(oncely.Client(URL, token="s3cret"))


def test_verdicts_are_str_enums_equal_to_the_wire() -> None:
    wire: str = oncely.Verdict.PROBABLE_DUPLICATE
    assert wire == "probable_duplicate"
    assert isinstance(oncely.Verdict.NEW, str)
    assert str(oncely.Verdict.IN_PROGRESS) == "in_progress"
    assert oncely.ClaimVerdict("acquired") is oncely.ClaimVerdict.ACQUIRED
    handler, _ = scripted(
        httpx.Response(
            200,
            json={
                "results": [{"id": "a", "verdict": "in_progress", "replayed": False, "until_ms": 5}]
            },
        )
    )
    with client(handler, Fake()) as c:
        r = c.check_and_mark("n", ["a"])[0]
    assert r.verdict is oncely.Verdict.IN_PROGRESS and not r.is_new
    assert r.until == dt.datetime(1970, 1, 1, 0, 0, 0, 5000, tzinfo=dt.timezone.utc)


# --- the async client follows the same rules ----------------------------------------


def test_async_client_retries_with_the_same_rules() -> None:
    fake = Fake()
    handler, seen = scripted(
        err(503, "overloaded", retry_after="1"), httpx.ReadError("reset"), marks("a", replayed=True)
    )

    async def main() -> oncely.Marked:
        async with oncely.AsyncClient(
            URL,
            transport=httpx.MockTransport(handler),
            jitter_seed=5,
            sleep=fake.asleep,
            clock=fake.clock,
            batching=None,
        ) as c:
            return await c.check_and_mark("ns", ["a"])

    marked = asyncio.run(main())
    assert marked[0].replayed and len(seen) == 3
    assert len({body(r)["owner"] for r in seen}) == 1
    rng = random.Random(5)
    assert fake.sleeps == [
        pytest.approx(1.0 + 1.0 * rng.random()),
        pytest.approx(0.05 + 0.05 * rng.random()),
    ]


def test_async_release_and_delete_settle_like_the_sync_ones() -> None:
    fake = Fake()
    handler, _ = scripted(
        httpx.ReadError("reset"),
        err(409, "conflict"),
        err(503, "overloaded"),
        err(404, "unknown_namespace"),
    )

    async def main() -> None:
        async with oncely.AsyncClient(
            URL, transport=httpx.MockTransport(handler), sleep=fake.asleep, clock=fake.clock
        ) as c:
            await c.release("ns", "a", "o")
            with pytest.raises(oncely.UnknownNamespace):
                await c.delete_namespace("ns")

    asyncio.run(main())
