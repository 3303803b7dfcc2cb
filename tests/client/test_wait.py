"""Client.wait on a store that notifies is woken by the object's end, not by polling."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import peo


async def test_wait_on_postgres_wakes_when_the_object_ends_not_when_a_poll_comes_round(postgres_url: str) -> None:
    app = peo.App()
    release = asyncio.Event()

    @app.handler("slow")
    async def slow(step: peo.Step) -> peo.Proposal:
        await release.wait()
        return peo.Done("finished")

    async with peo.Client(postgres_url) as client, peo.Node(postgres_url, app, node_id="n"):
        oid = await client.submit("slow")
        reads = 0
        real_get = client.store.get

        async def counting_get(object_id: str) -> Any:
            nonlocal reads
            reads += 1
            if reads == 2:
                release.set()  # the handler finishes only once the wait has looked twice
            return await real_get(object_id)

        client.store.get = counting_get  # type: ignore[method-assign]
        # A poll of an hour: only the store's notification can end this wait (the test's own
        # timeout would fail it otherwise).
        assert await client.wait(oid, poll=3600) == "finished"
        assert reads <= 6  # woken by notifications, not a poll loop


def test_a_store_without_notifications_says_so(sqlite_url: str) -> None:
    assert peo.Client(sqlite_url).store.notifies is False
    pytest.importorskip("asyncpg")
    assert peo.Client("postgresql://postgres@127.0.0.1:5432/test").store.notifies is True


async def test_wait_reads_the_signed_head_once_per_change_of_the_row(store_url: str) -> None:
    """Holding the row to its signed head costs a read and two signature checks: a wait
    pays it when the row's claims change (and once per head for a client), not per poll."""
    app = peo.App()

    @app.handler("gate")
    def gate(step: peo.Step) -> peo.Proposal:
        return peo.Done("open") if step.signals else peo.WaitSignal("go")

    async with peo.Client(store_url) as client:
        oid = await client.submit("gate")
        await peo.Node(store_url, app, idle_horizon=0).run_until_idle()
        reads = 0
        real = client.store.head_entries

        async def counting(object_id: str, seq: int) -> Any:
            nonlocal reads
            reads += 1
            return await real(object_id, seq)

        client.store.head_entries = counting  # type: ignore[method-assign]
        with pytest.raises(peo.errors.TimeoutError):
            await client.wait(oid, timeout=0.3, poll=0.01)  # dormant: many polls, one check
        assert reads == 1
        await client.signal(oid, "go")
        await peo.Node(store_url, app, idle_horizon=0).run_until_idle()
        for _ in range(20):
            assert await client.wait(oid, timeout=5) == "open"
        assert reads == 2  # the terminate entry, checked once
