"""Progress, not pings: a node renews the leases of the objects it makes progress on; one
held past its handler's patience without a committed entry is given up, so another node
takes it over (and that claim counts as one without progress)."""

from __future__ import annotations

import asyncio
from typing import Any

from peo.node.leases import Leases
from peo.store import Claim

SECOND = 10**9


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000 * SECOND

    def __call__(self) -> int:
        return self.now


class RenewingStore:
    """Records what each renewal asked for."""

    def __init__(self) -> None:
        self.renewed: list[set[str]] = []

    async def renew(self, owner: str, leases: dict[str, int], *, until: int) -> set[str]:
        self.renewed.append(set(leases))
        return set()


def claim(oid: str, handler: str) -> Claim:
    return Claim(oid, 1, 0, 0, b"", handler=handler, scope="default", priority=0, parent=None)


async def test_an_object_without_progress_past_its_patience_is_given_up_and_no_longer_renewed() -> None:
    clock, store = Clock(), RenewingStore()
    leases = Leases(store, "node-a", SECOND, clock)  # type: ignore[arg-type]
    leases.patience = lambda handler: {"slow": 60 * SECOND}.get(handler, 5 * SECOND)
    quick, slow = leases.hold(claim("quick", "fast")), leases.hold(claim("slow", "slow"))
    clock.now += 4 * SECOND
    assert leases.stuck(clock()) == []
    clock.now += 2 * SECOND  # 6 s without progress: past "fast"'s 5 s, within "slow"'s 60 s
    assert leases.stuck(clock()) == [quick]
    quick.progress_at = clock()  # an entry committed: progress
    assert leases.stuck(clock()) == []
    clock.now += 6 * SECOND
    renewer = asyncio.ensure_future(leases.renew_forever())
    for _ in range(200):
        if store.renewed:
            break
        await asyncio.sleep(0.01)
    renewer.cancel()
    assert store.renewed and store.renewed[0] == {"slow"}  # "quick" was given up, not renewed
    assert quick.lost and not slow.lost


def test_without_patience_nothing_is_ever_given_up() -> None:
    clock: Any = Clock()
    leases = Leases(RenewingStore(), "node-a", SECOND, clock)  # type: ignore[arg-type]
    leases.hold(claim("x", "h"))
    clock.now += 10**6 * SECOND
    assert leases.stuck(clock()) == []
