"""Intake: the signals a held object receives this cycle, read in bounded batches and
checked before any of them reaches a decision.

The inbox is in the store, and anyone who can write the store can write it, so nothing in
it is believed: every signal must carry a seal (:mod:`peo.core.signals`) by a key this
node trusts for the object, allowed by the policy's ``[signals]`` rules, with a nonce the
object has not recorded before, and a payload an entry can hold. A signal that fails is
moved out of the inbox to the refused list (``peo show`` lists them, the log says why) and
the object goes on as if it had never arrived: it keeps waiting, and nothing loops.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..core.memory import Fold
from ..core.model import CANCEL_SIGNAL, Signal, Status
from ..core.signals import Refusal, screen, signal_limits
from ..store import SignalRefusal

if TYPE_CHECKING:
    from .node import Node

__all__ = ["Intake"]

log = logging.getLogger("peo.node")

# Batches of refused signals read in one cycle before it goes on with what it has: enough
# to drain a flood quickly, bounded so one cycle's work stays bounded too.
_MAX_REFUSED_BATCHES = 16
# The payloads one step receives, in all (bytes): well inside what one entry may hold
# (1 MiB), next to the step's own state update and result.
_BATCH_BYTES = 384 * 1024


class Intake:
    """Reads and screens the signals of the objects a node holds."""

    def __init__(self, node: Node):
        self.node = node

    async def signals(self, fold: Fold) -> Sequence[Signal]:
        """The signals to deliver to ``fold``'s next cycle, oldest first: for a dormant
        object only those that can wake it (a cancel, the awaited name), for a runnable one
        the next batch of any name. Refused ones are moved to the refused list."""
        node = self.node
        policy = node.policy
        names: frozenset[str] | None = None
        if fold.status is not Status.RUNNABLE:
            waiting = fold.wake.signal
            names = frozenset({CANCEL_SIGNAL, waiting}) if waiting else frozenset({CANCEL_SIGNAL})
        limits = signal_limits(policy)
        for _ in range(_MAX_REFUSED_BATCHES):
            batch = await node.store.inbox(fold.object_id, limit=policy.signal_batch, names=names,
                                           max_bytes=_BATCH_BYTES)
            if not batch:
                return ()
            good, refused = screen(
                batch, object_id=fold.object_id, scope=fold.context.trust_scope, keyring=node.keyring,
                seen=fold.signal_nonces, rules=policy.signal_senders,
                accept_unsigned=policy.accept_unsigned_signals, limits=limits, budget=_BATCH_BYTES,
            )
            if refused:
                await self._refuse(fold.object_id, refused)
            if good or not refused:  # something to deliver, or only what did not fit this time
                return good
        return ()

    async def _refuse(self, object_id: str, refused: list[Refusal]) -> None:
        node = self.node
        # One line per refused batch (a flood of forged signals must not flood the log).
        first = refused[0]
        log.warning("signal_refused id=%s count=%d signal=%s inbox_id=%d sender=%s reason=%s", object_id,
                    len(refused), first.name, first.id, first.sender or "-", first.reason[:300])
        node.stats["signals_refused"] = node.stats.get("signals_refused", 0) + len(refused)
        await node.store.refuse_signals(
            object_id, [SignalRefusal(r.id, r.reason, r.sender) for r in refused], now=node.clock())
