"""conclude: turn a handler's proposal (or the exception it raised) into one Decision (pure)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...errors import InternalError
from ..memory import Fold
from ..model import Retry, Signal
from ..policy import Policy
from .decision import Consume, Decision, Effect, check_allowed, signals_out
from .proposals import FAILURE_ACTIONS, PROPOSALS, Rule
from .turn import Turn, payload_problem

__all__ = ["conclude"]

#: What the failure path may produce for any proposal (and all a non-proposal may produce).
_FAILURE_ACTIONS = FAILURE_ACTIONS


def conclude(
    fold: Fold,
    policy: Policy,
    proposal: object,
    *,
    now: int,
    latency_ns: int,
    signals: Sequence[Signal] = (),
    child_ids: Sequence[str] = (),
    traceback: str | None = None,
    retry: Retry | None = None,
    descendants: int | None = None,
) -> Decision:
    """Turn a handler's proposal (or the exception it raised) into one Decision (pure).

    ``signals`` are those delivered to the step (their inbox ids are consumed by the
    entry); ``child_ids`` are fresh ids for a Delegate proposal, passed in so the core
    draws no randomness of its own; ``traceback`` is the formatted traceback of an
    exception the handler raised (the node formats it: the core reads no source files);
    ``retry`` is the handler's :class:`~peo.core.model.Retry`, used for each setting the
    intent's constraints leave unset (and the policy for what neither sets);
    ``descendants`` is how many objects are already under the object's root (those whose
    context names it as their ``root``, the root itself not counted), counted by the node:
    given, a Delegate that would take it past the policy's ``max_descendants`` is refused.
    The proposal's kind picks its function from
    :data:`~.proposals.PROPOSALS`; the result is checked against that row and the
    transition table.
    """
    base: dict[str, Any] = {"latency": latency_ns}
    consumed: tuple[Effect, ...] = ()
    if signals:
        base["signals"] = signals_out(signals)
        ids = tuple(s.id for s in signals if s.id)
        consumed = (Consume(ids),) if ids else ()
    turn = Turn(fold, policy, now, latency_ns, tuple(signals), tuple(child_ids), base, consumed, retry,
                descendants)
    rule = rule_for(proposal)
    decision = _conclude(turn, proposal, rule, traceback)
    if decision.action not in (rule.allowed if rule is not None else _FAILURE_ACTIONS):
        raise InternalError(f"a {type(proposal).__name__} proposal produced {decision.action}")
    return check_allowed(fold.status, decision)


def rule_for(proposal: object) -> Rule | None:
    """The table row for ``proposal``'s kind (a subclass of a kind counts as that kind)."""
    rule = PROPOSALS.get(type(proposal))
    if rule is not None:
        return rule
    for cls in type(proposal).__mro__:
        rule = PROPOSALS.get(cls)
        if rule is not None:
            return rule
    return None


def _conclude(t: Turn, proposal: object, rule: Rule | None, traceback: str | None) -> Decision:
    if isinstance(proposal, BaseException):
        is_timeout = isinstance(proposal, TimeoutError)
        # The class is recorded on its own: the message is the exception's text only.
        message = str(proposal) or ("the handler timed out" if is_timeout else repr(proposal))
        # An exception may say what it is: ``error_class`` (a str), ``retryable`` (False: fail
        # the object at once) and ``retry_after`` (seconds the remote side asked to wait),
        # as the agent layer's model errors do.
        own = getattr(proposal, "error_class", None)
        error_class = own if isinstance(own, str) and own else ("timeout" if is_timeout else type(proposal).__name__)
        retryable = getattr(proposal, "retryable", True) is not False and not t.non_retryable(proposal)
        after = getattr(proposal, "retry_after", None)
        wait = after if isinstance(after, int | float) and not isinstance(after, bool) else None
        return t.fail(error_class, message, retryable=retryable, traceback=traceback, retry_after=wait)
    if rule is None:
        return t.invalid(f"handler returned {type(proposal).__name__}, not a peo proposal")
    state = getattr(proposal, "state", None)
    if state is not None:
        if not isinstance(state, dict):
            return t.invalid("state must be a dict of updates")
        problem = payload_problem(state, t.policy, "state", 2)
        if problem:
            return t.invalid(problem)
        if state:
            problem = _state_total_problem(t.fold, t.policy, state)
            if problem:
                return t.cut_off(problem)
            t.base["state"] = state
    return rule.conclude(t, proposal)


def _state_total_problem(fold: Fold, policy: Policy, update: dict[str, Any]) -> str | None:
    """Why ``update`` may not grow the object's folded state, if so.

    An update is at most ``max_payload_bytes``, so while the fold's bound of the state's
    size is at least that far below the ceiling nothing is measured (the common case costs
    nothing). An update that
    keeps an object already above the ceiling (say the policy was lowered) from growing
    is let through: it could only help.
    """
    if fold.state_bound + policy.max_payload_bytes <= policy.max_state_bytes:
        return None
    after = fold.state_bytes_after(update)
    if after <= policy.max_state_bytes or after <= fold.state_bytes:
        return None
    return f"the state would grow to {after} bytes, above the limit of {policy.max_state_bytes}"
