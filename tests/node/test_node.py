"""The node, specified through what users see: submit, run, wait, inspect."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from typing import Any

import pytest

import peo
from peo.core.model import Action


def counting_app(calls: list[str] | None = None) -> peo.App:
    app = peo.App()

    @app.handler("count")
    async def count(step: peo.Step) -> peo.Proposal:
        if calls is not None:
            calls.append(step.idempotency_key)
        n = step.state.get("n", 0)
        if n >= step.goal["steps"]:
            return peo.Done({"n": n})
        return peo.Continue(state={"n": n + 1})

    return app


async def run_idle(url: str, app: peo.App, **kw: Any) -> peo.Node:
    node = peo.Node(url, app, **kw)
    await asyncio.wait_for(node.run_until_idle(), 60)
    return node


async def test_an_object_runs_to_done_and_every_step_is_one_signed_entry(store_url: str) -> None:
    calls: list[str] = []
    async with peo.Client(store_url) as client:
        oid = await client.submit("count", goal={"steps": 5})
        await run_idle(store_url, counting_app(calls))
        assert await client.wait(oid, timeout=5) == {"n": 5}
        info = await client.get(oid)
        assert info.status is peo.Status.TERMINATED
        assert [e.action for e in info.memory] == [Action.INSTANTIATE] + [Action.EXECUTE] * 5 + [Action.TERMINATE]
        assert calls == [f"{oid}:{seq}" for seq in range(1, 7)]  # one idempotency key per step
        assert await client.verify(oid) == 7


async def test_many_objects_share_group_commits(sqlite_url: str) -> None:
    async with peo.Client(sqlite_url) as client:
        ids = await client.submit_many("count", [{"steps": 10}] * 40)
        node = await run_idle(sqlite_url, counting_app(), concurrency=40)
        for oid in ids:
            assert await client.wait(oid, timeout=5) == {"n": 10}
    assert node.stats["steps"] == 40 * 11
    assert node.stats["commits"] < node.stats["steps"]  # appends of many objects per transaction


async def test_the_memories_of_a_batch_of_claims_are_read_in_one_query(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from peo.store.sqlite import SQLiteStore

    calls = {"claim": 0, "entries": 0, "entries_of": 0}  # calls that returned something
    for name in calls:
        original = getattr(SQLiteStore, name)

        async def counted(*args: Any, _name: str = name, _original: Any = original, **kw: Any) -> Any:
            result = await _original(*args, **kw)
            calls[_name] += bool(result)
            return result

        monkeypatch.setattr(SQLiteStore, name, counted)
    async with peo.Client(sqlite_url) as client:
        ids = await client.submit_many("count", [{"steps": 3}] * 60)
        node = await run_idle(sqlite_url, counting_app(), concurrency=8)
        for oid in ids:
            assert await client.wait(oid, timeout=5) == {"n": 3}
    assert node.stats["claims"] == 60
    assert calls["claim"] >= 60 // 8  # at most 8 at a time
    assert calls["entries_of"] == calls["claim"] and calls["entries"] == 0


async def test_two_nodes_never_record_a_step_twice(store_url: str) -> None:
    calls: list[str] = []
    async with peo.Client(store_url) as client:
        ids = await client.submit_many("count", [{"steps": 8}] * 20)
        app = counting_app(calls)
        a = peo.Node(store_url, app, node_id="a", concurrency=4)
        b = peo.Node(store_url, app, node_id="b", concurrency=4)
        await asyncio.wait_for(asyncio.gather(a.run_until_idle(), b.run_until_idle()), 60)
        for oid in ids:
            info = await client.get(oid)
            assert [e.seq for e in info.memory] == list(range(10))
            assert await client.verify(oid) == 10
    assert len(calls) == len(set(calls)) == 20 * 9


async def test_sleep_is_dormancy_then_reentry_on_time_never_early(sqlite_url: str) -> None:
    app = peo.App()

    @app.handler("nap")
    def nap(step: peo.Step) -> peo.Proposal:
        if not step.state.get("slept"):
            return peo.Sleep(seconds=0.3, state={"slept": True, "at": time.time_ns()})
        return peo.Done(time.time_ns() - step.state["at"])

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("nap")
        await run_idle(sqlite_url, app)
        waited = await client.wait(oid, timeout=5)
        assert waited >= 300_000_000
        info = await client.get(oid)
        actions = [e.action for e in info.memory]
        assert actions == [Action.INSTANTIATE, Action.DORMANCY, Action.REENTRY, Action.TERMINATE]
        dormancy, reentry = info.memory[1], info.memory[2]
        assert reentry.outcome["trigger"] == "time"
        assert reentry.timestamp >= dormancy.outcome["wake"]["until"]


def approval_app() -> peo.App:
    app = peo.App()

    @app.handler("approve")
    def approve(step: peo.Step) -> peo.Proposal:
        if not step.state.get("asked"):
            return peo.WaitSignal("ok", state={"asked": True})
        return peo.Done([s.payload for s in step.signals])

    return app


async def test_wait_signal_sleeps_until_the_signal_and_the_step_sees_it(store_url: str) -> None:
    async with peo.Client(store_url) as client:
        oid = await client.submit("approve")
        node = peo.Node(store_url, approval_app())
        task = asyncio.create_task(node.run())
        try:
            for _ in range(200):
                if (await client.get(oid, memory=False)).status is peo.Status.DORMANT:
                    break
                await asyncio.sleep(0.02)
            await client.signal(oid, "other", {"ignored": True})  # not the awaited name: no wake
            await client.signal(oid, "ok", {"yes": 1})
            result = await client.wait(oid, timeout=10)
        finally:
            node.stop()
            await task
        # The awaited signal woke it; the other one is delivered to the same step.
        assert sorted(result, key=str) == [{"ignored": True}, {"yes": 1}]
        info = await client.get(oid)
        reentry = next(e for e in info.memory if e.action is Action.REENTRY)
        assert reentry.outcome["trigger"] == "signal"
        assert [s["name"] for s in reentry.outcome["signals"]] == ["ok"]


async def test_a_signal_sent_before_the_wait_is_not_lost(sqlite_url: str) -> None:
    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("approve")
        await client.signal(oid, "ok", "early")
        await run_idle(sqlite_url, approval_app())
        assert await client.wait(oid, timeout=5) == ["early"]


async def test_delegate_creates_children_with_lineage_and_wakes_the_parent(store_url: str) -> None:
    app = peo.App()

    @app.handler("parent")
    def parent(step: peo.Step) -> peo.Proposal:
        if not step.state.get("sent"):
            return peo.Delegate([peo.Intent("child", {"x": i}) for i in range(3)], state={"sent": True})
        return peo.Done(sorted(step.children.values()))

    @app.handler("child")
    async def child(step: peo.Step) -> peo.Proposal:
        return peo.Done(step.goal["x"] * 10)

    async with peo.Client(store_url) as client:
        oid = await client.submit("parent", priority=3)
        await run_idle(store_url, app)
        assert await client.wait(oid, timeout=5) == [0, 10, 20]
        kids = await client.store.list(parent=oid)
        assert len(kids) == 3 and all(k.status == "terminated" for k in kids)
        for k in kids:
            info = await client.get(k.id)
            assert info.context.parent == oid and info.context.priority == 3
            assert await client.verify(k.id) >= 2


async def test_retryable_failures_back_off_then_succeed(sqlite_url: str) -> None:
    app = peo.App()

    @app.handler("flaky")
    def flaky(step: peo.Step) -> peo.Proposal:
        if step.attempt < 3:
            raise ConnectionError("upstream unavailable")
        return peo.Done(step.attempt)

    policy = peo.Policy(retry_base=0.05, retry_max=0.2)
    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("flaky")
        await run_idle(sqlite_url, app, policy=policy)
        assert await client.wait(oid, timeout=5) == 3
        info = await client.get(oid)
        failures = [e for e in info.memory if e.action is Action.DORMANCY]
        assert [f.outcome["error"]["class"] for f in failures] == ["ConnectionError"] * 2
        assert failures[1].outcome["retry_in"] > failures[0].outcome["retry_in"]


async def test_the_failure_threshold_terminates_the_object(sqlite_url: str) -> None:
    app = peo.App()

    @app.handler("broken")
    def broken(step: peo.Step) -> peo.Proposal:
        return peo.Fail("no luck")

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("broken", max_failures=2)
        await run_idle(sqlite_url, app, policy=peo.Policy(retry_base=0.01))
        with pytest.raises(peo.ObjectFailedError, match="failure threshold"):
            await client.wait(oid, timeout=5)


async def test_a_non_retryable_failure_terminates_at_once(sqlite_url: str) -> None:
    app = peo.App()

    @app.handler("bad")
    def bad(step: peo.Step) -> peo.Proposal:
        return peo.Fail("invalid request", retryable=False)

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("bad")
        await run_idle(sqlite_url, app)
        with pytest.raises(peo.ObjectFailedError, match="non-retryable"):
            await client.wait(oid, timeout=5)
        assert len((await client.get(oid)).memory) == 2


async def test_cancel_terminates_a_dormant_object(sqlite_url: str) -> None:
    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("approve")
        await run_idle(sqlite_url, approval_app())
        assert (await client.get(oid, memory=False)).status is peo.Status.DORMANT
        await client.cancel(oid)
        await run_idle(sqlite_url, approval_app())
        with pytest.raises(peo.ObjectFailedError, match="cancelled"):
            await client.wait(oid, timeout=5)


async def test_a_passed_deadline_terminates_the_object(sqlite_url: str) -> None:
    app = peo.App()

    @app.handler("slow")
    def slow(step: peo.Step) -> peo.Proposal:
        return peo.Sleep(seconds=0.2)

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("slow", deadline=0.3)
        await run_idle(sqlite_url, app)
        with pytest.raises(peo.ObjectFailedError, match="deadline"):
            await client.wait(oid, timeout=5)


async def test_a_handler_that_overruns_its_timeout_is_a_failed_step(sqlite_url: str) -> None:
    app = peo.App()

    @app.handler("hang", timeout=0.1)
    async def hang(step: peo.Step) -> peo.Proposal:
        if step.attempt == 1:
            await asyncio.sleep(30)
        return peo.Done("second try")

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("hang")
        await run_idle(sqlite_url, app, policy=peo.Policy(retry_base=0.01))
        assert await client.wait(oid, timeout=5) == "second try"
        first = (await client.get(oid)).memory[1]
        assert first.outcome["error"]["class"] == "timeout"


@pytest.mark.parametrize("garbage", [42, peo.Continue(state={"bad": object()})], ids=["not-a-proposal", "bad-state"])
async def test_a_handler_returning_garbage_is_recorded_not_crashed_and_not_retried(sqlite_url: str,
                                                                                   garbage: Any) -> None:
    app = peo.App()
    calls = []

    @app.handler("odd")
    def odd(step: peo.Step) -> Any:
        calls.append(step.attempt)
        return garbage if step.attempt == 1 else peo.Done("ok")

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("odd")
        await run_idle(sqlite_url, app)
        with pytest.raises(peo.ObjectFailedError, match="invalid proposal") as failed:
            await client.wait(oid, timeout=5)
        assert failed.value.last_error is not None and failed.value.last_error["class"] == "invalid"
        statuses = [e.outcome.get("status") for e in (await client.get(oid)).memory[1:]]
        assert statuses == ["invalid"] and calls == [1]  # a handler bug is not retried as if it were transient


async def test_a_policy_refused_proposal_is_recorded_as_refused(sqlite_url: str) -> None:
    app = peo.App()

    @app.handler("greedy")
    def greedy(step: peo.Step) -> peo.Proposal:
        if step.attempt == 1:
            return peo.Delegate([peo.Intent("x")] * 5)
        return peo.Done("gave up on that")

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("greedy")
        await run_idle(sqlite_url, app, policy=peo.Policy(max_children=2))
        assert await client.wait(oid, timeout=5) == "gave up on that"
        info = await client.get(oid)
        assert info.memory[1].outcome["status"] == "refused"
        assert await client.store.list(parent=oid) == []  # never carried out


async def test_a_restarted_node_reclaims_its_own_leases_at_once(sqlite_url: str) -> None:
    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("count", goal={"steps": 3})
        now = time.time_ns()
        claims = await client.store.claim("same", now=now, lease_ns=3600 * 10**9, limit=5,
                                          handlers=["count"], scopes=None)
        assert [c.id for c in claims] == [oid]  # "same" crashed while holding an hour-long lease
        await run_idle(sqlite_url, counting_app(), node_id="same")
        assert await client.wait(oid, timeout=1) == {"n": 3}


async def test_a_graceful_stop_releases_leases(sqlite_url: str) -> None:
    app = peo.App()
    started = asyncio.Event()

    @app.handler("long")
    async def long(step: peo.Step) -> peo.Proposal:
        started.set()
        await asyncio.sleep(0.2)
        return peo.Continue()

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("long")
        node = peo.Node(sqlite_url, app, lease_ttl=60)
        task = asyncio.create_task(node.run())
        await asyncio.wait_for(started.wait(), 10)
        node.stop()
        await asyncio.wait_for(task, 10)
        row = await client.store.get(oid)
        assert row.lease_owner is None and row.status == "runnable"


def test_sigterm_stops_a_node_process_cleanly(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'peo.db'}"

    async def submit() -> None:
        async with peo.Client(url) as client:
            await client.submit("approval")

    asyncio.run(submit())
    proc = subprocess.Popen([sys.executable, "-m", "peo.demo", "--worker", "--store", url, "--node-id", "t"],
                            env={**os.environ})
    try:
        for _ in range(200):  # wait until the node has parked the object
            async def status() -> str:
                async with peo.Client(url) as client:
                    return (await client.store.list())[0].status
            if asyncio.run(status()) == "dormant":
                break
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()


class FakeClock:
    """Nanoseconds that move only when the test says so."""

    def __init__(self) -> None:
        self.now = time.time_ns()

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += int(seconds * 1e9)


async def test_with_an_injected_clock_a_sleeper_wakes_exactly_when_due(sqlite_url: str) -> None:
    app = peo.App()

    @app.handler("hour")
    def hour(step: peo.Step) -> peo.Proposal:
        if not step.state.get("slept"):
            return peo.Sleep(seconds=3600, state={"slept": True})
        return peo.Done("awake")

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("hour")
        clock = FakeClock()  # starts after the submit, so the new object is due
        await run_idle(sqlite_url, app, clock=clock, idle_horizon=0)
        assert (await client.get(oid, memory=False)).status is peo.Status.DORMANT

        clock.advance(3599.9)  # not yet: a node finds nothing due and appends nothing
        await run_idle(sqlite_url, app, clock=clock, idle_horizon=0)
        assert len((await client.get(oid)).memory) == 2

        clock.advance(0.2)
        await run_idle(sqlite_url, app, clock=clock, idle_horizon=0)
        info = await client.get(oid)
        assert info.result == "awake"
        until = info.memory[1].outcome["wake"]["until"]
        assert info.memory[2].action is Action.REENTRY and info.memory[2].timestamp >= until


async def test_a_node_leaves_alone_what_its_policy_does_not_accept(sqlite_url: str) -> None:
    only_alice = peo.Policy(accept_identities=frozenset({"alice"}))
    async with peo.Client(sqlite_url, identity="bob") as client:
        oid = await client.submit("count", goal={"steps": 1})
        node = await run_idle(sqlite_url, counting_app(), policy=only_alice)
        row = await client.store.get(oid)
        assert row.seq == 0 and row.lease_owner is None  # nothing appended, lease given back
        assert row.due_at is not None and row.due_at > time.time_ns()  # not re-claimed in a spin
        assert node.stats["steps"] == 0


async def test_a_step_whose_entry_would_be_too_big_is_recorded_as_failed(sqlite_url: str) -> None:
    app = peo.App()

    @app.handler("bulky")
    def bulky(step: peo.Step) -> peo.Proposal:
        if step.attempt == 1:  # each part is within the policy, the entry as a whole is not
            return peo.Done("r" * 700_000, state={"s": "s" * 700_000})
        return peo.Done("small")

    policy = peo.Policy(max_payload_bytes=800_000, retry_base=0.01)
    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("bulky")
        await run_idle(sqlite_url, app, policy=policy)
        assert await client.wait(oid, timeout=5) == "small"
        first = (await client.get(oid)).memory[1]
        assert first.outcome["status"] == "failed" and "exceeds" in first.outcome["error"]["message"]
        assert first.action is Action.DORMANCY  # a retryable failure backs off, then retries
        assert await client.verify(oid) == 4
