"""An object's versions and a restore to one of them (``peo history``, ``peo restore``).

Every entry of an object's chain is a version: the working state after it is a fact of the
signed memory (:func:`~peo.core.memory.state_at`). A restore is one more entry, signed with
the operator's key and appended like a node's (:func:`~peo.client.operator._append_held`),
that sets the working state back to what it was after an earlier entry; the history before
it is never touched, so a restore is undone by restoring to the seq just before it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from ..core.codec import packb
from ..core.cycle import Decision
from ..core.cycle import restore as restore_decision
from ..core.memory import Fold, state_at, verify_chain
from ..core.model import Action, Entry
from ..errors import IntegrityError, UsageError
from ..verified import verified_head
from .operator import OPERATOR_LEASE_NS, _append_held, _owner

if TYPE_CHECKING:
    from .client import Client

__all__ = ["Restored", "Target", "Version", "as_ns", "history", "restore", "restore_to", "seq_at", "state_digest",
           "target", "versions_of"]

#: Hex digits of a state digest that a version shows: enough to tell states apart by eye.
DIGEST_CHARS = 16


@attrs.frozen
class Version:
    """One entry of an object's chain, seen as a version of the object."""

    seq: int
    timestamp: int  # ns since the epoch, as the entry's writer recorded it
    action: Action
    origin_node: str  # the node (or ``operator:NAME``, ``client:NAME``) that wrote it
    signer: str  # the key id that signed it
    state_digest: str  # :func:`state_digest` of the working state after this entry
    outcome: Mapping[str, Any]  # what the entry recorded, as plain data (readers summarize it)
    restored_to: int | None = None  # for a restore entry, the seq whose state it brought back


@attrs.frozen
class Restored:
    """What a restore did: the seq restored to, when that entry was written, and the seq of
    the restore entry itself."""

    object_id: str
    seq: int
    timestamp: int
    entry_seq: int


@attrs.frozen
class Target:
    """Where a restore of one object would go: ``seq`` (written at ``timestamp``) while
    its head is at ``head``."""

    object_id: str
    seq: int
    timestamp: int
    head: int


def state_digest(state: Mapping[str, Any]) -> str:
    """A short digest of a working state (SHA-256 of its msgpack, first 16 hex digits).

    Maps are packed with their keys sorted: two equal states have one digest whatever
    order their keys were first written in."""
    return hashlib.sha256(packb(_canonical(state))).hexdigest()[:DIGEST_CHARS]


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        # str and bytes keys may mix in one map: sort by kind first, so they never compare.
        return {k: _canonical(value[k]) for k in sorted(value, key=lambda k: (isinstance(k, bytes), k))}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def versions_of(memory: Sequence[Entry]) -> list[Version]:
    """One :class:`Version` per entry of a verified memory (from seq 0).

    The state is folded entry by entry as :func:`~peo.core.memory.state_at` does, and only
    an entry that changes it is digested again: the cost is one pass over the chain plus
    one digest per state change, never a fold per entry."""
    state: dict[str, Any] = {}
    digest = state_digest(state)
    out: list[Version] = []
    for entry in memory:
        o = entry.outcome
        reset, update = o.get("reset"), o.get("state")
        if reset is not None:
            state = dict(reset)
        if update:
            state.update(update)
        if reset is not None or update:
            digest = state_digest(state)
        restored = o.get("restore")
        target_seq = restored.get("seq") if reset is not None and isinstance(restored, Mapping) else None
        out.append(Version(entry.seq, entry.timestamp, entry.action, entry.origin_node, entry.signer, digest, o,
                           target_seq if isinstance(target_seq, int) else None))
    return out


async def _memory(client: Client, object_id: str) -> list[Entry]:
    """The object's whole memory, verified with the client's keyring. Its row is held to
    its signed head first, as ``Client.get`` does (a row that disagrees is quarantined and
    IntegrityError raised); NotFoundError for an unknown id."""
    row = await verified_head(client.store, object_id, client.keyring)
    tip, memory = verify_chain(object_id, await client.store.entries(object_id), client.keyring)
    if tip is None or tip.seq < row.row.seq:
        last = -1 if tip is None else tip.seq
        raise IntegrityError(f"the head (seq {row.row.seq}) is past the memory (which ends at seq {last})",
                             object_id=object_id, seq=row.row.seq)
    return memory


async def history(client: Client, object_id: str) -> list[Version]:
    """The object's versions, one per entry, oldest first, after its whole chain verified
    with the client's keyring (IntegrityError naming the first bad seq if it does not)."""
    return versions_of(await _memory(client, object_id))


def _utc(ns: int) -> str:
    return _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def as_ns(at: int | _dt.datetime) -> int:
    """``at`` as ns since the epoch: an int already is; a naive datetime is taken as UTC."""
    if isinstance(at, _dt.datetime):
        if at.tzinfo is None:
            at = at.replace(tzinfo=_dt.UTC)
        delta = at - _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
        return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000
    if isinstance(at, bool) or not isinstance(at, int):
        raise UsageError(f"a restore time is a Unix time in ns (int) or a datetime, not {type(at).__name__}")
    return at


def seq_at(object_id: str, memory: Sequence[Entry], at: int) -> int:
    """The seq of the last entry written at or before ``at`` (ns): the version that was
    current then. UsageError if the object did not exist yet."""
    found = None
    for entry in memory:
        if entry.timestamp <= at:
            found = entry.seq
    if found is None:
        first = f": it was created at {_utc(memory[0].timestamp)}" if memory else ""
        raise UsageError(f"object {object_id} did not exist at {_utc(at)}{first}")
    return found


def _choose(object_id: str, memory: Sequence[Entry], fold: Fold, seq: int | None, at: int | None, now: int) -> int:
    """The seq a restore goes back to, or UsageError saying why there is none."""
    if fold.deleted:
        raise UsageError(f"object {object_id} is deleted: peo undelete {object_id} first")
    if at is not None:
        if at > now:
            raise UsageError(f"{_utc(at)} is in the future: a restore goes back to a time that has passed")
        return seq_at(object_id, memory, at)
    assert seq is not None
    if seq > fold.seq:
        raise UsageError(f"object {object_id} has no seq {seq}: its history ends at seq {fold.seq}")
    return seq


def _arguments(seq: int | None, at: int | _dt.datetime | None) -> tuple[int | None, int | None]:
    if (seq is None) == (at is None):
        raise UsageError("give exactly one of seq (a version's seq) and at (a time): which version to restore")
    if seq is not None and (isinstance(seq, bool) or not isinstance(seq, int) or seq < 0):
        raise UsageError(f"seq must be a non-negative integer, not {seq!r}")
    return seq, None if at is None else as_ns(at)


async def target(client: Client, object_id: str, *, seq: int | None = None, at: int | _dt.datetime | None = None,
                 now: int | None = None) -> Target:
    """Where :func:`restore` with these arguments would take the object, without writing
    anything (UsageError if it would refuse; a bulk restore's dry run lists these)."""
    seq, at_ns = _arguments(seq, at)
    now = time.time_ns() if now is None else now
    memory = await _memory(client, object_id)
    chosen = _choose(object_id, memory, Fold.of(memory), seq, at_ns, now)
    return Target(object_id, chosen, memory[chosen].timestamp, memory[-1].seq)


async def restore_to(client: Client, object_id: str, *, seq: int | None = None,
                     at: int | _dt.datetime | None = None, reason: str | None = None, force: bool = False,
                     now: int | None = None) -> Restored:
    """:func:`restore`, saying also when the version restored to was written and at which
    seq the restore entry is."""
    seq, at_ns = _arguments(seq, at)
    if reason is not None and not isinstance(reason, str):
        raise UsageError("a restore's reason is text")
    now = time.time_ns() if now is None else now
    # Refuse before taking the lease: a lease taken and let go rewrites the object's due time.
    await target(client, object_id, seq=seq, at=at_ns, now=now)
    store = client.store
    claim = await store.seize(object_id, _owner(client), now=now, lease_ns=OPERATOR_LEASE_NS, force=force,
                              final=True)
    if claim is None:
        row = await store.get(object_id)
        raise UsageError(f"object {object_id} is held by {row.lease_owner or 'a node'}: stop it first, or pass "
                         "force (--force) if that node is dead")
    done: list[Restored] = []

    async def decide(fold: Fold, memory: list[Entry]) -> Decision:
        chosen = _choose(object_id, memory, fold, seq, at_ns, now)  # the chain may have moved since
        why = reason if reason is not None else f"restore to seq {chosen}"
        done.append(Restored(object_id, chosen, memory[chosen].timestamp, fold.seq + 1))
        return restore_decision(chosen, state_at(memory, chosen), reason=why, by="operator")

    if not await _append_held(client, claim, now, decide):
        raise UsageError(f"object {object_id} moved on while it was being restored: try again")
    return done[0]


async def restore(client: Client, object_id: str, *, seq: int | None = None, at: int | _dt.datetime | None = None,
                  reason: str | None = None, force: bool = False, now: int | None = None) -> int:
    """Set ``object_id``'s working state back to what it was at ``seq``, or at time ``at``
    (ns since the epoch or a datetime, naive meaning UTC: the last entry written at or
    before it), with an entry signed by the client's key; returns the seq restored to.

    The object runs again afterwards: a terminated (done, failed, cancelled), dormant or
    quarantined one (whose chain verifies) becomes runnable. Nothing is written, and
    UsageError says why, for a deleted object, a seq past the head or a time before the
    object existed (or in the future), neither or both of seq and at, or an object a node
    holds (``force`` takes over a lease a dead node left). NotFoundError for an unknown
    id, IntegrityError if its chain does not verify. ``now`` (ns) is the clock: the
    entry's timestamp (default: the current time)."""
    done = await restore_to(client, object_id, seq=seq, at=at, reason=reason, force=force, now=now)
    return done.seq
