"""A node runs what the signed chain says, never what the row cache says: a row that
disagrees with its chain is quarantined, a parent's children are those its own chain
names with the results their chains record, and an error the node did not expect ends in a
recorded failure and then quarantine, never a loop."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from rawsql import raw

import peo
from peo.core.codec import packb


async def run_idle(url: str, app: peo.App, **kw: Any) -> peo.Node:
    node = peo.Node(url, app, idle_horizon=kw.pop("idle_horizon", 1.0), **kw)
    await asyncio.wait_for(node.run_until_idle(), 120)  # a guard against a loop, not a timing
    return node


def counting_app(runs: list[str], *names: str) -> peo.App:
    app = peo.App()
    for name in names:
        def handler(step: peo.Step, name: str = name) -> peo.Proposal:
            runs.append(name)
            return peo.Done({"by": name})

        app.handler(name)(handler)
    return app


async def test_a_finished_objects_row_set_back_to_runnable_is_quarantined_and_not_run_again(store_url: str) -> None:
    runs: list[str] = []
    async with peo.Client(store_url) as client:
        oid = await client.submit("job")
        await run_idle(store_url, counting_app(runs, "job"))
        await raw(store_url, "UPDATE objects SET status = 'runnable', due_at = 0, reason = NULL WHERE id = ?", oid)
        await run_idle(store_url, counting_app(runs, "job"))
        assert runs == ["job"]
        info = await client.get(oid, memory=False)
        assert info.status is peo.Status.QUARANTINED
        assert "chain ended at seq 1 (terminated)" in (info.reason or "")


async def test_a_row_naming_a_handler_the_chain_does_not_is_quarantined(store_url: str) -> None:
    runs: list[str] = []
    async with peo.Client(store_url) as client:
        oid = await client.submit("dangerous")
        await raw(store_url, "UPDATE objects SET handler = 'harmless' WHERE id = ?", oid)
        await run_idle(store_url, counting_app(runs, "harmless"))
        assert runs == []
        info = await client.get(oid, memory=False)
        assert info.status is peo.Status.QUARANTINED
        assert "the row's handler 'harmless' is not the chain's 'dangerous'" in (info.reason or "")


def family_app(seen: list[dict[str, Any]], *, parent: bool = True, child: bool = True) -> peo.App:
    app = peo.App()
    if parent:
        @app.handler("parent")
        def parent_handler(step: peo.Step) -> peo.Proposal:
            if not step.state.get("delegated"):
                return peo.Delegate([peo.Intent("kid", {"v": 1})], state={"delegated": True})
            seen.append(dict(step.children))
            return peo.Done(sum(r["v"] for r in step.children.values()))
    if child:
        @app.handler("kid")
        def kid(step: peo.Step) -> peo.Proposal:
            return peo.Done({"v": step.goal["v"]})
    return app


async def test_a_parent_reads_only_the_children_its_chain_names_with_the_results_their_chains_record(
        store_url: str) -> None:
    seen: list[dict[str, Any]] = []
    async with peo.Client(store_url) as client:
        stranger = await client.submit("kid", {"v": 999_999})
        await run_idle(store_url, family_app(seen, parent=False))
        pid = await client.submit("parent")
        await run_idle(store_url, family_app(seen, child=False))  # the parent delegates and waits
        await run_idle(store_url, family_app(seen, parent=False))  # the child ends
        [kid] = [o.id for o in await client.list(parent=pid)]
        # Behind peo's back: adopt a stranger and forge the real child's cached result.
        await raw(store_url, "UPDATE objects SET parent = ? WHERE id = ?", pid, stranger)
        await raw(store_url, "UPDATE objects SET result = ? WHERE id = ?", packb({"v": 10**6}), kid)
        await run_idle(store_url, family_app(seen, child=False))
        assert seen == [{kid: {"v": 1}}]
        assert await client.wait(pid, timeout=5) == 1


async def test_a_child_whose_row_claims_it_ended_before_its_chain_did_is_quarantined(store_url: str) -> None:
    seen: list[dict[str, Any]] = []
    async with peo.Client(store_url) as client:
        pid = await client.submit("parent")
        await run_idle(store_url, family_app(seen, child=False))
        [kid] = [o.id for o in await client.list(parent=pid)]
        await raw(store_url, "UPDATE objects SET status = 'terminated', result = ?, reason = 'done', due_at = NULL"
                  " WHERE id = ?", packb({"v": 10**6}), kid)
        await raw(store_url, "UPDATE objects SET due_at = 0 WHERE id = ?", pid)
        await run_idle(store_url, family_app(seen, child=False))
        assert seen == [{}]  # the parent went on without it, and was never handed the forgery
        assert (await client.get(kid, memory=False)).status is peo.Status.QUARANTINED


async def test_an_error_the_node_did_not_expect_is_recorded_then_quarantines_the_object(
        sqlite_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, logger="peo.node")
    runs: list[str] = []
    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("job")
        node = peo.Node(sqlite_url, counting_app(runs, "job"), idle_horizon=5.0)

        async def broken(*args: Any, **kw: Any) -> Any:
            raise RuntimeError("a bug in the node")

        node.worker.step = broken  # type: ignore[method-assign]
        await asyncio.wait_for(node.run_until_idle(), 120)
        info = await client.get(oid)
        assert info.status is peo.Status.QUARANTINED
        assert info.reason is not None and "node error: RuntimeError: a bug in the node" in info.reason
        failures = [e.outcome["error"]["class"] for e in info.memory if "error" in e.outcome]
        assert failures == ["NodeError"]  # recorded once, backed off, then quarantined when it repeated
        assert sum("node_error" in r.getMessage() for r in caplog.records) == 2
