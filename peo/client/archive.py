"""Verifying, exporting and importing objects: the chain is the proof, so each of these
checks it with the verifier's own keyring (never keys carried by the object)."""

from __future__ import annotations

import time

from ..core.codec import Limits, packb, unpackb
from ..core.crypto import Keyring
from ..core.head import head_of
from ..core.memory import Fold, verify_chain
from ..core.model import Status
from ..errors import CodecError, IntegrityError
from ..store import NewObject, Store

__all__ = ["EXPORT_FORMAT", "export", "import_", "verify"]

EXPORT_FORMAT = "peo-export"
# An export holds [body, signature] pairs: 3 items per entry, so a million entries fit.
_EXPORT_LIMITS = Limits(max_bytes=256 << 20, depth=4, items=3_000_000)


async def verify(store: Store, keyring: Keyring, object_id: str) -> int:
    """Verify the object's whole chain and its stored head; returns the entry count.
    Raises IntegrityError naming the first bad seq."""
    rows = await store.entries(object_id)
    row = await store.get(object_id)
    tip, entries = verify_chain(object_id, rows, keyring)
    if tip is None:
        raise IntegrityError("the object has no entries", object_id=object_id)
    if tip.seq != row.seq or tip.hash != row.head:
        raise IntegrityError(
            f"the stored head (seq {row.seq}) does not match the memory (seq {tip.seq})", object_id=object_id
        )
    # The head caches what the memory says; a cache that disagrees was edited.
    head = head_of(Fold.of(entries), now=time.time_ns())
    if row.status is not Status.QUARANTINED and row.status is not head.status:
        raise IntegrityError(f"the head says {row.status} but the memory says {head.status}",
                             object_id=object_id, seq=tip.seq)
    if row.result != head.result_bytes() or (head.status is Status.TERMINATED and row.reason != head.reason):
        raise IntegrityError("the head's cached result or reason differs from the memory",
                             object_id=object_id, seq=tip.seq)
    return len(entries)


async def export(store: Store, object_id: str) -> bytes:
    """One self-contained file: the object id and its whole memory, as signed."""
    await store.get(object_id)  # NotFoundError for an unknown id
    rows = await store.entries(object_id)
    return packb({"format": EXPORT_FORMAT, "v": 1, "id": object_id, "entries": [[b, s] for b, s in rows]})


async def import_(store: Store, keyring: Keyring, data: bytes) -> str:
    """Verify an exported object against ``keyring``, then store it with the head its
    memory implies. A tampered or untrusted file is refused with IntegrityError; nothing
    is written."""
    doc = unpackb(data, _EXPORT_LIMITS)
    if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
        raise CodecError("not a peo export file")
    if doc.get("v") != 1:
        raise CodecError(f"unsupported export version {doc.get('v')!r}")
    oid, raw = doc.get("id"), doc.get("entries")
    if not isinstance(oid, str) or not isinstance(raw, list) or not raw:
        raise CodecError("export file has no id or no entries")
    rows = []
    for pair in raw:
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, bytes) for x in pair)):
            raise CodecError("export file entries must be [body, signature] pairs")
        rows.append((pair[0], pair[1]))
    _, entries = verify_chain(oid, rows, keyring)
    fold = Fold.of(entries)
    now = time.time_ns()
    ctx = fold.context
    obj = NewObject(oid, fold.intent.handler, ctx.trust_scope, ctx.identity, ctx.priority, ctx.parent, entries[0], now)
    await store.import_object(obj, entries[1:], head_of(fold, now=now), now=now)
    return oid
