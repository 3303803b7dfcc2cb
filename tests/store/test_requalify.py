"""Store.requalify: a quarantined object back in play with the head its memory folds to.

Part of the store contract (peo/store/base.py), run on both stores like
tests/store/test_contract.py. Quarantine is a flag on the head, not an entry, so
requalifying changes the head only: seq, head hash and entries stay as they are.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from peo import keys
from peo.core.head import Head
from peo.core.memory import genesis, instantiation_outcome, make_entry
from peo.core.model import Action, Context, Entry, Intent, Status
from peo.core.wake import Wake
from peo.errors import NotFoundError
from peo.ids import new_id
from peo.store import AppendItem, NewObject, Store, open_store

KEY = keys.generate()
T0 = 1_700_000_000_000_000_000
SEC = 1_000_000_000


def new_object(*, parent: str | None = None) -> NewObject:
    oid = new_id()
    intent, context = Intent("work", {"n": 1}), Context(parent=parent)
    entry = make_entry(KEY, seq=0, prev=genesis(oid), timestamp=T0, origin_node="test", policy_ref="test",
                       action=Action.INSTANTIATE, outcome=instantiation_outcome(oid, intent, context), trace_id=oid)
    return NewObject(oid, "work", "default", "anonymous", 0, parent, entry, T0)


def next_entry(prev: Entry, action: Action = Action.EXECUTE, **outcome: Any) -> Entry:
    return make_entry(KEY, seq=prev.seq + 1, prev=prev.hash, timestamp=prev.timestamp + 1, origin_node="test",
                      policy_ref="test", action=action, outcome=dict(outcome), trace_id=prev.trace_id)


def dormant(*, until: int | None = None, signal: str | None = None, children: bool = False) -> Head:
    return Head(Status.DORMANT, until, Wake(until, signal, children))


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with open_store(store_url) as s:
        yield s


async def quarantined(store: Store, *, after: Head | None = None) -> tuple[NewObject, Entry]:
    """A new object (with one more entry leaving ``after``, if given), then quarantined."""
    obj = new_object()
    await store.create([obj])
    last = obj.entry
    if after is not None:
        [claim] = await store.claim("n", now=T0, lease_ns=10 * SEC, limit=1, handlers=["work"], scopes=None,
                                    exclude=[r.id for r in await store.list() if r.id != obj.id])
        last = next_entry(obj.entry, Action.DORMANCY if after.status is Status.DORMANT else Action.EXECUTE)
        assert await store.append([AppendItem(obj.id, claim.token, last, after, release=True)], now=T0) != [None]
    await store.quarantine(obj.id, "verification failed: signed by untrusted key", now=T0 + 1)
    return obj, last


async def test_requalify_puts_a_quarantined_object_back_with_its_head_and_writes_no_entry(store: Store) -> None:
    obj, last = await quarantined(store)
    rows = await store.entries(obj.id)
    assert await store.requalify(obj.id, Head(Status.RUNNABLE, T0 + 5), now=T0 + 5) is True
    row = await store.get(obj.id)
    assert (row.status, row.due_at, row.reason, row.seq, row.head) == ("runnable", T0 + 5, None, 0, last.hash)
    assert row.updated_at == T0 + 5
    assert await store.entries(obj.id) == rows
    [claim] = await store.claim("n", now=T0 + 5, lease_ns=SEC, limit=1, handlers=["work"], scopes=None)
    assert (claim.id, claim.seq, claim.head) == (obj.id, 0, last.hash)


async def test_requalify_changes_only_a_quarantined_object(store: Store) -> None:
    obj = new_object()
    await store.create([obj])
    before = await store.get(obj.id)
    assert await store.requalify(obj.id, Head(Status.TERMINATED, None, result=1), now=T0 + 5) is False
    assert await store.get(obj.id) == before
    with pytest.raises(NotFoundError):
        await store.requalify(new_id(), Head(Status.RUNNABLE, T0), now=T0)


async def test_a_requalified_dormant_object_waits_again_unless_its_signal_came_meanwhile(store: Store) -> None:
    asleep, _ = await quarantined(store, after=dormant(until=T0 + 100 * SEC, signal="approve"))
    assert await store.requalify(asleep.id, dormant(until=T0 + 100 * SEC, signal="approve"), now=T0 + 5)
    row = await store.get(asleep.id)
    assert (row.status, row.due_at, row.wait_signal, row.reason) == ("dormant", T0 + 100 * SEC, "approve", None)

    # A signal kept while it was quarantined wakes it as soon as it is back.
    woken, _ = await quarantined(store, after=dormant(signal="approve"))
    await store.signal(woken.id, "approve", {"ok": True}, now=T0 + 2)
    assert (await store.get(woken.id)).due_at is None
    assert await store.requalify(woken.id, dormant(signal="approve"), now=T0 + 5)
    row = await store.get(woken.id)
    assert (row.status, row.due_at, row.inbox) == ("dormant", T0 + 5, 1)
    assert [c.id for c in await store.claim("n", now=T0 + 5, lease_ns=SEC, limit=5, handlers=["work"],
                                            scopes=None)] == [woken.id]


async def test_a_requalified_terminated_head_keeps_its_result_and_reason(store: Store) -> None:
    obj, _ = await quarantined(store)
    done = Head(Status.TERMINATED, None, result={"answer": 42}, reason="done")
    assert await store.requalify(obj.id, done, now=T0 + 5)
    row = await store.get(obj.id)
    assert (row.status, row.due_at, row.result, row.reason) == ("terminated", None, done.result_bytes(), "done")
