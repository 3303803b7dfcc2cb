"""An object no node can serve never hangs an until-idle node, and says why it waits."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

import peo


def counting_app() -> peo.App:
    app = peo.App()

    @app.handler("count")
    def count(step: peo.Step) -> peo.Proposal:
        return peo.Done(step.goal.get("n", 0))

    return app


async def test_run_until_idle_leaves_objects_it_cannot_serve_behind_and_says_why(
        store_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="peo.node")
    async with peo.Client(store_url) as client:
        typo = await client.submit("cuont")  # a one-letter typo: no node serves it
        ok = await client.submit("count", {"n": 3})
        node = peo.Node(store_url, counting_app(), node_id="n1")
        await asyncio.wait_for(node.run_until_idle(), 30)  # used to wait for "cuont" forever
        assert await client.wait(ok, timeout=5) == 3
        assert node.left_behind == {"handler 'cuont' is not served by this node": 1}
        assert any("idle_left_behind" in r.getMessage() and "cuont" in r.getMessage() for r in caplog.records)
        rows = {r.id: r for r in await client.list()}
        assert rows[typo].unserved and not rows[ok].unserved  # peo ls: "no node serves this handler"
        assert await client.store.served_handlers(since=time.time_ns() - 60 * 10**9) == {"count"}


async def test_the_store_remembers_which_node_serves_what(store_url: str) -> None:
    async with peo.Client(store_url) as client:
        store = client.store
        await store.register_node("a", ["x", "y"], now=100)
        await store.register_node("b", ["z"], now=200)
        assert await store.served_handlers(since=0) == {"x", "y", "z"}
        assert await store.served_handlers(since=150) == {"z"}
        await store.register_node("a", ["w"], now=300)  # a restart with another app replaces the row
        assert await store.served_handlers(since=0) == {"w", "z"}
