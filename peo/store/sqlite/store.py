"""The SQLite store's contract methods (see :class:`peo.store.base.Store`).

Writes run under ``BEGIN IMMEDIATE``, so SQLite serializes them: a wake rule evaluated in
a write's statement sees every signal and child's end committed before it, and a
compare-and-swap never has to be retried half-way.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable, Collection, Sequence
from typing import Any

from ...core.codec import packb
from ...core.head import Head
from ...core.model import CANCEL_SIGNAL, Entry
from .. import sql, stalls
from ..alerts import AlertQueries
from ..base import AppendItem, Claim, NewObject, SignalRefusalLike
from ..facts import FactQueries
from ..fleet import FleetQueries
from ..retention import RetentionQueries
from ..sqlreads import SQLStore
from .connection import Connections
from .statements import (
    APPEND_HEAD,
    DELETE_CONSUMED,
    DROP_LEASES,
    IMPORT_HEAD,
    INSERT_ENTRY,
    INSERT_OBJECT,
    PRUNE_REFUSED,
    QUARANTINE,
    READS,
    RELEASE,
    SIGNAL,
    WAKE_PARENT,
)

__all__ = ["SQLiteStore"]

# A claim looks at most this many priority levels one by one; past that it sorts.
_CLAIM_LEVELS = 8


def _marks(values: Collection[Any], arg: Callable[[Any], str]) -> str:
    return ",".join(arg(v) for v in values)


# A claim's judgement of the previous claim (?5: now) and its avoid_stalled condition (?6:
# the owner and a newline): see peo.store.sql.
_CLAIM_SET = stalls.claim_set(READS.push_stalled, "?5")
_MAY_TAKE = stalls.may_take(lambda name: "?5" if name == "now" else "?6")


class SQLiteStore(Connections, FleetQueries, AlertQueries, FactQueries, RetentionQueries, SQLStore):
    """The embedded store: one database file, shared by the processes that open it."""

    reads = READS

    async def _write_rows(self, statement: str, args: Sequence[Any]) -> list[Any]:
        return await self._write(lambda conn: conn.execute(statement, tuple(args)).fetchall())

    async def _write_steps(self, steps: Sequence[tuple[str, Sequence[Any]]], *,
                           lock: Sequence[str] = ()) -> list[list[Any]]:
        return await self._write(lambda conn: [conn.execute(s, tuple(a)).fetchall() for s, a in steps])

    async def create(self, objects: Sequence[NewObject]) -> None:
        if objects:
            await self._write(lambda conn: _insert_objects(conn, objects))

    async def claim(self, owner: str, *, now: int, lease_ns: int, limit: int, handlers: Collection[str],
                    scopes: Collection[str] | None, exclude: Collection[str] = (),
                    avoid_stalled: bool = False) -> list[Claim]:
        if limit <= 0 or not handlers or (scopes is not None and not scopes):
            return []
        # Numbered parameters: ?1 is the priority level and ?2 how many to find (set per
        # query below), the filters' values follow.
        args: list[Any] = [None, None]

        def arg(value: Any) -> str:
            args.append(value)
            return f"?{len(args)}"

        at = arg(now)
        where = [f"due_at <= {at}", f"(lease_until IS NULL OR lease_until < {at})", f"status IN ({sql.LIVE})",
                 f"handler IN ({_marks(handlers, arg)})"]
        if scopes is not None:
            where.append(f"scope IN ({_marks(scopes, arg)})")
        if exclude:
            where.append(f"id NOT IN ({_marks(exclude, arg)})")
        if avoid_stalled:
            me = arg(owner + "\n")
            where.append(stalls.may_take(lambda name: at if name == "now" else me))
        filters = " AND ".join(where)
        # INDEXED BY: without statistics SQLite may pick another index and walk every
        # dormant object. Both indexes hold only objects with a due time, and each query
        # reads only rows already due, so claiming does not slow down as more objects sleep
        # (avoid_stalled only filters those rows further).
        by_level = (
            f"SELECT id FROM objects INDEXED BY objects_claim WHERE priority = ?1 AND {filters}"
            " ORDER BY due_at LIMIT ?2"
        )
        sorted_all = (
            f"SELECT id FROM objects INDEXED BY objects_due WHERE {filters} ORDER BY priority DESC, due_at LIMIT ?2"
        )
        next_level = "SELECT max(priority) FROM objects INDEXED BY objects_claim WHERE due_at IS NOT NULL"
        values = args[2:]

        def find(conn: sqlite3.Connection) -> list[str]:
            found: list[str] = []
            level = conn.execute(next_level).fetchone()[0]
            for _ in range(_CLAIM_LEVELS):
                if level is None or len(found) >= limit:
                    return found
                found += [r[0] for r in conn.execute(by_level, [level, limit - len(found), *values])]
                level = conn.execute(next_level + " AND priority < ?", (level,)).fetchone()[0]
            return [r[0] for r in conn.execute(sorted_all, [None, limit, *values])]

        # Look for candidates on the reader first: an idle node polls often, and an empty
        # write transaction would still queue behind every group commit on the writer.
        candidates = await self._call(find, reader=True)
        if not candidates:
            return []
        until = now + lease_ns
        take = (
            f"UPDATE objects SET lease_owner = ?1, lease_token = ?2, lease_until = ?3, {_CLAIM_SET}"
            f" WHERE id = ?4 AND due_at <= ?5 AND (lease_until IS NULL OR lease_until < ?5) AND status IN ({sql.LIVE})"
            + (f" AND {_MAY_TAKE}" if avoid_stalled else "") + f" RETURNING {sql.CLAIM_COLUMNS}"
        )
        mine = (owner + "\n",) if avoid_stalled else ()

        def body(conn: sqlite3.Connection) -> list[Claim]:
            # The writer lock is held now: take each candidate only if it is still due and
            # unleased (another node may have claimed it since the read).
            claims = []
            for oid in candidates:
                token = secrets.randbits(62)
                row = conn.execute(take, (owner, token, until, oid, now, *mine)).fetchone()
                if row is not None:
                    claims.append(sql.claim_of(oid, token, row))
            return claims

        return await self._write(body)

    async def drop_leases(self, owner: str) -> int:
        def body(conn: sqlite3.Connection) -> int:
            return conn.execute(DROP_LEASES, (owner,)).rowcount

        return await self._write(body)

    async def renew(self, owner: str, leases: dict[str, int], *, until: int) -> set[str]:
        if not leases:
            return set()

        def body(conn: sqlite3.Connection) -> set[str]:
            lost = set()
            for oid, token in leases.items():
                cur = conn.execute(
                    "UPDATE objects SET lease_until = ? WHERE id = ? AND lease_owner = ? AND lease_token = ?",
                    (until, oid, owner, token),
                )
                if cur.rowcount != 1:
                    lost.add(oid)
            return lost

        return await self._write(body)

    async def append(self, items: Sequence[AppendItem], *, now: int) -> list[int | None]:
        return await self._write(lambda conn: [_append_one(conn, item, now) for item in items])

    async def release(self, object_id: str, token: int, *, due_at: int | None, now: int) -> None:
        await self._write(lambda conn: conn.execute(RELEASE, (object_id, token, due_at, now)))

    async def quarantine(self, object_id: str, reason: str, *, now: int) -> None:
        def body(conn: sqlite3.Connection) -> None:
            parent = conn.execute("SELECT parent FROM objects WHERE id = ?", (object_id,)).fetchone()
            conn.execute(QUARANTINE, (object_id, reason[: sql.REASON_LIMIT], now))
            # A quarantined child counts as finished: wake a parent waiting for it.
            if parent is not None and parent[0] is not None:
                conn.execute(WAKE_PARENT, (parent[0], now))

        await self._write(body)

    async def signal(self, object_id: str, name: str, payload: Any, *, now: int, seal: bytes | None = None,
                     max_inbox: int | None = None) -> int:
        blob = packb(payload)

        def body(conn: sqlite3.Connection) -> int:
            # Under BEGIN IMMEDIATE: no append can end the object between this check and the insert.
            target = conn.execute(sql.SIGNAL_TARGET.format("?"), (object_id,)).fetchone()
            sql.check_signal_target(object_id, target)
            if name == CANCEL_SIGNAL and seal is None:  # a sealed cancel is its own (see Store.signal)
                pending = conn.execute(sql.PENDING_CANCEL.format("?"), (object_id,)).fetchone()
                if pending is not None:
                    return int(pending[0])
            sql.check_inbox_room(object_id, target, max_inbox)
            sid = conn.execute(
                "INSERT INTO inbox (object_id, name, payload, created_at, seal) VALUES (?, ?, ?, ?, ?) RETURNING id",
                (object_id, name, blob, now, seal),
            ).fetchone()[0]
            conn.execute(SIGNAL, (object_id, name, now))
            return int(sid)

        return await self._write(body)

    async def refuse_signals(self, object_id: str, refusals: Sequence[SignalRefusalLike], *, now: int) -> int:
        rows = sql.refusal_rows(refusals)
        if not rows:
            return 0

        def body(conn: sqlite3.Connection) -> int:
            moved = 0
            for sid, reason, sender in rows:
                found = conn.execute("DELETE FROM inbox WHERE id = ? AND object_id = ? RETURNING name, created_at",
                                     (sid, object_id)).fetchone()
                if found is None:
                    continue  # consumed or refused already
                conn.execute(
                    "INSERT INTO refused_signals (id, object_id, name, reason, sender, refused_at, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (sid, object_id, str(found[0])[: sql.NAME_KEPT], reason, sender, now, found[1]),
                )
                moved += 1
            if moved:
                conn.execute("UPDATE objects SET inbox = inbox - ? WHERE id = ?", (moved, object_id))
                conn.execute(PRUNE_REFUSED, (object_id,))
            return moved

        return await self._write(body)

    async def import_object(self, obj: NewObject, rest: Sequence[Entry], head: Head, *, now: int) -> None:
        def body(conn: sqlite3.Connection) -> None:
            _insert_objects(conn, [obj])
            conn.executemany(INSERT_ENTRY, [sql.entry_values(obj.id, e) for e in rest])
            conn.execute(IMPORT_HEAD, sql.import_values(obj, rest[-1] if rest else obj.entry, head, now))

        await self._write(body)

    async def requalify(self, object_id: str, head: Head, *, now: int) -> bool:
        from ...core.model import Status
        from ...core.wake import due_case
        from ...errors import NotFoundError

        # The head of a quarantined object only; seq and hash stay (quarantine wrote no entry).
        due = due_case(id="?1", status="?2", signal="?4", children="?5", now="?8", due="?3")
        statement = (
            f"UPDATE objects SET status = ?2, due_at = {due}, wait_signal = ?4, wait_children = ?5, result = ?6,"
            f" reason = ?7, updated_at = ?8, {stalls.PROGRESS}"
            f" WHERE id = ?1 AND status = '{Status.QUARANTINED}' RETURNING due_at"
        )
        values = (object_id, head.status.value, head.due_at, head.wait_signal, head.wait_children,
                  head.result_bytes(), head.reason, now)

        def body(conn: sqlite3.Connection) -> bool:
            if conn.execute(statement, values).fetchone() is not None:
                return True
            if conn.execute("SELECT 1 FROM objects WHERE id = ?", (object_id,)).fetchone() is None:
                raise NotFoundError(f"no object {object_id}")
            return False

        return await self._write(body)


def _insert_objects(conn: sqlite3.Connection, objects: Sequence[NewObject]) -> None:
    conn.executemany(INSERT_OBJECT, [sql.object_values(o) for o in objects])
    conn.executemany(INSERT_ENTRY, [sql.entry_values(o.id, o.entry) for o in objects])


def _append_one(conn: sqlite3.Connection, item: AppendItem, now: int) -> int | None:
    """One item of a group commit: the inbox count left, or None if its compare-and-swap lost."""
    root = sql.descendants_root(item)
    if root is not None:  # under BEGIN IMMEDIATE: no other writer can add to the tree meanwhile
        count = conn.execute(sql.COUNT_DESCENDANTS.format("?"), (root,)).fetchone()[0]
        if count + len(item.children) > (item.max_descendants or 0):
            return None
    if item.children:
        _insert_objects(conn, item.children)
    row = conn.execute(APPEND_HEAD, sql.append_values(item, now)).fetchone()
    if row is None:  # lost the compare-and-swap: undo the children inserted for it
        if item.children:
            ids = [(c.id,) for c in item.children]
            conn.executemany("DELETE FROM objects WHERE id = ?", ids)
            conn.executemany("DELETE FROM entries WHERE object_id = ? AND seq = 0", ids)
        return None
    conn.execute(INSERT_ENTRY, sql.entry_values(item.object_id, item.entry))
    if item.consumed:
        conn.executemany(DELETE_CONSUMED, [(sid, item.object_id) for sid in item.consumed])
    parent = sql.parent_to_wake(item)
    if parent is not None:
        conn.execute(WAKE_PARENT, (parent, now))
    return int(row[0])
