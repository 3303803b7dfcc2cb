"""Reading objects: one object with its memory, a listing, waiting for an end.

Shared by the Client, the CLI and (later) the dashboard, so that every reader shows the
same thing: public values (:class:`~peo.ObjectInfo`, :class:`~peo.ObjectSummary`), never
the store's rows.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..core.codec import decode_body, structure, unpackb
from ..core.memory import Fold
from ..core.model import LIVE_STATUSES, Action, Context, Entry, Intent, ObjectInfo, ObjectSummary, Status
from ..errors import CodecError, IntegrityError, ObjectFailedError, TimeoutError, UsageError
from ..store import ObjectRow, Store

#: A node counts as serving its handlers for this long after it last told the store (ns).
SERVED_WINDOW_NS = 24 * 3600 * 10**9

__all__ = ["get", "last_error", "list_objects", "summary", "wait"]


def summary(row: ObjectRow, now: int) -> ObjectSummary:
    """The public view of a stored head, its status as of ``now``."""
    return ObjectSummary(
        id=row.id, status=row.status_at(now), handler=row.handler, seq=row.seq, priority=row.priority,
        scope=row.scope, identity=row.identity, parent=row.parent, reason=row.reason, waiting_for=row.wait_signal,
        waits_for_children=row.wait_children, due_at=row.due_at, lease_owner=row.lease_owner,
        created_at=row.created_at, updated_at=row.updated_at,
    )


async def list_objects(store: Store, *, status: str | None = None, limit: int | None = None,
                       parent: str | None = None, handler: str | None = None,
                       after: str | None = None, labels: Mapping[str, str] | None = None) -> list[ObjectSummary]:
    """Objects ordered by id (oldest first), filtered by status, parent, handler and/or
    labels (every one must match)."""
    if status is not None and status not in {s.value for s in Status}:
        raise UsageError(f"unknown status {status!r}: use one of {', '.join(s.value for s in Status)}")
    if labels is not None and not isinstance(labels, Mapping):
        raise UsageError("labels must be a mapping of label keys to values, like {\"team\": \"ops\"}")
    now = time.time_ns()
    rows = await store.list(status=status, limit=limit, parent=parent, now=now, handler=handler, after=after,
                            labels=labels)
    out = [summary(r, now) for r in rows]
    if any(r.status in LIVE_STATUSES or r.status is Status.RUNNING for r in out):
        served = await store.served_handlers(since=now - SERVED_WINDOW_NS)
        out = [attrs.evolve(r, unserved=True) if r.handler not in served and not r.status.is_final else r
               for r in out]
    return out


async def get(store: Store, object_id: str, *, memory: bool = True) -> ObjectInfo:
    """The object's head and (decoded, not verified: see verify()) memory."""
    row = await store.get(object_id)
    entries: list[Entry] = []
    if memory:
        entries = _decode_all(await store.entries(object_id))
    return _info(row, entries)


async def wait(store: Store, object_id: str, timeout: float | None = None, *, poll: float | None = None) -> Any:
    """Wait until the object terminates; return its result (see ``Client.wait``). On a store
    that notifies (PostgreSQL) the end wakes the wait; the poll is only a fallback."""
    if poll is None:
        poll = 2.0 if store.notifies else 0.05
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        row = await store.get(object_id)
        if row.status is Status.TERMINATED:
            if row.reason == "done":
                return unpackb(row.result) if row.result is not None else None
            raise ObjectFailedError(object_id, "terminated", row.reason, await last_error(store, object_id))
        if row.status is Status.QUARANTINED:
            raise ObjectFailedError(object_id, "quarantined", row.reason)
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"object {object_id} is still {row.status} after {timeout} s")
        pause = poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
        if store.notifies:
            await store.wait_for_work(pause)
        else:
            await asyncio.sleep(pause)


async def last_error(store: Store, object_id: str) -> dict[str, Any] | None:
    """The error the object's memory recorded last (a failed step), or None."""
    for entry in reversed(_decode_all(await store.entries(object_id))):
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


def _info(row: ObjectRow, entries: list[Entry]) -> ObjectInfo:
    intent, context, state = Intent(row.handler), Context(identity=row.identity, trust_scope=row.scope), {}
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
    result = None
    if row.result is not None:
        try:
            result = unpackb(row.result)
        except CodecError:
            result = None
    return ObjectInfo(
        id=row.id, status=row.status_at(time.time_ns()), intent=intent, context=context, seq=row.seq,
        result=result, reason=row.reason, memory=tuple(entries), state=state,
    )
