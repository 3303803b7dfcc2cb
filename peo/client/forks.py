"""Forks: a new object that starts from another object's state at one version.

A fork's entry 0, signed by the forking client like any entry 0, records where it came
from (``fork``: the parent's id, the seq and that entry's hash, hex) and the state it
starts from (the parent's :func:`~peo.core.memory.state_at` that seq). Its chain is its
own from there on: the parent is never written to, and a fork is not a child (no
``parent``/``root`` in its context; the store's ``forked_from`` column lists it under its
origin, :meth:`~peo.store.Store.forks`).

Because the origin is inside the signed entry 0, it can be checked later
(:func:`check_origin`, run by ``Client.verify``): with the parent in the store, its
chain up to that seq must verify, have that hash at that seq, and fold to the state the
fork started from. A fork whose parent is not in the store (purged, or the fork was
imported alone) cannot be checked: its origin is *unverifiable*, which is not a failure
of its own chain.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from ..core.codec import Limits, check_value, packb
from ..core.crypto import Keyring
from ..core.memory import Fold, genesis, instantiation_outcome, make_entry, state_at, verify_chain
from ..core.model import Action, Context, Entry
from ..errors import CodecError, IntegrityError, NotFoundError, PolicyError, UsageError
from ..functions.records import gathered, settled
from ..ids import new_id
from ..store import NewObject, Store

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Origin", "Verification", "check_origin", "fork"]


class Origin(enum.StrEnum):
    """How a verification judged an object's fork origin."""

    NONE = "none"  # not a fork: nothing to check
    OK = "ok"  # the parent is in the store and its chain up to the seq is the one the fork records
    UNVERIFIABLE = "unverifiable"  # the parent is not in the store: the fork's own chain is all that was checked


class Verification(int):
    """What ``Client.verify`` returns: the entry count (an int, as it always was, so
    ``await client.verify(oid) == 7`` still holds), and for a fork how its origin fared:
    :attr:`origin` (an :class:`Origin`) and :attr:`note` (the origin checked, or why it
    could not be)."""

    origin: Origin
    note: str | None

    def __new__(cls, count: int, origin: Origin = Origin.NONE, note: str | None = None) -> Verification:
        self = super().__new__(cls, count)
        self.origin = origin
        self.note = note
        return self

    @property
    def entries(self) -> int:
        return int(self)


async def fork(client: Client, object_id: str, *, seq: int | None = None,
               goal: Mapping[str, Any] | None = None) -> str:
    """Create a fork of ``object_id`` at ``seq`` (default: its head); returns the new id.

    The parent's whole chain is verified with the client's keyring first (IntegrityError
    if it does not: a fork of tampered history is refused). The fork's intent is the
    parent's as of ``seq`` (handler, constraints, and its goal after any refinement) unless
    ``goal`` replaces the goal; its context keeps the parent's trust scope, priority and
    labels, with the forking client's identity. It is created runnable.

    Raises NotFoundError for an unknown id, UsageError for a seq outside 0..head, a goal
    that is not a JSON object, or a deleted parent (undelete it first)."""
    from .client import check_object_id

    check_object_id(object_id)
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int)):
        raise UsageError(f"seq must be an integer, got {seq!r}")
    new_goal = _checked_goal(client, goal)
    await client._guard_key()
    store = client.store
    await store.get(object_id)  # NotFoundError for an unknown id
    _, memory = verify_chain(object_id, await store.entries(object_id), client.keyring)
    if not memory:
        raise IntegrityError("the object has no entries", object_id=object_id)
    head = memory[-1].seq
    if seq is None:
        seq = head
    if not 0 <= seq <= head:
        raise UsageError(f"object {object_id} has seqs 0 to {head}: cannot fork it at seq {seq}")
    if Fold.of(memory).deleted:
        raise UsageError(f"object {object_id} is deleted: undelete it first (`peo undelete {object_id}`) to fork it")
    at = Fold.of(memory[: seq + 1])
    start = settled(state_at(memory, seq), memory[: seq + 1])
    if gathered(start):
        raise UsageError(f"object {object_id} gathered children before seq {seq}: a fork would not have them; "
                         "fork it at a seq before its gather")
    intent = at.intent if new_goal is None else attrs.evolve(at.intent, goal=new_goal)
    ctx = at.context
    context = Context(identity=client.identity, trust_scope=ctx.trust_scope, priority=ctx.priority,
                      labels=dict(ctx.labels))
    origin = {"object": object_id, "seq": seq, "hash": memory[seq].hash.hex()}
    oid, now = new_id(), time.time_ns()
    entry = make_entry(
        client.key, seq=0, prev=genesis(oid), timestamp=now, origin_node=f"client:{client.identity}",
        policy_ref=client.policy.ref, action=Action.INSTANTIATE,
        outcome=instantiation_outcome(oid, intent, context, state=start, fork=origin),
        trace_id=oid,
    )
    await store.create([NewObject(oid, intent.handler, ctx.trust_scope, client.identity, ctx.priority, None, entry,
                                  now, labels=dict(ctx.labels), forked_from=object_id)])
    return oid


def _checked_goal(client: Client, goal: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """``goal`` as a dict, checked as a submit checks one (None: keep the parent's)."""
    if goal is None:
        return None
    if not isinstance(goal, Mapping):
        raise UsageError("goal must be a JSON object (a dict)")
    out = dict(goal)
    limit = client.policy.max_payload_bytes
    try:
        check_value(out, Limits(max_bytes=limit), what="goal")
    except CodecError as exc:
        raise UsageError(str(exc)) from None
    size = len(packb(out))
    if size > limit:
        raise PolicyError(f"goal of {size} bytes exceeds the policy limit of {limit}")
    return out


async def check_origin(store: Store, keyring: Keyring, object_id: str, first: Entry) -> Verification:
    """Check the fork origin that ``first`` (the object's verified entry 0) records, if any,
    against the parent as this store holds it; returns a Verification of no entries (the
    caller adds its count). Raises IntegrityError, at seq 0 of the fork and naming its
    origin, if the parent is in the store but is not what the fork says it started from."""
    recorded = first.outcome.get("fork")
    if recorded is None:
        return Verification(0)
    if not (isinstance(recorded, dict) and isinstance(recorded.get("object"), str)
            and isinstance(recorded.get("seq"), int) and recorded["seq"] >= 0
            and isinstance(recorded.get("hash"), str)):
        raise IntegrityError("entry 0's fork origin is malformed", object_id=object_id, seq=0)
    parent, at = recorded["object"], recorded["seq"]
    where = f"fork origin {parent} at seq {at}"
    try:
        await store.get(parent)
    except NotFoundError:
        return Verification(0, Origin.UNVERIFIABLE, f"{where}: the parent is not in this store")
    try:
        _, memory = verify_chain(parent, (await store.entries(parent))[: at + 1], keyring)
    except IntegrityError as exc:
        raise IntegrityError(f"{where}: the parent does not verify ({exc})", object_id=object_id, seq=0) from None
    if len(memory) <= at:
        raise IntegrityError(f"{where}: the parent's memory ends at seq {len(memory) - 1}", object_id=object_id,
                             seq=0)
    if memory[at].hash.hex() != recorded["hash"]:
        raise IntegrityError(f"{where}: the parent's entry at that seq is not the one the fork records (hash "
                             f"{memory[at].hash.hex()[:16]}..., recorded {recorded['hash'][:16]}...)",
                             object_id=object_id, seq=0)
    if settled(state_at(memory, at), memory[: at + 1]) != (first.outcome.get("state") or {}):
        raise IntegrityError(f"{where}: the fork's starting state is not the parent's state at that seq",
                             object_id=object_id, seq=0)
    return Verification(0, Origin.OK, f"{where}: verified against the parent")
