"""The PostgreSQL store's contract methods (see :class:`peo.store.base.Store`).

Semantics mirror the SQLite store exactly; what differs is how they are made safe under
concurrency. SQLite serializes writers; PostgreSQL runs them concurrently under READ
COMMITTED, so every write that decides something from *other* rows (the wake rules on the
inbox and on children) first locks the object rows involved, in id order, with a separate
statement, and only then runs its update as a new statement (see
:data:`~peo.store.postgres.statements.LOCK`). Claims use ``FOR UPDATE SKIP LOCKED``.
"""

from __future__ import annotations

import secrets
from collections.abc import Collection, Sequence
from typing import Any

from ...core.codec import packb
from ...core.head import Head
from ...core.model import CANCEL_SIGNAL, LIVE_STATUSES, Entry
from ...errors import NotFoundError, StoreError
from .. import sql
from ..alerts import AlertQueries
from ..base import AppendItem, Claim, NewObject, SignalRefusalLike
from ..facts import FactQueries
from ..fleet import FleetQueries
from ..retention import RetentionQueries
from ..sqlreads import SQLStore
from ..stalls import PROGRESS
from .connection import Conn
from .notify import Notifications
from .statements import (
    APPEND_HEAD,
    CLAIM,
    DELETE_CONSUMED,
    DROP_LEASES,
    IMPORT_HEAD,
    INSERT_ENTRY,
    INSERT_OBJECT,
    LOCK,
    PRUNE_REFUSED,
    QUARANTINE,
    READS,
    REFUSE,
    RELEASE,
    SIGNAL,
    WAKE_PARENT,
)

__all__ = ["PostgresStore"]


class PostgresStore(Notifications, FleetQueries, AlertQueries, FactQueries, RetentionQueries, SQLStore):
    """The shared store: many nodes on many machines, one schema of one database."""

    reads = READS
    notifies = True  # wait_for_work() returns when work becomes due or an object ends
    skip_locked = " FOR UPDATE SKIP LOCKED"  # due_alerts: concurrent nodes take disjoint rows
    text_search = "postgres"  # recall: PostgreSQL's text search, not FTS5

    async def _write_rows(self, statement: str, args: Sequence[Any]) -> list[Any]:
        async def body(conn: Conn) -> list[Any]:
            return list(await conn.fetch(statement, *args))

        return await self._write(body)

    async def _write_steps(self, steps: Sequence[tuple[str, Sequence[Any]]], *,
                           lock: Sequence[str] = ()) -> list[list[Any]]:
        async def body(conn: Conn) -> list[list[Any]]:
            if lock:  # id order, like every multi-row writer (see LOCK)
                await conn.fetch(LOCK, sorted(lock))
            return [list(await conn.fetch(s, *a)) for s, a in steps]

        return await self._write(body)

    async def create(self, objects: Sequence[NewObject]) -> None:
        if not objects:
            return

        async def body(conn: Conn) -> None:
            await _insert_objects(conn, objects)
            await self._notify(conn)

        await self._write(body)

    async def claim(self, owner: str, *, now: int, lease_ns: int, limit: int, handlers: Collection[str],
                    scopes: Collection[str] | None, exclude: Collection[str] = (),
                    avoid_stalled: bool = False) -> list[Claim]:
        if limit <= 0 or not handlers:
            return []
        tokens = [secrets.randbits(62) for _ in range(limit)]
        args = [now, limit, list(handlers), None if scopes is None else list(scopes), list(exclude),
                owner, now + lease_ns, tokens, avoid_stalled, owner + "\n"]

        async def body(conn: Conn) -> list[Claim]:
            rows = await conn.fetch(CLAIM, *args)
            return [sql.claim_of(r[0], r[1], r[3:]) for r in sorted(rows, key=lambda r: r[2])]

        return await self._write(body)

    async def drop_leases(self, owner: str) -> int:
        async def body(conn: Conn) -> int:
            rows = await conn.fetch("SELECT id FROM objects WHERE lease_owner = $1 ORDER BY id FOR UPDATE", owner)
            if not rows:
                return 0
            await conn.execute(DROP_LEASES, owner)
            await self._notify(conn)  # what it held is claimable now
            return len(rows)

        return await self._write(body)

    async def renew(self, owner: str, leases: dict[str, int], *, until: int) -> set[str]:
        if not leases:
            return set()
        ids = list(leases)
        tokens = [leases[i] for i in ids]

        async def body(conn: Conn) -> set[str]:
            await conn.fetch(LOCK, ids)  # id order, like every multi-row writer
            rows = await conn.fetch(
                "UPDATE objects o SET lease_until = $1 FROM unnest($2::text[], $3::bigint[]) AS l(id, token)"
                " WHERE o.id = l.id AND o.lease_owner = $4 AND o.lease_token = l.token RETURNING o.id",
                until, ids, tokens, owner,
            )
            return set(ids) - {r[0] for r in rows}

        return await self._write(body)

    async def append(self, items: Sequence[AppendItem], *, now: int) -> list[int | None]:
        if not items:
            return []
        # Every row the batch decides from: its own objects and the parents it may wake.
        ids = {i.object_id for i in items}
        ids.update(p for i in items if (p := sql.parent_to_wake(i)) is not None)
        # And the roots of bounded delegations: locking a root's row serializes every
        # delegation under it, so two nodes cannot both count the tree before either inserts.
        ids.update(r for i in items if (r := sql.descendants_root(i)) is not None)

        async def body(conn: Conn) -> list[int | None]:
            # Locked up front in id order (see LOCK): the heads read here cannot change
            # until we commit, and every update below runs as a statement of its own.
            heads = {r[0]: (r[1], r[2]) for r in await conn.fetch(LOCK, sorted(ids))}
            results: list[int | None] = []
            written: list[tuple[Any, ...]] = []
            wake = False
            for item in items:
                outcome = await _append_one(conn, item, now, heads)
                results.append(None if outcome is None else outcome[0])
                if outcome is not None:
                    wake = wake or outcome[1]
                    written.append(sql.entry_values(item.object_id, item.entry))
            # Nothing in the transaction reads the entry rows, so they go in one pipelined batch.
            if written:
                await conn.executemany(INSERT_ENTRY, written)
            if wake:
                await self._notify(conn)
            return results

        return await self._write(body)

    async def release(self, object_id: str, token: int, *, due_at: int | None, now: int) -> None:
        async def body(conn: Conn) -> None:
            await conn.fetch(LOCK, [object_id])  # then a fresh snapshot: see LOCK
            row = await conn.fetchrow(RELEASE, object_id, token, due_at, now)
            if row is not None and sql.is_due(row[0], now):
                await self._notify(conn)

        await self._write(body)

    async def quarantine(self, object_id: str, reason: str, *, now: int) -> None:
        async def body(conn: Conn) -> None:
            parent = await conn.fetchval("SELECT parent FROM objects WHERE id = $1", object_id)  # never changes
            # Locked with the parent, as a terminating child is (see LOCK): a parent going
            # dormant at the same moment sees this child finished, or is woken below.
            await conn.fetch(LOCK, [object_id] if parent is None else [object_id, parent])
            await conn.execute(QUARANTINE, object_id, reason[: sql.REASON_LIMIT], now)
            # A quarantined child counts as finished: wake a parent waiting for it. Either way a
            # client waiting for this object's end hears of it.
            if parent is not None:
                await conn.fetchrow(WAKE_PARENT, parent, now)
            await self._notify(conn)

        await self._write(body)

    async def signal(self, object_id: str, name: str, payload: Any, *, now: int, seal: bytes | None = None,
                     max_inbox: int | None = None) -> int:
        blob = packb(payload)

        async def body(conn: Conn) -> int:
            # The lock orders this signal against an append or release deciding whether
            # the object sleeps (see LOCK); it also tells us whether the object exists.
            if not await conn.fetch(LOCK, [object_id]):
                raise NotFoundError(f"no object {object_id}")
            # Read under the row lock: no append can end the object (or change its inbox
            # count) before we commit.
            target = await conn.fetchrow(sql.SIGNAL_TARGET.format("$1"), object_id)
            sql.check_signal_target(object_id, target)
            if name == CANCEL_SIGNAL and seal is None:  # a sealed cancel is its own (see Store.signal)
                pending = await conn.fetchval(sql.PENDING_CANCEL.format("$1"), object_id)
                if pending is not None:
                    return int(pending)
            sql.check_inbox_room(object_id, target, max_inbox)
            sid = await conn.fetchval(
                "INSERT INTO inbox (object_id, name, payload, created_at, seal) VALUES ($1, $2, $3, $4, $5)"
                " RETURNING id",
                object_id, name, blob, now, seal,
            )
            row = await conn.fetchrow(SIGNAL, object_id, name, now)
            if row is not None and row[0] in LIVE_STATUSES and sql.is_due(row[1], now):
                await self._notify(conn)
            return int(sid)

        return await self._write(body)

    async def refuse_signals(self, object_id: str, refusals: Sequence[SignalRefusalLike], *, now: int) -> int:
        rows = sql.refusal_rows(refusals)
        if not rows:
            return 0
        ids, reasons, senders = (list(column) for column in zip(*rows, strict=True))

        async def body(conn: Conn) -> int:
            # Locked like an append (see LOCK): one consuming or refusing the same signals
            # waits for the other, and the inbox count moves by what was really moved.
            if not await conn.fetch(LOCK, [object_id]):
                return 0
            moved = int(await conn.fetchval(REFUSE, object_id, ids, reasons, senders, now))
            if moved:
                await conn.execute("UPDATE objects SET inbox = inbox - $2 WHERE id = $1", object_id, moved)
                await conn.execute(PRUNE_REFUSED, object_id)
            return moved

        return await self._write(body)

    async def import_object(self, obj: NewObject, rest: Sequence[Entry], head: Head, *, now: int) -> None:
        async def body(conn: Conn) -> None:
            await _insert_objects(conn, [obj])
            if rest:
                await conn.executemany(INSERT_ENTRY, [sql.entry_values(obj.id, e) for e in rest])
            await conn.execute(IMPORT_HEAD, *sql.import_values(obj, rest[-1] if rest else obj.entry, head, now))
            if head.status in LIVE_STATUSES and sql.is_due(head.due_at, now):
                await self._notify(conn)

        await self._write(body)

    async def requalify(self, object_id: str, head: Head, *, now: int) -> bool:
        from ...core.model import Status
        from ...core.wake import due_case
        from ...errors import NotFoundError

        # The head of a quarantined object only; seq and hash stay (quarantine wrote no entry).
        due = due_case(id="$1::text", status="$2::text", signal="$4::text", children="$5::boolean",
                       now="$8::bigint", due="$3::bigint")
        statement = (
            f"UPDATE objects SET status = $2::text, due_at = {due}, wait_signal = $4::text,"
            f" wait_children = $5::boolean, result = $6::bytea, reason = $7::text, updated_at = $8::bigint,"
            f" {PROGRESS}"
            f" WHERE id = $1::text AND status = '{Status.QUARANTINED}' RETURNING due_at"
        )

        async def body(conn: Conn) -> bool:
            # Locked first, then a fresh statement: its wake rules see every signal and
            # child's end committed before it (see LOCK).
            if not await conn.fetch(LOCK, [object_id]):
                raise NotFoundError(f"no object {object_id}")
            row = await conn.fetchrow(statement, object_id, head.status.value, head.due_at, head.wait_signal,
                                      head.wait_children, head.result_bytes(), head.reason, now)
            if row is None:
                return False
            if sql.is_due(row[0], now):
                await self._notify(conn)
            return True

        return await self._write(body)


async def _insert_objects(conn: Conn, objects: Sequence[NewObject]) -> None:
    await conn.executemany(INSERT_OBJECT, [sql.object_values(o) for o in objects])
    await conn.executemany(INSERT_ENTRY, [sql.entry_values(o.id, o.entry) for o in objects])


async def _append_one(
    conn: Conn, item: AppendItem, now: int, heads: dict[str, tuple[int, int | None]]
) -> tuple[int, bool] | None:
    """One item of a group commit, all but its entry row (the caller inserts those):
    (inbox count, made something due for others), or None if its compare-and-swap lost.
    ``heads`` holds the locked (seq, token) of each object."""
    e = item.entry
    head = heads.get(item.object_id)
    if head is None or head[0] != e.seq - 1 or head[1] != item.token:
        return None  # the rows are locked, so this verdict holds until we commit
    root = sql.descendants_root(item)
    if root is not None:  # the root's row is locked (see append): this count holds until we commit
        count = await conn.fetchval(sql.COUNT_DESCENDANTS.format("$1"), root)
        if count + len(item.children) > (item.max_descendants or 0):
            return None
    woke = False
    if item.children:
        # Before the head update, so that its "have all children finished?" sees them.
        await _insert_objects(conn, item.children)
        woke = any(sql.is_due(c.due_at, now) for c in item.children)
    row = await conn.fetchrow(APPEND_HEAD, *sql.append_values(item, now))
    if row is None:  # cannot happen while we hold the row lock; never write without the CAS
        raise StoreError(f"compare-and-swap on {item.object_id} changed under a row lock", retryable=True)
    heads[item.object_id] = (e.seq, None if item.release else item.token)
    if item.consumed:
        await conn.execute(DELETE_CONSUMED, item.object_id, list(item.consumed))
    if item.release and item.head.status in LIVE_STATUSES and sql.is_due(row[1], now):
        woke = True
    parent = sql.parent_to_wake(item)
    if parent is not None and await conn.fetchrow(WAKE_PARENT, parent, now):
        woke = True
    if item.head.status.is_final:
        woke = True  # a client waiting for this object's end hears of it (Client.wait)
    return int(row[0]), woke
