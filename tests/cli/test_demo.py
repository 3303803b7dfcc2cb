"""The demo's durable function (``brief`` in peo.demo:app), in-process and fast: its
result, its operations, its children, and its chain. The whole demo, node processes and
SIGKILL included, runs in tests/cli/test_readme.py."""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

import peo
from peo import demo
from peo.testing import FunctionEnv

EXPECTED = {"topic": "durability", "sources": 2, "words": 17}


async def test_the_demo_brief_function_sleeps_delegates_and_returns_its_result() -> None:
    async with FunctionEnv(demo.app) as env:
        oid = await env.submit("brief", topic="durability")
        assert await asyncio.wait_for(env.result(oid), 60) == EXPECTED
        info = await env.client.get(oid)
        assert [str(e.action) for e in info.memory] == [
            "instantiate", "execute", "dormancy", "reentry", "delegate", "reentry", "execute", "terminate"]
        assert info.state["fn.version"] == "demo-1"
        assert peo.functions.progress_of(info) == {"sources": 2, "now": "summarising"}
        children = [r for r in await env.client.list() if r.parent == oid]
        assert len(children) == 2 and {r.handler for r in children} == {"summarise"}
        for o in [oid, *(r.id for r in children)]:
            await env.client.verify(o)


async def test_the_brief_resumes_after_a_crash_at_any_entry_repeating_no_step(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "_WORK", 0.0)
    calls: Counter[str] = Counter()
    for name in ("_search", "_count_words", "_compose"):
        monkeypatch.setattr(demo, name, _counted(getattr(demo, name), calls))
    for seq in range(1, 8):
        calls.clear()
        async with FunctionEnv(demo.app, concurrency=1) as env:
            oid = await env.submit("brief", topic="durability")
            env.crash_after(seq, object_id=oid)
            assert await asyncio.wait_for(env.result(oid), 60) == EXPECTED
            assert [c.seq for c in env.crashes] == [seq]
            assert calls == {"_search": 1, "_count_words": 2, "_compose": 1}, (seq, calls)
            await env.client.verify(oid)


def _counted(fn: Callable[..., Any], calls: Counter[str]) -> Callable[..., Any]:
    @functools.wraps(fn)  # the same __name__: the step keeps its recorded name
    def counted(*args: Any) -> Any:
        calls[fn.__name__] += 1
        return fn(*args)

    return counted


def test_the_demo_fleet_includes_the_durable_function() -> None:
    assert ("brief", {"topic": "durability"}) in demo._FLEET
    assert demo._FLEET[demo._BRIEF_AT][0] == "brief"
    assert {"brief", "summarise"} <= set(demo.app.handlers)
