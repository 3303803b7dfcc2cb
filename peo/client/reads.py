"""Reading objects: one object with its memory, a listing, waiting for an end.

Shared by the Client, the CLI and (later) the dashboard, so that every reader shows the
same thing: public values (:class:`~peo.ObjectInfo`, :class:`~peo.ObjectSummary`), never
the store's rows. One object's status, result and failure reason come from its signed
head entry (:mod:`.verified`), never from the row alone; a listing shows the rows as stored
(holding each to its chain would cost a read and two signature checks per object).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..core.codec import decode_body, structure
from ..core.crypto import Keyring
from ..core.memory import Fold, verify_chain
from ..core.model import LIVE_STATUSES, Action, Context, Entry, Intent, ObjectInfo, ObjectSummary, Status
from ..errors import CodecError, IntegrityError, ObjectFailedError, TimeoutError, UsageError
from ..store import ObjectRow, Store
from ..verified import VerifiedHead, check_row, verified_head

#: A node counts as serving its handlers for this long after it last told the store (ns).
SERVED_WINDOW_NS = 24 * 3600 * 10**9

__all__ = ["get", "last_error", "list_objects", "summary", "wait"]


def summary(row: ObjectRow, now: int) -> ObjectSummary:
    """The public view of a stored head, its status as of ``now``."""
    return ObjectSummary(
        id=row.id, status=row.status_at(now), handler=row.handler, seq=row.seq, priority=row.priority,
        scope=row.scope, identity=row.identity, parent=row.parent, reason=row.reason, waiting_for=row.wait_signal,
        waits_for_children=row.wait_children, due_at=row.due_at, lease_owner=row.lease_owner,
        created_at=row.created_at, updated_at=row.updated_at, deleted_at=row.deleted_at,
    )


async def list_objects(store: Store, *, status: str | None = None, limit: int | None = None,
                       parent: str | None = None, handler: str | None = None,
                       after: str | None = None, labels: Mapping[str, str] | None = None,
                       deleted: bool = False) -> list[ObjectSummary]:
    """Objects ordered by id (oldest first), filtered by status, parent, handler and/or
    labels (every one must match); deleted objects are left out, or with ``deleted`` the only ones."""
    if status is not None and status not in {s.value for s in Status}:
        raise UsageError(f"unknown status {status!r}: use one of {', '.join(s.value for s in Status)}")
    if labels is not None and not isinstance(labels, Mapping):
        raise UsageError("labels must be a mapping of label keys to values, like {\"team\": \"ops\"}")
    now = time.time_ns()
    rows = await store.list(status=status, limit=limit, parent=parent, now=now, handler=handler, after=after,
                            labels=labels, deleted=deleted)
    out = [summary(r, now) for r in rows]
    if any(r.status in LIVE_STATUSES or r.status is Status.RUNNING for r in out):
        served = await store.served_handlers(since=now - SERVED_WINDOW_NS)
        out = [attrs.evolve(r, unserved=True) if r.handler not in served and not r.status.is_final else r
               for r in out]
    return out


async def get(store: Store, object_id: str, keyring: Keyring, *, memory: bool = True) -> ObjectInfo:
    """The object's head, its status, result and reason held to its signed head entry
    (:mod:`.verified`), and its (decoded, not verified: see verify()) memory."""
    head = await verified_head(store, object_id, keyring)
    entries: list[Entry] = []
    if memory:
        entries = _decode_all(await store.entries(object_id))
    return _info(head, entries)


async def wait(store: Store, object_id: str, keyring: Keyring, timeout: float | None = None, *,
               poll: float | None = None) -> Any:
    """Wait until the object terminates; return its result (see ``Client.wait``), taken
    from its signed terminate entry. On a store that notifies (PostgreSQL) the end wakes
    the wait; the poll is only a fallback."""
    if poll is None:
        poll = 2.0 if store.notifies else 0.05
    deadline = None if timeout is None else time.monotonic() + timeout
    checked: tuple[Any, ...] | None = None
    while True:
        row = await store.get(object_id)
        # The row is held to its signed head whenever what it claims changes (not at every
        # poll of an object that is still running): a forged status is caught at once, a
        # forged end before anything is returned.
        claims = _claims(row)
        if claims != checked or row.status.is_final:
            head = await check_row(store, row, keyring)
            checked = claims
            if head.status is Status.TERMINATED:
                if head.reason == "done":
                    return head.result
                raise ObjectFailedError(object_id, "terminated", head.reason,
                                        await last_error(store, object_id, keyring, head))
            if head.status is Status.QUARANTINED:
                raise ObjectFailedError(object_id, "quarantined", head.reason)
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"object {object_id} is still {row.status} after {timeout} s")
        pause = poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
        if store.notifies:
            await store.wait_for_work(pause)
        else:
            await asyncio.sleep(pause)


def _claims(row: ObjectRow) -> tuple[Any, ...]:
    """What a row claims that its signed head must back (not the lease, due time or inbox)."""
    return (row.seq, row.head, row.status, row.result, row.reason, row.handler, row.scope, row.identity,
            row.priority, row.parent)


async def last_error(store: Store, object_id: str, keyring: Keyring,
                     head: VerifiedHead | None = None) -> dict[str, Any] | None:
    """The error the object's memory recorded last (a failed step), or None. A failure
    that ended the object records its error in the terminate entry itself: with ``head``
    (its checked head) that entry is read and nothing else. Otherwise the whole memory is
    verified first (IntegrityError if it does not): an unsigned error is never reported."""
    if head is not None and head.signed is not None:
        error = head.signed.last.outcome.get("error")
        if isinstance(error, dict):
            return error
    _, entries = verify_chain(object_id, await store.entries(object_id), keyring)
    for entry in reversed(entries):
        error = entry.outcome.get("error")
        if isinstance(error, dict):
            return error
    return None


def _decode_all(rows: Sequence[tuple[bytes, bytes]]) -> list[Entry]:
    out = []
    for body, sig in rows:
        try:
            out.append(decode_body(body, sig, hashlib.sha256(body).digest()))
        except CodecError:
            break  # show what decodes; verify() says what is wrong
    return out


def _info(head: VerifiedHead, entries: list[Entry]) -> ObjectInfo:
    row = head.row
    intent, context, state = Intent(row.handler), head.context, {}
    if entries and entries[0].action is Action.INSTANTIATE:
        try:
            fold = Fold.of(entries)
            intent, context, state = fold.intent, fold.context, dict(fold.state)
        except (CodecError, KeyError, TypeError, ValueError, IntegrityError):
            try:
                intent = structure(entries[0].outcome.get("intent"), Intent)
                context = structure(entries[0].outcome.get("context"), Context)
            except CodecError:
                pass
    # Status, result and reason are the signed head's (a quarantined row's are its own).
    return ObjectInfo(
        id=row.id, status=row.status_at(time.time_ns()), intent=intent, context=context, seq=row.seq,
        result=head.result, reason=head.reason, memory=tuple(entries), state=state,
    )
