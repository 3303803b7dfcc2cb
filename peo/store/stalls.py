"""Claims without progress ("stalls", issue 14): the SQL both dialects share to count them.

Each claim records the seq it began at (claim_seq). A claim that ends without progress --
its lease lapsed while still owned (the node died or hung holding the object), or its node
dropped it at a restart (Store.drop_leases), the seq still at claim_seq -- adds one to
``stalls`` and puts its owner first in ``stalled_on``; one that ended after progress resets
both. The next claim (or the drop) does this accounting, in the statement that takes the
row: SET expressions read the row as it was, so ``lease_owner`` there is the previous owner.
Any append resets both (:data:`PROGRESS`). A release is not counted: its node let go.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["NL", "PROGRESS", "SQLITE_PUSH", "STALLED_KEPT", "claim_set", "claim_stalls", "lapsed", "may_take",
           "push_stalled", "stalled_nodes"]

#: A placeholder for one named parameter (as in :mod:`peo.store.sql`'s templates).
Param = Callable[[str], str]

#: An append is progress: the claims without progress counted so far are forgotten (and an
#: operator's requalify starts the count again).
PROGRESS = "stalls = 0, stalled_on = NULL"

#: How many node ids ``stalled_on`` keeps (the newest).
STALLED_KEPT = 8
#: The separator of ``stalled_on``'s ids (node ids are checked names: no control characters),
#: as an SQL string literal holding one newline (both dialects take it as is).
NL = "'\n'"
#: The name of the SQLite function that renders :func:`push_stalled` (registered on the
#: writer connection); PostgreSQL renders it with arrays (see its statements).
SQLITE_PUSH = "peo_push_stalled"


def push_stalled(stalled_on: str | None, node: str) -> str:
    """``stalled_on`` with ``node`` first (moved there if it was already listed), at most
    :data:`STALLED_KEPT` ids, newest first, one per line."""
    ids = [node, *(i for i in (stalled_on or "").split("\n") if i and i != node)]
    return "\n".join(ids[:STALLED_KEPT])


def stalled_nodes(stalled_on: str | None) -> tuple[str, ...]:
    """The ids of a ``stalled_on`` cell, newest first."""
    return tuple(i for i in (stalled_on or "").split("\n") if i)


def claim_stalls(ended: str, push: Callable[[str, str], str]) -> str:
    """The SET clauses that count the previous claim of a row being taken (or dropped):
    ``ended`` is the SQL condition "the previous claim ended while still holding the lease";
    ``push(list, node)`` the dialect's SQL for :func:`push_stalled`. Without progress (seq
    still at claim_seq) it is a stall; after progress the count starts again. Otherwise
    (a released lease, a fresh object) nothing changes."""
    stalled = f"{ended} AND seq = claim_seq"
    return (
        f"stalls = CASE WHEN {stalled} THEN stalls + 1 WHEN {ended} THEN 0 ELSE stalls END,"
        f" stalled_on = CASE WHEN {stalled} THEN {push('stalled_on', 'lease_owner')}"
        f" WHEN {ended} THEN NULL ELSE stalled_on END"
    )


def lapsed(now: str) -> str:
    """A claimable row's previous claim ended holding the lease: it lapsed, still owned
    (a released lease has no owner)."""
    return f"lease_owner IS NOT NULL AND lease_until < {now}"


def claim_set(push: Callable[[str, str], str], now: str) -> str:
    """The SET clauses of a claim (or seize) besides the lease itself: the seq it begins
    at, and the judgement of the previous claim if its lease lapsed (at ``now``)."""
    return f"{claim_stalls(lapsed(now), push)}, claim_seq = seq"


def may_take(p: Param) -> str:
    """The claim condition of ``avoid_stalled``: the object's latest stall, counting the one
    this claim would record, was not on this owner. ``p("now")``; ``p("owner_nl")``: the
    owner followed by a newline. Reads only the row's own columns, so it filters the rows
    the claim's index already found (it never widens what the claim reads)."""
    ended = lapsed(p("now"))
    latest = (f"CASE WHEN {ended} THEN (CASE WHEN seq = claim_seq THEN lease_owner || {NL} END)"
              f" ELSE stalled_on || {NL} END")
    return f"substr(coalesce({latest}, ''), 1, length({p('owner_nl')})) <> {p('owner_nl')}"
