"""Deleting, undeleting and purging objects: ``peo rm``, ``peo undelete``, ``peo purge``.

A delete is not a destruction: it is an entry, an operator's signed *tombstone*, appended
like any other (:func:`~peo.core.cycle.tombstone`), so the history says who deleted the
object, when and why. While the tombstone is its last word the object is left out of
listings, never due (no node claims it) and refuses signals; everything else of its head
(status, wait, result) stays as it was, and an undelete entry brings it back exactly so.
Data is destroyed only by a purge (:meth:`~peo.store.Store.purge`), of objects deleted
before a given time, never of one a live object still depends on.

The entry is written as the cancel's is (:mod:`.operator`): the client takes a short lease
on the object (any status: a terminated or quarantined object can be deleted too),
verifies and folds its chain, signs the entry with the operator's key and appends it with
the compare-and-swap a node uses. Quarantine is a flag on the head, not an entry, so a
quarantined object stays quarantined (with its reason) through a delete and an undelete.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from ..core.cycle import Decision, tombstone, undelete
from ..core.head import Head, head_of
from ..core.memory import Fold, make_entry, verify_chain
from ..core.model import Status
from ..errors import IntegrityError, UsageError
from ..store import AppendItem, Claim
from ..store.retention import PurgeReport
from .operator import OPERATOR_LEASE_NS, _owner

if TYPE_CHECKING:
    from .client import Client

__all__ = ["PurgeReport", "purge", "rm", "undelete_object"]

#: Who a deletion's entry says asked for it.
BY = "operator"


async def rm(client: Client, object_id: str, *, reason: str | None = None, force: bool = False) -> int:
    """Delete ``object_id``: append the operator's signed tombstone; returns its seq. The
    object must not be held by a node (one running it: stop it first, or ``force`` takes
    over a lease a dead node left). UsageError if it is deleted already."""
    if reason is not None and not isinstance(reason, str):
        raise UsageError("reason must be text")

    def decide(fold: Fold) -> Decision:
        if fold.deleted:
            raise UsageError(f"object {object_id} is already deleted (peo undelete {object_id} brings it back)")
        return tombstone(reason or "", by=BY)

    return await _write(client, object_id, decide, force=force, doing="deleted")


async def undelete_object(client: Client, object_id: str, *, force: bool = False) -> int:
    """Bring a deleted ``object_id`` back exactly as it was before its tombstone (status,
    wait, due time, result): append the operator's signed undelete; returns its seq.
    UsageError if it is not deleted."""

    def decide(fold: Fold) -> Decision:
        if not fold.deleted:
            raise UsageError(f"object {object_id} is not deleted: nothing to undelete")
        return undelete(by=BY)

    return await _write(client, object_id, decide, force=force, doing="undeleted")


async def purge(client: Client, *, deleted_before: int, dry_run: bool = True) -> PurgeReport:
    """Destroy the objects deleted before ``deleted_before`` (ns since the epoch), all their
    rows, except those a remaining object still depends on (see
    :meth:`~peo.store.Store.purge`). With ``dry_run`` (the default) nothing is written:
    the report says what would go and what would be kept, and why."""
    if isinstance(deleted_before, bool) or not isinstance(deleted_before, int):
        raise UsageError("deleted_before must be a time in nanoseconds since the epoch (an int)")
    if not -(2**63) <= deleted_before < 2**63:
        raise UsageError("deleted_before is out of range: a store's times are 64-bit nanoseconds")
    return await client.store.purge(deleted_before=deleted_before, dry_run=dry_run)


async def _write(client: Client, object_id: str, decide: Callable[[Fold], Decision], *, force: bool,
                 doing: str) -> int:
    """Lease ``object_id`` (whatever its status), let ``decide`` choose the entry from its
    verified fold, sign and append it; the entry's seq."""
    store, now = client.store, time.time_ns()
    row = await store.get(object_id)  # NotFoundError for an unknown id
    claim = await store.seize(object_id, _owner(client), now=now, lease_ns=OPERATOR_LEASE_NS, force=force,
                              final=True)
    if claim is None:
        raise UsageError(f"object {object_id} is held by a node (it is running): stop that node or wait for it "
                         f"to let go, or pass force (peo {'rm' if doing == 'deleted' else 'undelete'} --force) "
                         "to take over a lease a dead node left")
    written = False
    try:
        _, memory = verify_chain(object_id, await store.entries(object_id), client.keyring)
        if not memory or memory[-1].seq != claim.seq or memory[-1].hash != claim.head:
            raise IntegrityError("the stored head does not match the memory", object_id=object_id, seq=claim.seq)
        fold = Fold.of(memory)
        decided = decide(fold)
        entry = make_entry(client.key, seq=fold.seq + 1, prev=fold.hash, timestamp=now, origin_node=_owner(client),
                           policy_ref=client.policy.ref, action=decided.action, outcome=decided.outcome,
                           trace_id=object_id)
        parent = fold.context.parent
        fold.apply(entry)  # only the deleted flag changes: the head is the one it had
        head = _head(fold, claim, row.reason, now)
        item = AppendItem(object_id=object_id, token=claim.token, entry=entry, head=head, release=True,
                          parent=parent)
        [left] = await store.append([item], now=now)
        written = left is not None
    finally:
        if not written:  # refused, or a node's write came first: let go of the lease
            await store.release(object_id, claim.token, due_at=None, now=now)
    if not written:  # pragma: no cover - a seized lease is ours until it lapses
        raise UsageError(f"object {object_id} moved on while it was being {doing}: try again")
    return entry.seq


def _head(fold: Fold, claim: Claim, reason: str | None, now: int) -> Head:
    """The head after a tombstone or undelete: the one the memory implies, except that a
    quarantined object stays quarantined with its reason (quarantine is not in the chain)."""
    head = head_of(fold, now=now)
    if claim.status is Status.QUARANTINED:
        return attrs.evolve(head, status=Status.QUARANTINED, due_at=None, waiting_for=None, result=None,
                            reason=reason)
    return head
