"""Group commit: the appends of every worker that is ready at the same moment go to the
store in one transaction; each worker learns that its step is durable only when that
transaction commits.

One flusher task (:meth:`GroupCommit.run`, in the node's TaskGroup) does the appends. A
worker queues its item and sets an event; the flusher wakes after the other workers that
became ready in the same turn of the loop have queued theirs, and takes them all. (A
long-lived flusher costs less per step than a task per batch: on a chain of steps of one
object every batch holds one item.)"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from ..errors import LeaseLostError, StoreError
from ..store import AppendItem, Store

__all__ = ["GroupCommit"]

log = logging.getLogger("peo.node")

class GroupCommit:
    """Queue appends, flush them together (see the module docstring)."""

    def __init__(self, store: Store, clock: Callable[[], int], stats: dict[str, int]):
        self.store = store
        self.clock = clock
        self.stats = stats
        self._pending: list[tuple[AppendItem, asyncio.Future[int | None]]] = []
        self._ready = asyncio.Event()

    def reset(self) -> None:
        """Start afresh in the running event loop (a node may be run again in another one)."""
        self._pending = []
        self._ready = asyncio.Event()

    async def run(self) -> None:
        """The flusher: append what is queued, then wait for more. Runs until cancelled,
        which the node does once no worker is left."""
        while True:
            await self._ready.wait()
            self._ready.clear()
            await self._flush()

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
            self._ready.set()
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

    async def _flush(self) -> None:
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
