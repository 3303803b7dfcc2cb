"""Tiers 3 and 4: what a node does with an object whose claims keep ending without progress.

The store counts, across nodes and restarts, the claims of an object that ended without
progress (``Claim.stalls``: its node died or hung while holding it, the seq unchanged). Tier 2
is the store's too: the next claim goes to another node where one exists. The memory counts
the failed steps in a row of one error class (``Fold.class_streak``). A node that claims an
object with ``stalls`` at or above its ``max_recoveries`` (the intent's constraint, else the
node's setting), or is about to run a handler whose ``class_streak`` is:

* **restores** it (tier 3): a signed mutate entry sets the working state back to its
  known-good state (``Fold.known_good``: after the last step a handler marked with
  ``Continue(checkpoint=True)``, else after the last step that succeeded), recording from
  which seq and why; the history stays, and the object runs on from there (the entry is
  progress: the count starts again). Not if a restore to that same state was tried already;
* **quarantines** it otherwise (tier 4): nothing runs it any more, the reason says what was
  tried, and an alert is raised once for this incident through the node's sinks
  (``alert_command``, ``alert_webhook``), delivered by the node's alert sender.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..core.cycle import restore
from ..core.memory import Fold, state_at
from ..core.model import Entry, Status

if TYPE_CHECKING:
    from ..node.leases import Held
    from ..node.node import Node
    from ..node.worker import Worker
    from ..store import Claim

__all__ = ["Healer", "failure_reason", "stall_reason"]

log = logging.getLogger("peo.node")


def stall_reason(stalls: int, nodes: tuple[str, ...]) -> str:
    where = f" (on {', '.join(nodes)})" if nodes else ""
    return f"{stalls} claim{'s' if stalls != 1 else ''} in a row ended without progress{where}"


def failure_reason(fold: Fold) -> str:
    n = fold.class_streak
    return f"{n} failed step{'s' if n != 1 else ''} in a row of error class {fold.last_error_class}"


class Healer:
    """The node's tiers 3 and 4, called by its worker right after a claim is verified
    and before a handler runs again after failed steps."""

    def __init__(self, node: Node, worker: Worker):
        self.node = node
        self.worker = worker

    def limit(self, fold: Fold) -> int:
        """The object's ``max_recoveries``: its intent's constraint, else the node's setting."""
        own = fold.intent.constraints.max_recoveries
        return own if own is not None else self.node.settings.max_recoveries

    def needed(self, claim: Claim, fold: Fold) -> bool:
        """Has ``claim`` stalled often enough for tier 3 or 4? (Cheap: no I/O.)"""
        return claim.stalls > 0 and claim.stalls >= self.limit(fold)

    def failing(self, fold: Fold) -> bool:
        """Have its steps failed often enough in a row, with one error class, for tier 3 or
        4? (Asked before each handler run of an object whose last step failed.)"""
        return fold.class_streak >= self.limit(fold)

    async def recover(self, claim: Claim, held: Held, fold: Fold, memory: list[Entry], *,
                      failing: bool = False) -> bool:
        """Restore or quarantine the object; True if the worker should go on serving it.
        ``failing``: because of its failed steps (:meth:`failing`), not its stalls."""
        node = self.node
        why = failure_reason(fold) if failing else stall_reason(claim.stalls, claim.stalled_on)
        good = fold.known_good
        # A restore to the same known-good state (or an older one) was tried already and the
        # object stalled again: restoring once more would loop. Tier 4.
        tried = fold.restore_target is not None and good <= fold.restore_target
        if fold.status is Status.RUNNABLE and not tried:
            decision = restore(good, state_at(memory, good), reason=why, by="node")
            if await self.worker.append(held, fold, memory, decision, ()) is None:
                held.released = True  # another writer won the seq: it is theirs now
                return False
            node.stats["restored"] = node.stats.get("restored", 0) + 1
            log.warning("object_restored id=%s to_seq=%d reason=%s", claim.id, good, why)
            return True
        if tried:
            reason = (f"healing: {why}, after a restore to the known-good state of seq {fold.restore_target} "
                      f"(entry {fold.restored_seq})")
        else:
            reason = f"healing: {why}, while {fold.status}"
        await node.store.quarantine(claim.id, reason, now=node.clock())
        held.released = True
        node.stats["quarantined"] += 1
        log.error("object_quarantined id=%s reason=%s", claim.id, reason)
        await self.alert(claim, fold, memory, reason)
        return False

    async def alert(self, claim: Claim, fold: Fold, memory: list[Entry], reason: str) -> None:
        """Raise the quarantine's alert once per incident (the store keeps one row per sink),
        and try to deliver it at once; the node's alert sender retries what fails."""
        from .alerts import AlertSender, alert_payload, incident_for, raise_alert, sinks_from

        node = self.node
        sinks = sinks_from(node.settings)
        if not sinks:
            return
        now = node.clock()
        incident = incident_for(fold.seq)
        try:
            payload = alert_payload(claim.id, handler=fold.intent.handler, incident=incident, reason=reason,
                                    memory=memory, stalls=claim.stalls, stalled_on=claim.stalled_on,
                                    node=node.node_id, now=now)
            await raise_alert(node.store, claim.id, incident, payload, sinks, now)
            await AlertSender(node_id=node.node_id).deliver_due(node.store, node.settings, now)
        except Exception as exc:  # the quarantine stands; the sender retries what is recorded
            log.error("alert_not_recorded id=%s incident=%s error=%s", claim.id, incident, exc)
