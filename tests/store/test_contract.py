"""The store contract, specified once and run against every backend.

Each test reads as a rule the store promises (see peo/store/base.py). The ``store_url``
fixture (tests/conftest.py) runs each test on SQLite and, when PEO_TEST_POSTGRES_URL is
set, on PostgreSQL in a schema of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import attrs
import pytest

from peo import keys
from peo.core.codec import packb
from peo.core.head import Head
from peo.core.memory import genesis, instantiation_outcome, make_entry
from peo.core.model import CANCEL_SIGNAL, Action, Context, Entry, Intent, Status
from peo.core.wake import Wake
from peo.errors import ConflictError, NotFoundError, ObjectTerminatedError, StoreError, UsageError
from peo.ids import new_id
from peo.store import AppendItem, Claim, NewObject, Store, open_store
from peo.testing import faults

KEY = keys.generate()
T0 = 1_700_000_000_000_000_000  # a fixed "now": stores never read the clock for decisions
SEC = 1_000_000_000
LEASE = 10 * SEC


# -- building objects and entries ----------------------------------------------------------


def new_object(
    oid: str | None = None, *, handler: str = "work", scope: str = "default", priority: int = 0,
    parent: str | None = None, due_at: int = T0,
) -> NewObject:
    oid = oid or new_id()
    intent = Intent(handler, {"n": 1})
    context = Context(trust_scope=scope, priority=priority, parent=parent)
    entry = make_entry(
        KEY, seq=0, prev=genesis(oid), timestamp=due_at, origin_node="test", policy_ref="test",
        action=Action.INSTANTIATE, outcome=instantiation_outcome(oid, intent, context), trace_id=oid,
    )
    return NewObject(oid, handler, scope, "anonymous", priority, parent, entry, due_at)


def next_entry(prev: Entry, action: Action = Action.EXECUTE, **outcome: Any) -> Entry:
    return make_entry(
        KEY, seq=prev.seq + 1, prev=prev.hash, timestamp=prev.timestamp + 1, origin_node="test",
        policy_ref="test", action=action, outcome=dict(outcome), trace_id=prev.trace_id,
    )


def head(status: str = "runnable", due_at: int | None = T0, *, wait_signal: str | None = None,
         wait_children: bool = False, result: Any = None, reason: str | None = None) -> Head:
    """The head an entry leaves: a dormant one waits until ``due_at`` and/or for a signal
    and/or for its children."""
    wake = Wake(due_at, wait_signal, wait_children) if status == "dormant" else None
    return Head(Status(status), due_at, wake, result=result, reason=reason)


class Tracked:
    """An object under test and the last entry written to it."""

    def __init__(self, obj: NewObject):
        self.obj = obj
        self.id = obj.id
        self.last = obj.entry

    def step(self, claim: Claim, *, status: str = "runnable", due_at: int | None = T0,
             action: Action = Action.EXECUTE, wait_signal: str | None = None, wait_children: bool = False,
             result: Any = None, reason: str | None = None, **kw: Any) -> AppendItem:
        """The next entry as an append item (call ``advance`` once it committed)."""
        after = head(status, due_at, wait_signal=wait_signal, wait_children=wait_children, result=result,
                     reason=reason)
        return AppendItem(self.id, claim.token, next_entry(self.last, action), after, **kw)

    def advance(self, item: AppendItem) -> None:
        self.last = item.entry


async def make(store: Store, **kw: Any) -> Tracked:
    obj = new_object(**kw)
    await store.create([obj])
    return Tracked(obj)


async def claim_only(store: Store, oid: str, *, owner: str, now: int, lease_ns: int) -> list[Claim]:
    """Claim ``oid`` and nothing else (every other object is excluded)."""
    others = [r.id for r in await store.list() if r.id != oid]
    return await store.claim(owner, now=now, lease_ns=lease_ns, limit=1, handlers=["work"], scopes=None,
                             exclude=others)


async def claim_one(store: Store, oid: str, *, owner: str = "node-a", now: int = T0,
                    lease_ns: int = LEASE) -> Claim:
    claims = await claim_only(store, oid, owner=owner, now=now, lease_ns=lease_ns)
    assert [c.id for c in claims] == [oid], f"{oid} was not claimable"
    return claims[0]


async def commit(store: Store, t: Tracked, item: AppendItem, *, now: int = T0) -> int:
    [result] = await store.append([item], now=now)
    assert result is not None, "the append lost its compare-and-swap"
    t.advance(item)
    return result


async def claimable(store: Store, oid: str, *, now: int) -> bool:
    """Is ``oid`` claimable at ``now``? (Claims it with a 1 ns lease: it lapses at once.)"""
    return bool(await claim_only(store, oid, owner="probe", now=now, lease_ns=1))


async def go_dormant(store: Store, t: Tracked, *, wait_signal: str | None = None, wait_children: bool = False,
                     due_at: int | None = None, now: int = T0, release: bool = True) -> Claim:
    claim = await claim_one(store, t.id, now=now)
    await commit(store, t, t.step(claim, status="dormant", due_at=due_at, action=Action.DORMANCY,
                                  wait_signal=wait_signal, wait_children=wait_children, release=release), now=now)
    return claim


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with open_store(store_url) as s:
        yield s


# -- create and get --------------------------------------------------------------------------


async def test_a_created_object_has_its_head_and_entry_zero(store: Store) -> None:
    obj = new_object(priority=3, scope="team")
    await store.create([obj])
    row = await store.get(obj.id)
    assert (row.id, row.handler, row.scope, row.identity, row.priority) == (obj.id, "work", "team", "anonymous", 3)
    assert (row.status, row.seq, row.head, row.due_at, row.inbox) == ("runnable", 0, obj.entry.hash, T0, 0)
    assert (row.lease_owner, row.lease_until, row.parent, row.result, row.reason) == (None, None, None, None, None)
    assert row.status_at(T0) == "runnable"
    assert await store.entries(obj.id) == [(obj.entry.body, obj.entry.signature)]
    assert await store.entry_hash(obj.id, 0) == obj.entry.hash
    assert await store.entry_hash(obj.id, 1) is None


async def test_get_of_an_unknown_id_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        await store.get(new_id())


async def test_creating_an_existing_id_raises_conflict(store: Store) -> None:
    obj = new_object()
    await store.create([obj])
    with pytest.raises(ConflictError):
        await store.create([obj])


async def test_create_is_all_or_none(store: Store) -> None:
    taken = new_object()
    await store.create([taken])
    fresh = new_object()
    with pytest.raises(ConflictError):
        await store.create([fresh, taken])
    with pytest.raises(NotFoundError):
        await store.get(fresh.id)
    assert await store.entries(fresh.id) == []


# -- claims ------------------------------------------------------------------------------------


async def test_claim_takes_only_objects_that_are_due(store: Store) -> None:
    later = await make(store, due_at=T0 + 10 * SEC)
    assert await store.claim("a", now=T0, lease_ns=LEASE, limit=10, handlers=["work"], scopes=None) == []
    [claim] = await store.claim("a", now=T0 + 10 * SEC, lease_ns=LEASE, limit=10, handlers=["work"], scopes=None)
    assert (claim.id, claim.seq, claim.inbox, claim.head) == (later.id, 0, 0, later.obj.entry.hash)
    row = await store.get(later.id)
    assert (row.lease_owner, row.lease_until) == ("a", T0 + 10 * SEC + LEASE)
    assert row.status_at(T0 + 10 * SEC) == "running"


async def test_a_live_lease_excludes_other_claimers_until_it_expires(store: Store) -> None:
    t = await make(store)
    first = await claim_one(store, t.id, owner="a")
    assert await store.claim("b", now=T0 + LEASE - 1, lease_ns=LEASE, limit=10, handlers=["work"], scopes=None) == []
    [second] = await store.claim("b", now=T0 + LEASE + 1, lease_ns=LEASE, limit=10, handlers=["work"], scopes=None)
    assert second.id == t.id
    assert second.token != first.token
    # Fencing: the node that lost its lease can no longer write.
    assert await store.append([t.step(first)], now=T0 + LEASE + 2) == [None]
    assert await store.append([t.step(second)], now=T0 + LEASE + 2) == [0]


async def test_claim_filters_by_handler_and_scope(store: Store) -> None:
    work_a = await make(store, scope="a")
    await make(store, scope="b")
    other = await make(store, handler="other", scope="a")

    def ids(claims: list[Claim]) -> set[str]:
        return {c.id for c in claims}

    assert await store.claim("n", now=T0, lease_ns=LEASE, limit=10, handlers=[], scopes=None) == []
    assert ids(await store.claim("n", now=T0, lease_ns=LEASE, limit=10, handlers=["work"], scopes=["a"])) == {
        work_a.id
    }
    assert ids(await store.claim("n", now=T0, lease_ns=LEASE, limit=10, handlers=["work", "other"],
                                 scopes=["a", "c"])) == {other.id}
    assert await store.claim("n", now=T0, lease_ns=LEASE, limit=10, handlers=["work"], scopes=[]) == []
    assert len(await store.claim("n", now=T0, lease_ns=LEASE, limit=10, handlers=["work"], scopes=None)) == 1


async def test_claim_takes_highest_priority_first_then_earliest_due_up_to_the_limit(store: Store) -> None:
    low = await make(store, priority=0, due_at=T0 - 3 * SEC)
    high_late = await make(store, priority=5, due_at=T0 - 1 * SEC)
    high_early = await make(store, priority=5, due_at=T0 - 2 * SEC)
    mid = await make(store, priority=2, due_at=T0 - 4 * SEC)
    claims = await store.claim("n", now=T0, lease_ns=LEASE, limit=3, handlers=["work"], scopes=None)
    assert [c.id for c in claims] == [high_early.id, high_late.id, mid.id]
    rest = await store.claim("n", now=T0, lease_ns=LEASE, limit=3, handlers=["work"], scopes=None)
    assert [c.id for c in rest] == [low.id]
    assert await store.claim("n", now=T0, lease_ns=LEASE, limit=0, handlers=["work"], scopes=None) == []


async def test_claim_orders_by_priority_across_many_levels_and_skips_what_is_not_due(store: Store) -> None:
    # More distinct levels than a store may look at one by one (SQLite: 8), negative ones
    # included, with a not-yet-due object at the top level that must not be taken.
    await make(store, priority=99, due_at=T0 + SEC)
    made = [await make(store, priority=p, due_at=T0 - 1 - abs(p)) for p in (3, -2, 11, 0, 7, 5, -9, 1, 13, 2, 8, 4)]
    by_priority = [t.id for t in sorted(made, key=lambda t: -t.obj.priority)]
    first = await store.claim("n", now=T0, lease_ns=LEASE, limit=5, handlers=["work"], scopes=None)
    assert [c.id for c in first] == by_priority[:5]
    rest = await store.claim("n", now=T0, lease_ns=LEASE, limit=100, handlers=["work"], scopes=None)
    assert [c.id for c in rest] == by_priority[5:]


async def test_a_claim_fills_its_limit_from_lower_levels_when_a_level_runs_out(store: Store) -> None:
    top = [await make(store, priority=2, due_at=T0 - i) for i in (1, 2)]
    low = [await make(store, priority=1, due_at=T0 - i) for i in (5, 6, 7)]
    claims = await store.claim("n", now=T0, lease_ns=LEASE, limit=4, handlers=["work"], scopes=None)
    assert [c.id for c in claims] == [top[1].id, top[0].id, low[2].id, low[1].id]


async def test_claim_skips_excluded_ids(store: Store) -> None:
    a = await make(store)
    b = await make(store)
    claims = await store.claim("n", now=T0, lease_ns=LEASE, limit=10, handlers=["work"], scopes=None, exclude=[a.id])
    assert [c.id for c in claims] == [b.id]


async def test_concurrent_claimers_never_get_the_same_object(store_url: str) -> None:
    async with open_store(store_url) as one, open_store(store_url) as two:
        objects = [new_object() for _ in range(24)]
        await one.create(objects)

        async def claimer(store: Store, owner: str) -> list[str]:
            claims = await store.claim(owner, now=T0, lease_ns=LEASE, limit=3, handlers=["work"], scopes=None)
            return [c.id for c in claims]

        batches = await asyncio.gather(*(claimer(s, f"node-{i}") for i in range(10) for s in (one, two)))
        claimed = [oid for batch in batches for oid in batch]
        assert len(claimed) == len(set(claimed)), "an object was leased twice"
        leftover = await one.claim("last", now=T0, lease_ns=LEASE, limit=100, handlers=["work"], scopes=None)
        assert sorted(claimed + [c.id for c in leftover]) == sorted(o.id for o in objects)


# -- appends ------------------------------------------------------------------------------------


async def test_append_is_a_compare_and_swap_on_seq_and_lease_token(store: Store) -> None:
    t = await make(store)
    claim = await claim_one(store, t.id)
    stale = AppendItem(t.id, claim.token, next_entry(next_entry(t.last)), head())  # seq 2, head is 0
    assert await store.append([stale], now=T0) == [None]
    assert await store.append([t.step(attrs.evolve(claim, token=claim.token + 1))], now=T0) == [None]
    assert (await store.get(t.id)).seq == 0
    assert await store.entries(t.id, after=0) == []

    item = t.step(claim, status="runnable", due_at=T0 + 5)
    assert await store.append([item], now=T0 + 1) == [0]  # the inbox count
    row = await store.get(t.id)
    assert (row.seq, row.head, row.due_at, row.updated_at, row.lease_owner) == (1, item.entry.hash, T0 + 5, T0 + 1,
                                                                                 "node-a")
    assert await store.entries(t.id) == [(t.obj.entry.body, t.obj.entry.signature),
                                         (item.entry.body, item.entry.signature)]
    assert await store.entries(t.id, after=0) == [(item.entry.body, item.entry.signature)]
    assert await store.entry_hash(t.id, 1) == item.entry.hash
    # The same seq cannot be written twice, not even by the lease holder.
    assert await store.append([item], now=T0 + 2) == [None]


async def test_entries_of_reads_several_memories_in_seq_order_at_once(store: Store) -> None:
    a, b, c = [await make(store) for _ in range(3)]
    claims = {cl.id: cl for cl in await store.claim("n", now=T0, lease_ns=LEASE, limit=3, handlers=["work"],
                                                     scopes=None)}
    for t in (a, b, a, a):  # a ends with 4 entries, b with 2, c with 1
        item = t.step(claims[t.id])
        assert await store.append([item], now=T0) == [0]
        t.advance(item)
    missing = new_id()
    memories = await store.entries_of([c.id, a.id, missing, b.id])
    assert list(memories) == [c.id, a.id, missing, b.id]
    for t in (a, b, c):
        assert memories[t.id] == await store.entries(t.id)
    assert [len(memories[t.id]) for t in (a, b, c)] == [4, 2, 1]
    assert memories[missing] == []
    assert await store.entries_of([]) == {}


async def test_group_append_commits_the_winners_and_skips_the_losers(store: Store) -> None:
    a, b, c = [await make(store) for _ in range(3)]
    claims = {cl.id: cl for cl in await store.claim("n", now=T0, lease_ns=LEASE, limit=3, handlers=["work"],
                                                     scopes=None)}
    loser = AppendItem(b.id, claims[b.id].token + 1, next_entry(b.last), head())
    items = [a.step(claims[a.id]), loser, c.step(claims[c.id], status="terminated", due_at=None,
                                                  action=Action.TERMINATE, result=7, reason="done")]
    assert await store.append(items, now=T0) == [0, None, 0]
    assert [(await store.get(t.id)).seq for t in (a, b, c)] == [1, 0, 1]
    assert await store.entry_hash(b.id, 1) is None
    done = await store.get(c.id)
    assert (done.status, done.result, done.reason, done.due_at) == ("terminated", packb(7), "done", None)
    assert not await claimable(store, c.id, now=T0 + 2 * LEASE)


async def test_append_with_release_drops_the_lease(store: Store) -> None:
    t = await make(store)
    claim = await claim_one(store, t.id, owner="a")
    await commit(store, t, t.step(claim, due_at=T0 + 1, release=True))
    row = await store.get(t.id)
    assert (row.lease_owner, row.lease_until) == (None, None)
    assert await claimable(store, t.id, now=T0 + 1)


async def test_consumed_signals_leave_the_inbox_and_the_count_says_what_is_left(store: Store) -> None:
    t = await make(store)
    claim = await claim_one(store, t.id)
    first = await store.signal(t.id, "note", {"i": 1}, now=T0)
    second = await store.signal(t.id, "note", [2, "two"], now=T0)
    assert [(s.name, s.payload, s.id) for s in await store.inbox(t.id)] == [
        ("note", {"i": 1}, first), ("note", [2, "two"], second)
    ]
    assert (await store.get(t.id)).inbox == 2
    assert await commit(store, t, t.step(claim, consumed=(first,))) == 1
    assert [s.id for s in await store.inbox(t.id)] == [second]
    assert (await store.get(t.id)).inbox == 1


async def test_a_losing_item_creates_no_children(store: Store) -> None:
    parent = await make(store)
    claim = await claim_one(store, parent.id)
    child = new_object(parent=parent.id)
    item = AppendItem(parent.id, claim.token + 1, next_entry(parent.last, Action.DELEGATE),
                      head("dormant", None, wait_children=True), children=(child,))
    assert await store.append([item], now=T0) == [None]
    with pytest.raises(NotFoundError):
        await store.get(child.id)
    assert await store.list(parent=parent.id) == []


# -- dormancy, signals, wake-ups --------------------------------------------------------------


async def test_a_dormant_object_sleeps_until_its_due_time(store: Store) -> None:
    t = await make(store)
    await go_dormant(store, t, due_at=T0 + 60 * SEC)
    assert (await store.get(t.id)).status == "dormant"
    assert not await claimable(store, t.id, now=T0 + 60 * SEC - 1)
    assert await claimable(store, t.id, now=T0 + 60 * SEC)


async def test_signal_to_an_unknown_object_raises_not_found(store: Store) -> None:
    with pytest.raises(NotFoundError):
        await store.signal(new_id(), "go", None, now=T0)


async def test_a_signal_wakes_a_dormant_waiter_only_if_the_name_matches(store: Store) -> None:
    t = await make(store)
    await go_dormant(store, t, wait_signal="approve")
    assert (await store.get(t.id)).due_at is None
    await store.signal(t.id, "other", None, now=T0 + 1)
    row = await store.get(t.id)
    assert (row.due_at, row.inbox) == (None, 1)
    await store.signal(t.id, "approve", {"ok": True}, now=T0 + 2)
    row = await store.get(t.id)
    assert (row.due_at, row.inbox) == (T0 + 2, 2)
    assert await claimable(store, t.id, now=T0 + 2)


async def test_a_cancel_signal_wakes_any_dormant_object(store: Store) -> None:
    sleeper = await make(store)
    await go_dormant(store, sleeper, due_at=T0 + 3600 * SEC)
    waiter = await make(store)
    await go_dormant(store, waiter, wait_signal="approve")
    parent = await make(store)
    pclaim = await claim_one(store, parent.id)
    await commit(store, parent, parent.step(pclaim, status="dormant", due_at=None, action=Action.DELEGATE,
                                            wait_children=True, children=(new_object(parent=parent.id),),
                                            release=True))
    for t in (sleeper, waiter, parent):
        assert (await store.get(t.id)).due_at != T0 + 5
        await store.signal(t.id, CANCEL_SIGNAL, None, now=T0 + 5)
        assert (await store.get(t.id)).due_at == T0 + 5


async def test_a_signal_that_arrived_while_running_is_not_slept_through(store: Store) -> None:
    t = await make(store)
    claim = await claim_one(store, t.id)
    await store.signal(t.id, "go", None, now=T0 + 1)  # runnable: nothing to wake
    await commit(store, t, t.step(claim, status="dormant", due_at=None, action=Action.DORMANCY,
                                  wait_signal="go", release=True), now=T0 + 2)
    assert (await store.get(t.id)).due_at == T0 + 2
    assert await claimable(store, t.id, now=T0 + 2)


async def test_release_of_a_dormant_object_whose_signal_is_waiting_makes_it_due(store: Store) -> None:
    t = await make(store)
    claim = await go_dormant(store, t, wait_signal="go", release=False)  # still leased
    await store.signal(t.id, "go", None, now=T0 + 1)
    await store.release(t.id, claim.token, due_at=None, now=T0 + 2)
    row = await store.get(t.id)
    assert (row.due_at, row.lease_owner) == (T0 + 2, None)
    assert await claimable(store, t.id, now=T0 + 2)


async def test_release_of_a_dormant_object_with_nothing_waiting_keeps_it_asleep(store: Store) -> None:
    t = await make(store)
    claim = await go_dormant(store, t, wait_signal="go", release=False)
    await store.signal(t.id, "other", None, now=T0 + 1)
    await store.release(t.id, claim.token, due_at=None, now=T0 + 2)
    row = await store.get(t.id)
    assert (row.due_at, row.lease_owner, row.status) == (None, None, "dormant")
    assert not await store.busy(now=T0 + 2)


async def test_release_with_a_stale_token_changes_nothing(store: Store) -> None:
    t = await make(store)
    claim = await claim_one(store, t.id, owner="a")
    await store.release(t.id, claim.token + 1, due_at=None, now=T0)
    assert (await store.get(t.id)).lease_owner == "a"


async def test_a_terminating_child_wakes_its_waiting_parent(store: Store) -> None:
    parent = await make(store)
    pclaim = await claim_one(store, parent.id)
    kids = (new_object(parent=parent.id), new_object(parent=parent.id))
    await commit(store, parent, parent.step(pclaim, status="dormant", due_at=None, action=Action.DELEGATE,
                                            wait_children=True, children=kids, release=True))
    assert (await store.get(parent.id)).due_at is None  # its children have not finished
    assert [r.id for r in await store.list(parent=parent.id)] == sorted(k.id for k in kids)
    assert await store.entries(kids[0].id) == [(kids[0].entry.body, kids[0].entry.signature)]

    child = Tracked(kids[0])
    cclaim = await claim_one(store, child.id, now=T0 + 1)
    await commit(store, child, child.step(cclaim, status="terminated", due_at=None, action=Action.TERMINATE,
                                          parent=parent.id, release=True), now=T0 + 3)
    assert (await store.get(parent.id)).due_at == T0 + 3
    assert await claimable(store, parent.id, now=T0 + 3)


async def test_a_parent_whose_children_have_all_finished_does_not_sleep(store: Store) -> None:
    parent = await make(store)
    pclaim = await claim_one(store, parent.id)
    kid = new_object(parent=parent.id)
    await commit(store, parent, parent.step(pclaim, action=Action.DELEGATE, children=(kid,)))
    child = Tracked(kid)
    await commit(store, child, child.step(await claim_one(store, kid.id), status="terminated", due_at=None,
                                          action=Action.TERMINATE, parent=parent.id, release=True))
    await commit(store, parent, parent.step(pclaim, status="dormant", due_at=None, action=Action.DORMANCY,
                                            wait_children=True, release=True), now=T0 + 7)
    assert (await store.get(parent.id)).due_at == T0 + 7


# -- quarantine, leases, idleness ---------------------------------------------------------------


async def test_a_quarantined_object_never_runs_again_and_says_why(store: Store) -> None:
    t = await make(store)
    await claim_one(store, t.id)
    await store.quarantine(t.id, "verification failed: bad signature", now=T0 + 1)
    row = await store.get(t.id)
    assert (row.status, row.reason, row.due_at, row.lease_owner) == (
        "quarantined", "verification failed: bad signature", None, None
    )
    assert not await claimable(store, t.id, now=T0 + 10 * LEASE)
    await store.signal(t.id, CANCEL_SIGNAL, None, now=T0 + 2)
    assert not await claimable(store, t.id, now=T0 + 10 * LEASE)


async def test_a_quarantined_child_counts_as_finished_and_wakes_its_waiting_parent(store: Store) -> None:
    parent = await make(store)
    pclaim = await claim_one(store, parent.id)
    kid = new_object(parent=parent.id)
    await commit(store, parent, parent.step(pclaim, status="dormant", due_at=None, action=Action.DELEGATE,
                                            wait_children=True, children=(kid,), release=True))
    assert (await store.get(parent.id)).due_at is None
    await store.quarantine(kid.id, "undecodable entry", now=T0 + 4)
    assert (await store.get(parent.id)).due_at == T0 + 4


async def test_renew_extends_held_leases_and_returns_the_lost_ones(store: Store) -> None:
    kept, lost = await make(store), await make(store)
    claims = {c.id: c for c in await store.claim("a", now=T0, lease_ns=LEASE, limit=2, handlers=["work"],
                                                  scopes=None)}
    taken = await claim_one(store, lost.id, owner="b", now=T0 + LEASE + 1)
    leases = {oid: c.token for oid, c in claims.items()}
    assert await store.renew("a", leases, until=T0 + 3 * LEASE) == {lost.id}
    assert (await store.get(kept.id)).lease_until == T0 + 3 * LEASE
    assert (await store.get(lost.id)).lease_owner == "b"
    assert await store.renew("b", {lost.id: taken.token}, until=T0 + 4 * LEASE) == set()
    assert await store.renew("a", {}, until=T0) == set()


async def test_drop_leases_frees_every_object_of_one_owner(store: Store) -> None:
    mine = [await make(store) for _ in range(3)]
    other = await make(store)
    await store.claim("a", now=T0, lease_ns=LEASE, limit=3, handlers=["work"], scopes=None)
    await claim_one(store, other.id, owner="b")
    assert await store.drop_leases("a") == 3
    assert await store.drop_leases("a") == 0
    for t in mine:
        assert (await store.get(t.id)).lease_owner is None
    assert (await store.get(other.id)).lease_owner == "b"


async def test_busy_and_next_due_describe_pending_work(store: Store) -> None:
    assert not await store.busy(now=T0)
    assert await store.next_due() is None
    t = await make(store, due_at=T0 + 50)
    assert await store.next_due() == T0 + 50
    assert not await store.busy(now=T0)
    assert await store.busy(now=T0 + 50)
    claim = await claim_one(store, t.id, now=T0 + 50)
    assert await store.busy(now=T0 + 51)  # leased: someone is working on it
    await commit(store, t, t.step(claim, status="terminated", due_at=None, action=Action.TERMINATE, release=True))
    assert not await store.busy(now=T0 + 51)
    assert await store.next_due() is None


# -- the commit boundary (fault points) ----------------------------------------------------


@pytest.fixture
def armed() -> Iterator[Callable[[str], None]]:
    yield lambda spec: faults.arm(spec)
    faults.disarm()


async def test_a_failure_before_commit_writes_nothing(store: Store, armed: Callable[[str], None]) -> None:
    t = await make(store)
    claim = await claim_one(store, t.id)
    item = t.step(claim)
    armed("store.before_commit=raise")
    with pytest.raises(StoreError):
        await store.append([item], now=T0)
    faults.disarm()
    assert await store.entry_hash(t.id, 1) is None
    assert await store.append([item], now=T0) == [0]  # the retry goes through


async def test_after_an_unknown_commit_outcome_the_writer_finds_its_own_entry(
    store: Store, armed: Callable[[str], None]
) -> None:
    t = await make(store)
    claim = await claim_one(store, t.id)
    item = t.step(claim)
    armed("store.after_commit=raise")
    with pytest.raises(StoreError):  # the caller cannot tell whether it committed...
        await store.append([item], now=T0)
    faults.disarm()
    assert await store.entry_hash(t.id, 1) == item.entry.hash  # ...so it re-reads and recognises its write
    assert await store.append([item], now=T0) == [None]  # and a blind retry would not write twice


# -- import, list ------------------------------------------------------------------------------


async def test_import_inserts_the_whole_memory_with_the_head_it_folds_to(store: Store) -> None:
    obj = new_object(due_at=T0 - SEC)
    e1 = next_entry(obj.entry)
    e2 = next_entry(e1, Action.DORMANCY)
    await store.import_object(obj, [e1, e2], head("dormant", None, wait_signal="go"), now=T0)
    row = await store.get(obj.id)
    assert (row.seq, row.head, row.status, row.due_at, row.wait_signal, row.updated_at) == (
        2, e2.hash, "dormant", None, "go", T0
    )
    assert await store.entries(obj.id) == [(e.body, e.signature) for e in (obj.entry, e1, e2)]
    await store.signal(obj.id, "go", None, now=T0 + 1)
    assert await claimable(store, obj.id, now=T0 + 1)
    with pytest.raises(ConflictError):
        await store.import_object(obj, [], head("runnable", T0), now=T0)


async def test_list_filters_by_status_and_parent_in_id_order(store: Store) -> None:
    parent = await make(store)
    kid_objs = (new_object(parent=parent.id), new_object(parent=parent.id))
    pclaim = await claim_one(store, parent.id)
    await commit(store, parent, parent.step(pclaim, status="dormant", due_at=None, action=Action.DELEGATE,
                                            wait_children=True, children=kid_objs, release=True))
    done = await make(store)
    await commit(store, done, done.step(await claim_one(store, done.id), status="terminated", due_at=None,
                                        action=Action.TERMINATE, release=True))
    kids = sorted(k.id for k in kid_objs)

    def ids(rows: list[Any]) -> list[str]:
        return [r.id for r in rows]

    assert ids(await store.list()) == sorted([parent.id, done.id, *kids])
    assert ids(await store.list(status="dormant")) == [parent.id]
    assert ids(await store.list(status="terminated")) == [done.id]
    assert ids(await store.list(status="runnable")) == kids
    assert ids(await store.list(status="runnable", limit=1)) == kids[:1]
    assert ids(await store.list(parent=parent.id)) == kids
    assert await store.list(parent=done.id) == []


async def test_list_running_means_runnable_with_a_live_lease(store: Store) -> None:
    # "running" is judged at the caller's now: a store never reads the clock.
    now = T0
    running = await make(store, due_at=now)
    idle = await make(store, due_at=now + 3600 * SEC)
    await claim_one(store, running.id, now=now, lease_ns=3600 * SEC)
    assert [r.id for r in await store.list(status="running", now=now)] == [running.id]
    assert idle.id in [r.id for r in await store.list(status="runnable")]
    assert await store.list(status=Status.RUNNING, now=now + 3600 * SEC) == []  # the lease has lapsed by then
    with pytest.raises(UsageError, match="now"):
        await store.list(status="running")


async def test_a_head_reads_back_with_its_status_as_a_status(store: Store) -> None:
    t = await make(store)
    row = await store.get(t.id)
    assert row.status is Status.RUNNABLE
    assert row.status_at(T0 - 1) is Status.RUNNABLE
    claim = await claim_one(store, t.id)
    assert (await store.get(t.id)).status_at(T0) is Status.RUNNING
    await commit(store, t, t.step(claim, status="terminated", due_at=None, action=Action.TERMINATE,
                                  result={"n": 1}, reason="done", release=True))
    [row] = await store.list(status=Status.TERMINATED)
    assert (row.status, row.status_at(T0), row.result, row.reason) == (
        Status.TERMINATED, Status.TERMINATED, packb({"n": 1}), "done"
    )


async def test_import_writes_a_terminated_head_with_its_result(store: Store) -> None:
    obj = new_object()
    e1 = next_entry(obj.entry, Action.TERMINATE)
    await store.import_object(obj, [e1], head("terminated", None, result=[1, "x"], reason="done"), now=T0 + 1)
    row = await store.get(obj.id)
    assert (row.status, row.seq, row.due_at, row.result, row.reason, row.wait_signal, row.wait_children) == (
        Status.TERMINATED, 1, None, packb([1, "x"]), "done", None, False
    )
    assert not await claimable(store, obj.id, now=T0 + 10 * LEASE)


# -- opening -----------------------------------------------------------------------------------


async def versions(url: str) -> list[int]:
    """Rows of the version table, read behind the store's back."""
    if url.startswith("sqlite:"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as db:
            return [r[0] for r in db.execute("SELECT version FROM peo_schema ORDER BY version")]
    import asyncpg

    from peo.store.postgres import parse_postgres_url

    dsn, schema, _, _ = parse_postgres_url(url)
    conn = await asyncpg.connect(dsn)
    try:
        return [r[0] for r in await conn.fetch(f'SELECT version FROM "{schema}".peo_schema ORDER BY version')]
    finally:
        await conn.close()


async def test_reopening_a_store_keeps_its_data_and_runs_no_migration_twice(store_url: str) -> None:
    obj = new_object()
    async with open_store(store_url) as store:
        await store.create([obj])
    first = await versions(store_url)
    assert first and first == list(range(1, len(first) + 1))
    async with open_store(store_url) as store:
        assert (await store.get(obj.id)).head == obj.entry.hash
    assert await versions(store_url) == first


async def test_nodes_opening_a_fresh_store_at_once_migrate_it_once(store_url: str) -> None:
    stores = [open_store(store_url) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        obj = new_object()
        await stores[0].create([obj])
        assert (await stores[3].get(obj.id)).id == obj.id
    finally:
        for s in stores:
            await s.aclose()
    v = await versions(store_url)
    assert v == list(range(1, len(v) + 1))


async def test_a_closed_store_raises_store_error(store_url: str) -> None:
    store = open_store(store_url)
    with pytest.raises(StoreError):
        await store.get(new_id())
    await store.open()
    await store.aclose()
    with pytest.raises(StoreError):
        await store.list()


def test_open_store_returns_an_unopened_store(sqlite_url: str) -> None:
    store = open_store(sqlite_url)
    assert store.url == sqlite_url
    assert not os.path.exists(sqlite_url.removeprefix("sqlite:///"))  # nothing opened yet
    for bad in ("", "mysql://x", "sqlite:///:memory:"):
        with pytest.raises(UsageError):
            open_store(bad)


def test_a_postgres_url_without_asyncpg_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # asyncpg is the "postgres" extra: without it, opening such a URL says what to install.
    monkeypatch.setitem(sys.modules, "asyncpg", None)  # "import asyncpg" now fails
    for name in [n for n in sys.modules if n == "peo.store.postgres" or n.startswith("peo.store.postgres.")]:
        monkeypatch.delitem(sys.modules, name)  # so the backend is imported afresh
    with pytest.raises(UsageError, match=re.escape("pip install 'peo[postgres]'")):
        open_store("postgresql://peo@127.0.0.1/peo")
    assert "peo.store.postgres" not in sys.modules
    assert open_store("sqlite:///peo.db").url == "sqlite:///peo.db"  # SQLite needs no asyncpg


# -- PostgreSQL specifics ----------------------------------------------------------------------


async def test_an_unreachable_postgres_server_is_a_clear_store_error() -> None:
    store = open_store("postgresql://peo@127.0.0.1:1/peo")
    with pytest.raises(StoreError, match=r"127\.0\.0\.1:1") as info:
        await store.open()
    assert info.value.retryable


@pytest.mark.parametrize("schema", ["1abc", "a-b", "pg_x", "a;drop", "x" * 60, ""])
def test_a_bad_postgres_schema_name_is_refused(schema: str) -> None:
    with pytest.raises(UsageError):
        open_store(f"postgresql://peo@127.0.0.1/peo?schema={schema}")


def test_the_schema_option_stays_out_of_the_connection_string() -> None:
    from peo.store.postgres import parse_postgres_url

    dsn, schema, host, port = parse_postgres_url("postgresql://u@db.example:6543/x?sslmode=disable&schema=Mine")
    assert (dsn, schema, host, port) == ("postgresql://u@db.example:6543/x?sslmode=disable", "Mine", "db.example",
                                         6543)
    assert parse_postgres_url("postgres://u@h/x")[1:] == ("peo", "h", 5432)


@pytest.mark.postgres
async def test_postgres_a_signal_racing_a_dormant_append_is_never_lost(postgres_url: str) -> None:
    async with open_store(postgres_url) as one, open_store(postgres_url) as two:
        for i in range(40):
            t = await make(one)
            claim = await claim_one(one, t.id)
            sleep = t.step(claim, status="dormant", due_at=None, action=Action.DORMANCY, wait_signal="go",
                           release=True)
            now = T0 + i
            appended, _ = await asyncio.gather(two.append([sleep], now=now), one.signal(t.id, "go", i, now=now))
            assert appended == [1] or appended == [0]
            row = await one.get(t.id)
            assert (row.status, row.due_at) == ("dormant", now), f"iteration {i}: the wake-up was lost"


@pytest.mark.postgres
async def test_postgres_a_child_finishing_while_its_parent_goes_to_sleep_wakes_it(postgres_url: str) -> None:
    async with open_store(postgres_url) as one, open_store(postgres_url) as two:
        for i in range(25):
            parent = await make(one)
            pclaim = await claim_one(one, parent.id)
            kid = new_object(parent=parent.id)
            await commit(one, parent, parent.step(pclaim, action=Action.DELEGATE, children=(kid,)))
            child = Tracked(kid)
            cclaim = await claim_one(one, kid.id)
            finish = child.step(cclaim, status="terminated", due_at=None, action=Action.TERMINATE,
                                parent=parent.id, release=True)
            sleep = parent.step(pclaim, status="dormant", due_at=None, action=Action.DORMANCY, wait_children=True,
                                release=True)
            now = T0 + i
            assert await asyncio.gather(one.append([finish], now=now), two.append([sleep], now=now)) == [[0], [0]]
            row = await one.get(parent.id)
            assert (row.status, row.due_at) == ("dormant", now), f"iteration {i}: the wake-up was lost"


@pytest.mark.postgres
async def test_postgres_idle_nodes_are_woken_by_notify(postgres_url: str) -> None:
    async with open_store(postgres_url) as writer, open_store(postgres_url) as idle:
        t = await make(writer)
        await go_dormant(writer, t, wait_signal="go")
        await idle.wait_for_work(0)  # starts listening: nothing has been written since
        waiter = asyncio.ensure_future(idle.wait_for_work(600))
        await writer.signal(t.id, "go", None, now=T0 + 1)
        # Without the notification this would sleep for ten minutes; the deadline fails it.
        await asyncio.wait_for(waiter, 30)


# -- signals to finished objects, and opening without creating (issue 12, traps 6 and 8) ---------


async def terminate(store: Store, t: Tracked) -> None:
    claim = await claim_one(store, t.id)
    await commit(store, t, t.step(claim, status="terminated", due_at=None, action=Action.TERMINATE,
                                  result={"ok": 1}, reason="done", release=True))


async def test_a_signal_to_a_terminated_object_is_refused_and_writes_nothing(store: Store) -> None:
    t = await make(store)
    await terminate(store, t)
    before = await store.get(t.id)
    for name in ("approve", CANCEL_SIGNAL):
        with pytest.raises(ObjectTerminatedError, match=f"object {t.id} has terminated"):
            await store.signal(t.id, name, {"x": 1}, now=T0 + 5)
    assert await store.inbox(t.id) == []
    assert await store.get(t.id) == before


async def test_a_signal_to_a_quarantined_object_is_kept_for_when_it_is_resumed(store: Store) -> None:
    t = await make(store)
    await store.quarantine(t.id, "signed by untrusted key", now=T0 + 1)
    sid = await store.signal(t.id, "approve", {"ok": True}, now=T0 + 2)
    assert [(s.name, s.payload, s.id) for s in await store.inbox(t.id)] == [("approve", {"ok": True}, sid)]
    assert (await store.get(t.id)).inbox == 1


async def test_a_second_cancel_while_the_first_is_pending_adds_nothing(store: Store) -> None:
    t = await make(store)
    first = await store.signal(t.id, CANCEL_SIGNAL, None, now=T0 + 1)
    assert await store.signal(t.id, CANCEL_SIGNAL, None, now=T0 + 2) == first
    await store.signal(t.id, "other", None, now=T0 + 3)
    assert [s.name for s in await store.inbox(t.id)] == [CANCEL_SIGNAL, "other"]
    assert (await store.get(t.id)).inbox == 2


async def pg_tables(url: str) -> list[str]:
    import asyncpg

    from peo.store.postgres.url import parse_postgres_url

    dsn, schema, _, _ = parse_postgres_url(url)
    conn = await asyncpg.connect(dsn)
    try:
        return sorted(r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema))
    finally:
        await conn.close()


async def add_foreign_table(url: str) -> None:
    """Make the database a store would use hold a table of someone else's."""
    if url.startswith("sqlite:"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db, db:
            db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        return
    import asyncpg

    from peo.store.postgres.url import parse_postgres_url

    dsn, schema, _, _ = parse_postgres_url(url)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        await conn.execute(f"CREATE TABLE {schema}.customers (id INTEGER PRIMARY KEY, name TEXT)")
    finally:
        await conn.close()


async def test_open_without_create_refuses_a_store_that_does_not_exist_and_creates_nothing(
    store_url: str
) -> None:
    store = open_store(store_url)
    with pytest.raises(StoreError, match=r"no peo store at .*; run peo init") as info:
        await store.open(create=False)
    assert not info.value.retryable
    if store_url.startswith("sqlite:"):
        path = store_url.removeprefix("sqlite:///")
        assert not os.path.exists(path) and not os.path.exists(path + "-wal")
    else:
        assert await pg_tables(store_url) == []
    async with open_store(store_url):  # created (the default)
        pass
    reader = open_store(store_url)
    await reader.open(create=False)  # an existing store opens as before
    try:
        assert await reader.list() == []
    finally:
        await reader.aclose()


async def test_no_open_adds_tables_to_a_database_with_other_tables_unless_forced(store_url: str) -> None:
    await add_foreign_table(store_url)
    for create in (True, False):
        store = open_store(store_url)
        with pytest.raises(StoreError, match="no peo store" if not create else r"customers.*peo init --force"):
            await store.open(create=create)
    if store_url.startswith("sqlite:"):
        with contextlib.closing(sqlite3.connect(store_url.removeprefix("sqlite:///"))) as db:
            names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            assert names == {"customers"}
            assert db.execute("PRAGMA journal_mode").fetchone()[0] != "wal"  # not even WAL was switched on
    else:
        assert await pg_tables(store_url) == ["customers"]
    store = open_store(store_url)
    await store.open(force=True)
    try:
        await store.create([new_object()])
        assert len(await store.list()) == 1
    finally:
        await store.aclose()
    reopened = open_store(store_url)
    await reopened.open(create=False)  # a store now, foreign tables and all
    await reopened.aclose()


async def test_list_filters_by_handler_too(store: Store) -> None:
    a = await make(store, handler="work")
    b = await make(store, handler="other")
    kid = new_object(parent=a.id, handler="other")
    await store.create([kid])
    assert [r.id for r in await store.list(handler="other")] == sorted([b.id, kid.id])
    assert [r.id for r in await store.list(handler="other", parent=a.id)] == [kid.id]
    assert [r.id for r in await store.list(handler="work", status="runnable")] == [a.id]
    assert await store.list(handler="none") == []


async def test_list_pages_by_id(store: Store) -> None:
    objs = [new_object() for _ in range(5)]
    await store.create(objs)
    ids = sorted(o.id for o in objs)
    first = await store.list(limit=2)
    assert [r.id for r in first] == ids[:2]
    second = await store.list(limit=2, after=first[-1].id)
    assert [r.id for r in second] == ids[2:4]
    assert [r.id for r in await store.list(after=ids[-1])] == []


async def test_list_filters_by_labels_exactly_and_all_must_match(store: Store) -> None:
    def labelled(labels: dict[str, str]) -> NewObject:
        return attrs.evolve(new_object(), labels=labels)

    both = labelled({"team": "ops", "env": "prod"})
    ops = labelled({"team": "ops"})
    upper = labelled({"team": "OPS"})
    eq_key = labelled({"team=ops": "x"})  # a key may hold "=": never confused with team="ops=x"
    wild = labelled({"t_am": "o%s"})
    none = new_object()
    await store.create([both, ops, upper, eq_key, wild, none])
    imported = labelled({"team": "ops", "env": "dev"})
    await store.import_object(imported, [], head("runnable", T0), now=T0)

    async def ids(**labels: str) -> list[str]:
        return [r.id for r in await store.list(labels=labels)]

    assert await ids(team="ops") == sorted([both.id, ops.id, imported.id])
    assert await ids(team="ops", env="prod") == [both.id]
    assert await ids(env="prod", team="OPS") == []
    assert await ids(team="OPS") == [upper.id]  # case matters
    assert await ids(team="op") == [] and await ids(eam="ops") == []  # no prefix or suffix matches
    assert await ids(**{"team": "ops=x"}) == [] and await ids(**{"team=ops": "x"}) == [eq_key.id]
    assert await ids(t_am="o%s") == [wild.id] and await ids(team="o_s") == [] and await ids(t_am="%") == []
    assert len(await store.list(labels={})) == 7
    assert [r.id for r in await store.list(labels={"team": "ops"}, status="runnable", limit=1)] == [
        min(both.id, ops.id, imported.id)
    ]
    for bad in ({"team": "a\nb"}, {"": "x"}, {"k\t": "v"}):
        with pytest.raises(UsageError):
            await store.list(labels=bad)
