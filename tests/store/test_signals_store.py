"""The store side of signed signals (issue 19), on both stores: seals kept as sent, a bounded
inbox, bounded reads by name, refused signals moved out (and out of the wake rules) with a
bounded history, and claims that carry the row's identity."""

from __future__ import annotations

import contextlib
import pickle
import sqlite3
from collections.abc import AsyncIterator

import pytest
from test_contract import LEASE, SEC, T0, claim_one, claimable, commit, go_dormant, make, new_object

from peo.core.model import CANCEL_SIGNAL, Action, Status
from peo.errors import InboxFullError, StoreError
from peo.ids import new_id
from peo.store import REFUSALS_KEPT, SignalRefusal, Store, open_store


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with open_store(store_url) as s:
        yield s


# -- seals -------------------------------------------------------------------------------------


async def test_a_seal_is_kept_as_sent_and_returned_with_its_signal(store: Store) -> None:
    t = await make(store)
    seal = bytes(range(256)) * 3  # opaque to the store: any bytes, NUL included
    sealed = await store.signal(t.id, "approve", {"ok": True}, now=T0, seal=seal)
    plain = await store.signal(t.id, "note", None, now=T0)
    inbox = await store.inbox(t.id)
    assert [(s.id, s.name, s.payload, s.seal, s.sender) for s in inbox] == [
        (sealed, "approve", {"ok": True}, seal, None), (plain, "note", None, None, None),
    ]


# -- a bounded inbox ---------------------------------------------------------------------------


async def test_a_signal_to_a_full_inbox_is_refused_and_writes_nothing(store: Store) -> None:
    t = await make(store)
    await go_dormant(store, t, wait_signal="approve")
    for i in range(3):
        await store.signal(t.id, "note", i, now=T0 + i, max_inbox=3)
    before = await store.get(t.id)
    with pytest.raises(InboxFullError) as caught:
        await store.signal(t.id, "approve", None, now=T0 + 10, max_inbox=3, seal=b"s")
    err = caught.value
    assert isinstance(err, StoreError) and not err.retryable
    assert (err.object_id, err.waiting, err.limit) == (t.id, 3, 3)
    assert str(err).startswith(f"object {t.id} has 3 signals waiting, the most its policy allows; ")
    assert pickle.loads(pickle.dumps(err)).args == err.args
    # Nothing written: not the signal, not the count, and the awaited name did not wake it.
    after = await store.get(t.id)
    assert (after.inbox, after.due_at, after.updated_at) == (before.inbox, before.due_at, before.updated_at) == (
        3, None, before.updated_at)
    assert [s.payload for s in await store.inbox(t.id)] == [0, 1, 2]
    assert not await claimable(store, t.id, now=T0 + 10)
    # A higher limit, or none, lets it in.
    await store.signal(t.id, "approve", None, now=T0 + 11, max_inbox=4)
    assert (await store.get(t.id)).due_at == T0 + 11
    await store.signal(t.id, "note", None, now=T0 + 12)
    assert (await store.get(t.id)).inbox == 5


async def test_a_repeated_cancel_to_a_full_inbox_returns_the_pending_one(store: Store) -> None:
    t = await make(store)
    first = await store.signal(t.id, CANCEL_SIGNAL, None, now=T0, max_inbox=2)
    await store.signal(t.id, "note", None, now=T0, max_inbox=2)
    assert await store.signal(t.id, CANCEL_SIGNAL, None, now=T0 + 1, max_inbox=2) == first
    with pytest.raises(InboxFullError):
        await store.signal(t.id, "note", None, now=T0 + 1, max_inbox=2)
    assert (await store.get(t.id)).inbox == 2


# -- bounded reads -----------------------------------------------------------------------------


async def test_inbox_reads_at_most_limit_signals_oldest_first_and_only_the_names_asked(store: Store) -> None:
    t = await make(store)
    noise = [await store.signal(t.id, "noise", i, now=T0 + i) for i in range(40)]
    approve = await store.signal(t.id, "approve", "yes", now=T0 + 50)
    cancel = await store.signal(t.id, CANCEL_SIGNAL, None, now=T0 + 51)
    more = await store.signal(t.id, "approve", "again", now=T0 + 52)

    assert [s.id for s in await store.inbox(t.id, limit=5)] == noise[:5]
    assert [s.id for s in await store.inbox(t.id)] == [*noise, approve, cancel, more]
    awaited = await store.inbox(t.id, limit=2, names={"approve", CANCEL_SIGNAL})
    assert [(s.id, s.name, s.payload) for s in awaited] == [(approve, "approve", "yes"), (cancel, CANCEL_SIGNAL, None)]
    assert [s.id for s in await store.inbox(t.id, names=["approve"])] == [approve, more]
    assert [s.id for s in await store.inbox(t.id, names=("approve",), limit=1)] == [approve]
    assert await store.inbox(t.id, names=()) == []
    assert await store.inbox(t.id, names={"nothing"}) == []
    assert await store.inbox(t.id, limit=0) == []
    assert await store.inbox(new_id(), limit=3, names={"approve"}) == []


async def test_inbox_reads_stop_before_their_payloads_add_up_to_more_than_max_bytes(store: Store) -> None:
    t = await make(store)
    big = [await store.signal(t.id, "note", "x" * 1000, now=T0 + i) for i in range(5)]  # 1,003 bytes packed
    small = await store.signal(t.id, "approve", 1, now=T0 + 9)
    assert [s.id for s in await store.inbox(t.id, max_bytes=2500)] == big[:2]
    assert [s.id for s in await store.inbox(t.id, max_bytes=10)] == big[:1]  # the first is always read
    assert [s.id for s in await store.inbox(t.id, max_bytes=10**6, limit=3)] == big[:3]
    assert [s.id for s in await store.inbox(t.id, max_bytes=10, names={"approve"})] == [small]
    [first] = await store.inbox(t.id, max_bytes=1)
    assert (first.name, first.payload) == ("note", "x" * 1000)


async def test_reads_of_the_inbox_and_descendant_counts_use_an_index(sqlite_url: str) -> None:
    """The query plans (SQLite's: PostgreSQL plans tiny tables by scanning, so for it we
    check that the index exists)."""
    async with open_store(sqlite_url) as s:
        t = await make(s)
        await s.signal(t.id, "note", None, now=T0)
        path = sqlite_url.removeprefix("sqlite:///")
        reads = s.reads  # type: ignore[attr-defined]
        with contextlib.closing(sqlite3.connect(path)) as db:
            for limit, names in ((5, {"approve", CANCEL_SIGNAL}), (5, None), (None, {"approve"})):
                query, args = reads.inbox(t.id, limit, names)
                plan = " ".join(str(r[-1]) for r in db.execute("EXPLAIN QUERY PLAN " + query, args))
                index = "inbox_object_name (object_id=? AND name=?)" if names else "inbox_object (object_id=?)"
                assert f"SEARCH inbox USING INDEX {index}" in plan, plan
            # The wake rules' "is the awaited signal (or a cancel) waiting?" too.
            plan = " ".join(str(r[-1]) for r in db.execute(
                "EXPLAIN QUERY PLAN SELECT 1 FROM inbox i WHERE i.object_id = ? AND (i.name = ? OR i.name = ?)",
                (t.id, "approve", CANCEL_SIGNAL)))
            assert "inbox_object_name" in plan, plan
            plan = " ".join(str(r[-1]) for r in db.execute(
                "EXPLAIN QUERY PLAN " + reads.count_descendants, (t.id,)))
            assert "USING COVERING INDEX objects_root" in plan, plan


async def test_postgres_has_the_inbox_name_index(postgres_url: str) -> None:
    import asyncpg

    from peo.store.postgres.url import parse_postgres_url

    async with open_store(postgres_url):
        pass
    dsn, schema, _, _ = parse_postgres_url(postgres_url)
    conn = await asyncpg.connect(dsn)
    try:
        defs = {r[0]: r[1] for r in await conn.fetch(
            "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = $1", schema)}
    finally:
        await conn.close()
    assert "(object_id, name, id)" in defs["inbox_object_name"]
    assert "(object_id, refused_at, id)" in defs["refused_signals_object"]
    assert "WHERE (root IS NOT NULL)" in defs["objects_root"]


# -- refused signals ---------------------------------------------------------------------------


async def test_refused_signals_leave_the_inbox_and_are_listed_newest_first(store: Store) -> None:
    t = await make(store)
    other = await make(store)
    a = await store.signal(t.id, "approve", {"pay": 1}, now=T0 + 1, seal=b"forged")
    b = await store.signal(t.id, "note", None, now=T0 + 2)
    c = await store.signal(t.id, "approve", None, now=T0 + 3)
    elsewhere = await store.signal(other.id, "note", None, now=T0 + 4)
    moved = await store.refuse_signals(
        t.id, [SignalRefusal(a, "not signed by a trusted key", "k1"), (c, "replayed nonce"),
               (a, "a second time"), (elsewhere, "not this object's"), (10**12, "no such signal")],
        now=T0 + 10)
    assert moved == 2
    assert [s.id for s in await store.inbox(t.id)] == [b]
    assert (await store.get(t.id)).inbox == 1
    assert [s.id for s in await store.inbox(other.id)] == [elsewhere]
    assert (await store.get(other.id)).inbox == 1
    refused = await store.refused(t.id)
    assert [(r.id, r.name, r.reason, r.sender, r.refused_at) for r in refused] == [
        (c, "approve", "replayed nonce", None, T0 + 10),
        (a, "approve", "not signed by a trusted key", "k1", T0 + 10),
    ]
    assert [r.created_at for r in refused] == [T0 + 3, T0 + 1]
    # Later refusals come first; a signal refused already is not moved twice.
    assert await store.refuse_signals(t.id, [(b, "too deep", "k2"), (a, "again")], now=T0 + 20) == 1
    assert [(r.id, r.sender) for r in await store.refused(t.id, limit=2)] == [(b, "k2"), (c, None)]
    assert await store.refused(t.id, limit=0) == []
    assert await store.refused(other.id) == []
    assert (await store.get(t.id)).inbox == 0
    assert await store.refuse_signals(t.id, [], now=T0) == 0


async def test_a_refused_awaited_signal_does_not_wake_the_object_at_its_release(store: Store) -> None:
    t = await make(store)
    await go_dormant(store, t, wait_signal="approve")
    forged = await store.signal(t.id, "approve", {"ok": True}, now=T0 + 1)
    assert await claimable(store, t.id, now=T0 + 1)  # woken by it, as any signal wakes
    claim = await claim_one(store, t.id, now=T0 + 5)  # (after the probe's 1 ns lease)
    assert claim.status is Status.DORMANT
    assert await store.refuse_signals(t.id, [(forged, "unsigned")], now=T0 + 6) == 1
    await store.release(t.id, claim.token, due_at=None, now=T0 + 7)
    row = await store.get(t.id)
    assert (row.status, row.due_at, row.inbox) == ("dormant", None, 0)
    assert not await claimable(store, t.id, now=T0 + 3600 * SEC)
    # A genuine one still wakes it.
    await store.signal(t.id, "approve", {"ok": True}, now=T0 + 8)
    assert await claimable(store, t.id, now=T0 + 8)


async def test_a_refused_awaited_signal_does_not_wake_an_object_going_dormant(store: Store) -> None:
    t = await make(store)
    claim = await claim_one(store, t.id)
    forged = await store.signal(t.id, "approve", None, now=T0 + 1)  # runnable: nothing to wake
    cancel = await store.signal(t.id, CANCEL_SIGNAL, None, now=T0 + 1)
    await store.refuse_signals(t.id, [(forged, "unsigned"), (cancel, "unsigned")], now=T0 + 2)
    await commit(store, t, t.step(claim, status="dormant", due_at=None, action=Action.DORMANCY,
                                  wait_signal="approve", release=True), now=T0 + 3)
    assert (await store.get(t.id)).due_at is None
    assert not await claimable(store, t.id, now=T0 + 3)


async def test_only_the_newest_refusals_of_each_object_are_kept(store: Store) -> None:
    t = await make(store)
    other = await make(store)
    kept_elsewhere = await store.signal(other.id, "x", None, now=T0)
    await store.refuse_signals(other.id, [(kept_elsewhere, "flood")], now=T0)
    ids: list[int] = []
    batches = (60, 50, 40)
    for n, size in enumerate(batches):
        batch = [await store.signal(t.id, "flood", None, now=T0 + n) for _ in range(size)]
        ids += batch
        assert await store.refuse_signals(t.id, [(i, "flood") for i in batch], now=T0 + SEC * (n + 1)) == size
    refused = await store.refused(t.id, limit=1000)
    assert len(refused) == REFUSALS_KEPT == 100
    # Newest refusal first, then the highest id among refusals made at the same time.
    assert [r.id for r in refused] == sorted(ids, reverse=True)[:REFUSALS_KEPT]
    assert (await store.get(t.id)).inbox == 0 and await store.inbox(t.id) == []
    assert [r.id for r in await store.refused(other.id)] == [kept_elsewhere]


# -- claims carry the row's identity -----------------------------------------------------------


async def test_a_claim_carries_the_handler_scope_priority_parent_and_status_it_leased(store: Store) -> None:
    parent = await make(store)
    child = new_object(handler="work", scope="payments", priority=7, parent=parent.id)
    await store.create([child])
    claims = await store.claim("n", now=T0, lease_ns=LEASE, limit=10, handlers=["work"], scopes=None)
    by_id = {c.id: c for c in claims}
    c = by_id[child.id]
    assert (c.handler, c.scope, c.priority, c.parent, c.status) == ("work", "payments", 7, parent.id,
                                                                    Status.RUNNABLE)
    assert (c.seq, c.inbox, c.head) == (0, 0, child.entry.hash)
    p = by_id[parent.id]
    assert (p.handler, p.scope, p.priority, p.parent, p.status) == ("work", "default", 0, None, Status.RUNNABLE)
    # Claimed ordered by priority: the child first.
    assert [x.id for x in claims] == [child.id, parent.id]


async def test_a_claim_and_a_seize_of_a_dormant_object_say_it_is_dormant(store: Store) -> None:
    t = await make(store, scope="ops", priority=2)
    await go_dormant(store, t, wait_signal="go")
    seized = await store.seize(t.id, "operator", now=T0 + 1, lease_ns=LEASE)
    assert seized is not None
    assert (seized.handler, seized.scope, seized.priority, seized.parent, seized.status, seized.seq) == (
        "work", "ops", 2, None, Status.DORMANT, 1)
    await store.release(t.id, seized.token, due_at=None, now=T0 + 2)
    await store.signal(t.id, "go", None, now=T0 + 3)
    claim = await claim_one(store, t.id, now=T0 + 3)
    assert (claim.status, claim.scope, claim.priority, claim.inbox) == (Status.DORMANT, "ops", 2, 1)
