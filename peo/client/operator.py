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
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ..core.cycle import Decision, plan, restore
from ..core.head import head_of
from ..core.memory import Fold, make_entry, state_at, verify_chain
from ..core.model import CANCEL_SIGNAL, Action, Entry, Status
from ..errors import IntegrityError, ObjectTerminatedError, UsageError
from ..store import AppendItem, Claim

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
    claim = await store.seize(object_id, _owner(client), now=now, lease_ns=OPERATOR_LEASE_NS, force=force)
    if claim is None:
        return CancelOutcome.REQUESTED

    async def decide(fold: Fold, memory: list[Entry]) -> Decision:
        # Only this operator's own request is recorded (never whatever else the inbox holds).
        mine = [s for s in await store.inbox(object_id, names=(CANCEL_SIGNAL,)) if s.id == sent]
        decided = plan(fold, client.policy, now=now, signals=mine)
        if not isinstance(decided, Decision) or decided.action is not Action.TERMINATE:  # pragma: no cover
            raise IntegrityError("the cancel request was not found in the inbox", object_id=object_id)
        return decided

    written = await _append_held(client, claim, now, decide)
    return CancelOutcome.CANCELLED if written else CancelOutcome.REQUESTED


async def restore_known_good(client: Client, object_id: str, *, reason: str, force: bool = False) -> int:
    """Append an entry, signed with the operator's key, that sets ``object_id``'s working
    state back to its known-good state (its last checkpoint, else its last step that
    succeeded: ``Fold.known_good``); returns the seq restored to. The object must be
    runnable and not held by a node (``force`` takes over a lease a dead node left)."""
    store, now = client.store, time.time_ns()
    claim = await store.seize(object_id, _owner(client), now=now, lease_ns=OPERATOR_LEASE_NS, force=force)
    if claim is None:
        row = await store.get(object_id)
        if row.status.is_final:
            raise ObjectTerminatedError(object_id, row.reason)
        raise UsageError(f"object {object_id} is held by a node (or quarantined): stop it first, or pass force")
    restored_to: list[int] = []

    async def decide(fold: Fold, memory: list[Entry]) -> Decision:
        if fold.status is not Status.RUNNABLE:
            raise UsageError(f"object {object_id} is {fold.status}: only a runnable object's state is restored")
        restored_to.append(fold.known_good)
        return restore(fold.known_good, state_at(memory, fold.known_good), reason=reason, by="operator")

    if not await _append_held(client, claim, now, decide):
        raise UsageError(f"object {object_id} moved on while it was being restored: try again")
    return restored_to[0]


def _owner(client: Client) -> str:
    return f"operator:{client.identity}"


async def _append_held(client: Client, claim: Claim, now: int,
                       decide: Callable[[Fold, list[Entry]], Awaitable[Decision]]) -> bool:
    """With the operator's lease ``claim``: verify and fold the object's chain, let
    ``decide`` choose the entry, sign it with the operator's key and append it (the same
    compare-and-swap a node uses). False if a node's write came first; the lease is let go
    unless the entry (which releases it) was written."""
    store, object_id = client.store, claim.id
    written = False
    try:
        _, memory = verify_chain(object_id, await store.entries(object_id), client.keyring)
        if not memory or memory[-1].seq != claim.seq or memory[-1].hash != claim.head:
            raise IntegrityError("the stored head does not match the memory", object_id=object_id, seq=claim.seq)
        fold = Fold.of(memory)
        decided = await decide(fold, memory)
        entry = make_entry(client.key, seq=fold.seq + 1, prev=fold.hash, timestamp=now, origin_node=_owner(client),
                           policy_ref=client.policy.ref, action=decided.action, outcome=decided.outcome,
                           trace_id=object_id)
        parent = fold.context.parent
        fold.apply(entry)
        item = AppendItem(object_id=object_id, token=claim.token, entry=entry, head=head_of(fold, now=now),
                          consumed=decided.consumed, release=True, parent=parent)
        [left] = await store.append([item], now=now)
        written = left is not None
        return written
    finally:
        if not written:  # a node's write came first, or reading failed: let go of the lease
            await store.release(object_id, claim.token, due_at=now, now=now)
