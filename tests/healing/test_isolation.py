"""Process isolation: ``@app.handler("x", isolation="process")`` runs each step in a forked
child that the node can kill. A child that exits, loops or grows past its ``memory=`` is
recorded as a failed step (``crash``, ``timeout``, ``memory``) and the node (this test
process) lives on; the handler's own exception is recorded as without isolation.

No assertion is on wall time: timeouts and sleeps are mechanisms, deadlines catch hangs.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import time
from typing import Any

import pytest

import peo


def children() -> set[int]:
    """The live (or zombie) child processes of this process."""
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == os.getpid():
                found.add(int(entry))
    return found


@pytest.fixture(autouse=True)
def _no_child_left() -> Any:
    before = children()
    yield
    assert children() - before == set()  # not even a zombie (before active_children() would reap one)
    assert multiprocessing.active_children() == []


async def run_idle(url: str, app: peo.App) -> None:
    await asyncio.wait_for(peo.Node(url, app).run_until_idle(), 60)


async def errors(client: peo.Client, oid: str) -> list[dict[str, Any]]:
    return [e.outcome["error"] for e in (await client.get(oid)).memory if "error" in e.outcome]


async def test_isolated_steps_propose_as_in_the_node(store_url: str) -> None:
    app = peo.App()
    pids: set[int] = set()

    @app.handler("count", isolation="process")
    def count(step: peo.Step) -> peo.Proposal:
        n = step.state.get("n", 0)
        seen = [*step.state.get("pids", []), os.getpid()]
        return peo.Done(seen) if n >= 4 else peo.Continue(state={"n": n + 1, "pids": seen})

    @app.handler("acount", isolation="process")
    async def acount(step: peo.Step) -> peo.Proposal:
        await asyncio.sleep(0)
        n = step.state.get("n", 0)
        return peo.Done(n) if n >= 3 else peo.Continue(state={"n": n + 1})

    async with peo.Client(store_url) as client:
        oid = await client.submit("count")
        aid = await client.submit("acount")
        await run_idle(store_url, app)
        pids.update(await client.wait(oid, timeout=5))
        assert await client.wait(aid, timeout=5) == 3
        assert await client.verify(oid) == 6 and await client.verify(aid) == 5
    assert len(pids) == 5 and os.getpid() not in pids  # one process per step, never the node


async def test_a_step_that_exits_its_process_fails_and_the_node_lives_on(sqlite_url: str) -> None:
    app = peo.App()

    @app.handler("boom", isolation="process", retry=peo.Retry(base=0.05, max_attempts=2))
    def boom(step: peo.Step) -> peo.Proposal:
        os._exit(1)

    @app.handler("fine", isolation="process")
    def fine(step: peo.Step) -> peo.Proposal:
        n = step.state.get("n", 0)
        return peo.Done(n) if n >= 3 else peo.Continue(state={"n": n + 1})

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("boom")
        other = await client.submit("fine")
        await run_idle(sqlite_url, app)
        assert await client.wait(other, timeout=5) == 3
        with pytest.raises(peo.ObjectFailedError, match="failure threshold exceeded"):
            await client.wait(oid, timeout=5)
        errs = await errors(client, oid)
        assert [e["class"] for e in errs] == ["crash", "crash"]
        assert all("exit status 1" in e["message"] and e["retryable"] for e in errs)
        memory = (await client.get(oid)).memory
        assert any(e.action is peo.core.model.Action.DORMANCY for e in memory)  # backed off between


async def test_a_runaway_step_is_killed_at_its_timeout(sqlite_url: str) -> None:
    app = peo.App()

    @app.handler("loop", isolation="process", timeout=0.3)
    def loop(step: peo.Step) -> peo.Proposal:
        while True:
            time.sleep(0.05)

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("loop", max_failures=1)
        await run_idle(sqlite_url, app)
        with pytest.raises(peo.ObjectFailedError):
            await client.wait(oid, timeout=5)
        [err] = await errors(client, oid)
        assert err["class"] == "timeout" and "0.3 s" in err["message"] and "killed" in err["message"]


async def test_a_step_past_its_memory_is_killed(sqlite_url: str) -> None:
    app = peo.App()

    @app.handler("hog", isolation="process", memory="50MiB", timeout=60)
    def hog(step: peo.Step) -> peo.Proposal:
        block = bytearray(200 << 20)
        for i in range(0, len(block), 4096):
            block[i] = 1  # resident, page by page
        while True:
            time.sleep(0.05)

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("hog", max_failures=1)
        await run_idle(sqlite_url, app)
        with pytest.raises(peo.ObjectFailedError):
            await client.wait(oid, timeout=5)
        [err] = await errors(client, oid)
        assert err["class"] == "memory" and "50 MiB" in err["message"]


def test_registration_refuses_what_cannot_be_isolated() -> None:
    app = peo.App()
    with pytest.raises(peo.UsageError, match="isolation must be None or 'process', not 'thread'"):
        app.handler("t", isolation="thread")
    with pytest.raises(peo.UsageError, match="durable function cannot be isolated"):
        app.function("f", isolation="process")
    assert "t" not in app and "f" not in app


async def test_the_handlers_own_exception_is_recorded_as_without_isolation(sqlite_url: str) -> None:
    app = peo.App()

    def parse(text: str) -> int:
        return int(text)

    @app.handler("invoice", isolation="process")
    def invoice(step: peo.Step) -> peo.Proposal:
        return peo.Done(parse(step.goal["amount"]))

    @app.handler("odd", isolation="process")
    def odd(step: peo.Step) -> peo.Proposal:
        return peo.Done(None, state={"f": lambda: 1})  # cannot leave its process

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("invoice", {"amount": "twelve"}, max_failures=1)
        bad = await client.submit("odd", max_failures=1)
        await run_idle(sqlite_url, app)
        with pytest.raises(peo.ObjectFailedError) as failed:
            await client.wait(oid, timeout=5)
        last = failed.value.last_error
        assert last is not None and last["class"] == "ValueError"
        assert last["message"] == "invalid literal for int() with base 10: 'twelve'"
        assert "in parse" in last["traceback"] and "return int(text)" in last["traceback"]
        with pytest.raises(peo.ObjectFailedError):
            await client.wait(bad, timeout=5)
        [err] = await errors(client, bad)
        assert err["class"] == "invalid" and "cannot be pickled" in err["message"]


async def test_a_cancelled_node_kills_the_step_it_was_waiting_for(sqlite_url: str) -> None:
    app = peo.App()

    @app.handler("sleepy", isolation="process", timeout=60)
    def sleepy(step: peo.Step) -> peo.Proposal:
        while True:
            time.sleep(0.05)

    before = children()
    async with peo.Client(sqlite_url) as client:
        await client.submit("sleepy")
        task = asyncio.ensure_future(peo.Node(sqlite_url, app).run())
        async with asyncio.timeout(30):  # against a hang only
            while not children() - before:
                await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert children() - before == set()
