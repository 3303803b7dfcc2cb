"""One step being concluded: what every proposal function reads, and the failure path they share."""

from __future__ import annotations

import functools
import hashlib
import math
from typing import Any

import attrs

from ...errors import CodecError
from ..codec import DEFAULT_LIMITS, Limits, check_value, packb, structure, unstructure
from ..memory import Fold
from ..model import Action, Retry, Signal, Status
from ..policy import Policy
from ..wake import Wake
from .decision import Decision, Effect
from .plan import terminate

__all__ = ["Turn", "payload_problem", "record_problem"]

#: Outcome statuses of a step whose proposal was not carried out (its state update neither).
NOT_CARRIED_OUT = ("refused", "invalid")


@attrs.define
class Turn:
    """The step a proposal answers: the object before it, the policy, the time, and the
    outcome fields every resulting entry starts with (``base``: latency, the signals
    delivered, and the state update once it is known to be valid). ``consumed`` is the
    effect that consumes the signals delivered to this step (empty if none). ``retry`` is
    the handler's :class:`~peo.core.model.Retry`, if it has one. ``descendants`` is how
    many objects the object's root already has under it (None: not counted by the caller).

    Made once per step on the hot path, and only read after it is made: a plain slotted
    class, because a frozen one costs a microsecond more to build.
    """

    fold: Fold
    policy: Policy
    now: int
    latency_ns: int
    signals: tuple[Signal, ...]
    child_ids: tuple[str, ...]
    base: dict[str, Any]
    consumed: tuple[Effect, ...] = ()
    retry: Retry | None = None  # the handler's retry settings, between the intent's and the policy's
    descendants: int | None = None

    def decide(self, action: Action, after: Status, wake: Wake | None = None, *,
               effects: tuple[Effect, ...] = (), **extra: Any) -> Decision:
        """A successful step: ``base`` plus ``status: ok`` (unless ``extra`` says otherwise)
        plus ``extra``; the object's status ``after`` the entry."""
        outcome = {**self.base, "status": "ok", **extra}
        if wake is not None:
            outcome["wake"] = wake.as_outcome()
        return Decision(action, outcome, after, wake, (*self.consumed, *effects))

    def end(self, reason: str, **extra: Any) -> Decision:
        """Terminate, recording ``base`` and ``extra``, consuming the step's signals."""
        return attrs.evolve(terminate(reason, **{**self.base, **extra}), effects=self.consumed)

    def fail(self, error_class: str, message: str, *, retryable: bool, kind: str = "failed",
             state: dict[str, Any] | None = None, traceback: str | None = None,
             retry: Retry | None = None, retry_after: float | None = None) -> Decision:
        """A failed step: back off and retry, or end the object past its failure threshold.

        ``kind`` "refused" or "invalid" means the proposal was not carried out, nor its state
        update. A refused proposal is put to the handler again at once (the proposer, say a
        model, may choose differently: that is how an advisory node learns what the policy
        allows); it counts toward the failure threshold. An invalid one (not a proposal, or
        a value that cannot be stored) is a handler bug that would recur on every attempt:
        the object ends at once instead of being retried as if the failure were transient.
        ``traceback`` (the handler's, formatted by the node) is kept up to the policy's
        ``max_traceback_bytes``, its last lines kept. ``retry`` (a :class:`~peo.Fail`'s own)
        comes before the intent's and the handler's settings. ``retry_after`` (seconds, from
        the failure: a 429's Retry-After) makes the backoff at least that long, within the
        policy's ``retry_max``.
        """
        error: dict[str, Any] = {"class": error_class, "message": message[:2000], "retryable": retryable}
        limit = self.policy.max_traceback_bytes
        if traceback and limit:
            error["traceback"] = traceback if len(traceback) <= limit else "...\n" + traceback[-limit:]
        if kind == "invalid":
            error["retryable"] = False
            extra = {k: v for k, v in self.base.items() if k != "state"}
            ending = terminate("failed: invalid proposal (a handler bug)", **extra, status=kind, error=error)
            return attrs.evolve(ending, effects=self.consumed)
        extra = {**self.base, "status": "failed", "error": error}
        if kind in NOT_CARRIED_OUT:
            extra.pop("state", None)
        if state:
            extra["state"] = state
        fold, policy, c, r = self.fold, self.policy, self.fold.intent.constraints, self.retry or _NO_RETRY
        s = retry or _NO_RETRY
        failures = fold.consecutive_failures + 1
        # Each setting: the failure's own Retry, the intent's constraints, the handler's
        # Retry, then the policy; the policy's is also the ceiling (and backoff_ns caps the
        # delay at its retry_max).
        threshold = min(_first(s.max_attempts, c.max_failures, r.max_attempts, policy.max_failures),
                        policy.max_failures)
        if not retryable or failures >= threshold:
            why = "failure threshold exceeded" if retryable else "non-retryable failure"
            return attrs.evolve(terminate(f"failed: {why}", **extra), effects=self.consumed)
        if kind in NOT_CARRIED_OUT:
            return Decision(Action.EXECUTE, {**extra, "status": kind}, Status.RUNNABLE, effects=self.consumed)
        delay = policy.backoff_ns(failures, error_class, self.latency_ns, _first(s.base, c.retry_base, r.base),
                                  _first(s.max, c.retry_max, r.max),
                                  hashlib.sha256(f"{fold.object_id}:{fold.seq + 1}".encode()).digest())
        if retry_after is not None and math.isfinite(retry_after) and retry_after > 0:
            delay = max(delay, min(int(retry_after * 1e9), int(policy.retry_max * 1e9)))
        wake = Wake(until=self.now + delay)
        outcome = {**extra, "wake": wake.as_outcome(), "retry_in": delay}
        return Decision(Action.DORMANCY, outcome, Status.DORMANT, wake, self.consumed)

    def non_retryable(self, exc: BaseException) -> bool:
        """Is ``exc`` (its class or any base class) named non-retryable by the intent's
        constraints or, if they name none, by the handler's Retry?"""
        names = self.fold.intent.constraints.non_retryable
        if names is None and self.retry is not None:
            names = self.retry.non_retryable
        if not names:
            return False
        return any(cls.__name__ in names for cls in type(exc).__mro__)

    def refuse(self, kind: str, reason: str) -> Decision:
        """The policy refuses a ``kind`` proposal: recorded, never carried out."""
        return self.fail("refused", f"{kind} refused by policy {self.policy.name}: {reason}", retryable=True,
                         kind="refused")

    def invalid(self, problem: str) -> Decision:
        return self.fail("invalid", problem, retryable=True, kind="invalid")

    def cut_off(self, problem: str) -> Decision:
        """The proposal would take the object past one of the policy's totals: end it, the
        proposal refused and not carried out (nor its state update). Not retried, because
        the next attempt would meet the same total."""
        error = {"class": "refused", "message": f"refused by policy {self.policy.name}: {problem}"[:2000],
                 "retryable": False}
        extra = {k: v for k, v in self.base.items() if k != "state"}
        ending = terminate(f"failed: {problem} (policy cut-off)", **extra, status="refused", error=error)
        return attrs.evolve(ending, effects=self.consumed)


_NO_RETRY = Retry()


def _first(*values: Any) -> Any:
    """The first value that is not None."""
    for value in values:
        if value is not None:
            return value
    return None


@functools.lru_cache(maxsize=64)
def _payload_limits(max_bytes: int, nesting: int) -> Limits:
    return Limits(max_bytes=max_bytes, depth=DEFAULT_LIMITS.depth - nesting)


def payload_problem(value: Any, policy: Policy, what: str, nesting: int) -> str | None:
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


def record_problem(value: Any, cls: type) -> str | None:
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

