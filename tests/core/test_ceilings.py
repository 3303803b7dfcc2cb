"""A policy's limits are ceilings, not defaults (issue 19, item 6).

An object's constraints (and its handler's ``peo.Retry``) may ask for less than the node's
policy allows, never more: the cycle uses the smaller of the two for the step budget, the
failure threshold and the longest retry delay, and the policy bounds every sleep and
signal wait. ``Policy.constraint_problem`` says which constraint of a submit is above the
ceiling, so that a submit asking for more is refused instead of silently getting less.

Each case of the issue is replayed under the issue's policy: max_steps 5, max_failures 3,
max_sleep_seconds 60, may_relax false.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peo.core.cycle import RUN_HANDLER, Decision, conclude
from peo.core.model import Action, Constraints, Continue, Fail, Intent, Refine, Retry, Sleep, Status, WaitSignal
from peo.core.policy import Policy

from ._helpers import SECOND, T0, Sim

ISSUE_POLICY = Policy(max_steps=5, max_failures=3, max_sleep_seconds=60.0, refine_may_relax=False)


def run_until_ended(sim: Sim, proposal: object = None, *, limit: int = 100) -> Decision:
    """Step the object (Continue, or ``proposal``) and let its backoffs pass until it ends."""
    for _ in range(limit):
        planned = sim.plan()
        if planned is RUN_HANDLER:
            decision = sim.step(proposal if proposal is not None else Continue())
        else:
            assert isinstance(planned, Decision), planned
            sim.append(planned)
            decision = planned
        if sim.fold.status is Status.TERMINATED:
            return decision
        if sim.fold.status is Status.DORMANT:
            sim.now = sim.fold.wait["until"]  # type: ignore[index]
    raise AssertionError(f"still {sim.fold.status} after {limit} cycles")


# -- steps ---------------------------------------------------------------------------------------


def test_a_refinement_to_a_huge_step_budget_is_recorded_but_the_object_stops_at_the_policys() -> None:
    sim = Sim(policy=ISSUE_POLICY)
    # Not a relaxation of a limit the object set (it set none), so it is recorded...
    assert sim.step(Refine(constraints=Constraints(max_steps=10**12))).action is Action.MUTATE
    assert sim.fold.intent.constraints.max_steps == 10**12
    # ...but the object still ends at the policy's 5 steps.
    ending = run_until_ended(sim)
    assert (ending.outcome["reason"], sim.fold.steps) == ("step budget exhausted (policy cut-off)", 5)


def test_an_object_submitted_with_a_huge_step_budget_stops_at_the_policys() -> None:
    sim = Sim(Intent("work", constraints=Constraints(max_steps=10**9)), policy=ISSUE_POLICY)
    ending = run_until_ended(sim)
    assert (ending.outcome["reason"], sim.fold.steps) == ("step budget exhausted (policy cut-off)", 5)


def test_an_object_may_ask_for_fewer_steps_than_the_policy_allows() -> None:
    sim = Sim(Intent("work", constraints=Constraints(max_steps=2)), policy=ISSUE_POLICY)
    run_until_ended(sim)
    assert sim.fold.steps == 2


@given(own=st.none() | st.integers(1, 10**12), ceiling=st.integers(1, 12))
def test_property_the_step_budget_is_the_smaller_of_the_objects_and_the_policys(own: int | None,
                                                                                ceiling: int) -> None:
    sim = Sim(Intent("work", constraints=Constraints(max_steps=own)), policy=Policy(max_steps=ceiling))
    run_until_ended(sim)
    assert sim.fold.steps == (ceiling if own is None else min(own, ceiling))


# -- failures ------------------------------------------------------------------------------------


def test_an_object_asking_for_more_failures_than_the_policy_allows_fails_at_the_policys_threshold() -> None:
    sim = Sim(Intent("work", constraints=Constraints(max_failures=1000)), policy=ISSUE_POLICY)
    ending = run_until_ended(sim, Fail("flaky"))
    assert ending.outcome["reason"] == "failed: failure threshold exceeded"
    assert sim.fold.failures == 3


def test_a_handlers_retry_max_attempts_is_capped_by_the_policy_too() -> None:
    sim = Sim(policy=ISSUE_POLICY)
    retry = Retry(max_attempts=1000)
    attempts = 0
    while sim.fold.status is not Status.TERMINATED and attempts < 10:
        attempts += 1
        assert sim.plan() is RUN_HANDLER
        decision = conclude(sim.fold, sim.policy, ValueError("boom"), now=sim.now, latency_ns=1, retry=retry)
        sim.append(decision)
        if decision.action is Action.DORMANCY:
            sim.now = sim.fold.wait["until"]  # type: ignore[index]
            sim.tick()
    assert (attempts, decision.outcome["reason"]) == (3, "failed: failure threshold exceeded")


# -- retry pacing --------------------------------------------------------------------------------


def test_a_refinement_to_a_retry_delay_of_thirty_years_waits_no_longer_than_the_policys_longest() -> None:
    sim = Sim(policy=ISSUE_POLICY)
    refined = sim.step(Refine(constraints=Constraints(retry_base=1e9, retry_max=1e9)))
    assert refined.action is Action.MUTATE  # longer delays are pacing, not a relaxed limit
    failed = sim.step(Fail("flaky"))
    assert failed.action is Action.DORMANCY
    assert failed.outcome["retry_in"] <= ISSUE_POLICY.retry_max * SECOND
    assert sim.fold.wait == {"until": T0 + failed.outcome["retry_in"]}


def test_a_handlers_retry_cannot_wait_longer_than_the_policys_longest_delay() -> None:
    sim = Sim(policy=ISSUE_POLICY)
    d = conclude(sim.fold, sim.policy, ValueError("boom"), now=T0, latency_ns=1, retry=Retry(base=1e9, max=1e9))
    assert 0.75 * ISSUE_POLICY.retry_max * SECOND <= d.outcome["retry_in"] <= ISSUE_POLICY.retry_max * SECOND


def test_an_object_may_still_retry_sooner_or_start_slower_than_the_policys_defaults() -> None:
    seed = b"\xff"
    policy = Policy(retry_base=0.5, retry_max=300.0)
    assert policy.backoff_ns(1, "error", 0, 7.0, None, seed) == 7 * SECOND  # a slower first retry
    assert policy.backoff_ns(20, "error", 0, None, 3.0, seed) == 3 * SECOND  # a shorter longest delay
    assert policy.backoff_ns(20, "error", 0, None, 1e9, seed) == 300 * SECOND  # never longer than the policy's


@given(failures=st.integers(1, 100), base=st.none() | st.floats(allow_nan=True),
       cap=st.none() | st.floats(allow_nan=True), latency_ns=st.integers(0, 10**15),
       error_class=st.sampled_from(["error", "rate_limit", "timeout"]))
def test_property_no_backoff_is_longer_than_the_policys_retry_max(failures: int, base: float | None,
                                                                  cap: float | None, latency_ns: int,
                                                                  error_class: str) -> None:
    policy = Policy(retry_max=60.0)
    assert 0 <= policy.backoff_ns(failures, error_class, latency_ns, base, cap, b"\xff") <= 60 * SECOND


# -- sleeps and signal waits (already bounded by the policy) ------------------------------------


@pytest.mark.parametrize(
    "proposal",
    [Sleep(seconds=61), Sleep(until=T0 / SECOND + 61), WaitSignal("approve", timeout=61)],
    ids=["sleep-seconds", "sleep-until", "signal-wait"],
)
def test_a_sleep_or_signal_wait_longer_than_the_policy_allows_is_refused(proposal: Any) -> None:
    d = Sim(policy=ISSUE_POLICY).step(proposal)
    assert (d.outcome["status"], d.status) == ("refused", Status.RUNNABLE)
    assert "than the 60 s allowed" in d.outcome["error"]["message"]
    ok = Sim(policy=ISSUE_POLICY).step(Sleep(seconds=60))
    assert ok.due_at == T0 + 60 * SECOND


# -- refinement still refuses relaxation -----------------------------------------------------------


def test_a_refinement_may_still_not_relax_a_limit_the_object_set_itself() -> None:
    sim = Sim(Intent("work", constraints=Constraints(max_steps=3)), policy=ISSUE_POLICY)
    d = sim.step(Refine(constraints=Constraints(max_steps=4)))
    assert d.outcome["status"] == "refused" and "relaxes max_steps" in d.outcome["error"]["message"]
    # Retry pacing is not a limit: longer delays are no relaxation.
    assert sim.step(Refine(constraints=Constraints(max_steps=3, retry_base=9.0, retry_max=99.0))).action \
        is Action.MUTATE


# -- refusing a submit that asks for more than the policy allows -----------------------------------


def test_a_submit_asking_for_more_steps_than_the_policy_allows_is_named_in_one_sentence() -> None:
    assert Policy().constraint_problem(Constraints(max_steps=10**9)) == (
        "max_steps 1000000000 is above the policy's ceiling of 100000 (policy default, [thresholds] max_steps)")


@pytest.mark.parametrize(
    ("constraints", "problem"),
    [
        (Constraints(max_steps=6), "max_steps 6 is above the policy's ceiling of 5"),
        (Constraints(max_failures=4), "max_failures 4 is above the policy's ceiling of 3"),
        (Constraints(retry_max=301.0), "retry_max 301 is above the policy's ceiling of 300"),
        (Constraints(retry_base=1e9, retry_max=1e9), "retry_base 1e+09 is above the policy's ceiling of 300"),
    ],
)
def test_each_constraint_above_the_policys_ceiling_is_a_problem(constraints: Constraints, problem: str) -> None:
    found = ISSUE_POLICY.constraint_problem(constraints)
    assert found is not None and found.startswith(problem)


@pytest.mark.parametrize(
    "constraints",
    [Constraints(), Constraints(max_steps=5, max_failures=3, retry_base=300.0, retry_max=300.0),
     Constraints(max_steps=1, retry_base=10.0, deadline=T0, non_retryable=("ValueError",))],
    ids=["none", "at-the-ceiling", "below"],
)
def test_constraints_at_or_below_the_ceiling_are_no_problem(constraints: Constraints) -> None:
    # A slower first retry than the policy's base_seconds (0.5 s) is not above a ceiling.
    assert ISSUE_POLICY.constraint_problem(constraints) is None
