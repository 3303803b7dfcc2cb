"""Durable functions when things fail: a step's own retry and timeout, and children that fail.

A step with ``retry=`` is attempted again after a dormant backoff, under one idempotency
key; its last failure is recorded and raised in the function as ``peo.StepFailed``, which
the function may catch. A gather's failed children are ``peo.ChildFailed``: raised, or put
in their places with ``return_exceptions=True``; with ``attempts=`` only the failed ones
are started again.
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from typing import Any

import pytest

import peo
from peo.core.model import Action
from peo.testing.clock import FakeClock


async def drive(url: str, app: peo.App, client: peo.Client, oid: str, *, rounds: int = 20) -> Any:
    """Run nodes on a fake clock, jumping an hour whenever nothing is due, until ``oid`` ends."""
    clock = FakeClock()
    for _ in range(rounds):
        await asyncio.wait_for(peo.Node(url, app, clock=clock).run_until_idle(), 60)
        if (await client.get(oid, memory=False)).status.is_final:
            return await client.wait(oid, timeout=10)
        clock.advance(3600)
    raise AssertionError(f"object {oid} did not end within {rounds} hour-long jumps")


async def last_error(client: peo.Client, oid: str, url: str, app: peo.App) -> dict[str, Any]:
    with pytest.raises(peo.ObjectFailedError) as failed:
        await drive(url, app, client, oid)
    assert failed.value.last_error is not None
    return failed.value.last_error


# -- run.step(retry=, timeout=) --------------------------------------------------------------


async def test_a_step_with_retry_is_attempted_again_after_a_dormant_backoff_under_one_key(store_url: str) -> None:
    keys: list[str] = []
    calls: Counter[str] = Counter()
    app = peo.App()

    def flaky() -> str:
        keys.append(run_key[0])
        if len(keys) < 3:
            raise ValueError(f"attempt {len(keys)} fails")
        return "fetched"

    run_key: list[str] = [""]

    @app.function("f")
    async def f(run: peo.Run) -> list[Any]:
        first = await run.step(lambda: calls.update(["first"]) or 1, name="first")
        run_key[0] = run.idempotency_key
        second = await run.step(flaky, retry=peo.Retry(max_attempts=3, base=60))
        return [first, second]

    async with peo.Client(store_url) as client:
        oid = await client.submit("f")
        assert await drive(store_url, app, client, oid) == [1, "fetched"]
        assert calls["first"] == 1 and len(keys) == 3 and len(set(keys)) == 1
        memory = (await client.get(oid)).memory
        backoffs = [e for e in memory if e.action is Action.DORMANCY]
        assert [e.outcome["error"]["class"] for e in backoffs] == ["ValueError", "ValueError"]
        assert all(e.outcome["retry_in"] >= 60 * 10**9 // 2 for e in backoffs)  # the step's own base
        assert "in flaky" in backoffs[0].outcome["error"]["traceback"]


async def test_a_step_whose_last_attempt_fails_raises_step_failed_which_the_function_may_catch(
        store_url: str) -> None:
    calls: Counter[str] = Counter()
    app = peo.App()

    def broken() -> None:
        calls["broken"] += 1
        raise ConnectionError("the tool is down")

    @app.function("f")
    async def f(run: peo.Run) -> dict[str, Any]:
        try:
            await run.step(broken, retry=peo.Retry(max_attempts=2))
        except peo.StepFailed as exc:
            after = await run.step(lambda: "compensated", name="compensate")
            return {"step": exc.step, "class": exc.error_class, "message": exc.message,
                    "attempts": exc.attempts, "after": after}
        return {}

    async with peo.Client(store_url) as client:
        oid = await client.submit("f")
        assert await drive(store_url, app, client, oid) == {
            "step": "broken", "class": "ConnectionError", "message": "the tool is down", "attempts": 2,
            "after": "compensated"}
        # The failure was recorded once; the re-runs after it raised it from memory.
        assert calls["broken"] == 2
        state = (await client.get(oid)).state
        assert state["fn.0"]["error"] == {"class": "ConnectionError", "message": "the tool is down", "attempts": 2}


async def test_an_uncaught_step_failed_fails_the_object_without_further_retries(sqlite_url: str) -> None:
    calls: Counter[str] = Counter()
    app = peo.App()

    def broken() -> None:
        calls["broken"] += 1
        raise ValueError("bad input")

    @app.function("f")
    async def f(run: peo.Run) -> None:
        await run.step(broken, retry=peo.Retry(max_attempts=2))

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("f")
        error = await last_error(client, oid, sqlite_url, app)
        assert error["class"] == "StepFailed" and "failed after 2 attempts: ValueError: bad input" in error["message"]
        assert calls["broken"] == 2


async def test_a_class_the_retry_names_non_retryable_fails_the_step_at_its_first_attempt(sqlite_url: str) -> None:
    calls: Counter[str] = Counter()
    app = peo.App()

    def lookup() -> None:
        calls["lookup"] += 1
        raise KeyError("no such customer")

    @app.function("f")
    async def f(run: peo.Run) -> list[Any]:
        try:
            await run.step(lookup, retry=peo.Retry(max_attempts=5, non_retryable=[LookupError]))
        except peo.StepFailed as exc:
            return [exc.error_class, exc.attempts]
        return []

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("f")
        assert await drive(sqlite_url, app, client, oid) == ["KeyError", 1]
        assert calls["lookup"] == 1


async def test_an_attempt_past_its_timeout_fails_with_step_timeout(sqlite_url: str) -> None:
    release = threading.Event()
    app = peo.App()

    async def hangs() -> str:
        await asyncio.Event().wait()  # never set: only the timeout ends it
        return "never"

    def hangs_in_a_thread() -> str:
        release.wait(30)  # a thread cannot be stopped: the test lets it go at the end
        return "late"

    @app.function("f")
    async def f(run: peo.Run) -> list[Any]:
        out = []
        for fn in (hangs, hangs_in_a_thread):
            try:
                await run.step(fn, timeout=0.05, retry=peo.Retry(max_attempts=1))
            except peo.StepFailed as exc:
                out.append([exc.step, exc.error_class, exc.message])
        return out

    try:
        async with peo.Client(sqlite_url) as client:
            oid = await client.submit("f")
            assert await drive(sqlite_url, app, client, oid) == [
                ["hangs", "timeout", "step 'hangs' did not finish within 0.05 s"],
                ["hangs_in_a_thread", "timeout", "step 'hangs_in_a_thread' did not finish within 0.05 s"]]
    finally:
        release.set()


async def test_without_retry_a_timed_out_step_is_a_failed_step_of_class_timeout(sqlite_url: str) -> None:
    app = peo.App()

    async def hangs() -> None:
        await asyncio.Event().wait()

    @app.function("f", retry=peo.Retry(max_attempts=1))
    async def f(run: peo.Run) -> None:
        await run.step(hangs, timeout=0.05)

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("f")
        error = await last_error(client, oid, sqlite_url, app)
        assert error["class"] == "timeout" and "did not finish within 0.05 s" in error["message"]


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"retry": 3}, "retry= must be a peo.Retry"),
    ({"timeout": -1}, "timeout= must be a positive number of seconds"),
    ({"timeout": float("nan")}, "timeout= must be a positive number of seconds"),
])
async def test_bad_retry_or_timeout_is_a_typed_error_recorded_in_memory(
        sqlite_url: str, kwargs: dict[str, Any], message: str) -> None:
    app = peo.App()

    @app.function("f")
    async def f(run: peo.Run) -> None:
        await run.step(lambda: 1, name="one", **kwargs)

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("f")
        error = await last_error(client, oid, sqlite_url, app)
        assert error["class"] == "UsageError" and message in error["message"]


# -- children that fail ----------------------------------------------------------------------


def family(calls: Counter[int], fail_first: set[int]) -> peo.App:
    """A ``kid`` handler that fails its first run for the xs in ``fail_first``."""
    app = peo.App()

    @app.handler("kid")
    def kid(step: peo.Step) -> peo.Proposal:
        x = int(step.goal["x"])
        calls[x] += 1
        if x in fail_first and calls[x] == 1:
            return peo.Fail(f"kid {x} is broken today", retryable=False)
        return peo.Done(10 * x)

    return app


async def test_a_gather_with_two_failing_children_starts_only_those_two_again(store_url: str) -> None:
    calls: Counter[int] = Counter()
    app = family(calls, fail_first={1, 3})

    @app.function("parent")
    async def parent(run: peo.Run) -> list[Any]:
        return await run.gather(*(run.child("kid", x=x) for x in range(4)), attempts=2)

    async with peo.Client(store_url) as client:
        oid = await client.submit("parent")
        assert await drive(store_url, app, client, oid) == [0, 10, 20, 30]
        assert calls == {0: 1, 1: 2, 2: 1, 3: 2}
        memory = (await client.get(oid)).memory
        delegates = [e for e in memory if e.action is Action.DELEGATE]
        assert [[c["intent"]["goal"]["x"] for c in e.outcome["children"]] for e in delegates] == [[0, 1, 2, 3], [1, 3]]
        assert len(await client.list(parent=oid)) == 6


async def test_a_failed_child_is_raised_as_child_failed_naming_every_failed_one(store_url: str) -> None:
    calls: Counter[int] = Counter()
    app = family(calls, fail_first={0, 2})

    @app.function("parent")
    async def parent(run: peo.Run) -> list[Any]:
        try:
            await run.gather(run.child("kid", x=0), run.child("kid", x=1), run.child("kid", x=2))
        except peo.ChildFailed as exc:
            return [exc.handler, exc.reason, [f.child_id for f in exc.failed]]
        return []

    async with peo.Client(store_url) as client:
        oid = await client.submit("parent")
        handler, reason, failed = await drive(store_url, app, client, oid)
        kids = {k.id: k for k in await client.list(parent=oid)}
        assert handler == "kid" and reason == "failed: non-retryable failure"
        assert len(failed) == 2 and all(kids[k].status is peo.Status.TERMINATED for k in failed)
        assert calls == {0: 1, 1: 1, 2: 1}  # no attempts=: nothing started again


async def test_return_exceptions_puts_each_failure_in_its_childs_place(sqlite_url: str) -> None:
    calls: Counter[int] = Counter()
    app = family(calls, fail_first={1})

    @app.function("parent")
    async def parent(run: peo.Run) -> list[Any]:
        results = await run.gather(*(run.child("kid", x=x) for x in range(3)), return_exceptions=True)
        return [r.reason if isinstance(r, peo.ChildFailed) else r for r in results]

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("parent")
        assert await drive(sqlite_url, app, client, oid) == [0, "failed: non-retryable failure", 20]


async def test_an_uncaught_child_failed_fails_the_parent(sqlite_url: str) -> None:
    calls: Counter[int] = Counter()
    app = family(calls, fail_first={5})

    @app.function("parent")
    async def parent(run: peo.Run) -> int:
        return int(await run.child("kid", x=5))

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("parent")
        error = await last_error(client, oid, sqlite_url, app)
        assert error["class"] == "ChildFailed" and "ended without success" in error["message"]


async def test_a_cancelled_child_is_a_failed_child_and_handlers_see_it_in_failed_children(sqlite_url: str) -> None:
    seen: list[dict[str, str]] = []
    app = peo.App()

    @app.handler("sleeper")
    def sleeper(step: peo.Step) -> peo.Proposal:
        return peo.WaitSignal("never")

    @app.handler("parent")
    def parent(step: peo.Step) -> peo.Proposal:
        if not step.state.get("started"):
            return peo.Delegate([peo.Intent("sleeper")], state={"started": True})
        seen.append(dict(step.failed_children))
        return peo.Done(sorted(step.failed_children.values()))

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("parent")
        await asyncio.wait_for(peo.Node(sqlite_url, app).run_until_idle(), 60)
        [kid] = await client.list(parent=oid)
        await client.cancel(kid.id)
        assert await drive(sqlite_url, app, client, oid) == ["cancelled"]
        assert seen == [{kid.id: "cancelled"}]


async def test_gather_refuses_attempts_that_are_not_a_positive_integer(sqlite_url: str) -> None:
    app = family(Counter(), fail_first=set())

    @app.function("parent")
    async def parent(run: peo.Run) -> list[Any]:
        return await run.gather(run.child("kid", x=1), attempts=0)

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("parent")
        error = await last_error(client, oid, sqlite_url, app)
        assert error["class"] == "UsageError" and "attempts= must be a positive integer" in error["message"]
