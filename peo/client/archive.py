"""Verifying, exporting and importing objects: the chain is the proof, so each of these
checks it with the verifier's own keyring (never keys carried by the object)."""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..core.codec import Limits, packb, unpackb
from ..core.crypto import Keyring, SigningKey
from ..core.head import head_of
from ..core.memory import Fold, verify_chain
from ..core.model import Entry, Status
from ..core.signals import verify_recorded
from ..errors import CodecError, IntegrityError, NotFoundError
from ..store import NewObject, Store
from ..verified import row_differences
from .forks import Verification, check_origin

__all__ = ["EXPORT_FORMAT", "EXPORT_VERSION", "export", "import_", "verify"]

log = logging.getLogger("peo.client")

EXPORT_FORMAT = "peo-export"
#: 2: a signed trailer names the head (v1 files, without one, are still read).
EXPORT_VERSION = 2
# An export holds [body, signature] pairs: 3 items per entry, so a million entries fit.
_EXPORT_LIMITS = Limits(max_bytes=256 << 20, depth=4, items=3_000_000)


async def verify(store: Store, keyring: Keyring, object_id: str) -> Verification:
    """Verify the object's whole chain and hold its stored row to it; returns the entry
    count. Raises IntegrityError naming the first bad seq, or what the row says that the
    chain does not (seq and head hash; handler, scope, identity, priority and parent from
    entry 0; status, result and reason from the chain's end; a quarantined row's status
    and reason are its own). A fork's origin is checked against its parent last
    (:func:`.forks.check_origin`): the count comes back as a :class:`.forks.Verification`
    whose ``origin`` says whether it could be (``unverifiable``: the parent is not here)."""
    rows = await store.entries(object_id)
    row = await store.get(object_id)
    tip, entries = verify_chain(object_id, rows, keyring)
    if tip is None:
        raise IntegrityError("the object has no entries", object_id=object_id)
    if tip.seq != row.seq or tip.hash != row.head:
        raise IntegrityError(
            f"the stored head (seq {row.seq}) does not match the memory (seq {tip.seq})", object_id=object_id
        )
    # Who sent each signal the memory records is re-checked too (an approval is only as
    # good as its seal).
    for seq, bad in verify_recorded(object_id, entries, keyring)[:1]:
        raise IntegrityError(bad, object_id=object_id, seq=seq)
    # The row caches what the memory says; a cache that disagrees was edited.
    fold = Fold.of(entries)
    problem = row_differences(row, fold.intent, fold.context)
    if problem is not None:
        raise IntegrityError(problem, object_id=object_id)  # the chain is sound: the row is not
    head = head_of(fold, now=time.time_ns())
    # Quarantine is a flag on the row (not an entry): a quarantined row keeps its own
    # status and reason, but still no result the memory did not sign.
    if row.status is not Status.QUARANTINED and row.status is not head.status:
        raise IntegrityError(f"the row says status {row.status} but the chain ended at seq {tip.seq} "
                             f"({entries[-1].action}: {head.status})", object_id=object_id)
    if row.result != head.result_bytes() or (row.status is Status.TERMINATED and row.reason != head.reason):
        raise IntegrityError("the head's cached result or reason differs from the memory",
                             object_id=object_id, seq=tip.seq)
    origin = await check_origin(store, keyring, object_id, entries[0])
    return Verification(len(entries), origin.origin, origin.note)


async def export(store: Store, object_id: str, key: SigningKey) -> bytes:
    """One self-contained file: the object id, its whole memory as signed, and a trailer
    naming its head (seq and hash of the last entry, and the entry count) signed with
    ``key`` (the exporting client's), so that a file cut short is refused on import."""
    await store.get(object_id)  # NotFoundError for an unknown id
    rows = await store.entries(object_id)
    if not rows:
        raise IntegrityError("the object has no entries", object_id=object_id)
    # The head as the rows stand (seqs run from 0 in a sound chain; the importer verifies
    # the chain, then holds the trailer to it). Not decoded: a damaged object still exports.
    trailer: dict[str, Any] = {"seq": len(rows) - 1, "hash": hashlib.sha256(rows[-1][0]).digest(),
                               "entries": len(rows), "signer": key.key_id}
    trailer["sig"] = key.sign(_signed_bytes(object_id, rows, trailer))
    return packb({"format": EXPORT_FORMAT, "v": EXPORT_VERSION, "id": object_id,
                  "entries": [[b, s] for b, s in rows], "trailer": trailer})


def _signed_bytes(object_id: str, rows: Sequence[tuple[bytes, bytes]], trailer: Mapping[str, Any]) -> bytes:
    """What a trailer's signature covers: the file's content in one canonical encoding
    (independent of how the file orders its map keys)."""
    return packb([EXPORT_FORMAT, EXPORT_VERSION, object_id, [[b, s] for b, s in rows],
                  trailer["seq"], trailer["hash"], trailer["entries"], trailer["signer"]])


def _decode(data: bytes) -> dict[str, Any]:
    """The export document, or CodecError saying why the bytes are not one."""
    try:
        doc = unpackb(data, _EXPORT_LIMITS)
    except CodecError as exc:
        if EXPORT_FORMAT.encode() in bytes(data[:64]):
            raise CodecError(f"the export file is damaged or cut short ({exc})") from None
        raise CodecError("not a peo export file (it is not msgpack: was it written by peo export?)") from None
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        raise CodecError("not a peo export file")
    if doc.get("v") not in (1, EXPORT_VERSION):
        raise CodecError(f"unsupported export version {doc.get('v')!r} (this peo reads 1 and {EXPORT_VERSION})")
    return doc


def _check_trailer(doc: Mapping[str, Any], rows: Sequence[tuple[bytes, bytes]], entries: Sequence[Entry],
                   scope: str, keyring: Keyring) -> None:
    """The signed trailer of a v2 export must be intact and name the head the file holds."""
    oid, t = doc["id"], doc.get("trailer")
    fields = {"seq": int, "hash": bytes, "entries": int, "signer": str, "sig": bytes}
    if not isinstance(t, dict) or any(not isinstance(t.get(k), v) for k, v in fields.items()):
        raise IntegrityError("the export has no valid signed trailer: it may be cut short", object_id=oid)
    last = entries[-1]
    if (t["entries"], t["seq"], t["hash"]) != (len(entries), last.seq, last.hash):
        raise IntegrityError(
            f"the export is cut short: its trailer names {t['entries']} entries up to seq {t['seq']}, "
            f"the file holds {len(entries)} up to seq {last.seq}", object_id=oid)
    try:
        keyring.verify(t["signer"], scope, _signed_bytes(oid, rows, t), t["sig"])
    except IntegrityError as exc:
        raise IntegrityError(f"the export's trailer: {exc.reason}", object_id=oid) from None


async def _check_lineage(store: Store, keyring: Keyring, oid: str, parent: str | None, scope: str) -> None:
    """An imported object that names a parent present in this store must be one of that
    parent's children as the parent's own verified memory names them (its delegate
    entries), in the parent's trust scope: else a key trusted for one scope could graft an
    object, and the result it signed, onto an object of another. A parent that is not in
    the store is fine (the object is an orphan here; a parent imported later names its
    children itself)."""
    if parent is None:
        return
    try:
        await store.get(parent)
    except NotFoundError:
        return
    try:
        _, entries = verify_chain(parent, await store.entries(parent), keyring)
        if not entries:
            raise IntegrityError("it has no entries", object_id=parent)
        fold = Fold.of(entries)
    except (IntegrityError, CodecError, KeyError, TypeError, ValueError) as exc:
        raise IntegrityError(f"its parent {parent} does not verify here ({exc}): refusing to attach a child to it",
                             object_id=oid, seq=0) from None
    children, parent_scope = fold.children, fold.context.trust_scope
    if oid not in children:
        raise IntegrityError(f"entry 0 names parent {parent}, whose verified memory does not delegate to this "
                             "object: refusing to graft it onto another object's lineage", object_id=oid, seq=0)
    if parent_scope != scope:
        raise IntegrityError(f"entry 0 names parent {parent} in trust scope {parent_scope!r}, but this object is "
                             f"in scope {scope!r}", object_id=oid, seq=0)


async def import_(store: Store, keyring: Keyring, data: bytes) -> str:
    """Verify an exported object against ``keyring``, then store it with the head its
    memory implies. A tampered, cut short or untrusted file is refused with
    IntegrityError, one that is not an export with CodecError; nothing is written. A file
    of the previous format (v1, no trailer) is accepted with a warning."""
    doc = _decode(data)
    oid, raw = doc.get("id"), doc.get("entries")
    if not isinstance(oid, str) or not isinstance(raw, list) or not raw:
        raise CodecError("export file has no id or no entries")
    rows = []
    for pair in raw:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, bytes) for x in pair)):
            raise CodecError("export file entries must be [body, signature] pairs")
        rows.append((pair[0], pair[1]))
    _, entries = verify_chain(oid, rows, keyring)
    for seq, bad in verify_recorded(oid, entries, keyring)[:1]:
        raise IntegrityError(bad, object_id=oid, seq=seq)
    fold = Fold.of(entries)
    ctx = fold.context
    if doc["v"] == 1:
        log.warning("export of %s is in the previous format (v1, without a signed trailer): a file cut short "
                    "cannot be detected; export it again with this peo if you can", oid)
    else:
        _check_trailer(doc, rows, entries, ctx.trust_scope, keyring)
    await _check_lineage(store, keyring, oid, ctx.parent, ctx.trust_scope)
    now = time.time_ns()
    obj = NewObject(oid, fold.intent.handler, ctx.trust_scope, ctx.identity, ctx.priority, ctx.parent, entries[0], now,
                    labels=ctx.labels, root=ctx.root, forked_from=_forked_from(fold))
    await store.import_object(obj, entries[1:], head_of(fold, now=now), now=now)
    return oid


def _forked_from(fold: Fold) -> str | None:
    """The parent an imported fork names in entry 0 (its lineage survives the move; its
    origin is checked by verify, and is unverifiable while that parent is elsewhere)."""
    origin = fold.fork
    parent = origin.get("object") if isinstance(origin, dict) else None
    return parent if isinstance(parent, str) else None
