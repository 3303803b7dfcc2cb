"""The signed head: what an object's last entry says, checked without reading its whole memory.

The store's object row is a cache anyone with store access can edit. A reader that needs
an object's status, result or failure reason (a waiting client, a parent reading its
children) takes them from two signed entries instead: entry 0 (it binds the id and names
the trust scope) and the head entry (its hash is the one the row names, it belongs to this
object, and a key trusted for that scope signed it). Cost: two signature checks, whatever
the length of the history.

Pure: the rows are passed in.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import attrs

from ..errors import CodecError, IntegrityError
from .codec import decode_body, structure
from .crypto import Keyring
from .memory import verify_chain
from .model import Action, Context, Entry, Intent, Status

__all__ = ["SignedHead", "signed_head", "status_after"]


def status_after(entry: Entry) -> Status:
    """The status an object has after ``entry`` (its last), as the chain says."""
    action = entry.action
    if action is Action.TERMINATE:
        return Status.TERMINATED
    if action is Action.DORMANCY or (action is Action.DELEGATE and entry.outcome.get("wait")):
        return Status.DORMANT
    return Status.RUNNABLE


@attrs.frozen
class SignedHead:
    """An object's verified entry 0 and head entry, and what they say."""

    object_id: str
    first: Entry
    last: Entry
    intent: Intent
    context: Context

    @property
    def status(self) -> Status:
        return status_after(self.last)

    @property
    def result(self) -> Any:
        return self.last.outcome.get("result") if self.last.action is Action.TERMINATE else None

    @property
    def reason(self) -> str | None:
        reason = self.last.outcome.get("reason") if self.last.action is Action.TERMINATE else None
        return reason if isinstance(reason, str) else None


def signed_head(object_id: str, rows: Mapping[int, tuple[bytes, bytes]], *, seq: int, head: bytes,
                keyring: Keyring) -> SignedHead:
    """Check entry 0 and entry ``seq`` (``rows``, as :meth:`~peo.store.Store.head_entries`
    returns them) against ``head``, the hash the row names, and ``keyring``. Raises
    IntegrityError saying what does not hold."""
    if 0 not in rows or seq not in rows:
        raise IntegrityError(f"entry {0 if 0 not in rows else seq} is missing", object_id=object_id, seq=seq)
    _, [first] = verify_chain(object_id, [rows[0]], keyring)
    try:
        intent = structure(first.outcome["intent"], Intent)
        context = structure(first.outcome["context"], Context)
    except (CodecError, KeyError) as exc:  # pragma: no cover - verify_chain checked them
        raise IntegrityError(f"entry 0 does not structure: {exc}", object_id=object_id, seq=0) from None
    if seq == 0:
        last = first
    else:
        body, signature = rows[seq]
        try:
            last = decode_body(body, signature, hashlib.sha256(body).digest())
        except CodecError as exc:
            raise IntegrityError(f"the head entry does not decode: {exc}", object_id=object_id, seq=seq) from None
        if last.seq != seq or last.trace_id != object_id or last.action is Action.INSTANTIATE:
            raise IntegrityError("the head entry is not this object's entry at its seq", object_id=object_id,
                                 seq=seq)
        try:
            keyring.verify(last.signer, context.trust_scope, body, signature, seq=seq)
        except IntegrityError as exc:
            raise IntegrityError(exc.reason, object_id=object_id, seq=seq) from None
    if last.hash != head:
        raise IntegrityError("the stored head hash is not the hash of the head entry", object_id=object_id, seq=seq)
    return SignedHead(object_id, first, last, intent, context)
