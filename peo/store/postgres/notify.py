"""Notifications: a write that makes work due for other nodes sends ``NOTIFY`` on
``peo_<schema>`` (delivered when its transaction commits); idle nodes LISTEN on it in
:meth:`Notifications.wait_for_work` and wake at once instead of polling tightly.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg

from ...errors import StoreError
from .connection import Conn, Connections

__all__ = ["Notifications"]


class Notifications(Connections):
    """The connection pool plus a LISTEN connection, opened by the first wait."""

    def __init__(self, url: str):
        super().__init__(url)
        self.channel = f"peo_{self.schema}"
        self._listener: Any = None  # the LISTEN connection
        self._listen_lock: asyncio.Lock | None = None
        self._notified = asyncio.Event()  # replaced in open(); set by NOTIFY

    async def open(self, *, create: bool = True, force: bool = False) -> None:
        if self._pool is None:
            # Made here, not in __init__, so they belong to the loop that uses the store.
            self._listen_lock = asyncio.Lock()
            self._notified = asyncio.Event()
        await super().open(create=create, force=force)

    async def aclose(self) -> None:
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                await asyncio.wait_for(listener.close(), 5)
            except Exception:  # a broken connection: nothing more to save
                listener.terminate()
        await super().aclose()

    async def _notify(self, conn: Conn) -> None:
        """Tell idle nodes that something is due (delivered when the transaction commits)."""
        await conn.execute("SELECT pg_notify($1, '')", self.channel)

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
