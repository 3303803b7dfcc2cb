"""Alert deliveries (issue 14, tier 4), on both stores: an incident is alerted once per sink
however many nodes notice it, a delivery is leased so that two nodes do not deliver it at
once, and each attempt is recorded, so that a restart neither loses nor repeats it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from test_contract import SEC, T0

from peo.ids import new_id
from peo.store import ALERT_LEASE_NS, AlertRow, Store, open_store


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with open_store(store_url) as s:
        yield s


def keys(rows: list[AlertRow]) -> list[tuple[str, str, str]]:
    return [(r.object_id, r.incident, r.sink) for r in rows]


async def test_an_incident_is_alerted_once_per_sink(store: Store) -> None:
    oid = new_id()
    assert await store.add_alert(oid, "q-1", ["webhook", "command"], b'{"n": 1}', now=T0) == 2
    # A second node noticing the same incident, or a node restarted: nothing new.
    assert await store.add_alert(oid, "q-1", ["command", "webhook"], b'{"n": 2}', now=T0 + 1) == 0
    # A sink added since gets its own row; a sink named twice counts once.
    assert await store.add_alert(oid, "q-1", ["webhook", "email", "email"], b'{"n": 3}', now=T0 + 2) == 1
    # Another incident of the same object is alerted again.
    assert await store.add_alert(oid, "q-2", ["webhook"], b"{}", now=T0 + 3) == 1
    assert await store.add_alert(oid, "q-3", [], b"{}", now=T0 + 3) == 0
    rows = await store.alerts(oid)
    assert keys(rows) == [(oid, "q-1", "command"), (oid, "q-1", "webhook"), (oid, "q-1", "email"),
                          (oid, "q-2", "webhook")]
    first = rows[0]
    assert (first.payload, first.created_at, first.attempts, first.next_at, first.delivered_at,
            first.last_error) == (b'{"n": 1}', T0, 0, T0, None, None)  # the first payload stays
    assert await store.alerts(new_id()) == []


async def test_two_nodes_adding_the_same_incident_at_once_make_one_row_per_sink(store_url: str) -> None:
    oid = new_id()
    async with open_store(store_url) as a, open_store(store_url) as b:
        added = await asyncio.gather(*(s.add_alert(oid, "q-1", ["webhook", "command"], b"{}", now=T0)
                                       for s in (a, b, a, b)))
        assert sum(added) == 2
        assert len(await a.alerts(oid)) == 2


async def test_due_alerts_returns_the_oldest_due_first_and_leases_them(store: Store) -> None:
    oid = new_id()
    for n in range(3):
        await store.add_alert(oid, f"q-{n}", ["webhook"], b"{}", now=T0 + n * SEC)
    assert await store.due_alerts(now=T0 - 1) == []  # none due yet
    now = T0 + 10 * SEC
    got = await store.due_alerts(now=now, limit=2)
    assert keys(got) == [(oid, "q-0", "webhook"), (oid, "q-1", "webhook")]
    assert all(r.next_at == now + ALERT_LEASE_NS for r in got)  # leased
    # While leased they are due for no one else; the next call gets the rest.
    assert keys(await store.due_alerts(now=now)) == [(oid, "q-2", "webhook")]
    assert await store.due_alerts(now=now + ALERT_LEASE_NS - 1) == []
    # The node delivering them died: when the lease ends they are due again (nothing is lost).
    again = await store.due_alerts(now=now + ALERT_LEASE_NS)
    assert keys(again) == [(oid, f"q-{n}", "webhook") for n in range(3)]
    assert [r.attempts for r in again] == [0, 0, 0]
    assert await store.due_alerts(now=now, limit=0) == []


async def test_nodes_asking_at_once_get_disjoint_alerts(store_url: str) -> None:
    oid = new_id()
    async with open_store(store_url) as a, open_store(store_url) as b:
        await a.add_alert(oid, "q-1", [f"sink-{i}" for i in range(20)], b"{}", now=T0)
        batches = await asyncio.gather(*(s.due_alerts(now=T0 + 1, limit=3) for s in (a, b) * 5))
    taken = [k for batch in batches for k in keys(batch)]
    assert len(taken) == len(set(taken)) == 20  # each once: no alert delivered by two nodes


async def test_a_failed_attempt_is_recorded_and_retried_at_the_time_given(store: Store) -> None:
    oid = new_id()
    await store.add_alert(oid, "q-1", ["webhook"], b"{}", now=T0)
    [row] = await store.due_alerts(now=T0)
    retry = T0 + 5 * SEC
    await store.alert_attempted(oid, "q-1", "webhook", now=T0 + 1, delivered=False, error="refused " * 500,
                                next_at=retry)
    [row] = await store.alerts(oid)
    assert (row.attempts, row.next_at, row.delivered_at) == (1, retry, None)
    assert row.last_error is not None and len(row.last_error) == 2000 and row.last_error.startswith("refused")
    assert await store.due_alerts(now=retry - 1) == []
    assert keys(await store.due_alerts(now=retry)) == [(oid, "q-1", "webhook")]
    # Without a retry time the lease's end is when it is tried again.
    await store.alert_attempted(oid, "q-1", "webhook", now=retry + 1, delivered=False, error="timeout")
    [row] = await store.alerts(oid)
    assert (row.attempts, row.next_at, row.last_error) == (2, retry + ALERT_LEASE_NS, "timeout")


async def test_a_delivered_alert_is_recorded_and_never_due_again(store: Store) -> None:
    oid = new_id()
    await store.add_alert(oid, "q-1", ["webhook", "command"], b"{}", now=T0)
    await store.due_alerts(now=T0)
    await store.alert_attempted(oid, "q-1", "webhook", now=T0 + 1, delivered=False, error="503")
    await store.alert_attempted(oid, "q-1", "webhook", now=T0 + 2, delivered=True)
    await store.alert_attempted(oid, "q-1", "webhook", now=T0 + 3, delivered=True)  # a late repeat
    by_sink = {r.sink: r for r in await store.alerts(oid)}
    hook = by_sink["webhook"]
    assert (hook.attempts, hook.delivered_at, hook.last_error) == (3, T0 + 2, "503")  # the first delivery's time
    assert by_sink["command"].delivered_at is None
    later = T0 + 10 * ALERT_LEASE_NS
    assert keys(await store.due_alerts(now=later)) == [(oid, "q-1", "command")]
    # An attempt on a row that does not exist changes nothing.
    await store.alert_attempted(oid, "q-9", "webhook", now=later, delivered=True)
    assert len(await store.alerts(oid)) == 2
