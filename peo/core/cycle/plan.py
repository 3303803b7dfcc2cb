"""plan: what happens next for an object a node holds, before any handler runs (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...errors import UsageError
from ..memory import Fold
from ..model import CANCEL_SIGNAL, LIVE_STATUSES, Action, Signal, Status
from ..policy import Policy
from ..wake import Trigger, Wake, trigger
from .decision import RUN_HANDLER, Consume, Decision, Release, _RunHandler, check_allowed, signals_out

__all__ = ["plan", "reentry", "restore", "shed", "terminate", "tombstone", "undelete"]


def terminate(reason: str, *, consumed: Sequence[Signal] = (), **extra: Any) -> Decision:
    """A terminate Decision; the signals in ``consumed`` are recorded and consumed."""
    outcome: dict[str, Any] = {"reason": reason, **extra}
    effects: tuple[Consume, ...] = ()
    if consumed:
        outcome["signals"] = signals_out(consumed)
        effects = (Consume(tuple(s.id for s in consumed)),)
    return Decision(Action.TERMINATE, outcome, Status.TERMINATED, effects=effects)


def reentry(trigger: Trigger, signals: Sequence[Signal]) -> Decision:
    outcome: dict[str, Any] = {"trigger": str(trigger)}
    effects: tuple[Consume, ...] = ()
    if signals:
        outcome["signals"] = signals_out(signals)
        effects = (Consume(tuple(s.id for s in signals)),)
    return Decision(Action.REENTRY, outcome, Status.RUNNABLE, effects=effects)


def shed(reason: str, *, until: int) -> Decision:
    """The node, not the handler, puts a runnable object to sleep until ``until`` (ns) at a
    step boundary (reason ``memory``: the node is short of memory). Status ``shed``: neither
    a success nor a failure, so a failure streak goes on counting across it."""
    wake = Wake(until=until)
    outcome = {"status": "shed", "shed": reason, "wake": wake.as_outcome()}
    return Decision(Action.DORMANCY, outcome, Status.DORMANT, wake)


def restore(seq: int, state: dict[str, Any], *, reason: str, by: str) -> Decision:
    """Set the working state back to ``state``, what it was after entry ``seq`` (a mutate
    entry recording both, and why, and who asked: ``node`` for self-healing or ``operator``).
    The history before it stays; the object is runnable after it."""
    outcome = {"status": "ok", "new": {}, "restore": {"seq": seq, "reason": reason, "by": by}, "reset": state}
    return Decision(Action.MUTATE, outcome, Status.RUNNABLE)


def tombstone(reason: str, *, by: str) -> Decision:
    """Delete the object (an operator's signed tombstone): no node claims it and signals to
    it are refused until an :func:`undelete`; its head is otherwise unchanged."""
    return Decision(Action.MUTATE, {"status": "ok", "new": {}, "tombstone": {"reason": reason, "by": by}},
                    Status.RUNNABLE)


def undelete(*, by: str) -> Decision:
    """Bring a deleted object back exactly as it was before its tombstone."""
    return Decision(Action.MUTATE, {"status": "ok", "new": {}, "undelete": {"by": by}}, Status.RUNNABLE)


def plan(
    fold: Fold,
    policy: Policy,
    *,
    now: int,
    signals: Sequence[Signal] = (),
    children_done: bool = False,
) -> Decision | Release | _RunHandler:
    """Choose what happens next for ``fold`` at time ``now`` (pure).

    A cancellation wins over everything, then a passed deadline; a dormant object re-enters
    when a wake trigger holds (:mod:`peo.core.wake`) and is released otherwise; a runnable
    one runs its handler unless its step budget is spent.
    """
    if fold.status not in LIVE_STATUSES:
        raise UsageError(f"object {fold.object_id} is {fold.status} and can never act again")
    decided = _decide(fold, policy, now, signals, children_done)
    return check_allowed(fold.status, decided) if isinstance(decided, Decision) else decided


def _decide(fold: Fold, policy: Policy, now: int, signals: Sequence[Signal],
            children_done: bool) -> Decision | Release | _RunHandler:
    cancel = [s for s in signals if s.name == CANCEL_SIGNAL]
    if cancel:
        return terminate("cancelled", consumed=cancel)
    deadline = fold.intent.constraints.deadline
    if deadline is not None and now >= deadline:
        return terminate("deadline passed")
    if fold.status is Status.DORMANT:
        wake = fold.wake
        woken = trigger(wake, now=now, signal_names=[s.name for s in signals], children_finished=children_done)
        if woken is None:
            return Release(wake.until)
        delivered = [s for s in signals if s.name == wake.signal] if woken is Trigger.SIGNAL else []
        return reentry(woken, delivered)
    # The policy's max_steps is a ceiling, not a default: an object may ask for fewer.
    max_steps = fold.intent.constraints.max_steps
    if fold.steps >= (policy.max_steps if max_steps is None else min(max_steps, policy.max_steps)):
        return terminate("step budget exhausted (policy cut-off)")
    return RUN_HANDLER
