"""The PostgreSQL store's plumbing: the connection pool, transactions, and errors.

No driver exception escapes: every call goes through :meth:`Connections._guard`, which
turns asyncpg's and the OS's errors into peo.errors (retryable or not).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg

from ... import faultpoints
from ...errors import ConflictError, StoreError
from .schema import migrate
from .url import display_url, parse_postgres_url

__all__ = ["Conn", "Connections"]

T = TypeVar("T")
Conn = Any  # asyncpg.Connection (asyncpg ships no type information)

_CONNECT_TIMEOUT = 10.0  # seconds: an unreachable host fails open() in this time
_COMMAND_TIMEOUT = 60.0  # seconds: a hung server surfaces as a retryable StoreError
_DRIVER_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError, OSError)


class Connections:
    """A pool of connections to one schema of one PostgreSQL database."""

    def __init__(self, url: str):
        self.url = url
        self.dsn, self.schema, self.host, self.port = parse_postgres_url(url)
        self._pool: Any = None

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
        except _DRIVER_ERRORS as exc:
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

    async def open(self, *, create: bool = True, force: bool = False) -> None:
        if self._pool is not None:
            return
        where = f"{display_url(self.url)} (schema {self.schema})"

        async def go() -> None:
            self._pool = await asyncpg.create_pool(self.dsn, min_size=1, max_size=4, **self._connect_kwargs())
            async with self._pool.acquire() as conn, conn.transaction():
                await migrate(conn, self.schema, where=where, create=create, force=force)

        try:
            await self._guard(go)
        except BaseException:
            await self.aclose()
            raise

    async def aclose(self) -> None:
        pool, self._pool = self._pool, None
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

    async def _read(self, query: str, args: Sequence[Any] = ()) -> list[Any]:
        async def op() -> list[Any]:
            return list(await self.pool.fetch(query, *args))

        return await self._guard(op)
