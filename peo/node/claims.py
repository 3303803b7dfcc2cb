"""Claiming: lease due objects while there is room, start a worker for each, and nap
until more work may be due; in until-idle mode, notice when nothing is left."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING, Any

from ..errors import StoreError
from ..store import Claim
from ..store.fleet import serves

if TYPE_CHECKING:
    from .node import Node

__all__ = ["Claimer"]

log = logging.getLogger("peo.node")

# A running node tells the store what it serves this often (ns).
REGISTER_EVERY_NS = 60 * 10**9
# A batch of claims whose memories hold at most this many entries in all is loaded at once.
_PREFETCH_ROWS = 4096


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a helper task's outcome as seen (no 'exception was never retrieved' noise)."""
    if not task.cancelled():
        task.exception()


class Claimer:
    def __init__(self, node: Node):
        self.node = node
        self.wake = asyncio.Event()  # set when a worker frees room or the node stops
        # Objects held whose earlier claims ended without progress (their node died or hung
        # holding them): each runs alone, so that if it kills this node too, no other
        # object's claim is counted against it (peo.healing.tiers).
        self.probation: set[str] = set()
        self.draining = False  # a stalled object waits for the objects held here to end first
        # Other nodes registered lately: only then is an object that stalled here left to them.
        self.others_alive = False

    async def run(self, tg: asyncio.TaskGroup, *, until_idle: bool) -> None:
        """Claim and start workers until the node stops (or, ``until_idle``, nothing is left
        that this node can serve)."""
        node = self.node
        handlers = sorted(h for h in node.app.handlers if node.policy.accepts_handler(h))
        scopes = node.policy.scope_filter()
        idle_checks = 0
        registered = None
        while not node.stopping:
            now = node.clock()
            if registered is None or now - registered >= REGISTER_EVERY_NS:
                registered = await self._register(handlers, now)
            claims = await self._claim(handlers, scopes, now)
            if claims is None:
                await asyncio.sleep(node.settings.poll_interval)
                continue
            if claims:
                await self._start(tg, claims)
                idle_checks = 0
                continue
            if until_idle and not node.leases.held:
                try:
                    # Only what this node can serve keeps it waiting.
                    busy = await node.store.busy(now=now + node.idle_horizon_ns, handlers=handlers,
                                                 scopes=scopes)
                except StoreError:
                    busy = True
                if not busy:
                    idle_checks += 1
                    if idle_checks >= 2:  # twice in a row: nothing committed in between
                        await self._left_behind(handlers, scopes, now)
                        return
                    continue
            idle_checks = 0
            await self._nap(now)

    async def _left_behind(self, handlers: list[str], scopes: frozenset[str] | None, now: int) -> None:
        """Say what an idle node leaves behind because it cannot serve it, and why."""
        node = self.node
        left: dict[str, int] = {}
        with contextlib.suppress(StoreError):
            for (handler, scope), n in (await node.store.due_counts(now=now)).items():
                if not serves((handler, scope), handlers, scopes):
                    why = (f"handler {handler!r} is not served by this node" if handler not in handlers
                           else f"trust scope {scope!r} is not accepted by this node's policy")
                    left[why] = left.get(why, 0) + n
        node.left_behind = left
        for why, n in left.items():
            log.warning("idle_left_behind objects=%d reason=%s", n, why)

    async def _register(self, handlers: list[str], now: int) -> int:
        """Tell the store which handlers this node serves (submit warns about the others)."""
        node = self.node
        try:
            await node.store.register_node(node.node_id, handlers, now=now, notes=node.notes)
            recent = await node.store.nodes(since=now - 2 * REGISTER_EVERY_NS)
            self.others_alive = any(n.id != node.node_id for n in recent)
        except StoreError as exc:
            log.warning("register_failed error=%s", exc)
        return now

    async def _claim(self, handlers: list[str], scopes: frozenset[str] | None, now: int) -> list[Claim] | None:
        """Claims for the room there is (None: the store failed, try again after a nap)."""
        node = self.node
        room = node.settings.concurrency - len(node.leases.held)
        if room <= 0 or not handlers or self.probation or self.draining:
            return []
        # The memory budget admits fewer, or none (peo.healing.memory); else one group.
        groups = [(handlers, room)] if node.memory is None else node.memory.admission(handlers, room)
        claims: list[Claim] = []
        try:
            for group, limit in groups:
                claims += await node.store.claim(
                    node.node_id, now=now, lease_ns=node.lease_ns, limit=limit, handlers=group,
                    scopes=scopes, exclude=tuple(node.leases.held), avoid_stalled=self.others_alive,
                )
        except StoreError as exc:
            log.warning("claim_failed error=%s", exc)
            return claims or None  # what was claimed before the failure is held and served
        return await self._alone(claims, now)

    async def _alone(self, claims: list[Claim], now: int) -> list[Claim]:
        """``claims``, unless one of them stalled before (its earlier claims ended without
        progress): then that one alone if nothing else is held here, else none; the others
        are let go at once (for another node, or for later), and nothing more is claimed
        until it has ended (or until the objects held have, before it is tried here)."""
        stalled = next((c for c in claims if c.stalls), None)
        if stalled is None:
            return claims
        alone = not self.node.leases.held
        for other in claims:
            if other is not stalled or not alone:
                with contextlib.suppress(StoreError):
                    await self.node.store.release(other.id, other.token, due_at=now, now=now)
        if not alone:
            self.draining = True
            return []
        self.probation.add(stalled.id)
        return [stalled]

    async def _start(self, tg: asyncio.TaskGroup, claims: list[Claim]) -> None:
        node = self.node
        for claim in claims:  # held (and so renewed) from here on
            node.leases.hold(claim)
            node.stats["claims"] += 1
            if node.memory is not None:
                node.memory.reserve(claim.id, claim.handler, claim.priority)
        memories: dict[str, list[tuple[bytes, bytes]]] = {}
        if sum(c.seq + 1 for c in claims) <= _PREFETCH_ROWS:
            # Short memories of a batch of claims are read in one query, not one each.
            with contextlib.suppress(StoreError):  # then each worker reads its own
                memories = await node.store.entries_of([c.id for c in claims])
        budget = node.memory
        for claim in claims:
            task = tg.create_task(node.worker.work(claim, memories.get(claim.id)))
            if budget is not None:  # reserved in the memory budget while the object is here
                task.add_done_callback(budget.released(claim.id))
            task.add_done_callback(self._ended)
            node.track(task)

    def _ended(self, _: object) -> None:
        """A worker ended: once none is left, claims go on (a stalled object may be claimed
        alone again)."""
        if not self.node.leases.held:
            self.probation.clear()
            self.draining = False
            self.wake.set()

    async def _nap(self, now: int) -> None:
        """Sleep until a worker frees room, the next object is due, or a poll interval."""
        node = self.node
        delay = node.settings.poll_interval
        with contextlib.suppress(StoreError):
            due = await node.store.next_due()
            if due is not None and due > now:
                delay = min(delay, max((due - now) / 1e9, 0.001))
        self.wake.clear()
        waiter = asyncio.ensure_future(node.store.wait_for_work(delay))
        woken = asyncio.ensure_future(self.wake.wait())
        try:
            await asyncio.wait({waiter, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Cancel the helpers without awaiting them: awaiting here could swallow a
            # cancellation of *this* task (e.g. a second SIGTERM) and the node would not stop.
            for t in (waiter, woken):
                t.cancel()
                t.add_done_callback(_retrieve)
