"""Claims without progress ("stalls", issue 14), on both stores.

A claim whose lease lapses while its node still holds it (the node died or hung), or that
its node drops at a restart, the seq unchanged since the claim began, made no progress: the
next claim (or the drop) counts it on the object and names its node, so that recovery
attempts are counted across nodes and restarts. Progress (any append) starts the count
again; a node letting go (a release) is no stall. ``avoid_stalled`` leaves an object whose
latest stall was on the claiming node to another node."""

from __future__ import annotations

from collections.abc import AsyncIterator

import attrs
import pytest
from test_contract import LEASE, T0, claim_one, claim_only, commit, head, make, new_object

from peo.core.model import Action
from peo.store import Claim, Store, open_store
from peo.store.stalls import STALLED_KEPT, push_stalled, stalled_nodes


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with open_store(store_url) as s:
        yield s


def after(n: int) -> int:
    """A time when the lease of a claim made at the n-th lapse has lapsed too."""
    return T0 + n * (LEASE + 1)


async def stalls_of(store: Store, oid: str) -> tuple[int, tuple[str, ...]]:
    row = await store.get(oid)
    return row.stalls, row.stalled_on


async def claim_avoiding(store: Store, oid: str, owner: str, *, now: int) -> list[Claim]:
    others = [r.id for r in await store.list() if r.id != oid]
    return await store.claim(owner, now=now, lease_ns=LEASE, limit=1, handlers=["work"], scopes=None,
                             exclude=others, avoid_stalled=True)


# -- counting ----------------------------------------------------------------------------------


async def test_a_fresh_object_and_its_first_claim_have_no_stalls(store: Store) -> None:
    t = await make(store)
    assert await stalls_of(store, t.id) == (0, ())
    claim = await claim_one(store, t.id, owner="node-a")
    assert (claim.stalls, claim.stalled_on) == (0, ())


async def test_a_claim_after_a_lapsed_lease_without_progress_counts_a_stall_on_its_node(store: Store) -> None:
    t = await make(store)
    await claim_one(store, t.id, owner="node-a", now=T0)  # node-a dies holding it
    second = await claim_one(store, t.id, owner="node-b", now=after(1))
    assert (second.stalls, second.stalled_on) == (1, ("node-a",))  # the claim says what it found
    assert await stalls_of(store, t.id) == (1, ("node-a",))
    # Counted across nodes: node-b hangs too, and its own next claim counts itself.
    third = await claim_one(store, t.id, owner="node-b", now=after(2))
    assert (third.stalls, third.stalled_on) == (2, ("node-b", "node-a"))


async def test_a_live_lease_is_not_judged(store: Store) -> None:
    t = await make(store)
    await claim_one(store, t.id, owner="node-a", now=T0)
    # Not claimable while the lease lives; a forced seize takes it without judging it.
    assert await claim_only(store, t.id, owner="node-b", now=T0 + 1, lease_ns=LEASE) == []
    seized = await store.seize(t.id, "operator", now=T0 + 1, lease_ns=LEASE, force=True)
    assert seized is not None and (seized.stalls, seized.stalled_on) == (0, ())


async def test_a_seize_judges_a_lapsed_lease_like_a_claim(store: Store) -> None:
    t = await make(store)
    await claim_one(store, t.id, owner="node-a", now=T0)
    seized = await store.seize(t.id, "operator", now=after(1), lease_ns=LEASE)
    assert seized is not None and (seized.stalls, seized.stalled_on) == (1, ("node-a",))
    # And it records where its own claim began: it lapsing unused counts too.
    claim = await claim_one(store, t.id, owner="node-b", now=after(2))
    assert (claim.stalls, claim.stalled_on) == (2, ("operator", "node-a"))


async def test_a_claim_that_made_progress_before_its_lease_lapsed_is_not_a_stall(store: Store) -> None:
    t = await make(store)
    await claim_one(store, t.id, owner="node-a", now=T0)
    claim = await claim_one(store, t.id, owner="node-b", now=after(1))
    assert claim.stalls == 1
    await commit(store, t, t.step(claim), now=after(1))  # node-b steps once, then dies holding it
    third = await claim_one(store, t.id, owner="node-c", now=after(2))
    assert (third.stalls, third.stalled_on) == (0, ())
    assert await stalls_of(store, t.id) == (0, ())


async def test_drop_leases_counts_each_lease_it_drops_that_made_no_progress(store: Store) -> None:
    idle, busy, other = await make(store), await make(store), await make(store)
    await claim_one(store, idle.id, owner="node-a")
    c = await claim_one(store, busy.id, owner="node-a")
    await commit(store, busy, busy.step(c))  # progress, then the node restarts
    await claim_one(store, other.id, owner="node-b")
    assert await store.drop_leases("node-a") == 2
    assert await stalls_of(store, idle.id) == (1, ("node-a",))
    assert await stalls_of(store, busy.id) == (0, ())
    assert await stalls_of(store, other.id) == (0, ())  # another owner's lease is not touched
    assert (await store.get(other.id)).lease_owner == "node-b"
    # A dropped lease is judged once: the next claim finds no lease to judge.
    again = await claim_one(store, idle.id, owner="node-a", now=T0 + 1)
    assert (again.stalls, again.stalled_on) == (1, ("node-a",))


async def test_a_release_neither_counts_nor_resets(store: Store) -> None:
    t = await make(store)
    await claim_one(store, t.id, owner="node-a", now=T0)
    claim = await claim_one(store, t.id, owner="node-b", now=after(1))  # one stall, on node-a
    await store.release(t.id, claim.token, due_at=after(1), now=after(1))  # node-b lets go, no progress
    third = await claim_one(store, t.id, owner="node-c", now=after(2))
    assert (third.stalls, third.stalled_on) == (1, ("node-a",))


async def test_an_append_that_drops_the_lease_is_no_stall(store: Store) -> None:
    t = await make(store)
    claim = await claim_one(store, t.id, owner="node-a", now=T0)
    await commit(store, t, t.step(claim, status="dormant", due_at=after(1), action=Action.DORMANCY, release=True))
    woken = await claim_one(store, t.id, owner="node-b", now=after(2))
    assert (woken.stalls, woken.stalled_on) == (0, ())


async def test_an_append_resets_the_stalls(store: Store) -> None:
    t = await make(store)
    await claim_one(store, t.id, owner="node-a", now=T0)
    await claim_one(store, t.id, owner="node-b", now=after(1))
    claim = await claim_one(store, t.id, owner="node-c", now=after(2))
    assert claim.stalls == 2
    await commit(store, t, t.step(claim), now=after(2))
    assert await stalls_of(store, t.id) == (0, ())
    assert [(r.stalls, r.stalled_on) for r in await store.list() if r.id == t.id] == [(0, ())]


async def test_a_lost_append_is_no_progress(store: Store) -> None:
    t = await make(store)
    await claim_one(store, t.id, owner="node-a", now=T0)
    claim = await claim_one(store, t.id, owner="node-b", now=after(1))
    stale = attrs.evolve(t.step(claim), token=claim.token + 1)  # not the lease's token
    assert await store.append([stale], now=after(1)) == [None]
    assert await stalls_of(store, t.id) == (1, ("node-a",))


async def test_stalled_on_keeps_the_newest_nodes_first_each_once(store: Store) -> None:
    t = await make(store)
    nodes = [f"node-{i}" for i in range(STALLED_KEPT + 2)]
    for n, node in enumerate(nodes):
        await claim_one(store, t.id, owner=node, now=after(n))
    claim = await claim_one(store, t.id, owner="node-3", now=after(len(nodes)))
    # Every claim but the first judged the one before it: node-0 ... node-9 stalled.
    newest = tuple(reversed(nodes))[:STALLED_KEPT]
    assert (claim.stalls, claim.stalled_on) == (len(nodes), newest)
    assert "node-3" in newest[1:]
    # node-3 lapses too: already listed, it moves to the front and is not listed twice.
    claim = await claim_one(store, t.id, owner="node-x", now=after(len(nodes) + 1))
    assert claim.stalls == len(nodes) + 1
    assert claim.stalled_on == ("node-3", *(n for n in newest if n != "node-3"))
    assert len(claim.stalled_on) == STALLED_KEPT


def test_push_stalled_is_the_rule_both_stores_render() -> None:
    assert push_stalled(None, "a") == "a"
    assert push_stalled("b\na\nc", "a") == "a\nb\nc"
    many = "\n".join(f"n{i}" for i in range(STALLED_KEPT))
    assert stalled_nodes(push_stalled(many, "new")) == ("new", *(f"n{i}" for i in range(STALLED_KEPT - 1)))
    assert stalled_nodes(None) == stalled_nodes("") == ()


# -- placement: avoid_stalled ------------------------------------------------------------------


async def test_avoid_stalled_leaves_an_object_whose_latest_stall_was_on_this_node(store: Store) -> None:
    t = await make(store)
    await claim_one(store, t.id, owner="node-a", now=T0)  # node-a hangs holding it
    # node-a comes back: the stall its claim would record is its own, so it leaves it ...
    assert await claim_avoiding(store, t.id, "node-a", now=after(1)) == []
    assert (await store.get(t.id)).lease_owner == "node-a"  # nothing written
    # ... and another node takes it (the stall on node-a is counted).
    [claim] = await claim_avoiding(store, t.id, "node-b", now=after(1))
    assert (claim.stalls, claim.stalled_on) == (1, ("node-a",))
    # node-b hangs too: now node-a may take it again, node-b may not.
    assert await claim_avoiding(store, t.id, "node-b", now=after(2)) == []
    [claim] = await claim_avoiding(store, t.id, "node-a", now=after(2))
    assert (claim.stalls, claim.stalled_on) == (2, ("node-b", "node-a"))


async def test_avoid_stalled_reads_the_latest_stall_of_an_unleased_object(store: Store) -> None:
    t, fresh = await make(store), await make(store)
    await claim_one(store, t.id, owner="node-a")
    await store.drop_leases("node-a")  # node-a restarted: one stall on node-a, no lease
    assert await claim_avoiding(store, t.id, "node-a", now=T0 + 1) == []
    assert [c.id for c in await claim_avoiding(store, fresh.id, "node-a", now=T0 + 1)] == [fresh.id]
    # Without avoid_stalled (it is the only node) it takes it.
    claim = await claim_one(store, t.id, owner="node-a", now=T0 + 1)
    assert (claim.stalls, claim.stalled_on) == (1, ("node-a",))
    # Progress forgets the stalls: node-a is no longer avoided.
    await commit(store, t, t.step(claim), now=T0 + 1)
    await store.drop_leases("node-a")  # after progress: no stall
    assert [c.id for c in await claim_avoiding(store, t.id, "node-a", now=T0 + 2)] == [t.id]


async def test_avoid_stalled_is_a_filter_of_the_claim_however_many_priority_levels(store: Store) -> None:
    # More priority levels than the SQLite store walks one by one: its sorted query applies it too.
    objs = [new_object(priority=p) for p in range(12)]
    await store.create(objs)
    stalled = {o.id for o in objs[::3]}
    for o in objs:
        if o.id in stalled:
            await claim_one(store, o.id, owner="node-a")
    await store.drop_leases("node-a")
    claims = await store.claim("node-a", now=T0 + 1, lease_ns=LEASE, limit=len(objs), handlers=["work"],
                               scopes=None, avoid_stalled=True)
    assert {c.id for c in claims} == {o.id for o in objs} - stalled
    assert [c.priority for c in claims] == sorted((c.priority for c in claims), reverse=True)
    rest = await store.claim("node-b", now=T0 + 1, lease_ns=LEASE, limit=len(objs), handlers=["work"],
                             scopes=None, avoid_stalled=True)
    assert {c.id for c in rest} == stalled
    assert all(c.stalled_on == ("node-a",) for c in rest)


async def test_an_operator_resuming_a_quarantined_object_starts_the_count_again(store: Store) -> None:
    t = await make(store)
    await claim_one(store, t.id, owner="node-a", now=T0)
    claim = await claim_one(store, t.id, owner="node-b", now=after(1))
    assert claim.stalls == 1
    await store.quarantine(t.id, "healing: 1 claim in a row ended without progress", now=after(1))
    assert await stalls_of(store, t.id) == (1, ("node-a",))  # kept while quarantined (for peo show)
    assert await store.requalify(t.id, head("runnable", after(1)), now=after(1))
    resumed = await claim_one(store, t.id, owner="node-a", now=after(2))
    assert (resumed.stalls, resumed.stalled_on) == (0, ())
