"""The values a store takes and gives (rows, claims, appends, refusals): the data half of the
store contract in :mod:`peo.store.base`, which re-exports them."""

from __future__ import annotations

from collections.abc import Mapping

import attrs

from ..core.head import Head
from ..core.model import Entry, Status

__all__ = [
    "ALERT_LEASE_NS",
    "REFUSALS_KEPT",
    "STORED_STATUSES",
    "AlertRow",
    "AppendItem",
    "Claim",
    "NewObject",
    "NodeRow",
    "ObjectRow",
    "RefusedSignal",
    "SignalRefusal",
    "SignalRefusalLike",
]

#: Statuses as stored. "running" is derived: runnable and leased right now.
STORED_STATUSES: tuple[Status, ...] = tuple(s for s in Status if s is not Status.RUNNING)

#: How many refused signals a store keeps per object (the newest): an inbox flooded with
#: signals that are all refused cannot grow the store without bound.
REFUSALS_KEPT = 100

#: How long :meth:`Store.due_alerts` leases the rows it returns: no other node's
#: ``due_alerts`` returns them until then (a delivery that takes longer may be repeated).
ALERT_LEASE_NS = 30 * 10**9


@attrs.frozen
class NodeRow:
    """A node as it last registered: its id, the handlers it serves, when, and its notes."""

    id: str
    handlers: tuple[str, ...]
    seen_at: int
    notes: str | None = None


@attrs.frozen
class NewObject:
    """An object to create: its head fields and its signed entry 0."""

    id: str
    handler: str
    scope: str
    identity: str
    priority: int
    parent: str | None
    entry: Entry
    due_at: int  # when it is first due (normally: now)
    labels: Mapping[str, str] = attrs.field(factory=dict)  # entry 0's Context.labels (for listing)
    # The id of its top-level ancestor (entry 0's Context.root); None for a top-level object.
    # Store.count_descendants counts the objects that name one root.
    root: str | None = None
    # The object a fork was made from (entry 0's "fork" origin); None for any other object.
    # Store.forks lists the forks of one object.
    forked_from: str | None = None


@attrs.frozen
class ObjectRow:
    """The head of one object as stored."""

    id: str
    handler: str
    scope: str
    identity: str
    priority: int
    status: Status  # as stored: never RUNNING (see status_at)
    seq: int
    head: bytes
    due_at: int | None
    lease_owner: str | None
    lease_until: int | None
    parent: str | None
    result: bytes | None  # msgpack of the result (terminated objects)
    reason: str | None
    wait_signal: str | None
    wait_children: bool
    inbox: int  # signals waiting in the inbox
    created_at: int
    updated_at: int
    # The top-level ancestor's id; None for a top-level object, and for every object created
    # before stores recorded it (those count as top-level: see Store.count_descendants).
    root: str | None = None
    # Claims without progress since the last progress (see Store.claim), and the nodes they
    # were on, newest first (at most 8).
    stalls: int = 0
    stalled_on: tuple[str, ...] = ()
    # When an operator's tombstone deleted it (ns; the first deletion while it stays
    # deleted), None if it is not deleted: the rest of the row is its head as before.
    deleted_at: int | None = None

    def status_at(self, now: int) -> Status:
        """The status as of ``now``: a runnable object with a live lease is RUNNING."""
        if self.status is Status.RUNNABLE and self.lease_until is not None and self.lease_until > now:
            return Status.RUNNING
        return self.status


@attrs.frozen
class Claim:
    """A lease on one object: ``token`` fences every write made under it.

    Besides the head hash, a claim carries the row's identity as stored when it was
    claimed (handler, scope, priority, parent, status), so that the node can check the
    row against the verified chain: a row set back to runnable, or given another handler
    or scope behind peo's back, is detected before anything runs.

    ``stalls`` and ``stalled_on`` are the object's claims without progress (see
    :meth:`Store.claim`) as of this claim: they include the stall this claim just detected."""

    id: str
    token: int
    seq: int
    inbox: int
    head: bytes  # hash of entry ``seq`` as the head records it; the node checks it
    handler: str = ""
    scope: str = ""
    priority: int = 0
    parent: str | None = None
    status: Status = Status.RUNNABLE  # as stored: runnable or dormant (a claim takes only live objects)
    stalls: int = 0  # claims without progress in a row, this claim's detection included
    stalled_on: tuple[str, ...] = ()  # the nodes they were on, newest first (at most 8)


@attrs.frozen
class SignalRefusal:
    """One inbox signal to refuse (:meth:`Store.refuse_signals`): its id, why, and the key id
    that signed it if one did (None: unsigned, or the signature did not name a known key)."""

    id: int
    reason: str
    sender: str | None = None


#: What :meth:`Store.refuse_signals` takes for one signal.
SignalRefusalLike = SignalRefusal | tuple[int, str] | tuple[int, str, str | None]


@attrs.frozen
class RefusedSignal:
    """A signal that was refused and moved out of the inbox (:meth:`Store.refused`)."""

    id: int  # its inbox id
    name: str
    reason: str
    sender: str | None
    refused_at: int
    created_at: int  # when it was put in the inbox


@attrs.frozen
class AlertRow:
    """One alert of one incident of an object to one sink, and its delivery
    (:meth:`Store.add_alert`)."""

    object_id: str
    incident: str
    sink: str
    payload: bytes  # what to deliver, as given to add_alert
    created_at: int
    attempts: int  # delivery attempts recorded so far
    next_at: int  # not delivered: when it is due (again); while leased, when the lease ends
    delivered_at: int | None  # None: not delivered yet
    last_error: str | None  # the last failed attempt's error (kept after a later delivery)


@attrs.frozen
class AppendItem:
    """One entry to append under a lease, and the head it leaves the object with.

    The append is a compare-and-swap on (seq, lease token): it succeeds only if the head
    is still at ``entry.seq - 1`` and the lease token is still ours. The store writes the
    status, due time, wait and outcome of ``head``; a dormant head is made due at once if
    a wake rule already holds (:func:`peo.core.wake.due_case`). A head without a result
    or a reason leaves the stored ones as they are.
    """

    object_id: str
    token: int
    entry: Entry
    head: Head
    consumed: tuple[int, ...] = ()
    children: tuple[NewObject, ...] = ()
    release: bool = False  # drop the lease in the same transaction
    parent: str | None = None  # the object's parent, woken (if it waits for children) when this entry ends it
    # With children: the most objects their root may have under it (the policy's
    # max_descendants). Checked in the append's transaction, so concurrent delegations under
    # one root, on any number of nodes, never take the tree past it: an item that would is
    # not written (its result is None, as for a lost compare-and-swap).
    max_descendants: int | None = None
