"""Reads from the signed head: what a reader returns comes from signed entries, not the row.

Shared by the client's reads (``Client.get``, ``Client.wait``, ``peo show``) and the node,
which reads a parent's children this way (:mod:`peo.node.lineage`).

The ``objects`` row is a cache that anyone with write access to the store can edit. A
reader (``Client.get``, ``Client.wait``, ``peo show``) therefore takes an object's status,
result and failure reason from its head entry, checked with :func:`peo.core.signed.signed_head`
(entry 0 binds the id and names the trust scope; the head entry is the one the row names,
belongs to this object and is signed by a key the reader trusts for that scope), and holds
the row to what those entries say. Cost: one extra read and two signature checks per call,
whatever the length of the history.

A row that disagrees with its chain was edited behind peo's back: the reader raises
IntegrityError and flags the object (quarantines it), so that no node acts on the forged
row and ``peo resume`` (which re-verifies the whole chain and rebuilds the head from it)
repairs it. One failure is not flagged: a signer this reader does not know at all. That
says as much about the reader's key directory or policy as about the object, and a
misconfigured reader must not be able to stop a fleet by reading it; the read still fails.

Quarantine is a flag on the row, not an entry in the chain: a quarantined row is read as
quarantined, with the row's reason, and nothing is checked.
"""

from __future__ import annotations

import hashlib
import time
import weakref
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import attrs

from .core.codec import decode_body, packb
from .core.crypto import Keyring
from .core.memory import verify_chain
from .core.model import Context, Entry, Intent, Status
from .core.signed import SignedHead, signed_head
from .errors import CodecError, IntegrityError
from .store import ObjectRow, Store

__all__ = ["CACHE_SIZE", "VerifiedHead", "check_row", "row_differences", "signed_head_of", "verified_head"]

#: Signed heads verified with each keyring, by (object id, seq, head hash), newest last. The
#: hash names the entry's exact bytes and a keyring's trust only grows, so a head verified
#: once stays verified: a repeated read (a wait on a finished object) reads the row and
#: holds it to the cached head, without reading or checking the entries again.
CACHE_SIZE = 4096
_VERIFIED: weakref.WeakKeyDictionary[Keyring, OrderedDict[tuple[str, int, bytes], SignedHead]] = (
    weakref.WeakKeyDictionary())


@attrs.frozen
class VerifiedHead:
    """An object's row once held to its signed head: the status (as stored: never
    RUNNING), result and reason a reader may show. ``signed`` is None for a quarantined
    row (read as the row says, unchecked)."""

    row: ObjectRow
    status: Status
    result: Any
    reason: str | None
    signed: SignedHead | None

    @property
    def intent(self) -> Intent:
        """The intent entry 0 records (its goal and constraints as first submitted)."""
        return self.signed.intent if self.signed is not None else Intent(self.row.handler)

    @property
    def context(self) -> Context:
        """The context entry 0 records (it never changes), or the row's for a quarantined object."""
        if self.signed is not None:
            return self.signed.context
        return Context(identity=self.row.identity, trust_scope=self.row.scope, priority=self.row.priority,
                       parent=self.row.parent)


def row_differences(row: ObjectRow, intent: Intent, context: Context) -> str | None:
    """What the row says that entry 0 (``intent``, ``context``) does not, or None. None of
    these can change after entry 0 (a Refine changes only the goal and the constraints)."""
    pairs = (("handler", row.handler, intent.handler), ("scope", row.scope, context.trust_scope),
             ("identity", row.identity, context.identity), ("priority", row.priority, context.priority),
             ("parent", row.parent, context.parent))
    for name, stored, signed in pairs:
        if stored != signed:
            return f"the row says {name} {stored!r} but entry 0 says {signed!r}"
    return None


def _disagreement(row: ObjectRow, head: SignedHead) -> str | None:
    """What the row claims that its signed head entry does not say, or None."""
    last = head.last
    status = head.status
    if row.status is not status:
        return (f"the row says status {row.status} but the chain ended at seq {last.seq} "
                f"({last.action}: {status})")
    if status is Status.TERMINATED:
        if row.result != packb(head.result):
            return f"the row's cached result differs from the one the terminate entry (seq {last.seq}) signed"
        if row.reason != head.reason:
            return (f"the row says reason {row.reason!r} but the terminate entry (seq {last.seq}) "
                    f"says {head.reason!r}")
    elif row.result is not None:
        return f"the row holds a result but the chain has not terminated (seq {last.seq}: {last.action})"
    return row_differences(row, head.intent, head.context)


async def verified_head(store: Store, object_id: str, keyring: Keyring) -> VerifiedHead:
    """Read the object's row and hold it to its signed head (see :func:`check_row`)."""
    return await check_row(store, await store.get(object_id), keyring)


async def check_row(store: Store, row: ObjectRow, keyring: Keyring) -> VerifiedHead:
    """Hold ``row`` to the object's entry 0 and head entry; the status, result and reason
    they sign. Raises IntegrityError naming the object and what disagrees, after flagging
    the object (see the module's docstring) unless the reader does not know a signer."""
    if row.status is Status.QUARANTINED:
        return VerifiedHead(row, Status.QUARANTINED, None, row.reason, None)
    try:
        head = await signed_head_of(store, row, keyring)
        problem = _disagreement(row, head)
        if problem is not None:
            raise IntegrityError(problem, object_id=row.id)
    except IntegrityError as exc:
        unknown = _unknown_signer(await store.head_entries(row.id, row.seq), keyring)
        if unknown is not None:
            raise IntegrityError(f"{exc.reason} (key {unknown} is not in this reader's keyring: check the key "
                                 "directory and the policy's trusted keys)", object_id=row.id, seq=exc.seq) from None
        await store.quarantine(row.id, f"verification failed: {exc}", now=time.time_ns())
        raise IntegrityError(f"{exc.reason}; the object is now quarantined (`peo resume` re-verifies its memory "
                             "and rebuilds its head)", object_id=row.id, seq=exc.seq) from None
    return VerifiedHead(row, head.status, head.result, head.reason, head)


async def signed_head_of(store: Store, row: ObjectRow, keyring: Keyring) -> SignedHead:
    """The signed head the row names (its seq and head hash), checked with ``keyring``
    (:func:`peo.core.signed.signed_head`): from the cache once a head was checked with this
    keyring, else one read of entry 0 and the head entry. IntegrityError if it does not
    verify. What the row caches besides (status, result...) is not compared here."""
    cache = _VERIFIED.get(keyring)
    if cache is None:
        cache = _VERIFIED[keyring] = OrderedDict()
    key = (row.id, row.seq, row.head)
    head = cache.get(key)
    if head is not None:
        cache.move_to_end(key)
        return head
    head = signed_head(row.id, await store.head_entries(row.id, row.seq), seq=row.seq, head=row.head,
                       keyring=keyring)
    if _deletion(head.last):
        head = await _before_deletion(store, row, head, keyring)
    cache[key] = head
    if len(cache) > CACHE_SIZE:
        cache.popitem(last=False)
    return head


def _deletion(entry: Entry) -> bool:
    """An operator's tombstone (peo rm) or undelete: it changes nothing else of the head."""
    return "tombstone" in entry.outcome or "undelete" in entry.outcome


async def _before_deletion(store: Store, row: ObjectRow, head: SignedHead, keyring: Keyring) -> SignedHead:
    """``head`` with, as its last entry, the last one before the tombstones and undeletes
    that end the chain: that entry says the object's status, result and reason. The whole
    chain is verified to link the two (a deletion's head is read rarely, and cached)."""
    _, memory = verify_chain(row.id, await store.entries(row.id), keyring)
    if not memory or memory[-1].seq != row.seq or memory[-1].hash != row.head:
        raise IntegrityError("the stored head does not match the memory", object_id=row.id, seq=row.seq)
    last = next(e for e in reversed(memory) if e.seq == 0 or not _deletion(e))
    return attrs.evolve(head, last=last)


def _unknown_signer(rows: Mapping[int, tuple[bytes, bytes]], keyring: Keyring) -> str | None:
    """A key id that signed one of ``rows`` and that this keyring does not hold at all (a
    key it holds for other scopes is not unknown: signing outside its scope is evidence)."""
    for body, signature in rows.values():
        try:
            signer = decode_body(body, signature, hashlib.sha256(body).digest()).signer
        except CodecError:
            continue  # damaged bytes: evidence, not a question of this reader's keys
        if signer not in keyring:
            return signer
    return None
