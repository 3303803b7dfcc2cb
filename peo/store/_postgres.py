"""The PostgreSQL store: many nodes on many machines (``postgresql://user@host:port/db``).

``?schema=NAME`` keeps peo's tables in their own schema (default ``peo``; created if
missing). Semantics mirror the SQLite store exactly; what differs is how they are made
safe under concurrency:

- SQLite serializes writers (``BEGIN IMMEDIATE``). PostgreSQL runs them concurrently under
  READ COMMITTED, so every write that decides something from *other* rows (the wake-up
  checks on the inbox and on children) first locks the object rows involved, in id order,
  with a separate statement, and only then runs its update as a new statement. See
  :data:`_LOCK` for why this closes the lost-wake-up race.
- Claims use ``FOR UPDATE SKIP LOCKED``: concurrent claimers never wait for each other
  and never get the same object.
- A write that makes work due for other nodes sends ``NOTIFY`` on ``peo_<schema>``;
  :meth:`PostgresStore.wait_for_work` listens on it, so idle nodes wake at once instead
  of polling tightly.

The driver is asyncpg: it is asyncio-native, has LISTEN/NOTIFY built in, needs no libpq,
and its binary protocol and statement cache keep the many small statements cheap.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import secrets
from collections.abc import Awaitable, Callable, Collection, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

import asyncpg

from .. import faultpoints
from ..core.codec import packb, unpackb
from ..core.model import Entry, Signal
from ..errors import CodecError, ConflictError, NotFoundError, StoreError, UsageError
from ._base import AppendItem, Claim, NewObject, ObjectRow, Store

__all__ = ["PostgresStore", "parse_postgres_url"]

T = TypeVar("T")
Conn = Any  # asyncpg.Connection (asyncpg ships no type information)

DEFAULT_SCHEMA = "peo"
# An unquoted-style identifier; at most 59 characters so that the notification channel
# "peo_<schema>" stays within PostgreSQL's 63-byte identifier limit. "pg_" names are
# reserved for system schemas.
_SCHEMA_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,58}")
_CONNECT_TIMEOUT = 10.0  # seconds: an unreachable host fails open() in this time
_COMMAND_TIMEOUT = 60.0  # seconds: a hung server surfaces as a retryable StoreError

# Numbered migrations; the version table records how many have run. ``{s}`` is the
# quoted schema: DDL names it explicitly because the schema may have been created in the
# same transaction, and the connection's search_path was fixed before it existed.
_MIGRATIONS: list[str] = [
    """
    CREATE TABLE {s}.objects (
        id TEXT PRIMARY KEY,
        handler TEXT NOT NULL,
        scope TEXT NOT NULL,
        identity TEXT NOT NULL,
        priority BIGINT NOT NULL,
        status TEXT NOT NULL,
        seq BIGINT NOT NULL,
        head BYTEA NOT NULL,
        due_at BIGINT,
        lease_owner TEXT,
        lease_token BIGINT,
        lease_until BIGINT,
        parent TEXT,
        result BYTEA,
        reason TEXT,
        wait_signal TEXT,
        wait_children BOOLEAN NOT NULL DEFAULT false,
        inbox BIGINT NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    -- Only claimable objects have a due time, so claiming never scans dormant-forever
    -- or finished objects.
    CREATE INDEX objects_due ON {s}.objects (due_at) WHERE due_at IS NOT NULL;
    CREATE INDEX objects_parent ON {s}.objects (parent) WHERE parent IS NOT NULL;
    CREATE INDEX objects_status ON {s}.objects (status);
    -- busy() asks "is anything leased?": without this it would scan every object.
    CREATE INDEX objects_lease ON {s}.objects (lease_until) WHERE lease_until IS NOT NULL;
    CREATE TABLE {s}.entries (
        object_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        body BYTEA NOT NULL,
        sig BYTEA NOT NULL,
        hash BYTEA NOT NULL,
        PRIMARY KEY (object_id, seq)
    );
    CREATE TABLE {s}.inbox (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        object_id TEXT NOT NULL,
        name TEXT NOT NULL,
        payload BYTEA NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX inbox_object ON {s}.inbox (object_id, id);
    """,
]

_COLUMNS = (
    "id, handler, scope, identity, priority, status, seq, head, due_at, lease_owner, lease_until,"
    " parent, result, reason, wait_signal, wait_children, inbox, created_at, updated_at"
)


def _row(r: Sequence[Any]) -> ObjectRow:
    return ObjectRow(
        id=r[0], handler=r[1], scope=r[2], identity=r[3], priority=r[4], status=r[5], seq=r[6],
        head=bytes(r[7]), due_at=r[8], lease_owner=r[9], lease_until=r[10], parent=r[11],
        result=None if r[12] is None else bytes(r[12]), reason=r[13], wait_signal=r[14],
        wait_children=bool(r[15]), inbox=r[16], created_at=r[17], updated_at=r[18],
    )


def parse_postgres_url(url: str) -> tuple[str, str, str, int]:
    """``postgresql://user@host:port/db?schema=NAME`` -> (dsn for asyncpg, schema, host, port).

    The ``schema`` option is ours and is removed from the DSN (asyncpg would send it to the
    server as a setting); every other option (sslmode...) is passed through.
    """
    parsed = urlparse(url)
    if parsed.scheme not in ("postgresql", "postgres"):
        raise UsageError(f"not a PostgreSQL store URL: {url!r} (expected postgresql://user@host:port/db)")
    query = parse_qsl(parsed.query, keep_blank_values=True)
    schemas = [v for k, v in query if k == "schema"]
    schema = schemas[-1] if schemas else DEFAULT_SCHEMA
    if not _SCHEMA_RE.fullmatch(schema) or schema.lower().startswith("pg_"):
        raise UsageError(
            f"invalid PostgreSQL schema name {schema!r}: use letters, digits and underscores"
            " (at most 59, not starting with a digit or 'pg_')"
        )
    try:
        port = parsed.port or 5432
    except ValueError:
        raise UsageError(f"invalid port in PostgreSQL store URL {url!r}") from None
    host = parsed.hostname or "localhost"
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    dsn = urlunparse(parsed._replace(query=rest))
    return dsn, schema, host, port


# Lock the object rows a write is about to decide from, in id order (one fixed order for
# every multi-row locker, so two transactions never wait for each other in a cycle).
#
# Why a separate statement: under READ COMMITTED each statement reads from a snapshot taken
# when *it* starts. An UPDATE that blocks on a row lock re-reads that row once the lock is
# free, but its subqueries (EXISTS on the inbox, on the children) still see the statement's
# old snapshot. So "append: go dormant unless the awaited signal is in the inbox" racing
# "signal: insert into the inbox, wake the object if dormant" could end with the signal
# committed, the append's EXISTS blind to it, the signal's update seeing the object still
# runnable: dormant forever. Taking the row locks first and running the update as a new
# statement gives that update a snapshot taken after every transaction that held those
# rows had committed. signal() and child terminations lock the same rows before they write,
# so each such pair is strictly ordered and whichever runs second sees the first.
_LOCK = "SELECT id, seq, lease_token FROM objects WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE"

# A dormant object whose awaited signal is already in its inbox (or whose children have
# all finished) is due now (same rule as the SQLite store).
_APPEND_HEAD = """
    UPDATE objects SET seq = $2, head = $3, status = $4::text,
      due_at = CASE
        WHEN $4::text <> 'dormant' THEN $5::bigint
        WHEN EXISTS (SELECT 1 FROM inbox i WHERE i.object_id = $1
                     AND (i.name = $6::text OR i.name = 'peo.cancel')) THEN $7::bigint
        WHEN $8::boolean AND NOT EXISTS (SELECT 1 FROM objects c WHERE c.parent = $1
                     AND c.status NOT IN ('terminated', 'quarantined')) THEN $7::bigint
        ELSE $5::bigint
      END,
      wait_signal = $6::text, wait_children = $8::boolean,
      result = coalesce($9::bytea, result), reason = coalesce($10::text, reason),
      inbox = inbox - $11::bigint, updated_at = $7::bigint,
      lease_owner = CASE WHEN $12::boolean THEN NULL ELSE lease_owner END,
      lease_token = CASE WHEN $12::boolean THEN NULL ELSE lease_token END,
      lease_until = CASE WHEN $12::boolean THEN NULL ELSE lease_until END
    WHERE id = $1 AND seq = $13::bigint AND lease_token = $14::bigint
    RETURNING inbox, due_at
"""

_RELEASE = """
    UPDATE objects SET
      due_at = CASE
        WHEN status = 'runnable' THEN coalesce($4::bigint, due_at)
        WHEN status <> 'dormant' THEN due_at
        WHEN EXISTS (SELECT 1 FROM inbox i WHERE i.object_id = $1
                     AND (i.name = objects.wait_signal OR i.name = 'peo.cancel')) THEN $3::bigint
        WHEN wait_children AND NOT EXISTS (SELECT 1 FROM objects c WHERE c.parent = $1
                     AND c.status NOT IN ('terminated', 'quarantined')) THEN $3::bigint
        ELSE $4::bigint
      END,
      lease_owner = NULL, lease_token = NULL, lease_until = NULL
    WHERE id = $1 AND lease_token = $2
    RETURNING due_at
"""

_SIGNAL = """
    UPDATE objects SET inbox = inbox + 1,
      due_at = CASE WHEN status = 'dormant' AND (wait_signal = $2::text OR $2::text = 'peo.cancel')
               THEN $3::bigint ELSE due_at END
    WHERE id = $1
    RETURNING status, due_at
"""

_INSERT_OBJECT = (
    "INSERT INTO objects (id, handler, scope, identity, priority, status, seq, head, due_at, parent,"
    " created_at, updated_at) VALUES ($1, $2, $3, $4, $5, 'runnable', 0, $6, $7, $8, $9, $10)"
)
_INSERT_ENTRY = "INSERT INTO entries (object_id, seq, body, sig, hash) VALUES ($1, $2, $3, $4, $5)"


def _is_due(due_at: int | None, now: int) -> bool:
    return due_at is not None and due_at <= now


class PostgresStore(Store):
    def __init__(self, url: str):
        self.url = url
        self.dsn, self.schema, self.host, self.port = parse_postgres_url(url)
        self.channel = f"peo_{self.schema}"
        self._pool: Any = None
        self._listener: Any = None  # the LISTEN connection, opened by the first wait_for_work
        self._listen_lock: asyncio.Lock | None = None
        self._notified = asyncio.Event()  # replaced in open(); set by NOTIFY

    # -- plumbing ---------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return f"PostgreSQL at {self.host}:{self.port}"

    def _translate(self, exc: BaseException) -> StoreError | None:
        """The peo error for a driver or OS error, or None if ``exc`` is not one."""
        if isinstance(exc, asyncpg.exceptions.ConnectionDoesNotExistError):
            # The connection died mid-operation: the commit outcome may be unknown, the
            # caller re-reads (entry_hash) and retries.
            return StoreError(f"lost the connection to {self._where}: {exc}", retryable=True)
        if isinstance(exc, asyncpg.PostgresError):
            state = str(getattr(exc, "sqlstate", "") or "")
            if state.startswith("23"):  # integrity constraint: a duplicate id or entry
                return ConflictError(f"PostgreSQL constraint: {exc}")
            if state == "3D000":
                return StoreError(f"{self._where}: {exc}", retryable=False)
            if state.startswith("28"):
                return StoreError(f"{self._where} refused the login: {exc}", retryable=False)
            # Connection trouble, serialization failures and deadlocks, lack of resources,
            # a server shutting down or restarting, lock timeouts, I/O errors: try again.
            retryable = state[:2] in ("08", "40", "53", "57", "58") or state == "55P03"
            return StoreError(f"{self._where}: {exc} (SQLSTATE {state})", retryable=retryable)
        if isinstance(exc, asyncpg.InterfaceError | asyncpg.exceptions.InternalClientError):
            # A broken pooled connection is replaced on the next acquire; only our own
            # close makes trying again pointless.
            return StoreError(f"{self._where}: {exc}", retryable=self._pool is not None)
        if isinstance(exc, TimeoutError):  # before OSError: TimeoutError is one
            return StoreError(f"{self._where} did not answer in time", retryable=True)
        if isinstance(exc, OSError):
            return StoreError(f"cannot reach {self._where}: {exc.strerror or exc}", retryable=True)
        return None

    async def _guard(self, op: Callable[[], Awaitable[T]]) -> T:
        """Run ``op``; no driver exception escapes, only peo.errors."""
        try:
            return await op()
        except (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError,
                OSError) as exc:
            translated = self._translate(exc)
            assert translated is not None
            raise translated from None

    @property
    def pool(self) -> Any:
        if self._pool is None:
            raise StoreError("the store is not open", retryable=False)
        return self._pool

    def _connect_kwargs(self) -> dict[str, Any]:
        return {
            "timeout": _CONNECT_TIMEOUT,
            "command_timeout": _COMMAND_TIMEOUT,
            # Quoted so a mixed-case schema name is taken literally.
            "server_settings": {"search_path": f'"{self.schema}"', "application_name": "peo"},
        }

    async def open(self) -> None:
        if self._pool is not None:
            return
        # Made here, not in __init__, so they belong to the loop that uses the store.
        self._listen_lock = asyncio.Lock()
        self._notified = asyncio.Event()

        async def go() -> None:
            self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4, **self._connect_kwargs())
            await self._migrate()

        try:
            await self._guard(go)
        except BaseException:
            await self.aclose()
            raise

    async def _migrate(self) -> None:
        s = f'"{self.schema}"'
        # Several nodes may open a fresh database at once: one advisory lock per schema
        # makes them take turns, so each migration runs exactly once.
        key = int.from_bytes(hashlib.blake2b(f"peo-migrate:{self.schema}".encode(), digest_size=8).digest(),
                             "big", signed=True)
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", key)
            # Checked first: CREATE SCHEMA IF NOT EXISTS demands the CREATE privilege on
            # the database even when the schema is there already.
            if not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", self.schema):
                await conn.execute(f"CREATE SCHEMA {s}")
            await conn.execute(f"CREATE TABLE IF NOT EXISTS {s}.peo_schema (version INTEGER NOT NULL)")
            current = await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {s}.peo_schema")
            if current > len(_MIGRATIONS):
                raise StoreError(
                    f"store schema version {current} is newer than this peo supports ({len(_MIGRATIONS)})",
                    retryable=False,
                )
            for number in range(current, len(_MIGRATIONS)):
                await conn.execute(_MIGRATIONS[number].replace("{s}", s))
                await conn.execute(f"INSERT INTO {s}.peo_schema (version) VALUES ($1)", number + 1)

    async def aclose(self) -> None:
        listener, self._listener = self._listener, None
        pool, self._pool = self._pool, None
        if listener is not None:
            try:
                await asyncio.wait_for(listener.close(), 5)
            except Exception:  # a broken connection: nothing more to save
                listener.terminate()
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), 10)
            except Exception:
                pool.terminate()

    async def _write(self, body: Callable[[Conn], Awaitable[T]]) -> T:
        """Run ``body`` in one transaction on one pooled connection (rolled back on any error)."""

        async def op() -> T:
            async with self.pool.acquire() as conn:
                tr = conn.transaction()
                await tr.start()
                try:
                    result = await body(conn)
                    if faultpoints.ARMED:
                        faultpoints.hit("store.before_commit")
                except BaseException:
                    try:
                        await tr.rollback()
                    except Exception:  # the connection is gone; the server rolls back itself
                        pass
                    raise
                await tr.commit()
            if faultpoints.ARMED:
                faultpoints.hit("store.after_commit")
            return result

        return await self._guard(op)

    async def _read(self, sql: str, *args: Any) -> list[Any]:
        async def op() -> list[Any]:
            return list(await self.pool.fetch(sql, *args))

        return await self._guard(op)

    async def _notify(self, conn: Conn) -> None:
        """Tell idle nodes that something is due (delivered when the transaction commits)."""
        await conn.execute("SELECT pg_notify($1, '')", self.channel)

    # -- the contract -------------------------------------------------------------------

    async def create(self, objects: Sequence[NewObject]) -> None:
        if not objects:
            return

        async def body(conn: Conn) -> None:
            await _insert_objects(conn, objects)
            await self._notify(conn)

        await self._write(body)

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
        if limit <= 0 or not handlers:
            return []
        # SKIP LOCKED: rows another claimer (or a writer) holds are passed over, so claimers
        # never queue behind each other, and the row locks taken here make each lease
        # exclusive. The CTE is MATERIALIZED so the locking select runs exactly once.
        # Each row gets its own random 62-bit token, joined by rank from an array.
        sql = """
            WITH picked AS MATERIALIZED (
                SELECT id, priority, due_at FROM objects
                WHERE due_at <= $1 AND (lease_until IS NULL OR lease_until < $1)
                  AND status IN ('runnable', 'dormant')
                  AND handler = ANY($3::text[]) AND ($4::text[] IS NULL OR scope = ANY($4::text[]))
                  AND id <> ALL($5::text[])
                ORDER BY priority DESC, due_at
                LIMIT $2
                FOR UPDATE SKIP LOCKED
            ), ranked AS (
                SELECT id, row_number() OVER (ORDER BY priority DESC, due_at, id) AS n FROM picked
            )
            UPDATE objects o SET lease_owner = $6, lease_token = t.token, lease_until = $7
            FROM ranked JOIN unnest($8::bigint[]) WITH ORDINALITY AS t(token, n) USING (n)
            WHERE o.id = ranked.id
            RETURNING o.id, o.lease_token, o.seq, o.inbox, o.head, ranked.n
        """
        tokens = [secrets.randbits(62) for _ in range(limit)]
        args = [now, limit, list(handlers), None if scopes is None else list(scopes), list(exclude),
                owner, now + lease_ns, tokens]

        async def body(conn: Conn) -> list[Claim]:
            rows = await conn.fetch(sql, *args)
            return [Claim(r[0], r[1], r[2], r[3], bytes(r[4])) for r in sorted(rows, key=lambda r: r[5])]

        return await self._write(body)

    async def drop_leases(self, owner: str) -> int:
        async def body(conn: Conn) -> int:
            rows = await conn.fetch(
                "SELECT id FROM objects WHERE lease_owner = $1 ORDER BY id FOR UPDATE", owner
            )
            if not rows:
                return 0
            await conn.execute(
                "UPDATE objects SET lease_owner = NULL, lease_token = NULL, lease_until = NULL"
                " WHERE lease_owner = $1",
                owner,
            )
            await self._notify(conn)  # what it held is claimable now
            return len(rows)

        return await self._write(body)

    async def renew(self, owner: str, leases: dict[str, int], *, until: int) -> set[str]:
        if not leases:
            return set()
        ids = list(leases)
        tokens = [leases[i] for i in ids]

        async def body(conn: Conn) -> set[str]:
            await conn.fetch(_LOCK, ids)  # id order, like every multi-row writer
            rows = await conn.fetch(
                "UPDATE objects o SET lease_until = $1 FROM unnest($2::text[], $3::bigint[]) AS l(id, token)"
                " WHERE o.id = l.id AND o.lease_owner = $4 AND o.lease_token = l.token RETURNING o.id",
                until, ids, tokens, owner,
            )
            return set(ids) - {r[0] for r in rows}

        return await self._write(body)

    async def entries(self, object_id: str, after: int = -1) -> list[tuple[bytes, bytes]]:
        rows = await self._read(
            "SELECT body, sig FROM entries WHERE object_id = $1 AND seq > $2 ORDER BY seq", object_id, after
        )
        return [(bytes(b), bytes(s)) for b, s in rows]

    async def entries_of(self, object_ids: Sequence[str]) -> dict[str, list[tuple[bytes, bytes]]]:
        out: dict[str, list[tuple[bytes, bytes]]] = {oid: [] for oid in object_ids}
        if object_ids:
            rows = await self._read(
                "SELECT object_id, body, sig FROM entries WHERE object_id = ANY($1::text[]) ORDER BY object_id, seq",
                list(out),
            )
            for oid, b, s in rows:
                out[oid].append((bytes(b), bytes(s)))
        return out

    async def entry_hash(self, object_id: str, seq: int) -> bytes | None:
        rows = await self._read("SELECT hash FROM entries WHERE object_id = $1 AND seq = $2", object_id, seq)
        return bytes(rows[0][0]) if rows else None

    async def append(self, items: Sequence[AppendItem], *, now: int) -> list[int | None]:
        if not items:
            return []
        # Every row the batch decides from: its own objects and the parents it may wake.
        ids = {i.object_id for i in items}
        ids.update(i.parent for i in items if i.parent is not None and i.status == "terminated")

        async def body(conn: Conn) -> list[int | None]:
            # Locked up front in id order (see _LOCK): the heads read here cannot change
            # until we commit, and every update below runs as a statement of its own.
            heads = {r[0]: (r[1], r[2]) for r in await conn.fetch(_LOCK, sorted(ids))}
            results: list[int | None] = []
            rows: list[tuple[str, int, bytes, bytes, bytes]] = []
            wake = False
            for item in items:
                outcome = await _append_one(conn, item, now, heads)
                if outcome is None:
                    results.append(None)
                    continue
                inbox, woke = outcome
                results.append(inbox)
                wake = wake or woke
                e = item.entry
                rows.append((item.object_id, e.seq, e.body, e.signature, e.hash))
            # Nothing in the transaction reads the entry rows, so they go in one pipelined batch.
            if rows:
                await conn.executemany(_INSERT_ENTRY, rows)
            if wake:
                await self._notify(conn)
            return results

        return await self._write(body)

    async def release(self, object_id: str, token: int, *, due_at: int | None, now: int) -> None:
        async def body(conn: Conn) -> None:
            await conn.fetch(_LOCK, [object_id])  # then a fresh snapshot: see _LOCK
            row = await conn.fetchrow(_RELEASE, object_id, token, now, due_at)
            if row is not None and _is_due(row[0], now):
                await self._notify(conn)

        await self._write(body)

    async def quarantine(self, object_id: str, reason: str, *, now: int) -> None:
        async def body(conn: Conn) -> None:
            parent = await conn.fetchval("SELECT parent FROM objects WHERE id = $1", object_id)  # never changes
            # Locked with the parent, as a terminating child is (see _LOCK): a parent going
            # dormant at the same moment sees this child finished, or is woken below.
            await conn.fetch(_LOCK, [object_id] if parent is None else [object_id, parent])
            await conn.execute(
                "UPDATE objects SET status = 'quarantined', reason = $1, due_at = NULL, lease_owner = NULL,"
                " lease_token = NULL, lease_until = NULL, updated_at = $2 WHERE id = $3",
                reason[:2000], now, object_id,
            )
            # A quarantined child counts as finished: wake a parent waiting for it.
            if parent is not None and await conn.fetchrow(
                "UPDATE objects SET due_at = $1 WHERE id = $2 AND status = 'dormant' AND wait_children RETURNING id",
                now, parent,
            ):
                await self._notify(conn)

        await self._write(body)

    async def signal(self, object_id: str, name: str, payload: Any, *, now: int) -> int:
        blob = packb(payload)

        async def body(conn: Conn) -> int:
            # The lock orders this signal against an append or release deciding whether
            # the object sleeps (see _LOCK); it also tells us whether the object exists.
            if not await conn.fetch(_LOCK, [object_id]):
                raise NotFoundError(f"no object {object_id}")
            sid = await conn.fetchval(
                "INSERT INTO inbox (object_id, name, payload, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
                object_id, name, blob, now,
            )
            row = await conn.fetchrow(_SIGNAL, object_id, name, now)
            if row is not None and row[0] in ("runnable", "dormant") and _is_due(row[1], now):
                await self._notify(conn)
            return int(sid)

        return await self._write(body)

    async def inbox(self, object_id: str) -> list[Signal]:
        rows = await self._read(
            "SELECT id, name, payload FROM inbox WHERE object_id = $1 ORDER BY id", object_id
        )
        out = []
        for sid, name, payload in rows:
            try:
                value = unpackb(bytes(payload))
            except CodecError:
                value = None  # written by peo itself; a corrupt payload is delivered as None
            out.append(Signal(name, value, sid))
        return out

    async def get(self, object_id: str) -> ObjectRow:
        rows = await self._read(f"SELECT {_COLUMNS} FROM objects WHERE id = $1", object_id)
        if not rows:
            raise NotFoundError(f"no object {object_id}")
        return _row(rows[0])

    async def list(self, *, status: str | None = None, limit: int | None = None,
                   parent: str | None = None) -> list[ObjectRow]:
        where: list[str] = []
        args: list[Any] = []
        if status is not None:
            if status == "running":
                args.append(_now_hint())
                where.append(f"status = 'runnable' AND lease_until > ${len(args)}")
            else:
                args.append(status)
                where.append(f"status = ${len(args)}")
        if parent is not None:
            args.append(parent)
            where.append(f"parent = ${len(args)}")
        sql = f"SELECT {_COLUMNS} FROM objects"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_row(r) for r in await self._read(sql, *args)]

    async def busy(self, *, now: int) -> bool:
        rows = await self._read(
            "SELECT 1 FROM objects WHERE (due_at IS NOT NULL AND due_at <= $1 AND status IN ('runnable', 'dormant'))"
            " OR lease_until > $1 LIMIT 1",
            now,
        )
        return bool(rows)

    async def next_due(self) -> int | None:
        rows = await self._read(
            "SELECT min(due_at) FROM objects WHERE due_at IS NOT NULL AND status IN ('runnable', 'dormant')"
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
        async def body(conn: Conn) -> None:
            await _insert_objects(conn, [obj])
            if rest:
                await conn.executemany(_INSERT_ENTRY, [(obj.id, e.seq, e.body, e.signature, e.hash) for e in rest])
            last = rest[-1] if rest else obj.entry
            await conn.execute(
                "UPDATE objects SET seq = $1, head = $2, status = $3, due_at = $4, wait_signal = $5,"
                " wait_children = $6, result = $7, reason = $8, updated_at = $9 WHERE id = $10",
                last.seq, last.hash, status, due_at, wait_signal, wait_children, result, reason, now, obj.id,
            )
            if status in ("runnable", "dormant") and _is_due(due_at, now):
                await self._notify(conn)

        await self._write(body)

    # -- notifications --------------------------------------------------------------------

    def _on_notify(self, *_: object) -> None:
        self._notified.set()

    def _on_listener_closed(self, *_: object) -> None:
        self._listener = None  # reconnect on the next wait

    async def _listen(self) -> None:
        conn = await asyncpg.connect(self.dsn, **self._connect_kwargs())
        try:
            await conn.add_listener(self.channel, self._on_notify)
            conn.add_termination_listener(self._on_listener_closed)
        except BaseException:
            conn.terminate()
            raise
        self._listener = conn

    async def wait_for_work(self, timeout: float) -> None:
        """Wait for a NOTIFY on ``peo_<schema>`` or ``timeout`` seconds, whichever comes
        first. A notification that arrived while nobody waited is not lost: it is kept
        until the next call, which then returns at once."""
        if self._pool is None:
            await asyncio.sleep(timeout)
            return
        if self._listener is None or self._listener.is_closed():
            assert self._listen_lock is not None  # made by open()
            listening = False
            async with self._listen_lock:
                if self._listener is None or self._listener.is_closed():
                    self._listener = None
                    try:
                        await self._guard(self._listen)
                        listening = True
                    except StoreError:  # the server is away: plain sleeping is all we can do
                        pass
            if self._listener is None:
                await asyncio.sleep(timeout)
                return
            if listening:
                # Anything committed before LISTEN took effect was not heard: tell the
                # caller to look now rather than sleep through it.
                return
        if not self._notified.is_set():
            try:
                await asyncio.wait_for(self._notified.wait(), timeout)
            except TimeoutError:
                return
        self._notified.clear()


def _now_hint() -> int:
    import time

    return time.time_ns()


async def _insert_objects(conn: Conn, objects: Sequence[NewObject]) -> None:
    await conn.executemany(
        _INSERT_OBJECT,
        [
            (o.id, o.handler, o.scope, o.identity, o.priority, o.entry.hash, o.due_at, o.parent, o.due_at, o.due_at)
            for o in objects
        ],
    )
    await conn.executemany(
        _INSERT_ENTRY, [(o.id, 0, o.entry.body, o.entry.signature, o.entry.hash) for o in objects]
    )


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
    woke = False
    if item.children:
        # Before the head update, so that its "have all children finished?" sees them.
        await _insert_objects(conn, item.children)
        woke = any(_is_due(c.due_at, now) for c in item.children)
    row = await conn.fetchrow(
        _APPEND_HEAD,
        item.object_id, e.seq, e.hash, item.status, item.due_at, item.wait_signal, now, item.wait_children,
        item.result, item.reason, len(item.consumed), item.release, e.seq - 1, item.token,
    )
    if row is None:  # cannot happen while we hold the row lock; never write without the CAS
        raise StoreError(f"compare-and-swap on {item.object_id} changed under a row lock", retryable=True)
    heads[item.object_id] = (e.seq, None if item.release else item.token)
    if item.consumed:
        await conn.execute(
            "DELETE FROM inbox WHERE object_id = $1 AND id = ANY($2::bigint[])", item.object_id, list(item.consumed)
        )
    if item.release and item.status in ("runnable", "dormant") and _is_due(row[1], now):
        woke = True
    if item.status == "terminated" and item.parent is not None:
        parent = await conn.fetchrow(
            "UPDATE objects SET due_at = $1 WHERE id = $2 AND status = 'dormant' AND wait_children RETURNING id",
            now, item.parent,
        )
        woke = woke or parent is not None
    return int(row[0]), woke
