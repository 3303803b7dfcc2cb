"""Group commit: the appends of every worker that is ready at the same moment go to the
store in one transaction; each worker learns that its step is durable only when that
transaction commits."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from ..errors import LeaseLostError, StoreError
from ..store import AppendItem, Store

__all__ = ["GroupCommit"]

log = logging.getLogger("peo.node")

Spawn = Callable[[Coroutine[Any, Any, None]], "asyncio.Task[None]"]


class GroupCommit:
    """Queue appends, flush them together. ``spawn`` starts the flush task: the node binds
    it to its TaskGroup (:meth:`bind`), so no task outlives the node."""

    def __init__(self, store: Store, clock: Callable[[], int], stats: dict[str, int]):
        self.store = store
        self.clock = clock
        self.stats = stats
        self._pending: list[tuple[AppendItem, asyncio.Future[int | None]]] = []
        self._flushing = False
        self._spawn: Spawn | None = None

    def bind(self, spawn: Spawn | None) -> None:
        self._spawn = spawn

    async def commit(self, item: AppendItem) -> int | None:
        """Queue ``item`` for the next group commit and wait until it is durable. Returns
        the count of signals left in the inbox, or None if another writer won the seq.

        If the store fails with an unknown outcome, re-read the entry at that seq: if it
        is ours (same hash) the commit happened; if there is none, try again; if another
        entry is there, we lost the object.
        """
        for attempt in range(8):
            fut: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
            self._pending.append((item, fut))
            if not self._flushing:
                self._flushing = True
                asyncio.get_running_loop().call_soon(self._start_flush)
            try:
                return await fut
            except StoreError as exc:
                if isinstance(exc, LeaseLostError):
                    raise
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
                try:
                    stored = await self.store.entry_hash(item.object_id, item.entry.seq)
                except StoreError:
                    continue
                if stored == item.entry.hash:
                    return 1  # ours committed; re-read the inbox to be safe
                if stored is not None:
                    return None
        raise StoreError(f"could not append to {item.object_id} after repeated store failures")

    def _start_flush(self) -> None:
        if self._spawn is None:  # pragma: no cover - the node binds before any worker runs
            raise RuntimeError("GroupCommit used outside a running node")
        self._spawn(self._flush())

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await self.store.append([i for i, _ in batch], now=self.clock())
                    self.stats["commits"] += 1
                except BaseException as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc if isinstance(exc, StoreError) else StoreError(str(exc)))
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, fut), res in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(res)
        finally:
            self._flushing = False
