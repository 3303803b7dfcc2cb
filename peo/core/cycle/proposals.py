"""One small function per proposal kind, and the table that maps kinds to them.

Each function turns a checked proposal into a Decision for the :class:`~.turn.Turn` it
answers. To add a proposal kind: write its value class in :mod:`peo.core.model`, one
function here, and one row in :data:`PROPOSALS` naming the actions it may produce.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Final

import attrs

from ...errors import CodecError
from ..codec import check_name, unstructure
from ..model import (
    Action,
    CannotDo,
    Constraints,
    Continue,
    Delegate,
    Done,
    Fail,
    Intent,
    Refine,
    Retry,
    Sleep,
    Status,
    WaitSignal,
)
from ..wake import Wake
from .decision import Child, Decision, Spawn, signals_out
from .turn import Turn, payload_problem, record_problem

__all__ = ["FAILURE_ACTIONS", "PROPOSALS", "Rule"]

_SECOND = 1_000_000_000


def _continue(t: Turn, p: Continue) -> Decision:
    if p.checkpoint is True:
        return t.decide(Action.EXECUTE, Status.RUNNABLE, checkpoint=True)
    return t.decide(Action.EXECUTE, Status.RUNNABLE)


def _done(t: Turn, p: Done) -> Decision:
    problem = payload_problem(p.result, t.policy, "result", 2)
    if problem:
        return t.invalid(problem)
    return t.end("done", result=p.result)


def _sleep(t: Turn, p: Sleep) -> Decision:
    if (p.seconds is None) == (p.until is None):
        return t.refuse("Sleep", "give exactly one of seconds= or until=")
    raw = p.seconds if p.seconds is not None else p.until
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        return t.refuse("Sleep", "the duration must be a finite number")
    secs = raw if p.seconds is not None else raw - t.now / _SECOND
    if secs > t.policy.max_sleep_seconds:
        return t.refuse("Sleep", f"{secs:g} s is longer than the {t.policy.max_sleep_seconds:g} s allowed")
    return t.decide(Action.DORMANCY, Status.DORMANT, Wake(until=t.now + max(0, int(secs * _SECOND))))


def _wait_signal(t: Turn, p: WaitSignal) -> Decision:
    try:
        check_name(p.name, "signal name")
    except CodecError as exc:
        return t.refuse("WaitSignal", str(exc))
    until = None
    if p.timeout is not None:
        s = p.timeout
        if not isinstance(s, int | float) or not math.isfinite(s) or s < 0:
            return t.refuse("WaitSignal", "timeout must be a non-negative number of seconds")
        if s > t.policy.max_sleep_seconds:
            limit = t.policy.max_sleep_seconds
            return t.refuse("WaitSignal", f"a {s:g} s timeout is longer than the {limit:g} s allowed")
        until = t.now + int(s * _SECOND)
    # A step that was handed the very signal it now waits for leaves that signal in the
    # inbox, so the wait ends at once instead of sleeping through it.
    kept = [s for s in t.signals if s.name != p.name]
    d = t.decide(Action.DORMANCY, Status.DORMANT, Wake(until=until, signal=p.name))
    if kept:
        d.outcome["signals"] = signals_out(kept)
    else:
        d.outcome.pop("signals", None)
    return d.consuming([s.id for s in kept if s.id])


def _delegate(t: Turn, p: Delegate) -> Decision:
    try:
        intents = list(p.children)
    except TypeError:
        return t.refuse("Delegate", "children must be a sequence of peo.Intent values")
    if not intents:
        return t.refuse("Delegate", "no children given")
    if len(intents) > t.policy.max_children:
        return t.refuse("Delegate", f"{len(intents)} children exceed the limit of {t.policy.max_children}")
    problem = _lineage_problem(t, len(intents))
    if problem:
        return t.refuse("Delegate", problem)
    if len(t.child_ids) < len(intents):
        raise ValueError("conclude() needs one fresh id per child")
    oid, context = t.fold.object_id, t.fold.context
    # Children inherit the context, one level deeper in the tree of the same root.
    inherited = attrs.evolve(context, parent=oid, root=context.root or oid, depth=context.depth + 1)
    children = []
    for intent, cid in zip(intents, t.child_ids, strict=False):
        problem = _child_problem(t, intent)
        if problem:
            return t.refuse("Delegate", problem)
        children.append(Child(cid, intent, inherited))
    outcome = {**t.base, "status": "ok", "wait": p.wait,
               "children": [{"id": c.id, "intent": unstructure(c.intent)} for c in children]}
    # A waiting parent records "wait", not a "wake": its wake-up is its children's end.
    status, wake = (Status.DORMANT, Wake(children=True)) if p.wait else (Status.RUNNABLE, None)
    return Decision(Action.DELEGATE, outcome, status, wake, (*t.consumed, Spawn(tuple(children))))


def _lineage_problem(t: Turn, count: int) -> str | None:
    """Would ``count`` more children take the object's tree past the policy's totals?

    Refused, not ended: the handler may do the work itself instead (and repeated refusals
    fail the object at its failure threshold).
    """
    policy, context = t.policy, t.fold.context
    depth = context.depth + 1
    if depth > policy.max_depth:
        return (f"its children would be {depth} delegations deep, deeper than the limit of {policy.max_depth}"
                " ([limits] max_depth)")
    if t.descendants is not None and t.descendants + count > policy.max_descendants:
        root = context.root or t.fold.object_id
        return (f"{count} more objects would make {t.descendants + count} under root {root},"
                f" more than the limit of {policy.max_descendants} ([limits] max_descendants)")
    return None


def _child_problem(t: Turn, intent: Any) -> str | None:
    if not isinstance(intent, Intent):
        return "children must be peo.Intent values"
    try:
        check_name(intent.handler, "child handler")
    except CodecError as exc:
        return str(exc)
    if not t.policy.child_handler_allowed(intent.handler):
        return f"children may not use handler {intent.handler!r}"
    if intent.handler in t.fold.cannot_do:
        return f"{intent.handler!r} is recorded as something this object cannot do"
    return payload_problem(intent.goal, t.policy, "child goal", 5) or record_problem(intent, Intent)


def _refine(t: Turn, p: Refine) -> Decision:
    old: dict[str, Any] = {}
    new: dict[str, Any] = {}
    if p.goal is not None:
        if not isinstance(p.goal, dict):
            return t.refuse("Refine", "the goal must be a dict")
        problem = payload_problem(p.goal, t.policy, "goal", 3)
        if problem:
            return t.refuse("Refine", problem)
        old["goal"], new["goal"] = t.fold.intent.goal, p.goal
    if p.constraints is not None:
        if not isinstance(p.constraints, Constraints):
            return t.refuse("Refine", "constraints must be a peo.Constraints value")
        problem = record_problem(p.constraints, Constraints)
        if problem:
            return t.refuse("Refine", problem)
        relaxed = _relaxes(t.fold.intent.constraints, p.constraints)
        if relaxed and not t.policy.refine_may_relax:
            return t.refuse("Refine", f"it relaxes {relaxed}")
        old["constraints"] = unstructure(t.fold.intent.constraints)
        new["constraints"] = unstructure(p.constraints)
    if not new:
        return t.refuse("Refine", "nothing to refine")
    return t.decide(Action.MUTATE, Status.RUNNABLE, old=old, new=new)


def _relaxes(old: Constraints, new: Constraints) -> str | None:
    """Name the first constraint that ``new`` makes looser than ``old``, if any.

    Above the policy's ceiling, a looser value changes nothing (the cycle uses the smaller
    of the two), but it is still refused: the record would promise what the node won't do.
    ``retry_base`` and ``retry_max`` are pacing, not limits: a longer delay retries less
    often, never more, and the policy caps every delay at its own ``retry_max``.
    """
    def looser(a: float | None, b: float | None) -> bool:
        return (b is None and a is not None) or (a is not None and b is not None and b > a)

    for name in ("deadline", "max_failures", "max_steps"):
        if looser(getattr(old, name), getattr(new, name)):
            return name
    # Fewer exceptions that end the object at once means more retries: looser too.
    if old.non_retryable and not set(old.non_retryable) <= set(new.non_retryable or ()):
        return "non_retryable"
    return None


def _fail(t: Turn, p: Fail) -> Decision:
    # A Fail's own state update is recorded after the error (it is carried out: the
    # handler chose to fail with it).
    state = t.base.pop("state", None)
    retry = p.retry if isinstance(p.retry, Retry) else None
    traceback = p.traceback if isinstance(p.traceback, str) else None
    return t.fail(str(p.error_class)[:100], str(p.reason), retryable=bool(p.retryable), state=state,
                  traceback=traceback, retry=retry)


def _cannot_do(t: Turn, p: CannotDo) -> Decision:
    """A structured negative capability that later cycles honour."""
    capability = str(p.capability)[:200]
    reason = str(p.reason)[:2000]
    # A terminate entry's "reason" says why the object ended; the handler's own reason for
    # the CannotDo moves to "cannot_do_reason" there.
    if capability == t.fold.intent.handler:
        return t.end("cannot do its own handler", status="cannot_do", capability=capability, cannot_do_reason=reason)
    if len(t.fold.cannot_do | {capability}) > t.policy.max_cannot_do:
        return t.end("too many cannot-do constraints (policy cut-off)", status="cannot_do", capability=capability,
                     cannot_do_reason=reason)
    return t.decide(Action.EXECUTE, Status.RUNNABLE, status="cannot_do", capability=capability, reason=reason)


#: What the failure path produces (a failed, refused or invalid step): any proposal may end so.
FAILURE_ACTIONS: Final = frozenset({Action.EXECUTE, Action.DORMANCY, Action.TERMINATE})


@attrs.frozen
class Rule:
    """How one proposal kind is concluded, and the actions that may result (besides the
    failure path's execute, dormancy and terminate, which any proposal may end in)."""

    conclude: Callable[[Turn, Any], Decision]
    actions: frozenset[Action]
    allowed: frozenset[Action] = attrs.field(init=False)  # actions | FAILURE_ACTIONS

    @allowed.default
    def _allowed(self) -> frozenset[Action]:
        return self.actions | FAILURE_ACTIONS


PROPOSALS: Final[Mapping[type, Rule]] = {
    Continue: Rule(_continue, frozenset({Action.EXECUTE})),
    Done: Rule(_done, frozenset({Action.TERMINATE})),
    Sleep: Rule(_sleep, frozenset({Action.DORMANCY})),
    WaitSignal: Rule(_wait_signal, frozenset({Action.DORMANCY})),
    Delegate: Rule(_delegate, frozenset({Action.DELEGATE})),
    Refine: Rule(_refine, frozenset({Action.MUTATE})),
    Fail: Rule(_fail, frozenset({Action.DORMANCY, Action.TERMINATE})),
    CannotDo: Rule(_cannot_do, frozenset({Action.EXECUTE, Action.TERMINATE})),
}
