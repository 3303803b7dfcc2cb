"""A durable function stays live while its node holds the object: after a step's entry is
committed the code goes on from where it was, instead of being re-run from the top, so a
step costs the same at step 1,000 as at step 1. Anything other than the very next step of
the same run (another node wrote, the object slept) replays from the top, as before."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import peo
from peo.testing.cycle import claim_one, run_one_cycle


def counting_app(calls: Counter[str], steps: int, *, sleep_at: int | None = None) -> peo.App:
    app = peo.App()

    @app.function("count")
    async def count(run: peo.Run) -> list[int]:
        calls["from the top"] += 1
        out = []
        for i in range(steps):
            if i == sleep_at:
                await run.sleep(seconds=0)
            out.append(await run.step(lambda i=i: calls.update([f"step {i}"]) or i, name=f"s{i}"))
        return out

    return app


def live_runs(app: peo.App) -> Any:
    return app.handlers["count"].fn.live_runs  # type: ignore[attr-defined]


async def test_one_node_runs_a_function_from_the_top_once_and_each_step_once(store_url: str) -> None:
    calls: Counter[str] = Counter()
    app = counting_app(calls, 30)
    async with peo.Client(store_url) as client:
        oid = await client.submit("count")
        await asyncio.wait_for(peo.Node(store_url, app).run_until_idle(), 60)
        assert await client.wait(oid, timeout=5) == list(range(30))
        assert len((await client.get(oid)).memory) == 32  # entry 0, 30 steps, the return
    assert calls["from the top"] == 1
    assert all(calls[f"step {i}"] == 1 for i in range(30))
    assert len(live_runs(app)) == 0  # it returned: nothing is kept


async def test_a_sleep_ends_the_live_run_and_the_wake_up_replays(sqlite_url: str) -> None:
    calls: Counter[str] = Counter()
    app = counting_app(calls, 6, sleep_at=3)
    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("count")
        await asyncio.wait_for(peo.Node(sqlite_url, app).run_until_idle(), 60)
        assert await client.wait(oid, timeout=5) == list(range(6))
    assert calls["from the top"] == 2  # the start, and after the sleep
    assert all(calls[f"step {i}"] == 1 for i in range(6))


async def test_two_nodes_taking_turns_never_run_a_step_twice(store_url: str) -> None:
    calls: Counter[str] = Counter()
    # Two apps: two handlers, each with its own live runs, like two node processes.
    apps = [counting_app(calls, 8), counting_app(calls, 8)]
    async with peo.Client(store_url) as client:
        oid = await client.submit("count")
        nodes = [peo.Node(client.store, app, node_id=f"node-{n}") for n, app in enumerate(apps)]
        turn = 0
        while not (await client.get(oid, memory=False)).status.is_final:
            node = nodes[turn % 2]
            claim = await claim_one(node, oid, [])
            assert claim is not None
            await run_one_cycle(node, claim)
            turn += 1
        assert await client.wait(oid, timeout=5) == list(range(8))
    assert all(calls[f"step {i}"] == 1 for i in range(8))
    # Each node found that the other had written in between: it ran the code from the top.
    assert calls["from the top"] == turn
    assert len(live_runs(apps[0])) + len(live_runs(apps[1])) <= 1  # at most a run the other node overtook


async def test_a_live_run_goes_on_only_if_memory_holds_the_entry_it_proposed() -> None:
    from peo.core.crypto import SigningKey
    from peo.core.memory import make_entry
    from peo.functions.live import LiveRun

    key = SigningKey(bytes(32))

    def step_after(seq: int, state: dict[str, Any]) -> peo.Step:
        last = make_entry(key, seq=seq - 1, prev=bytes(32), timestamp=0, origin_node="n", policy_ref="p",
                          action=peo.Action.EXECUTE, outcome={"status": "ok", "state": state}, trace_id="o")
        return peo.Step(object_id="o", seq=seq, intent=peo.Intent("f"), context=peo.Context(), state={},
                        memory=[last])

    async def start(run: LiveRun) -> peo.Proposal:
        await run.hand_over(peo.Continue(state={"fn.0": {"result": ("mine",)}}), 1)
        return peo.Done(None)

    live = LiveRun(start)
    await live.next_proposal()
    # Another node's entry at that seq (this node's commit was lost): replay, never go on.
    assert not live.expects(step_after(2, {"fn.0": {"result": ["theirs"]}}))
    assert not live.expects(step_after(3, {"fn.0": {"result": ["mine"]}}))  # not the next seq
    assert live.expects(step_after(2, {"fn.0": {"result": ["mine"]}}))  # as recorded (a tuple reads back a list)
    live.cancel()


async def test_the_first_entry_records_the_functions_version_and_later_code_reads_it(sqlite_url: str) -> None:
    seen: list[str | None] = []

    def app_at(version: str | None) -> peo.App:
        app = peo.App()

        @app.function("versioned", version=version)
        async def versioned(run: peo.Run) -> str | None:
            seen.append(run.version)
            await run.step(lambda: 1, name="one")
            await run.sleep(seconds=0)
            return run.version

        return app

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("versioned")
        first = app_at("v1")
        node = peo.Node(client.store, first)
        claim = await claim_one(node, oid, [])
        assert claim is not None
        await run_one_cycle(node, claim)  # step "one" recorded, with the version
        assert (await client.get(oid)).memory[1].outcome["state"]["fn.version"] == "v1"
        # Deployed again with new code: the object still says what it began with.
        await asyncio.wait_for(peo.Node(sqlite_url, app_at("v2")).run_until_idle(), 60)
        assert await client.wait(oid, timeout=5) == "v1"
    assert seen == ["v1", "v1", "v1"]

    other = peo.App()

    @other.function("digest")
    async def digest(run: peo.Run) -> str | None:
        return run.version

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("digest")
        await asyncio.wait_for(peo.Node(sqlite_url, other).run_until_idle(), 60)
        version = await client.wait(oid, timeout=5)
        assert isinstance(version, str) and version.startswith("sha256:") and len(version) == 23
