"""peo.testing.FunctionEnv: durable functions on a fake clock that skips time, signals sent
from the test, and crashes injected right after any entry.

No test asserts on wall time: the ``asyncio.wait_for`` guards only turn a hang into a
failure. That days pass instantly shows in the fake clock's offset and in the entries.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import peo
from peo.core.model import Action, Status
from peo.testing import Crash, FunctionEnv, StuckError

REPO = Path(__file__).resolve().parents[2]
DAY = 86_400.0
DAY_NS = int(DAY * 1e9)
GUARD = 60.0  # seconds; against hangs only


def approval_app() -> peo.App:
    app = peo.App()

    @app.function("rest")
    async def rest(run: peo.Run) -> str:
        await run.sleep(days=3)
        return "rested"

    @app.function("approval")
    async def approval(run: peo.Run, give_up: bool = False) -> Any:
        try:
            verdict = await run.wait_signal("approve", timeout=3 * DAY)
        except peo.SignalTimeout:
            if give_up:
                raise
            return "timed out"
        return verdict.payload

    @app.function("forever")
    async def forever(run: peo.Run) -> Any:
        return (await run.wait_signal("go")).payload

    return app


# -- time ---------------------------------------------------------------------------------


async def test_a_function_that_sleeps_three_days_finishes_at_once() -> None:
    async with FunctionEnv(approval_app()) as env:
        start = env.clock()
        oid = await env.submit("rest")
        result = await asyncio.wait_for(env.result(oid), GUARD)
        assert result == "rested"
        assert env.clock() - start >= 3 * DAY_NS  # three days passed on the fake clock
        memory = (await env.client.get(oid)).memory
        assert [e.action for e in memory] == [Action.INSTANTIATE, Action.DORMANCY, Action.REENTRY,
                                              Action.TERMINATE]
        assert memory[3].timestamp - memory[1].timestamp >= 3 * DAY_NS
        assert await env.client.verify(oid) == len(memory)


async def test_run_until_waiting_leaves_the_clock_alone_and_advance_fires_the_timer() -> None:
    async with FunctionEnv(approval_app()) as env:
        oid = await env.submit("rest")
        sleeping = await asyncio.wait_for(env.run_until_waiting(oid), GUARD)
        assert sleeping.status is Status.DORMANT and sleeping.due_at is not None
        assert sleeping.due_at > env.clock() + 2 * DAY_NS
        env.advance(days=2)
        assert (await asyncio.wait_for(env.run_until_waiting(oid), GUARD)).status is Status.DORMANT
        env.advance(days=1)
        assert (await asyncio.wait_for(env.run_until_waiting(oid), GUARD)).status is Status.TERMINATED
        assert await env.result(oid) == "rested"


async def test_a_signal_sent_before_the_timeout_is_received() -> None:
    async with FunctionEnv(approval_app()) as env:
        oid = await env.submit("approval")
        waiting = await asyncio.wait_for(env.run_until_waiting(oid), GUARD)
        assert waiting.status is Status.DORMANT and waiting.waiting_for == "approve"
        env.advance(days=2)  # still inside the three days
        await env.signal(oid, "approve", {"ok": True})
        assert await asyncio.wait_for(env.result(oid), GUARD) == {"ok": True}
        assert (await env.client.get(oid)).memory[2].outcome["trigger"] == "signal"


async def test_a_signal_wait_times_out_once_three_days_are_advanced() -> None:
    async with FunctionEnv(approval_app()) as env:
        oid = await env.submit("approval")
        await asyncio.wait_for(env.run_until_waiting(oid), GUARD)
        env.advance(days=3)
        # The timer fires on this serve, without result()'s own jumps.
        ended = await asyncio.wait_for(env.run_until_waiting(oid), GUARD)
        assert ended.status is Status.TERMINATED
        assert await env.result(oid) == "timed out"  # SignalTimeout, caught by the function
        assert (await env.client.get(oid)).memory[2].outcome["trigger"] == "time"


async def test_result_jumps_over_a_timeout_that_no_signal_ends() -> None:
    async with FunctionEnv(approval_app()) as env:
        start = env.clock()
        oid = await env.submit("approval")
        assert await asyncio.wait_for(env.result(oid), GUARD) == "timed out"
        assert env.clock() - start >= 3 * DAY_NS


async def test_an_uncaught_signal_timeout_fails_the_object_with_the_typed_error() -> None:
    async with FunctionEnv(approval_app()) as env:
        oid = await env.submit("approval", give_up=True)
        with pytest.raises(peo.ObjectFailedError) as failed:
            await asyncio.wait_for(env.result(oid), GUARD)
        assert failed.value.last_error is not None and failed.value.last_error["class"] == "SignalTimeout"


async def test_result_reports_a_wait_nothing_can_end_instead_of_hanging() -> None:
    async with FunctionEnv(approval_app()) as env:
        oid = await env.submit("forever")
        with pytest.raises(StuckError, match="waits for the signal 'go'"):
            await asyncio.wait_for(env.result(oid), GUARD)
        await env.signal(oid, "go", 7)
        assert await asyncio.wait_for(env.result(oid), GUARD) == 7


async def test_result_reports_an_object_no_handler_of_the_app_serves() -> None:
    async with FunctionEnv(approval_app()) as env:
        oid = await env.submit("unknown")
        with pytest.raises(StuckError, match="'unknown' is not served"):
            await asyncio.wait_for(env.result(oid), GUARD)
        with pytest.raises(StuckError, match="runnable but was not served"):
            await asyncio.wait_for(env.run_until_waiting(oid), GUARD)


async def test_result_gives_up_after_its_allowed_jumps_of_the_clock() -> None:
    app = peo.App()

    @app.function("hourly")
    async def hourly(run: peo.Run) -> None:
        while True:
            await run.sleep(hours=1)

    async with FunctionEnv(app) as env:
        oid = await env.submit("hourly")
        with pytest.raises(StuckError, match="did not end within 5 jumps"):
            await asyncio.wait_for(env.result(oid, max_jumps=5), GUARD)
        reentries = [e for e in (await env.client.get(oid)).memory if e.action is Action.REENTRY]
        assert len(reentries) == 5  # one wake-up per jump


async def test_plain_handlers_run_in_the_env_too() -> None:
    app = peo.App()

    @app.handler("nap")
    def nap(step: peo.Step) -> peo.Proposal:
        naps = int(step.state.get("naps", 0))
        if naps < 2:
            return peo.Sleep(seconds=DAY, state={"naps": naps + 1})
        return peo.Done(naps)

    async with FunctionEnv(app) as env:
        start = env.clock()
        oid = await env.submit("nap")
        assert await asyncio.wait_for(env.result(oid), GUARD) == 2
        assert env.clock() - start >= 2 * DAY_NS


# -- crashes ------------------------------------------------------------------------------


def pipeline_app(calls: Counter[str]) -> peo.App:
    """A function with every kind of entry: steps, a sleep, children, a wait that times out.
    ``calls`` counts each step's side effect, by step."""
    app = peo.App()

    def fetch(topic: str) -> list[str]:
        calls["fetch"] += 1
        return [f"{topic}/a", f"{topic}/b"]

    def publish(text: str) -> str:
        calls["publish"] += 1
        return text.upper()

    @app.function("summarize")
    async def summarize(run: peo.Run, page: str) -> str:
        def summary() -> str:
            calls[f"summarize {page}"] += 1
            return f"<{page}>"

        return str(await run.step(summary))

    @app.function("pipeline")
    async def pipeline(run: peo.Run, topic: str) -> dict[str, Any]:
        pages = await run.step(fetch, topic)
        await run.sleep(hours=6)
        summaries = await run.gather(*(run.child("summarize", page=p) for p in pages))
        try:
            verdict = (await run.wait_signal("approve", timeout=DAY)).payload
        except peo.SignalTimeout:
            verdict = "no answer"
        published = await run.step(publish, " ".join(summaries))
        return {"published": published, "verdict": verdict}

    return app


EXPECTED_CALLS = Counter({"fetch": 1, "publish": 1, "summarize bees/a": 1, "summarize bees/b": 1})


async def test_a_crash_after_any_entry_resumes_on_a_new_node_without_re_running_a_recorded_step(
        store_url: str) -> None:
    calls: Counter[str] = Counter()
    async with FunctionEnv(pipeline_app(calls), store=store_url) as env:
        oid = await env.submit("pipeline", topic="bees")
        uninterrupted = await asyncio.wait_for(env.result(oid), GUARD)
        last = (await env.client.get(oid)).seq
    assert uninterrupted == {"published": "<BEES/A> <BEES/B>", "verdict": "no answer"}
    assert calls == EXPECTED_CALLS
    assert last >= 8  # step, sleep, gather and wait each take entries

    for seq in range(1, last + 1):
        calls.clear()
        # One store for every run: each is its own object, and the crash targets only it.
        async with FunctionEnv(pipeline_app(calls), store=store_url) as env:
            oid = await env.submit("pipeline", topic="bees")
            env.crash_after(seq, object_id=oid)
            assert await asyncio.wait_for(env.result(oid), GUARD) == uninterrupted, f"crash after {seq}"
            assert env.crashes == [Crash("env-node-1", oid, seq)]
            assert calls == EXPECTED_CALLS, f"crash after {seq}: {calls}"
            memory = (await env.client.get(oid)).memory
            assert len(memory) == last + 1  # the same entries as the uninterrupted run
            # Up to the crash, the first node wrote; after it, the node that took over.
            assert {e.origin_node for e in memory[1:seq + 1]} == {"env-node-1"}
            assert {e.origin_node for e in memory[seq + 1:]} <= {"env-node-2"}
            assert await env.client.verify(oid) == len(memory)


async def test_the_node_that_takes_over_replays_the_function_from_its_memory() -> None:
    calls: Counter[str] = Counter()
    app = peo.App()

    @app.function("three")
    async def three(run: peo.Run) -> int:
        calls["from the top"] += 1
        a = await run.step(lambda: calls.update(["a"]) or 1, name="a")
        b = await run.step(lambda: calls.update(["b"]) or 2, name="b")
        c = await run.step(lambda: calls.update(["c"]) or 3, name="c")
        return a + b + c

    async with FunctionEnv(app) as env:
        oid = await env.submit("three")
        env.crash_after(2)
        assert await asyncio.wait_for(env.result(oid), GUARD) == 6
    # The dead node's coroutine died with it: the new node ran the function from the top
    # once more, taking a and b from memory, and ran only c.
    assert calls == Counter({"from the top": 2, "a": 1, "b": 1, "c": 1})


async def test_a_crash_can_target_one_object_and_the_others_carry_on() -> None:
    calls: Counter[str] = Counter()
    # One object at a time: a crash also loses the steps of other objects that are in
    # flight (they run again, as after a real crash); here none is, so every count is 1.
    async with FunctionEnv(pipeline_app(calls), concurrency=1) as env:
        first = await env.submit("pipeline", topic="bees")
        second = await env.submit("pipeline", topic="ants")
        env.crash_after(1, object_id=second)
        results = [await asyncio.wait_for(env.result(oid), GUARD) for oid in (first, second)]
        assert [r["published"] for r in results] == ["<BEES/A> <BEES/B>", "<ANTS/A> <ANTS/B>"]
        assert env.crashes == [Crash("env-node-1", second, 1)]
    # Every step ran once per object, children included.
    assert calls == Counter({"fetch": 2, "publish": 2, "summarize bees/a": 1, "summarize bees/b": 1,
                             "summarize ants/a": 1, "summarize ants/b": 1})


async def test_crashes_fire_once_each_and_one_armed_past_the_end_never_fires() -> None:
    calls: Counter[str] = Counter()
    async with FunctionEnv(pipeline_app(calls)) as env:
        oid = await env.submit("pipeline", topic="bees")
        env.crash_after(2, object_id=oid)
        env.crash_after(5, object_id=oid)
        env.crash_after(999)
        await asyncio.wait_for(env.result(oid), GUARD)
        assert env.crashes == [Crash("env-node-1", oid, 2), Crash("env-node-2", oid, 5)]
        assert env.node is not None and env.node.node_id == "env-node-3"
    assert calls == EXPECTED_CALLS


async def test_a_serve_cut_short_by_a_guard_stops_its_node_and_the_next_serve_carries_on() -> None:
    app = peo.App()
    attempts: list[int] = []
    never = asyncio.Event()

    @app.function("stuck_once")
    async def stuck_once(run: peo.Run) -> str:
        async def tool() -> str:
            attempts.append(len(attempts) + 1)
            if len(attempts) == 1:
                await never.wait()  # the first attempt hangs until the guard gives up
            return "done"

        return str(await run.step(tool))

    async with FunctionEnv(app) as env:
        oid = await env.submit("stuck_once")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(env.result(oid), 0.5)
        assert env.node is None  # stopped with the cancelled serve
        assert await asyncio.wait_for(env.result(oid), GUARD) == "done"
        assert attempts == [1, 2]  # the cut-off attempt never committed: it ran again
        assert env.crashes == []  # a cancelled serve is not an injected crash
        assert {e.origin_node for e in (await env.client.get(oid)).memory[1:]} == {"env-node-2"}


def test_crash_after_refuses_entry_zero() -> None:
    env = FunctionEnv(peo.App())
    with pytest.raises(peo.UsageError, match="entry 0 is written by submit"):
        env.crash_after(0)


# -- the guide ----------------------------------------------------------------------------


def test_the_testing_guide_example_runs_as_written(tmp_path: Path) -> None:
    text = (REPO / "docs" / "testing.md").read_text()
    [example] = [b for b in re.findall(r"```python\n(.*?)```", text, re.S) if "FunctionEnv(app)" in b]
    printed = re.findall(r"```\n(.*?)```", text.split("It prints:", 1)[1], re.S)[0]
    (tmp_path / "example.py").write_text(example)
    env = {k: v for k, v in os.environ.items() if k not in ("PEO_STORE", "PEO_FAULTS")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    result = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == printed  # what the guide says it prints
