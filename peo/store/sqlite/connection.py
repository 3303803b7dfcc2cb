"""The SQLite store's plumbing: its URL, its two connections, transactions, errors.

Each connection is used in one of two ways, never both at once (its lock sees to it):

* inline, on the event loop's thread, with busy_timeout 0: the common case. A hop to
  another thread and back costs ~80 us here (two thread wake-ups), more than the SQL
  of a step; blocking the loop for the SQL and the fsync is cheaper than that hop.
* on aiosqlite's connection thread, with the full busy timeout, when the inline attempt
  found the database locked by another process: the loop must never wait out a lock.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar, cast
from urllib.parse import parse_qs, urlparse

import aiosqlite

from ... import faultpoints
from ...errors import ConflictError, StoreError, UsageError
from ..sql import no_store
from ..stalls import SQLITE_PUSH, push_stalled
from .schema import setup

__all__ = ["BUSY_TIMEOUT_MS", "Connections", "parse_sqlite_url"]

T = TypeVar("T")

#: How long a write waits for another process's lock (read at each use: tests shorten it).
BUSY_TIMEOUT_MS = 10_000


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


def _is_busy(exc: sqlite3.OperationalError) -> bool:
    text = str(exc)
    return "locked" in text or "busy" in text


def _connect(path: str) -> Awaitable[aiosqlite.Connection]:
    return aiosqlite.connect(path, isolation_level=None, check_same_thread=False)


class Connections:
    """A writer and a reader connection to one database file, and how to use them."""

    def __init__(self, url: str):
        self.url = url
        self.path, self.durability = parse_sqlite_url(url)
        self._db: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        # One user at a time per connection: (writer, reader).
        self._locks = (asyncio.Lock(), asyncio.Lock())
        self._timeouts: dict[int, int] = {}  # id(connection) -> its busy_timeout now
        self._create, self._force = True, False  # open()'s options, for _setup

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
        thread (see the module's docstring). ``fn`` must be safe to run again after an inline
        attempt failed as busy: a write is rolled back first (see :meth:`_write`), a read
        changes nothing."""
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
                self._busy_timeout(db._conn, BUSY_TIMEOUT_MS)
                return fn(db._conn)

            run = cast(Callable[[Callable[[], T]], Awaitable[T]], db._execute)
            return await self._guard(lambda: run(slow))

    async def open(self, *, create: bool = True, force: bool = False) -> None:
        directory = os.path.dirname(os.path.abspath(self.path))
        if not os.path.isdir(directory):
            raise StoreError(f"cannot open SQLite store: directory {directory} does not exist", retryable=False)
        if not create and not os.path.exists(self.path):
            raise no_store(self.url)  # connecting would create the file
        self._create, self._force = create, force

        async def go() -> None:
            self._db = await _connect(self.path)

        async def go_reader() -> None:
            self._reader = await _connect(self.path)

        try:
            await self._guard(go)
            # On the connection's thread: migrations may wait for other processes' locks.
            run = cast(Callable[[Callable[[], None]], Awaitable[None]], self.db._execute)
            await self._guard(lambda: run(self._setup))
            await self._guard(go_reader)
        except BaseException:
            await self.aclose()
            raise

    def _setup(self) -> None:
        conn, busy = self.db._conn, BUSY_TIMEOUT_MS
        setup(conn, durability=self.durability, busy_timeout_ms=busy, where=self.url,
              create=self._create, force=self._force)
        # The writes that count claims without progress call it (see peo.store.stalls.push_stalled).
        conn.create_function(SQLITE_PUSH, 2, push_stalled, deterministic=True)
        self._timeouts[id(conn)] = busy

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

    async def _read(self, query: str, args: Sequence[Any] = ()) -> list[Any]:
        return await self._call(lambda conn: conn.execute(query, args).fetchall(), reader=True)
