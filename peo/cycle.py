"""The evaluation cycle: a pure function from (object, policy, clock, signals, children)
to exactly one of six actions.

Theory of operation
-------------------
A node holding an object calls :func:`plan`. The answer is either

* a :class:`Decision` to append right away (``reentry`` when a dormant object's wake
  trigger holds; ``terminate`` on cancellation, a passed deadline or a spent step budget),
* :data:`RUN_HANDLER`: the node runs one handler step and passes the proposal (or the
  exception) to :func:`conclude`, which the policy turns into a Decision, or
* a :class:`Release`: a dormant object was woken but none of its triggers hold (a child
  finished but not all of them): the node puts it back without writing anything.

Each Decision is appended as exactly one signed entry. The transition table below is the
only place that says which action may follow which status; :func:`plan` and
:func:`conclude` never produce anything else (a property test checks it).

=========== ======================================================= ================
status      actions allowed                                         next status
=========== ======================================================= ================
runnable    execute, mutate                                         runnable
runnable    delegate                                                runnable, or dormant when waiting
runnable    dormancy (sleep, signal wait, retry backoff)            dormant
runnable    terminate (done, failed, cut off, cancelled, deadline)  terminated
dormant     reentry (time, signal, children done)                   runnable
dormant     terminate (cancelled, deadline)                         terminated
terminated  nothing, ever
=========== ======================================================= ================

Why each action exists: *execute* records one step's outcome; *mutate* changes the intent
without losing history; *delegate* splits work into children with lineage; *dormancy* is a
valid pause that costs no memory on any node (and the shape of retry backoff, so a
failing object waits in the store, not in a node); *reentry* records which trigger woke
the object; *terminate* ends the object and keeps its history.
"""

from __future__ import annotations

import functools
import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from .codec import DEFAULT_LIMITS, Limits, check_name, check_value, packb, structure, unstructure
from .errors import CodecError, UsageError
from .memory import Fold
from .model import (
    CANCEL_SIGNAL,
    Action,
    CannotDo,
    Constraints,
    Context,
    Continue,
    Delegate,
    Done,
    Fail,
    Intent,
    Refine,
    Signal,
    Sleep,
    Status,
    WaitSignal,
)
from .policy import Policy

__all__ = ["ALLOWED", "RUN_HANDLER", "Child", "Decision", "Release", "conclude", "plan"]

ALLOWED: Final[Mapping[Status, frozenset[Action]]] = {
    Status.RUNNABLE: frozenset(
        {Action.EXECUTE, Action.MUTATE, Action.DELEGATE, Action.DORMANCY, Action.TERMINATE}
    ),
    Status.DORMANT: frozenset({Action.REENTRY, Action.TERMINATE}),
    Status.TERMINATED: frozenset(),
    Status.QUARANTINED: frozenset(),
}


@attrs.frozen
class Child:
    id: str
    intent: Intent
    context: Context


@attrs.frozen
class Decision:
    """One entry to append and what it does to the object head."""

    action: Action
    outcome: dict[str, Any]
    status: Status  # status after this entry
    due_at: int | None = None  # when the object is next due (dormant: its time trigger)
    wait_signal: str | None = None
    wait_children: bool = False
    consumed: tuple[int, ...] = ()  # inbox ids consumed by this entry
    children: tuple[Child, ...] = ()


@attrs.frozen
class Release:
    """Triggers do not hold yet: go back to dormancy without writing an entry."""

    due_at: int | None


class _RunHandler:
    def __repr__(self) -> str:
        return "RUN_HANDLER"


RUN_HANDLER: Final = _RunHandler()

_SECOND = 1_000_000_000


def _signals_out(signals: Sequence[Signal]) -> list[dict[str, Any]]:
    return [{"id": s.id, "name": s.name, "payload": s.payload} for s in signals]


def _terminate(reason: str, *, consumed: Sequence[Signal] = (), **extra: Any) -> Decision:
    outcome: dict[str, Any] = {"reason": reason, **extra}
    if consumed:
        outcome["signals"] = _signals_out(consumed)
    return Decision(Action.TERMINATE, outcome, Status.TERMINATED, consumed=tuple(s.id for s in consumed))


def _limit(value: int | None, default: int) -> int:
    return default if value is None else value


def plan(
    fold: Fold,
    policy: Policy,
    *,
    now: int,
    signals: Sequence[Signal] = (),
    children_done: bool = False,
) -> Decision | Release | _RunHandler:
    """Choose what happens next for ``fold`` at time ``now`` (pure)."""
    if fold.status not in (Status.RUNNABLE, Status.DORMANT):
        raise UsageError(f"object {fold.object_id} is {fold.status} and can never act again")
    cancel = [s for s in signals if s.name == CANCEL_SIGNAL]
    if cancel:
        return _terminate("cancelled", consumed=cancel)
    deadline = fold.intent.constraints.deadline
    if deadline is not None and now >= deadline:
        return _terminate("deadline passed")
    if fold.status is Status.DORMANT:
        wait = fold.wait or {}
        until = wait.get("until")
        wanted = wait.get("signal")
        delivered = [s for s in signals if s.name == wanted] if wanted else []
        if delivered:
            return _reentry("signal", delivered)
        if wait.get("children") and children_done:
            return _reentry("children", ())
        if until is not None and now >= until:
            return _reentry("time", ())
        return Release(until)
    if fold.steps >= _limit(fold.intent.constraints.max_steps, policy.max_steps):
        return _terminate("step budget exhausted (policy cut-off)")
    return RUN_HANDLER


def _reentry(trigger: str, signals: Sequence[Signal]) -> Decision:
    outcome: dict[str, Any] = {"trigger": trigger}
    if signals:
        outcome["signals"] = _signals_out(signals)
    return Decision(Action.REENTRY, outcome, Status.RUNNABLE, due_at=0, consumed=tuple(s.id for s in signals))


@functools.lru_cache(maxsize=64)
def _payload_limits(max_bytes: int, nesting: int) -> Limits:
    return Limits(max_bytes=max_bytes, depth=DEFAULT_LIMITS.depth - nesting)


def _payload_problem(value: Any, policy: Policy, what: str, nesting: int) -> str | None:
    """Why ``value`` may not be recorded, if so. ``nesting`` is how deep it sits in the entry
    body (state: body, outcome, state = 2): verification limits the depth of the whole body,
    so a value that is fine on its own could otherwise make the object's own entry unreadable."""
    try:
        check_value(value, _payload_limits(policy.max_payload_bytes, nesting), what=what)
        size = len(packb(value))
    except CodecError as exc:
        return str(exc)
    if size > policy.max_payload_bytes:
        return f"{what} of {size} bytes exceeds the policy limit of {policy.max_payload_bytes}"
    return None


def conclude(
    fold: Fold,
    policy: Policy,
    proposal: object,
    *,
    now: int,
    latency_ns: int,
    signals: Sequence[Signal] = (),
    child_ids: Sequence[str] = (),
) -> Decision:
    """Turn a handler's proposal (or the exception it raised) into one Decision (pure).

    ``signals`` are those delivered to the step (their inbox ids are consumed by the
    entry); ``child_ids`` are fresh ids for a Delegate proposal, passed in so the core
    draws no randomness of its own.
    """
    consumed = tuple(s.id for s in signals if s.id)
    base: dict[str, Any] = {"latency": latency_ns}
    if signals:
        base["signals"] = _signals_out(signals)

    def failed(error_class: str, message: str, *, retryable: bool, status: str = "failed",
               state: dict[str, Any] | None = None) -> Decision:
        error = {"class": error_class, "message": message[:2000], "retryable": retryable}
        extra = {**base, "status": "failed", "error": error}
        if status == "refused" or status == "invalid":
            # A refused proposal is not carried out, and that includes its state update.
            extra.pop("state", None)
        if state:
            extra["state"] = state
        failures = fold.consecutive_failures + 1
        limit = _limit(fold.intent.constraints.max_failures, policy.max_failures)
        if not retryable or failures >= limit:
            why = "failure threshold exceeded" if retryable else "non-retryable failure"
            d = _terminate(f"failed: {why}", **extra)
            return attrs.evolve(d, consumed=consumed)
        if status == "refused" or status == "invalid":
            return Decision(Action.EXECUTE, {**extra, "status": status}, Status.RUNNABLE, due_at=0,
                            consumed=consumed)
        c = fold.intent.constraints
        delay = policy.backoff_ns(failures, error_class, latency_ns, c.retry_base, c.retry_max,
                                  hashlib.sha256(f"{fold.object_id}:{fold.seq + 1}".encode()).digest())
        wake = {"until": now + delay}
        return Decision(Action.DORMANCY, {**extra, "wake": wake, "retry_in": delay}, Status.DORMANT,
                        due_at=now + delay, consumed=consumed)

    def refuse(kind: str, reason: str) -> Decision:
        return failed("refused", f"{kind} refused by policy {policy.name}: {reason}", retryable=True,
                      status="refused")

    if isinstance(proposal, BaseException):
        is_timeout = isinstance(proposal, TimeoutError)
        return failed("timeout" if is_timeout else type(proposal).__name__,
                      f"{type(proposal).__name__}: {proposal}", retryable=True)
    kinds = (Continue, Done, Sleep, WaitSignal, Delegate, Refine, Fail, CannotDo)
    if not isinstance(proposal, kinds):
        return failed("invalid", f"handler returned {type(proposal).__name__}, not a peo proposal",
                      retryable=True, status="invalid")
    state = proposal.state
    if state is not None:
        if not isinstance(state, dict):
            return failed("invalid", "state must be a dict of updates", retryable=True, status="invalid")
        problem = _payload_problem(state, policy, "state", 2)
        if problem:
            return failed("invalid", problem, retryable=True, status="invalid")
        if state:
            base["state"] = state

    if isinstance(proposal, Continue):
        return Decision(Action.EXECUTE, {**base, "status": "ok"}, Status.RUNNABLE, due_at=0, consumed=consumed)

    if isinstance(proposal, Done):
        problem = _payload_problem(proposal.result, policy, "result", 2)
        if problem:
            return failed("invalid", problem, retryable=True, status="invalid")
        return attrs.evolve(_terminate("done", **base, result=proposal.result), consumed=consumed)

    if isinstance(proposal, Sleep):
        if (proposal.seconds is None) == (proposal.until is None):
            return refuse("Sleep", "give exactly one of seconds= or until=")
        raw = proposal.seconds if proposal.seconds is not None else proposal.until
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
            return refuse("Sleep", "the duration must be a finite number")
        secs = raw if proposal.seconds is not None else raw - now / _SECOND
        if secs > policy.max_sleep_seconds:
            return refuse("Sleep", f"{secs:g} s is longer than the {policy.max_sleep_seconds:g} s allowed")
        until = now + max(0, int(secs * _SECOND))
        return Decision(Action.DORMANCY, {**base, "status": "ok", "wake": {"until": until}}, Status.DORMANT,
                        due_at=until, consumed=consumed)

    if isinstance(proposal, WaitSignal):
        try:
            check_name(proposal.name, "signal name")
        except CodecError as exc:
            return refuse("WaitSignal", str(exc))
        wake: dict[str, Any] = {"signal": proposal.name}
        if proposal.timeout is not None:
            t = proposal.timeout
            if not isinstance(t, int | float) or not math.isfinite(t) or t < 0:
                return refuse("WaitSignal", "timeout must be a non-negative number of seconds")
            if t > policy.max_sleep_seconds:
                limit = policy.max_sleep_seconds
                return refuse("WaitSignal", f"a {t:g} s timeout is longer than the {limit:g} s allowed")
            wake["until"] = now + int(t * _SECOND)
        # A step that was handed the very signal it now waits for leaves that signal in
        # the inbox, so the wait ends at once instead of sleeping through it.
        kept = [s for s in signals if s.name != proposal.name]
        outcome = {**base, "status": "ok", "wake": wake}
        if kept:
            outcome["signals"] = _signals_out(kept)
        else:
            outcome.pop("signals", None)
        return Decision(Action.DORMANCY, outcome, Status.DORMANT, due_at=wake.get("until"),
                        wait_signal=proposal.name, consumed=tuple(s.id for s in kept if s.id))

    if isinstance(proposal, Delegate):
        try:
            intents = list(proposal.children)
        except TypeError:
            return refuse("Delegate", "children must be a sequence of peo.Intent values")
        if not intents:
            return refuse("Delegate", "no children given")
        if len(intents) > policy.max_children:
            return refuse("Delegate", f"{len(intents)} children exceed the limit of {policy.max_children}")
        if len(child_ids) < len(intents):
            raise ValueError("conclude() needs one fresh id per child")
        children = []
        for intent, cid in zip(intents, child_ids, strict=False):
            if not isinstance(intent, Intent):
                return refuse("Delegate", "children must be peo.Intent values")
            try:
                check_name(intent.handler, "child handler")
            except CodecError as exc:
                return refuse("Delegate", str(exc))
            if not policy.child_handler_allowed(intent.handler):
                return refuse("Delegate", f"children may not use handler {intent.handler!r}")
            if intent.handler in fold.cannot_do:
                return refuse("Delegate", f"{intent.handler!r} is recorded as something this object cannot do")
            problem = _payload_problem(intent.goal, policy, "child goal", 5) or _record_problem(intent, Intent)
            if problem:
                return refuse("Delegate", problem)
            ctx = attrs.evolve(fold.context, parent=fold.object_id)
            children.append(Child(cid, intent, ctx))
        outcome = {**base, "status": "ok", "wait": proposal.wait,
                   "children": [{"id": c.id, "intent": unstructure(c.intent)} for c in children]}
        status = Status.DORMANT if proposal.wait else Status.RUNNABLE
        return Decision(Action.DELEGATE, outcome, status, due_at=None if proposal.wait else 0,
                        wait_children=proposal.wait, consumed=consumed, children=tuple(children))

    if isinstance(proposal, Refine):
        old: dict[str, Any] = {}
        new: dict[str, Any] = {}
        if proposal.goal is not None:
            if not isinstance(proposal.goal, dict):
                return refuse("Refine", "the goal must be a dict")
            problem = _payload_problem(proposal.goal, policy, "goal", 3)
            if problem:
                return refuse("Refine", problem)
            old["goal"], new["goal"] = fold.intent.goal, proposal.goal
        if proposal.constraints is not None:
            if not isinstance(proposal.constraints, Constraints):
                return refuse("Refine", "constraints must be a peo.Constraints value")
            problem = _record_problem(proposal.constraints, Constraints)
            if problem:
                return refuse("Refine", problem)
            relaxed = _relaxes(fold.intent.constraints, proposal.constraints)
            if relaxed and not policy.refine_may_relax:
                return refuse("Refine", f"it relaxes {relaxed}")
            old["constraints"] = unstructure(fold.intent.constraints)
            new["constraints"] = unstructure(proposal.constraints)
        if not new:
            return refuse("Refine", "nothing to refine")
        return Decision(Action.MUTATE, {**base, "status": "ok", "old": old, "new": new}, Status.RUNNABLE,
                        due_at=0, consumed=consumed)

    if isinstance(proposal, Fail):
        return failed(str(proposal.error_class)[:100], str(proposal.reason), retryable=bool(proposal.retryable),
                      state=base.pop("state", None))

    # CannotDo: a structured negative capability that later cycles honour.
    assert isinstance(proposal, CannotDo)
    capability = str(proposal.capability)[:200]
    outcome = {**base, "status": "cannot_do", "capability": capability, "reason": str(proposal.reason)[:2000]}
    known = fold.cannot_do | {capability}
    # A terminate entry's "reason" says why the object ended; the handler's own reason for
    # the CannotDo moves to "cannot_do_reason" there.
    ending = {k: v for k, v in outcome.items() if k != "reason"}
    ending["cannot_do_reason"] = outcome["reason"]
    if capability == fold.intent.handler:
        return attrs.evolve(_terminate("cannot do its own handler", **ending), consumed=consumed)
    if len(known) > policy.max_cannot_do:
        return attrs.evolve(_terminate("too many cannot-do constraints (policy cut-off)", **ending),
                            consumed=consumed)
    return Decision(Action.EXECUTE, outcome, Status.RUNNABLE, due_at=0, consumed=consumed)


def _record_problem(value: Any, cls: type) -> str | None:
    """Why ``value`` would not read back from memory as a ``cls`` (e.g. a float deadline), if so.

    Every later fold of the chain structures what is recorded here; a value that cannot be
    structured would make the object's own memory unreadable.
    """
    try:
        data = unstructure(value)
        check_value(data)
        structure(data, cls)
    except CodecError as exc:
        return str(exc)
    return None


def _relaxes(old: Constraints, new: Constraints) -> str | None:
    """Name the first constraint that ``new`` makes looser than ``old``, if any."""
    def looser(a: float | None, b: float | None) -> bool:
        return (b is None and a is not None) or (a is not None and b is not None and b > a)

    for name in ("deadline", "max_failures", "max_steps"):
        if looser(getattr(old, name), getattr(new, name)):
            return name
    return None
