"""Per-handler retry settings (issue 12): the ``Retry`` value, its place in the intent's
constraints (old intents still decode, and encode to the same bytes), and the failure path
in ``conclude``: the intent's constraints, then the handler's Retry, then the policy."""

from __future__ import annotations

import hashlib

import attrs
import pytest

from peo.core.codec import packb, structure, unpackb, unstructure
from peo.core.cycle import RUN_HANDLER, Decision, conclude
from peo.core.model import Action, Constraints, Fail, Intent, Retry, Status
from peo.core.policy import Policy
from peo.errors import UsageError

from ._helpers import T0, Sim


class AppError(Exception):
    pass


class PaymentDeclined(AppError):
    pass


def fail_step(sim: Sim, proposal: object, retry: Retry | None) -> Decision:
    """One handler step that ended in ``proposal`` (an exception or a Fail), concluded with
    the handler's ``retry`` as the node passes it; then the time passes to its retry."""
    assert sim.plan() is RUN_HANDLER
    decision = conclude(sim.fold, sim.policy, proposal, now=sim.now, latency_ns=1_000, retry=retry)
    sim.append(decision)
    if decision.action is Action.DORMANCY:
        sim.now = sim.fold.wait["until"]  # type: ignore[index]
        assert sim.tick().action is Action.REENTRY  # type: ignore[union-attr]
    return decision


def attempts_until_failed(sim: Sim, retry: Retry | None, exc: Exception | None = None) -> int:
    for attempt in range(1, 50):
        d = fail_step(sim, exc or ValueError("boom"), retry)
        if d.action is Action.TERMINATE:
            return attempt
    raise AssertionError("never failed")


# -- the value ------------------------------------------------------------------------------


def test_retry_keeps_exception_classes_as_names_and_checks_its_settings() -> None:
    r = Retry(base=0.5, max=30, max_attempts=4, non_retryable=(ValueError, "KeyError", ValueError))
    assert r.non_retryable == ("ValueError", "KeyError")
    assert Retry(non_retryable=PaymentDeclined).non_retryable == ("PaymentDeclined",)
    assert Retry(non_retryable=()).non_retryable == () and Retry().non_retryable is None
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        r.base = 1  # type: ignore[misc]
    for bad in ({"base": 0}, {"base": -1.0}, {"max": float("inf")}, {"base": True}, {"max_attempts": 0},
                {"max_attempts": 2.5}, {"max_attempts": True}, {"non_retryable": ("Value Error",)},
                {"non_retryable": (int,)}, {"non_retryable": 3}):
        with pytest.raises(UsageError):
            Retry(**bad)  # type: ignore[arg-type]


def test_retry_writes_its_settings_over_constraints_and_leaves_the_rest() -> None:
    c = Constraints(deadline=5, max_failures=9, max_steps=7, retry_base=2.0)
    got = Retry(max=60, max_attempts=3, non_retryable=(KeyError,)).constraints(c)
    assert got == Constraints(deadline=5, max_failures=3, max_steps=7, retry_base=2.0, retry_max=60.0,
                              non_retryable=("KeyError",))
    assert Retry().constraints(c) == c


def test_non_retryable_is_recorded_in_the_intent_and_left_out_while_unset() -> None:
    # Unset, the encoding is the one intents had before the field existed (golden bytes).
    assert "non_retryable" not in unstructure(Constraints())
    old_form = {"deadline": None, "max_failures": 2, "max_steps": None, "retry_base": None, "retry_max": None}
    assert structure(old_form, Constraints) == Constraints(max_failures=2)
    intent = Intent("pay", {"amount": 3}, Retry(non_retryable=(ValueError, KeyError)).constraints())
    back = structure(unpackb(packb(unstructure(intent))), Intent)
    assert back == intent and back.constraints.non_retryable == ("ValueError", "KeyError")


# -- the failure path -----------------------------------------------------------------------


def test_max_attempts_of_the_handler_applies_when_the_intent_sets_none() -> None:
    assert attempts_until_failed(Sim(), None) == Policy().max_failures == 5
    assert attempts_until_failed(Sim(), Retry(max_attempts=2)) == 2
    assert attempts_until_failed(Sim(policy=Policy(max_failures=3)), Retry(base=1.0)) == 3  # unset: the policy's
    # The intent's constraints come first.
    sim = Sim(Intent("work", constraints=Constraints(max_failures=3)))
    assert attempts_until_failed(sim, Retry(max_attempts=1)) == 3


def test_the_backoff_takes_base_and_max_from_the_intent_then_the_handler_then_the_policy() -> None:
    seed = hashlib.sha256(b"obj-1:1").digest()
    policy = Policy()

    def first_delay(sim: Sim, retry: Retry | None) -> int:
        d = fail_step(sim, ValueError("boom"), retry)
        assert d.action is Action.DORMANCY
        return int(d.outcome["retry_in"])

    assert first_delay(Sim(), None) == policy.backoff_ns(1, "ValueError", 1_000, None, None, seed)
    assert first_delay(Sim(), Retry(base=7.0)) == policy.backoff_ns(1, "ValueError", 1_000, 7.0, None, seed)
    assert first_delay(Sim(), Retry(base=7.0, max=2.0)) == policy.backoff_ns(1, "ValueError", 1_000, 7.0, 2.0, seed)
    intent = Intent("work", constraints=Constraints(retry_base=0.01))
    assert first_delay(Sim(intent), Retry(base=7.0, max=50.0)) == policy.backoff_ns(1, "ValueError", 1_000, 0.01,
                                                                                    50.0, seed)
    assert policy.backoff_ns(1, "ValueError", 1_000, 7.0, None, seed) > 5 * 10**9  # the handler's base is used


def test_a_non_retryable_exception_or_a_subclass_of_one_fails_the_object_at_once() -> None:
    retry = Retry(non_retryable=(AppError, KeyError))
    for exc in (AppError("no"), PaymentDeclined("card declined"), KeyError("sku")):
        sim = Sim()
        d = fail_step(sim, exc, retry)
        assert (d.action, d.status, d.outcome["reason"]) == (Action.TERMINATE, Status.TERMINATED,
                                                             "failed: non-retryable failure")
        assert d.outcome["error"]["class"] == type(exc).__name__ and d.outcome["error"]["retryable"] is False
    # Other exceptions still back off; LookupError is KeyError's base, not a subclass.
    for exc in (ValueError("x"), LookupError("y")):
        assert fail_step(Sim(), exc, retry).action is Action.DORMANCY
    # A Fail proposal says for itself whether it may be retried.
    assert fail_step(Sim(), Fail("declined", error_class="AppError"), retry).action is Action.DORMANCY


def test_the_intents_non_retryable_list_replaces_the_handlers() -> None:
    handler = Retry(non_retryable=(ValueError,))
    own = Sim(Intent("work", constraints=Retry(non_retryable=(KeyError,)).constraints()))
    assert fail_step(own, ValueError("x"), handler).action is Action.DORMANCY
    assert fail_step(own, KeyError("k"), handler).action is Action.TERMINATE
    none = Sim(Intent("work", constraints=Constraints(non_retryable=())))  # explicitly: retry everything
    assert fail_step(none, ValueError("x"), handler).action is Action.DORMANCY
    # Names alone (as the CLI records them) match too, and a handler timeout is a TimeoutError.
    named = Sim(Intent("work", constraints=Constraints(non_retryable=("TimeoutError",))))
    d = fail_step(named, TimeoutError("the handler did not finish within 1 s"), None)
    assert (d.action, d.outcome["error"]["class"]) == (Action.TERMINATE, "timeout")


def test_without_any_retry_setting_the_decisions_are_unchanged() -> None:
    a, b = Sim(), Sim()
    assert a.conclude(ValueError("boom")) == conclude(b.fold, b.policy, ValueError("boom"), now=T0,
                                                      latency_ns=1_000, retry=None)
    assert conclude(a.fold, a.policy, ValueError("boom"), now=T0, latency_ns=1_000, retry=Retry()) == \
        a.conclude(ValueError("boom"))


def test_a_refinement_may_not_drop_non_retryable_exceptions_unless_the_policy_lets_it_relax() -> None:
    from peo.core.cycle.proposals import _relaxes

    strict = Constraints(non_retryable=("ValueError", "KeyError"))
    assert _relaxes(strict, Constraints(non_retryable=("ValueError",))) == "non_retryable"
    assert _relaxes(strict, Constraints()) == "non_retryable"
    assert _relaxes(strict, Constraints(non_retryable=("KeyError", "ValueError", "OSError"))) is None  # tighter
    assert _relaxes(Constraints(), Constraints(non_retryable=("ValueError",))) is None
