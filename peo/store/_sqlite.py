"""The SQLite store: the embedded default (``sqlite:///path.db``).

WAL mode; ``synchronous=FULL`` by default so a commit survives power loss, or
``?durability=normal`` (survives a process crash, may lose the last commits on power
loss). Writes use ``BEGIN IMMEDIATE`` so a compare-and-swap never has to be retried
half-way. Several processes may share one file: SQLite serializes their writers.
"""

from __future__ import annotations

import asyncio
import os
import random
import secrets
import sqlite3
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs, urlparse

import aiosqlite

from .. import faultpoints
from ..core.codec import packb, unpackb
from ..core.model import Entry, Signal
from ..errors import CodecError, ConflictError, NotFoundError, StoreError, UsageError
from ._base import AppendItem, Claim, NewObject, ObjectRow, Store

__all__ = ["SQLiteStore"]

T = TypeVar("T")

_BUSY_TIMEOUT_MS = 10_000


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text

# Numbered migrations; the version table records how many have run.
_MIGRATIONS: list[str] = [
    """
    CREATE TABLE objects (
        id TEXT PRIMARY KEY,
        handler TEXT NOT NULL,
        scope TEXT NOT NULL,
        identity TEXT NOT NULL,
        priority INTEGER NOT NULL,
        status TEXT NOT NULL,
        seq INTEGER NOT NULL,
        head BLOB NOT NULL,
        due_at INTEGER,
        lease_owner TEXT,
        lease_token INTEGER,
        lease_until INTEGER,
        parent TEXT,
        result BLOB,
        reason TEXT,
        wait_signal TEXT,
        wait_children INTEGER NOT NULL DEFAULT 0,
        inbox INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    -- Only claimable objects have a due time, so claiming never scans dormant-forever
    -- or finished objects.
    CREATE INDEX objects_due ON objects (due_at) WHERE due_at IS NOT NULL;
    CREATE INDEX objects_parent ON objects (parent) WHERE parent IS NOT NULL;
    CREATE INDEX objects_status ON objects (status);
    CREATE TABLE entries (
        object_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        body BLOB NOT NULL,
        sig BLOB NOT NULL,
        hash BLOB NOT NULL,
        PRIMARY KEY (object_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE inbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        object_id TEXT NOT NULL,
        name TEXT NOT NULL,
        payload BLOB NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX inbox_object ON inbox (object_id, id);
    """,
    # 2: leases are looked up by expiry (is anything leased right now?) without a scan.
    """
    CREATE INDEX objects_lease ON objects (lease_until) WHERE lease_until IS NOT NULL;
    """,
    # 3: entries in append order (a rowid table) with a unique (object_id, seq) index.
    # Keyed by (object_id, seq), the rows of many objects stepping together landed on as
    # many B-tree pages, so a group commit of 200 objects wrote ~200 pages; in append order
    # it writes the few pages the new rows fill plus the small index's (3-4x faster here).
    """
    CREATE TABLE entries_v3 (
        object_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        body BLOB NOT NULL,
        sig BLOB NOT NULL,
        hash BLOB NOT NULL
    );
    INSERT INTO entries_v3 (object_id, seq, body, sig, hash)
        SELECT object_id, seq, body, sig, hash FROM entries ORDER BY object_id, seq;
    DROP TABLE entries;
    ALTER TABLE entries_v3 RENAME TO entries;
    CREATE UNIQUE INDEX entries_object_seq ON entries (object_id, seq);
    """,
    # 4: claimable objects by priority, then due time: a claim reads the due objects of the
    # highest priority level first and stops at its limit, instead of sorting every due
    # object (10,000 woken at once made each claim sort 10,000 rows).
    """
    CREATE INDEX objects_claim ON objects (priority, due_at) WHERE due_at IS NOT NULL;
    -- Rewritten on every change of status (twice per wake-up) and of little use with a
    -- handful of distinct values: listing by status scans the table in id order instead.
    DROP INDEX objects_status;
    """,
]

# A claim looks at most this many priority levels one by one; past that it sorts.
_CLAIM_LEVELS = 8

_COLUMNS = (
    "id, handler, scope, identity, priority, status, seq, head, due_at, lease_owner, lease_until,"
    " parent, result, reason, wait_signal, wait_children, inbox, created_at, updated_at"
)


def _blob(value: Any) -> bytes | None:
    """A BLOB cell as bytes. A cell of another type can only come from an edit behind peo's
    back: its text becomes bytes that then fail verification or decoding, never a crash."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return str(value).encode("utf-8", "surrogatepass")


def _row(r: Sequence[Any]) -> ObjectRow:
    return ObjectRow(
        id=r[0], handler=r[1], scope=r[2], identity=r[3], priority=r[4], status=r[5], seq=r[6],
        head=_blob(r[7]) or b"", due_at=r[8], lease_owner=r[9], lease_until=r[10], parent=r[11],
        result=_blob(r[12]), reason=r[13], wait_signal=r[14],
        wait_children=bool(r[15]), inbox=r[16], created_at=r[17], updated_at=r[18],
    )


def parse_sqlite_url(url: str) -> tuple[str, str]:
    """``sqlite:///relative.db`` or ``sqlite:////abs/path.db`` -> (path, durability)."""
    parsed = urlparse(url)
    if parsed.scheme != "sqlite" or parsed.netloc:
        raise UsageError(f"not an SQLite store URL: {url!r} (expected sqlite:///path.db)")
    path = parsed.path[1:] if parsed.path.startswith("/") else parsed.path
    if not path or path == ":memory:":
        raise UsageError(f"SQLite store URL {url!r} names no file")
    query = parse_qs(parsed.query)
    unknown = set(query) - {"durability"}
    if unknown:
        raise UsageError(f"unknown SQLite store option(s): {', '.join(sorted(unknown))}")
    durability = query.get("durability", ["full"])[-1].lower()
    if durability not in ("full", "normal"):
        raise UsageError("durability must be 'full' or 'normal'")
    return path, durability


class SQLiteStore(Store):
    def __init__(self, url: str):
        self.url = url
        self.path, self.durability = parse_sqlite_url(url)
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        # One user at a time per connection: (writer, reader).
        self._locks = (asyncio.Lock(), asyncio.Lock())
        self._timeouts: dict[int, int] = {}  # id(connection) -> its busy_timeout now

    # -- plumbing ---------------------------------------------------------------------
    #
    # Each connection is used in one of two ways, never both at once (its lock sees to it):
    #
    # * inline, on the event loop's thread, with busy_timeout 0: the common case. A hop to
    #   another thread and back costs ~80 us here (two thread wake-ups), more than the SQL
    #   of a step; blocking the loop for the SQL and the fsync is cheaper than that hop.
    # * on aiosqlite's connection thread, with the full busy timeout, when the inline attempt
    #   found the database locked by another process: the loop must never wait out a lock.

    def _translate(self, exc: Exception) -> StoreError:
        if isinstance(exc, sqlite3.IntegrityError):
            return ConflictError(f"SQLite constraint: {exc}")
        if isinstance(exc, sqlite3.OperationalError):
            return StoreError(f"SQLite ({self.path}): {exc}", retryable=_is_busy(exc))
        if isinstance(exc, sqlite3.ProgrammingError):  # used after close
            return StoreError(f"SQLite store is closed: {exc}", retryable=False)
        if isinstance(exc, sqlite3.DatabaseError):
            return StoreError(f"SQLite database {self.path} is unusable: {exc}", retryable=False)
        return StoreError(f"SQLite store is closed: {exc}", retryable=False)  # aiosqlite: "no active connection"

    async def _guard(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op`` translating sqlite3 errors into StoreError."""
        try:
            return await op()
        except (sqlite3.Error, ValueError) as exc:
            raise self._translate(exc) from None

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise StoreError("the store is not open", retryable=False)
        return self._db

    def _busy_timeout(self, conn: sqlite3.Connection, ms: int) -> None:
        if self._timeouts.get(id(conn)) != ms:
            conn.execute(f"PRAGMA busy_timeout = {ms}")
            self._timeouts[id(conn)] = ms

    async def _call(self, fn: Callable[[sqlite3.Connection], T], *, reader: bool = False) -> T:
        """Run ``fn(connection)``: inline if the database is free, else on the connection's
        thread (see above). ``fn`` must be safe to run again after an inline attempt failed
        as busy: a write is rolled back first (see :meth:`_write`), a read changes nothing."""
        db = self._reader if reader and self._reader is not None else self.db
        async with self._locks[1 if db is self._reader else 0]:
            try:
                conn = db._conn
                self._busy_timeout(conn, 0)
                return fn(conn)
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise self._translate(exc) from None
            except (sqlite3.Error, ValueError) as exc:
                raise self._translate(exc) from None

            def slow() -> T:
                self._busy_timeout(db._conn, _BUSY_TIMEOUT_MS)
                return fn(db._conn)

            run = cast(Callable[[Callable[[], T]], Awaitable[T]], db._execute)
            return await self._guard(lambda: run(slow))

    async def open(self) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise StoreError(f"cannot open SQLite store: directory {directory} does not exist", retryable=False)

        async def go() -> None:
            self._db = await aiosqlite.connect(self.path, isolation_level=None, check_same_thread=False)

        async def go_reader() -> None:
            self._reader = await aiosqlite.connect(self.path, isolation_level=None, check_same_thread=False)

        try:
            await self._guard(go)
            # On the connection's thread: migrations may wait for other processes' locks.
            run = cast(Callable[[Callable[[], None]], Awaitable[None]], self.db._execute)
            await self._guard(lambda: run(lambda: self._setup(self.db._conn)))
            await self._guard(go_reader)
        except BaseException:
            await self.aclose()
            raise

    def _setup(self, conn: sqlite3.Connection) -> None:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        self._timeouts[id(conn)] = _BUSY_TIMEOUT_MS
        # Switching a fresh file to WAL takes an exclusive lock and SQLite answers "locked"
        # at once instead of waiting out busy_timeout: nodes opening a new store together
        # would fail, so retry briefly (this runs on the connection's own thread).
        for attempt in range(100):
            try:
                conn.execute("PRAGMA journal_mode = WAL")
                break
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or attempt == 99:
                    raise
                time.sleep(0.01 + 0.04 * random.random())
        conn.execute(f"PRAGMA synchronous = {self.durability.upper()}")
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS peo_schema (version INTEGER NOT NULL)")
            row = conn.execute("SELECT max(version) FROM peo_schema").fetchone()
            current = row[0] if row and row[0] is not None else 0
            if current > len(_MIGRATIONS):
                raise StoreError(
                    f"store schema version {current} is newer than this peo supports ({len(_MIGRATIONS)})",
                    retryable=False,
                )
            for number in range(current, len(_MIGRATIONS)):
                for statement in _MIGRATIONS[number].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO peo_schema (version) VALUES (?)", (number + 1,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    async def aclose(self) -> None:
        for db in (self._reader, self._db):
            if db is not None:
                try:
                    await db.close()
                except Exception:  # closing a broken connection: nothing more to save
                    pass
        self._db = self._reader = None
        self._timeouts.clear()

    async def _write(self, body: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``body`` inside BEGIN IMMEDIATE ... COMMIT (ROLLBACK on any error)."""

        def txn(conn: sqlite3.Connection) -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = body(conn)
                if faultpoints.ARMED:
                    faultpoints.hit("store.before_commit")
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    try:
                        conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise
            if faultpoints.ARMED:
                faultpoints.hit("store.after_commit")
            return result

        return await self._call(txn)

    async def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        return await self._call(lambda conn: conn.execute(sql, args).fetchall(), reader=True)

    # -- the contract -------------------------------------------------------------------

    async def create(self, objects: Sequence[NewObject]) -> None:
        if objects:
            await self._write(lambda conn: _insert_objects(conn, objects))

    async def claim(
        self,
        owner: str,
        *,
        now: int,
        lease_ns: int,
        limit: int,
        handlers: Collection[str],
        scopes: Collection[str] | None,
        exclude: Collection[str] = (),
    ) -> list[Claim]:
        if limit <= 0 or not handlers or (scopes is not None and not scopes):
            return []
        where = ["due_at <= ?", "(lease_until IS NULL OR lease_until < ?)", "status IN ('runnable', 'dormant')"]
        args: list[Any] = [now, now]
        where.append(f"handler IN ({','.join('?' * len(handlers))})")
        args.extend(handlers)
        if scopes is not None:
            where.append(f"scope IN ({','.join('?' * len(scopes))})")
            args.extend(scopes)
        if exclude:
            where.append(f"id NOT IN ({','.join('?' * len(exclude))})")
            args.extend(exclude)
        until = now + lease_ns
        filters = " AND ".join(where)
        # INDEXED BY: without statistics SQLite may pick the status index and walk every
        # dormant object. Both indexes hold only objects with a due time, and each query
        # reads only rows already due, so claiming does not slow down as more objects sleep.
        by_level = (
            f"SELECT id FROM objects INDEXED BY objects_claim WHERE priority = ? AND {filters}"
            " ORDER BY due_at LIMIT ?"
        )
        sorted_all = (
            f"SELECT id FROM objects INDEXED BY objects_due WHERE {filters} ORDER BY priority DESC, due_at LIMIT ?"
        )
        next_level = "SELECT max(priority) FROM objects INDEXED BY objects_claim WHERE due_at IS NOT NULL"

        def find(conn: sqlite3.Connection) -> list[str]:
            found: list[str] = []
            level = conn.execute(next_level).fetchone()[0]
            for _ in range(_CLAIM_LEVELS):
                if level is None or len(found) >= limit:
                    return found
                found += [r[0] for r in conn.execute(by_level, [level, *args, limit - len(found)])]
                level = conn.execute(next_level + " AND priority < ?", (level,)).fetchone()[0]
            return [r[0] for r in conn.execute(sorted_all, [*args, limit])]

        # Look for candidates on the reader first: an idle node polls often, and an empty
        # write transaction would still queue behind every group commit on the writer.
        candidates = await self._call(find, reader=True)
        if not candidates:
            return []

        def body(conn: sqlite3.Connection) -> list[Claim]:
            # The writer lock is held now: take each candidate only if it is still due and
            # unleased (another node may have claimed it since the read).
            claims = []
            for oid in candidates:
                token = secrets.randbits(62)
                row = conn.execute(
                    "UPDATE objects SET lease_owner = ?, lease_token = ?, lease_until = ?"
                    " WHERE id = ? AND due_at <= ? AND (lease_until IS NULL OR lease_until < ?)"
                    " AND status IN ('runnable', 'dormant') RETURNING seq, inbox, head",
                    (owner, token, until, oid, now, now),
                ).fetchone()
                if row is not None:
                    claims.append(Claim(oid, token, row[0], row[1], _blob(row[2]) or b""))
            return claims

        return await self._write(body)

    async def drop_leases(self, owner: str) -> int:
        def body(conn: sqlite3.Connection) -> int:
            return conn.execute(
                "UPDATE objects SET lease_owner = NULL, lease_token = NULL, lease_until = NULL WHERE lease_owner = ?",
                (owner,),
            ).rowcount

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

    async def entries(self, object_id: str, after: int = -1) -> list[tuple[bytes, bytes]]:
        rows = await self._read(
            "SELECT body, sig FROM entries WHERE object_id = ? AND seq > ? ORDER BY seq", (object_id, after)
        )
        return [(_blob(b) or b"", _blob(s) or b"") for b, s in rows]

    async def entries_of(self, object_ids: Sequence[str]) -> dict[str, list[tuple[bytes, bytes]]]:
        out: dict[str, list[tuple[bytes, bytes]]] = {oid: [] for oid in object_ids}
        if object_ids:
            rows = await self._read(
                f"SELECT object_id, body, sig FROM entries WHERE object_id IN ({','.join('?' * len(out))})"
                " ORDER BY object_id, seq",
                list(out),
            )
            for oid, b, s in rows:
                out[oid].append((_blob(b) or b"", _blob(s) or b""))
        return out

    async def entry_hash(self, object_id: str, seq: int) -> bytes | None:
        rows = await self._read("SELECT hash FROM entries WHERE object_id = ? AND seq = ?", (object_id, seq))
        return _blob(rows[0][0]) if rows else None

    async def append(self, items: Sequence[AppendItem], *, now: int) -> list[int | None]:
        return await self._write(lambda conn: [_append_one(conn, item, now) for item in items])

    async def release(self, object_id: str, token: int, *, due_at: int | None, now: int) -> None:
        args = {"id": object_id, "token": token, "due": due_at, "now": now}
        await self._write(lambda conn: conn.execute(_RELEASE, args))

    async def quarantine(self, object_id: str, reason: str, *, now: int) -> None:
        def body(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE objects SET status = 'quarantined', reason = ?, due_at = NULL, lease_owner = NULL,"
                " lease_token = NULL, lease_until = NULL, updated_at = ? WHERE id = ?",
                (reason[:2000], now, object_id),
            )
            # A quarantined child counts as finished (see _WAKE_DUE): wake a parent waiting for it.
            conn.execute(
                "UPDATE objects SET due_at = ? WHERE id = (SELECT parent FROM objects WHERE id = ?)"
                " AND status = 'dormant' AND wait_children = 1",
                (now, object_id),
            )

        await self._write(body)

    async def signal(self, object_id: str, name: str, payload: Any, *, now: int) -> int:
        blob = packb(payload)

        def body(conn: sqlite3.Connection) -> int:
            if conn.execute("SELECT 1 FROM objects WHERE id = ?", (object_id,)).fetchone() is None:
                raise NotFoundError(f"no object {object_id}")
            sid = conn.execute(
                "INSERT INTO inbox (object_id, name, payload, created_at) VALUES (?, ?, ?, ?) RETURNING id",
                (object_id, name, blob, now),
            ).fetchone()[0]
            conn.execute(_SIGNAL, {"id": object_id, "name": name, "now": now})
            return int(sid)

        return await self._write(body)

    async def inbox(self, object_id: str) -> list[Signal]:
        rows = await self._read("SELECT id, name, payload FROM inbox WHERE object_id = ? ORDER BY id", (object_id,))
        out = []
        for sid, name, payload in rows:
            try:
                value = unpackb(_blob(payload) or b"")
            except CodecError:
                value = None  # written by peo itself; a corrupt payload is delivered as None
            out.append(Signal(name, value, sid))
        return out

    async def get(self, object_id: str) -> ObjectRow:
        rows = await self._read(f"SELECT {_COLUMNS} FROM objects WHERE id = ?", (object_id,))
        if not rows:
            raise NotFoundError(f"no object {object_id}")
        return _row(rows[0])

    async def list(self, *, status: str | None = None, limit: int | None = None,
                   parent: str | None = None) -> list[ObjectRow]:
        where: list[str] = []
        args: list[Any] = []
        if status is not None:
            if status == "running":
                where.append("status = 'runnable' AND lease_until > ?")
                args.append(_now_hint())
            else:
                where.append("status = ?")
                args.append(status)
        if parent is not None:
            where.append("parent = ?")
            args.append(parent)
        sql = f"SELECT {_COLUMNS} FROM objects"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_row(r) for r in await self._read(sql, args)]

    async def busy(self, *, now: int) -> bool:
        def body(conn: sqlite3.Connection) -> bool:
            due = conn.execute(
                "SELECT 1 FROM objects INDEXED BY objects_due WHERE due_at <= ?"
                " AND status IN ('runnable', 'dormant') LIMIT 1",
                (now,),
            ).fetchone()
            if due is not None:
                return True
            leased = conn.execute(
                "SELECT 1 FROM objects INDEXED BY objects_lease WHERE lease_until > ? LIMIT 1", (now,)
            ).fetchone()
            return leased is not None

        return await self._call(body, reader=True)

    async def next_due(self) -> int | None:
        rows = await self._read(
            "SELECT due_at FROM objects INDEXED BY objects_due WHERE due_at IS NOT NULL"
            " AND status IN ('runnable', 'dormant') ORDER BY due_at LIMIT 1"
        )
        return rows[0][0] if rows else None

    async def import_object(
        self,
        obj: NewObject,
        rest: Sequence[Entry],
        *,
        status: str,
        due_at: int | None,
        wait_signal: str | None,
        wait_children: bool,
        result: bytes | None,
        reason: str | None,
        now: int,
    ) -> None:
        def body(conn: sqlite3.Connection) -> None:
            _insert_objects(conn, [obj])
            conn.executemany(
                "INSERT INTO entries (object_id, seq, body, sig, hash) VALUES (?, ?, ?, ?, ?)",
                [(obj.id, e.seq, e.body, e.signature, e.hash) for e in rest],
            )
            last = rest[-1] if rest else obj.entry
            conn.execute(
                "UPDATE objects SET seq = ?, head = ?, status = ?, due_at = ?, wait_signal = ?,"
                " wait_children = ?, result = ?, reason = ?, updated_at = ? WHERE id = ?",
                (last.seq, last.hash, status, due_at, wait_signal, int(wait_children), result, reason, now, obj.id),
            )

        await self._write(body)


def _now_hint() -> int:
    import time

    return time.time_ns()


def _insert_objects(conn: sqlite3.Connection, objects: Sequence[NewObject]) -> None:
    conn.executemany(
        "INSERT INTO objects (id, handler, scope, identity, priority, status, seq, head, due_at, parent,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, 'runnable', 0, ?, ?, ?, ?, ?)",
        [
            (o.id, o.handler, o.scope, o.identity, o.priority, o.entry.hash, o.due_at, o.parent, o.due_at, o.due_at)
            for o in objects
        ],
    )
    conn.executemany(
        "INSERT INTO entries (object_id, seq, body, sig, hash) VALUES (?, 0, ?, ?, ?)",
        [(o.id, o.entry.body, o.entry.signature, o.entry.hash) for o in objects],
    )


# A dormant object whose awaited signal is already in its inbox (or whose children have
# all finished) is due now: the check runs inside the writing transaction, so a signal or
# a child committed just before can never be slept through.
_WAKE_DUE = """
    CASE
      WHEN :status != 'dormant' THEN :due
      WHEN EXISTS (SELECT 1 FROM inbox i WHERE i.object_id = :id
                   AND (i.name = :wait_signal OR i.name = 'peo.cancel')) THEN :now
      WHEN :wait_children AND NOT EXISTS (SELECT 1 FROM objects c WHERE c.parent = :id
                   AND c.status NOT IN ('terminated', 'quarantined')) THEN :now
      ELSE :due
    END
"""

_APPEND_HEAD = f"""
    UPDATE objects SET seq = :seq, head = :hash, status = :status, due_at = {_WAKE_DUE},
      wait_signal = :wait_signal, wait_children = :wait_children,
      result = coalesce(:result, result), reason = coalesce(:reason, reason),
      inbox = inbox - :consumed, updated_at = :now,
      lease_owner = CASE WHEN :release THEN NULL ELSE lease_owner END,
      lease_token = CASE WHEN :release THEN NULL ELSE lease_token END,
      lease_until = CASE WHEN :release THEN NULL ELSE lease_until END
    WHERE id = :id AND seq = :prev_seq AND lease_token = :token
    RETURNING inbox
"""

_RELEASE = """
    UPDATE objects SET
      due_at = CASE
        WHEN status = 'runnable' THEN coalesce(:due, due_at)
        WHEN status != 'dormant' THEN due_at
        WHEN EXISTS (SELECT 1 FROM inbox i WHERE i.object_id = :id
                     AND (i.name = objects.wait_signal OR i.name = 'peo.cancel')) THEN :now
        WHEN wait_children AND NOT EXISTS (SELECT 1 FROM objects c WHERE c.parent = :id
                     AND c.status NOT IN ('terminated', 'quarantined')) THEN :now
        ELSE :due
      END,
      lease_owner = NULL, lease_token = NULL, lease_until = NULL
    WHERE id = :id AND lease_token = :token
"""

_SIGNAL = """
    UPDATE objects SET inbox = inbox + 1,
      due_at = CASE WHEN status = 'dormant' AND (wait_signal = :name OR :name = 'peo.cancel')
               THEN :now ELSE due_at END
    WHERE id = :id
"""


def _append_one(conn: sqlite3.Connection, item: AppendItem, now: int) -> int | None:
    e = item.entry
    if item.children:
        _insert_objects(conn, item.children)
    row = conn.execute(
        _APPEND_HEAD,
        {
            "id": item.object_id, "seq": e.seq, "prev_seq": e.seq - 1, "hash": e.hash, "status": item.status,
            "due": item.due_at, "wait_signal": item.wait_signal, "wait_children": int(item.wait_children),
            "result": item.result, "reason": item.reason, "consumed": len(item.consumed), "now": now,
            "release": int(item.release), "token": item.token,
        },
    ).fetchone()
    if row is None:  # lost the compare-and-swap: undo the children inserted for it
        if item.children:
            ids = [(c.id,) for c in item.children]
            conn.executemany("DELETE FROM objects WHERE id = ?", ids)
            conn.executemany("DELETE FROM entries WHERE object_id = ? AND seq = 0", ids)
        return None
    conn.execute(
        "INSERT INTO entries (object_id, seq, body, sig, hash) VALUES (?, ?, ?, ?, ?)",
        (item.object_id, e.seq, e.body, e.signature, e.hash),
    )
    if item.consumed:
        conn.executemany(
            "DELETE FROM inbox WHERE id = ? AND object_id = ?", [(sid, item.object_id) for sid in item.consumed]
        )
    if item.status == "terminated" and item.parent is not None:
        conn.execute(
            "UPDATE objects SET due_at = ? WHERE id = ? AND status = 'dormant' AND wait_children = 1",
            (now, item.parent),
        )
    return int(row[0])
