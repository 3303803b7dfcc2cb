"""Tiers 3 and 4 for a step that keeps failing with one error class (issue 14, item 4), on
both stores: after ``max_recoveries`` failed steps in a row of one class, a node restores
the object's known-good state with a signed entry; if the steps fail that way again from
the same known-good state, it quarantines the object. ``max_recoveries`` is the intent's
constraint where it has one, else the node's setting."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

import peo
from peo.core.model import Action


class Upstream(Exception):
    pass


def buggy_app(bug_passes: int, calls: list[str]) -> peo.App:
    """``report``: step 1 checkpoints a good state, step 2 writes a bad one (the bug, for
    its first ``bug_passes`` runs), and every step that finds the bad state raises."""
    app = peo.App()
    runs = {"bad_writes": 0}

    @app.handler("report", retry=peo.Retry(base=0.001, max=0.002))
    def report(step: peo.Step) -> peo.Proposal:
        state = step.state
        if state.get("bad"):
            calls.append("fail")
            raise Upstream("the parser chokes on the bad state")
        if "draft" not in state:
            calls.append("draft")
            return peo.Continue(state={"draft": "v1"}, checkpoint=True)
        if "total" not in state:
            calls.append("total")
            if runs["bad_writes"] < bug_passes:
                runs["bad_writes"] += 1
                return peo.Continue(state={"total": -1, "bad": True})
            return peo.Continue(state={"total": 42})
        return peo.Done({"total": state["total"]})

    return app


async def run_idle(url: str, app: peo.App, **options: Any) -> None:
    node = peo.Node(url, app, **options)
    await asyncio.wait_for(node.run_until_idle(), 60)


def restores(memory: Sequence[Any]) -> list[dict[str, Any]]:
    return [e.outcome for e in memory if e.action is Action.MUTATE and "restore" in e.outcome]


async def test_failed_steps_of_one_class_restore_the_checkpoint_and_a_fixed_run_finishes(store_url: str) -> None:
    calls: list[str] = []
    async with peo.Client(store_url) as client:
        oid = await client.submit("report", max_recoveries=2)
        await run_idle(store_url, buggy_app(1, calls), max_recoveries=5)
        assert await client.wait(oid, timeout=5) == {"total": 42}
        memory = (await client.get(oid)).memory
    # two failures (the intent's max_recoveries, not the node's 5), a restore, then the fix
    assert calls == ["draft", "total", "fail", "fail", "total"]
    (restored,) = restores(memory)
    assert restored["restore"]["seq"] == 1 and restored["restore"]["by"] == "node"
    assert "2 failed steps in a row of error class Upstream" in restored["restore"]["reason"]
    assert restored["reset"] == {"draft": "v1"}  # the checkpoint's state: "bad" is gone


async def test_when_the_restore_does_not_help_the_object_is_quarantined(store_url: str) -> None:
    calls: list[str] = []
    async with peo.Client(store_url) as client:
        oid = await client.submit("report")
        await run_idle(store_url, buggy_app(99, calls), max_recoveries=2)  # the node's setting
        info = await client.get(oid)
        memory = info.memory
    assert info.status == "quarantined"
    assert "2 failed steps in a row of error class Upstream" in str(info.reason)
    assert "after a restore to the known-good state of seq 1" in str(info.reason)
    assert calls == ["draft", "total", "fail", "fail", "total", "fail", "fail"]
    assert len(restores(memory)) == 1  # one restore, never a loop of them


async def test_failures_of_changing_classes_are_not_healed_and_end_at_the_failure_threshold(store_url: str) -> None:
    app = peo.App()
    attempts: list[int] = []

    @app.handler("flaky", retry=peo.Retry(base=0.001, max=0.002, max_attempts=4))
    def flaky(step: peo.Step) -> peo.Proposal:
        attempts.append(step.attempt)
        raise (KeyError if step.attempt % 2 else ValueError)("no")

    async with peo.Client(store_url) as client:
        oid = await client.submit("flaky", max_recoveries=2)
        await run_idle(store_url, app)
        with pytest.raises(peo.ObjectFailedError):
            await client.wait(oid, timeout=5)
        assert restores((await client.get(oid)).memory) == []
    assert attempts == [1, 2, 3, 4]


async def test_max_recoveries_must_be_a_positive_integer(sqlite_url: str) -> None:
    async with peo.Client(sqlite_url) as client:
        for bad in (0, -1, 1.5, True):
            with pytest.raises(peo.UsageError, match="max_recoveries must be a positive integer"):
                await client.submit("report", max_recoveries=bad)
