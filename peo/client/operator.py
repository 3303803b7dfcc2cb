"""Operator actions the client writes itself, as signed entries like any other.

A cancel is first a request in the object's inbox, which the node that holds the object
records on its next cycle. But an object that no node holds (no node serves its handler, or
every node is down) would never be cancelled that way: then the client takes a short lease
on it (:meth:`~peo.store.Store.seize`), runs the same :func:`~peo.core.cycle.plan` a node
would, and appends the terminate entry signed with the operator's own key. ``force`` also
takes over a lease that a node still holds (one that died without letting go).
"""

from __future__ import annotations

import enum
import time
from typing import TYPE_CHECKING

from ..core.cycle import Decision, plan, restore
from ..core.head import head_of
from ..core.memory import Fold, make_entry, state_at, verify_chain
from ..core.model import CANCEL_SIGNAL, Action, Status
from ..errors import IntegrityError, ObjectTerminatedError, UsageError
from ..store import AppendItem

if TYPE_CHECKING:
    from .client import Client

__all__ = ["CancelOutcome", "cancel", "restore_known_good"]

#: How long an operator's lease lasts: long enough to read, sign and append one entry (ns).
OPERATOR_LEASE_NS = 30 * 10**9


class CancelOutcome(enum.StrEnum):
    CANCELLED = "cancelled"  # the terminate entry is written: the object has ended
    REQUESTED = "requested"  # a node holds the object and records the cancel on its next cycle


async def cancel(client: Client, object_id: str, *, force: bool = False) -> CancelOutcome:
    """Cancel ``object_id``: write the terminate entry now unless a live node holds it."""
    store, now = client.store, time.time_ns()
    row = await store.get(object_id)
    if row.status.is_final:
        raise ObjectTerminatedError(object_id, row.reason)
    # Signed like any signal: whoever writes the entry consumes it and records who asked.
    sent = await client.send(object_id, CANCEL_SIGNAL, None)
    owner = f"operator:{client.identity}"
    claim = await store.seize(object_id, owner, now=now, lease_ns=OPERATOR_LEASE_NS, force=force)
    if claim is None:
        return CancelOutcome.REQUESTED
    written = False
    try:
        _, memory = verify_chain(object_id, await store.entries(object_id), client.keyring)
        if not memory or memory[-1].seq != claim.seq or memory[-1].hash != claim.head:
            raise IntegrityError("the stored head does not match the memory", object_id=object_id, seq=claim.seq)
        fold = Fold.of(memory)
        # Only this operator's own request is recorded (never whatever else the inbox holds).
        mine = [s for s in await store.inbox(object_id, names=(CANCEL_SIGNAL,)) if s.id == sent]
        decided = plan(fold, client.policy, now=now, signals=mine)
        if not isinstance(decided, Decision) or decided.action is not Action.TERMINATE:  # pragma: no cover
            raise IntegrityError("the cancel request was not found in the inbox", object_id=object_id)
        entry = make_entry(client.key, seq=fold.seq + 1, prev=fold.hash, timestamp=now, origin_node=owner,
                           policy_ref=client.policy.ref, action=decided.action, outcome=decided.outcome,
                           trace_id=object_id)
        parent = fold.context.parent
        fold.apply(entry)
        item = AppendItem(object_id=object_id, token=claim.token, entry=entry, head=head_of(fold, now=now),
                          consumed=decided.consumed, release=True, parent=parent)
        [left] = await store.append([item], now=now)
        written = left is not None
    finally:
        if not written:  # a node's write came first, or reading failed: let go of the lease
            await store.release(object_id, claim.token, due_at=now, now=now)
    return CancelOutcome.CANCELLED if written else CancelOutcome.REQUESTED


async def restore_known_good(client: Client, object_id: str, *, reason: str, force: bool = False) -> int:
    """Append an entry, signed with the operator's key, that sets ``object_id``'s working
    state back to its known-good state (its last checkpoint, else its last step that
    succeeded: ``Fold.known_good``); returns the seq restored to. The object must be
    runnable and not held by a node (``force`` takes over a lease a dead node left)."""
    store, now = client.store, time.time_ns()
    owner = f"operator:{client.identity}"
    claim = await store.seize(object_id, owner, now=now, lease_ns=OPERATOR_LEASE_NS, force=force)
    if claim is None:
        row = await store.get(object_id)
        if row.status.is_final:
            raise ObjectTerminatedError(object_id, row.reason)
        raise UsageError(f"object {object_id} is held by a node (or quarantined): stop it first, or pass force")
    written = False
    try:
        _, memory = verify_chain(object_id, await store.entries(object_id), client.keyring)
        if not memory or memory[-1].seq != claim.seq or memory[-1].hash != claim.head:
            raise IntegrityError("the stored head does not match the memory", object_id=object_id, seq=claim.seq)
        fold = Fold.of(memory)
        if fold.status is not Status.RUNNABLE:
            raise UsageError(f"object {object_id} is {fold.status}: only a runnable object's state is restored")
        good = fold.known_good
        decided = restore(good, state_at(memory, good), reason=reason, by="operator")
        entry = make_entry(client.key, seq=fold.seq + 1, prev=fold.hash, timestamp=now, origin_node=owner,
                           policy_ref=client.policy.ref, action=decided.action, outcome=decided.outcome,
                           trace_id=object_id)
        parent = fold.context.parent
        fold.apply(entry)
        item = AppendItem(object_id=object_id, token=claim.token, entry=entry, head=head_of(fold, now=now),
                          consumed=(), release=True, parent=parent)
        [left] = await store.append([item], now=now)
        written = left is not None
        if not written:
            raise UsageError(f"object {object_id} moved on while it was being restored: try again")
        return good
    finally:
        if not written:
            await store.release(object_id, claim.token, due_at=now, now=now)
