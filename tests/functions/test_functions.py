"""Durable functions (``@app.function``): ordinary async code over the handler cycle."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

import peo
from peo.core.model import Action
from peo.testing.cycle import claim_one, run_one_cycle


async def run_idle(url: str, app: peo.App, **kw: Any) -> peo.Node:
    node = peo.Node(url, app, **kw)
    await asyncio.wait_for(node.run_until_idle(), 60)
    return node


def research_app(calls: Counter[str], keys: list[str]) -> peo.App:
    app = peo.App()

    def search(topic: str) -> list[str]:  # sync: runs in a thread
        calls["search"] += 1
        return [f"{topic}-1", f"{topic}-2"]

    async def summarize(pages: list[str], *, key: str) -> str:
        calls["summarize"] += 1
        keys.append(key)
        return " + ".join(pages)

    @app.function("research")
    async def research(run: peo.Run, topic: str) -> dict[str, Any]:
        calls["replay"] += 1
        pages = await run.step(search, topic)
        await run.sleep(seconds=0.1)
        verdict = await run.wait_signal("approve", timeout=30)
        summary = await run.step(summarize, pages, key=run.idempotency_key)
        return {"summary": summary, "approved": verdict.payload, "by": verdict.sender}

    return app


async def run_until_done(url: str, app: peo.App, client: peo.Client, oid: str,
                         signal: tuple[str, Any] | None = None) -> Any:
    """Serve ``app`` until ``oid`` ends; send ``signal`` once it waits for that signal."""
    node = peo.Node(url, app)
    task = asyncio.create_task(node.run())
    try:
        if signal is not None:
            for _ in range(500):
                if any(o.id == oid and o.waiting_for == signal[0] for o in await client.list()):
                    break
                await asyncio.sleep(0.02)
            await client.signal(oid, *signal)
        return await client.wait(oid, timeout=20)
    finally:
        node.stop()
        await task


async def test_a_function_runs_to_done_and_each_operation_is_one_entry_done_once(store_url: str) -> None:
    calls: Counter[str] = Counter()
    keys: list[str] = []
    async with peo.Client(store_url) as client:
        oid = await client.submit("research", goal={"topic": "bees"})
        result = await run_until_done(store_url, research_app(calls, keys), client, oid, ("approve", {"by": "ann"}))
        assert result == {"summary": "bees-1 + bees-2", "approved": {"by": "ann"}, "by": client.key.key_id}
        info = await client.get(oid)
        assert [e.action for e in info.memory] == [
            Action.INSTANTIATE, Action.EXECUTE, Action.DORMANCY, Action.REENTRY,  # step, sleep
            Action.DORMANCY, Action.REENTRY, Action.EXECUTE, Action.TERMINATE,  # wait, step, return
        ]
        assert info.memory[1].outcome["state"]["fn.0"]["result"] == ["bees-1", "bees-2"]
        assert info.memory[5].outcome["trigger"] == "signal"
        assert await client.verify(oid) == len(info.memory)
    # Each step's side effect happened once. The function ran from the top three times: at
    # the start and after each wake-up (a sleep, a signal wait); after a step it went on live.
    assert calls == Counter(search=1, summarize=1, replay=3)
    assert keys == [f"{oid}:6"]


async def test_a_signal_that_arrived_before_the_wait_is_returned_at_once(store_url: str) -> None:
    calls: Counter[str] = Counter()
    keys: list[str] = []
    async with peo.Client(store_url) as client:
        oid = await client.submit("research", goal={"topic": "ants"})
        await client.signal(oid, "approve", "early")  # consumed (and recorded) by the first step
        await run_idle(store_url, research_app(calls, keys))
        assert await client.wait(oid, timeout=5) == {"summary": "ants-1 + ants-2", "approved": "early",
                                                     "by": client.key.key_id}
        info = await client.get(oid)
        assert [e.action for e in info.memory] == [
            Action.INSTANTIATE, Action.EXECUTE, Action.DORMANCY, Action.REENTRY,  # step, sleep
            Action.EXECUTE, Action.TERMINATE,  # the wait needs no entry of its own: step, return
        ]
        assert info.memory[4].outcome["state"]["fn.2"]["signal"]["payload"] == "early"
    assert calls == Counter(search=1, summarize=1, replay=2)  # the start, and after the sleep
    assert keys == [f"{oid}:4"]


async def test_replay_never_re_runs_a_completed_step_even_when_a_later_one_fails(sqlite_url: str) -> None:
    calls: Counter[str] = Counter()
    keys: list[str] = []
    app = peo.App()

    def first() -> int:
        calls["first"] += 1
        return 1

    async def flaky(key: str) -> int:
        calls["flaky"] += 1
        keys.append(key)
        if calls["flaky"] < 3:
            raise ConnectionError("try again")
        return 2

    @app.function("f", retry=peo.Retry(base=0.01, max=0.02, max_attempts=5))
    async def f(run: peo.Run) -> int:
        a = await run.step(first)
        b = await run.step(flaky, run.idempotency_key)
        c = await run.step(lambda: 3)
        return a + b + c

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("f")
        await run_idle(sqlite_url, app)
        assert await client.wait(oid, timeout=5) == 6
        info = await client.get(oid)
        failed = [e for e in info.memory if e.outcome.get("status") == "failed"]
        assert len(failed) == 2 and failed[0].outcome["error"]["class"] == "ConnectionError"
    assert calls == Counter(first=1, flaky=3)
    assert len(set(keys)) == 1  # every attempt of one step shares its idempotency key


async def test_a_signal_timeout_raises_the_typed_error(store_url: str) -> None:
    app = peo.App()
    seen: list[str] = []

    @app.function("wait")
    async def wait(run: peo.Run, give_up: bool) -> str:
        try:
            await run.wait_signal("never", timeout=0.1)
        except peo.SignalTimeout as exc:
            seen.append(f"{exc.name} {exc.timeout}")
            if give_up:
                raise
            return "timed out"
        return "signalled"

    async with peo.Client(store_url) as client:
        caught = await client.submit("wait", goal={"give_up": False})
        uncaught = await client.submit("wait", goal={"give_up": True})
        await run_idle(store_url, app)
        assert await client.wait(caught, timeout=5) == "timed out"
        with pytest.raises(peo.ObjectFailedError) as failed:
            await client.wait(uncaught, timeout=5)
        assert failed.value.last_error is not None and failed.value.last_error["class"] == "SignalTimeout"
        info = await client.get(uncaught)
        assert info.memory[2].outcome["trigger"] == "time"
        assert info.memory[-1].action is Action.TERMINATE  # not retried
    assert seen == ["never 0.1"] * 2
    assert issubclass(peo.SignalTimeout, peo.PeoError)


async def test_a_changed_function_is_caught_as_diverged_and_never_runs_the_new_step(sqlite_url: str) -> None:
    ran: list[str] = []

    def app_with(second: str) -> peo.App:
        app = peo.App()

        def one() -> int:
            ran.append("one")
            return 1

        def other() -> int:
            ran.append("other")
            return 2

        @app.function("g")
        async def g(run: peo.Run) -> int:
            await run.step(one)
            if second == "sleep":
                await run.sleep(seconds=0.05)
            else:
                await run.step(other)
            return 0

        return app

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("g")
        node = peo.Node(client.store, app_with("sleep"))
        for _ in range(2):  # step 0, then the sleep, recorded; then the code changes
            claim = await claim_one(node, oid, [])
            assert claim is not None
            await run_one_cycle(node, claim)
        await run_idle(sqlite_url, app_with("step"))
        with pytest.raises(peo.ObjectFailedError, match="DivergedError") as failed:
            await client.wait(oid, timeout=5)
        assert failed.value.last_error is not None
        assert "operation 1 recorded at seq 2 is sleep, the code now reaches step 'other'" in \
            failed.value.last_error["message"]
    assert ran == ["one"]


def test_registration_refuses_what_cannot_work() -> None:
    app = peo.App()
    with pytest.raises(peo.UsageError, match="async"):
        app.function("sync")(lambda run: None)
    with pytest.raises(peo.UsageError):
        app.function("")


async def test_a_result_that_is_not_plain_data_fails_with_a_clear_error(sqlite_url: str) -> None:
    app = peo.App()

    @app.function("h")
    async def h(run: peo.Run) -> None:
        await run.step(object)

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("h")
        await run_idle(sqlite_url, app)
        with pytest.raises(peo.ObjectFailedError, match="plain data"):
            await client.wait(oid, timeout=5)


async def test_children_are_gathered_in_order_with_lineage_and_their_results(store_url: str) -> None:
    calls: Counter[str] = Counter()
    app = peo.App()

    @app.function("double")
    async def double(run: peo.Run, x: int) -> int:
        return int(await run.step(lambda: 2 * x))

    @app.handler("broken")
    def broken(step: peo.Step) -> peo.Proposal:
        return peo.Fail("no", retryable=False)

    @app.function("parent")
    async def parent(run: peo.Run, xs: list[int]) -> dict[str, Any]:
        calls["replay"] += 1
        doubled = await run.gather(*(run.child("double", x=x) for x in xs))
        alone = await run.child("double", x=100)
        try:
            await run.child("broken")
        except peo.ChildFailed as exc:
            failed = exc.reason
        return {"doubled": doubled, "alone": alone, "failed": failed}

    async with peo.Client(store_url) as client:
        oid = await client.submit("parent", goal={"xs": [1, 2, 3]})
        await run_idle(store_url, app)
        assert await client.wait(oid, timeout=10) == {"doubled": [2, 4, 6], "alone": 200,
                                                   "failed": "failed: non-retryable failure"}
        kids = await client.list(parent=oid)
        assert len(kids) == 5 and all(k.parent == oid for k in kids)
        info = await client.get(oid)
        delegates = [e for e in info.memory if e.action is Action.DELEGATE]
        assert [len(e.outcome["children"]) for e in delegates] == [3, 1, 1]
    assert calls["replay"] == 4  # three gathers (each started once), then the return


async def test_gather_refuses_what_is_not_a_child(sqlite_url: str) -> None:
    app = peo.App()

    @app.function("p")
    async def p(run: peo.Run) -> list[Any]:
        return await run.gather(42)  # type: ignore[arg-type]

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("p")
        await run_idle(sqlite_url, app)
        with pytest.raises(peo.ObjectFailedError, match=r"run\.child"):
            await client.wait(oid, timeout=5)


async def test_another_node_resumes_a_function_without_re_running_its_recorded_steps(store_url: str) -> None:
    calls: Counter[str] = Counter()
    app = peo.App()

    def tool(n: int) -> int:
        calls[f"tool{n}"] += 1
        return n

    @app.function("relay")
    async def relay(run: peo.Run) -> list[int]:
        return [await run.step(tool, n) for n in range(4)]

    async with peo.Client(store_url) as client:
        oid = await client.submit("relay")
        first = peo.Node(client.store, app, node_id="node-a")
        for _ in range(2):  # node A records two steps, then lets go of the object
            claim = await claim_one(first, oid, [])
            assert claim is not None
            await run_one_cycle(first, claim)
        await run_idle(store_url, app, node_id="node-b")
        assert await client.wait(oid, timeout=5) == [0, 1, 2, 3]
        info = await client.get(oid)
        assert [e.origin_node for e in info.memory[1:]] == ["node-a"] * 2 + ["node-b"] * 3
    assert calls == Counter(tool0=1, tool1=1, tool2=1, tool3=1)


async def test_what_the_policy_refuses_fails_the_object_without_running_a_step_again(sqlite_url: str) -> None:
    calls: Counter[str] = Counter()
    app = peo.App()

    def big() -> str:
        calls["big"] += 1
        return "x" * 5000

    @app.function("big")
    async def big_fn(run: peo.Run) -> str:
        return str(await run.step(big))

    @app.function("long")
    async def long_fn(run: peo.Run) -> None:
        calls["long"] += 1
        await run.sleep(days=400)

    async with peo.Client(sqlite_url) as client:
        big_id, long_id = await client.submit("big"), await client.submit("long")
        await run_idle(sqlite_url, app, policy=peo.Policy(max_payload_bytes=1024))
        with pytest.raises(peo.ObjectFailedError, match="more than 1024 bytes"):
            await client.wait(big_id, timeout=5)
        with pytest.raises(peo.ObjectFailedError, match="refused") as failed:
            await client.wait(long_id, timeout=5)
        assert failed.value.last_error is not None and "longer than" in failed.value.last_error["message"]
        info = await client.get(long_id)
        assert [e.outcome.get("status") for e in info.memory[1:]] == ["refused", "failed"]
    assert calls == Counter(big=1, long=1)  # the policy's answer would not change: not re-run
