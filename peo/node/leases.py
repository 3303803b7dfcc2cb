"""Leases: what a node holds, renewing it, and taking back its own after a restart."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

import attrs

from .. import faultpoints
from ..errors import StoreError
from ..store import Claim, Store

__all__ = ["Held", "Leases"]

log = logging.getLogger("peo.node")


@attrs.define
class Held:
    """An object this node holds: its claim, the lease token that fences every write,
    whether the lease was lost, and whether the worker already released it."""

    claim: Claim
    token: int
    lost: bool = False
    released: bool = False
    progress_at: int = 0  # when it was claimed, then when its last entry was committed (ns)


class Leases:
    """The objects a node holds, by id, and the loop that keeps their leases alive."""

    def __init__(self, store: Store, owner: str, lease_ns: int, clock: Callable[[], int]):
        self.store = store
        self.owner = owner
        self.lease_ns = lease_ns
        self.clock = clock
        self.held: dict[str, Held] = {}
        #: How long an object may be held without progress before its lease is given up
        #: (ns, by handler; None: never). The node sets it from its handlers' timeouts.
        self.patience: Callable[[str], int | None] = lambda handler: None

    def hold(self, claim: Claim) -> Held:
        held = Held(claim, claim.token, progress_at=self.clock())
        self.held[claim.id] = held
        return held

    def stuck(self, now: int) -> list[Held]:
        """Held objects without progress for longer than their handler's patience: a step
        that outlived its own timeout (a sync handler's thread cannot be stopped), a worker
        wedged on something. Their leases are no longer renewed, so another node takes them
        over and the claim counts as one without progress (progress, not pings)."""
        out = []
        for h in self.held.values():
            limit = self.patience(h.claim.handler)
            if limit is not None and not h.released and not h.lost and now - h.progress_at > limit:
                out.append(h)
        return out

    def drop(self, object_id: str) -> None:
        self.held.pop(object_id, None)

    async def renew_forever(self) -> None:
        """Every third of the lease time, extend every lease held; mark the lost ones."""
        while True:
            await asyncio.sleep(self.lease_ns / 3e9)
            if not self.held:
                continue
            if faultpoints.ARMED:
                faultpoints.hit("node.before_renew")
            for stuck in self.stuck(self.clock()):
                stuck.lost = True  # the worker stops at its next write; the lease lapses
                log.error("lease_given_up id=%s handler=%s no_progress_for=%.1fs", stuck.claim.id,
                          stuck.claim.handler, (self.clock() - stuck.progress_at) / 1e9)
            leases = {oid: h.token for oid, h in self.held.items() if not h.released and not h.lost}
            try:
                lost = await self.store.renew(self.owner, leases, until=self.clock() + self.lease_ns)
            except StoreError as exc:
                log.warning("renew_failed error=%s", exc)
                continue
            for oid in lost:
                h = self.held.get(oid)
                if h is not None:
                    h.lost = True

    async def drop_own(self) -> None:
        """Leases still held under our node id are from a previous run of this node (it
        crashed): drop them so their objects resume at once instead of after the TTL.
        Only an optimisation: if the store fails here, the leases simply expire."""
        for attempt in range(3):
            try:
                await self.store.drop_leases(self.owner)
                return
            except StoreError as exc:
                log.warning("drop_leases_failed attempt=%d error=%s", attempt + 1, exc)
                await asyncio.sleep(0.05 * 2**attempt)


async def open_with_retry(store: Store, stopping: asyncio.Event) -> bool:
    """Open the store, retrying while the failure may pass (a database locked by another
    process, a server not up yet); False if ``stopping`` was set first. Anything else raises."""
    delay = 0.05
    while True:
        try:
            await store.open()
            return True
        except StoreError as exc:
            if not exc.retryable:
                raise
            log.warning("store_open_failed error=%s retry_in=%.2fs", exc, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), delay)
        if stopping.is_set():
            return False
        delay = min(delay * 2, 2.0)
