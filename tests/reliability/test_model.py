"""Model-based resumption tests: ``peo.testing.ResumptionMachine`` interleaves submits,
single cycles on two nodes, crashes before and after commits, lost leases, restarts,
signals, cancels and clock jumps, and checks the invariants after every step.

These are synchronous tests: the machine runs its own event loop.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st

import peo
import peo.node.worker as worker_module
from peo.core.model import Action
from peo.testing import (
    SCRIPT_HANDLER,
    FakeClock,
    ResumptionMachine,
    expected_actions,
    run_resumption_tests,
    scripted_app,
)

PG_URL = os.environ.get("PEO_TEST_POSTGRES_URL")
SMALL = settings(max_examples=15, stateful_step_count=15, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


def test_the_model_of_a_script() -> None:
    ops = [["continue"], ["sleep", 30.0], ["wait", "go"], ["fail"], ["done", {"ok": True}]]
    actions, result = expected_actions(ops, max_failures=5)
    assert actions == [
        (Action.EXECUTE, "ok"),
        (Action.DORMANCY, "ok"), (Action.REENTRY, "time"),
        (Action.DORMANCY, "ok"), (Action.REENTRY, "signal"),
        (Action.DORMANCY, "failed"), (Action.REENTRY, "time"),
        (Action.TERMINATE, "done"),
    ]
    assert result == {"ok": True}


def test_the_model_of_a_step_that_keeps_raising() -> None:
    actions, result = expected_actions([["raise"]], max_failures=3)
    assert actions == [(Action.DORMANCY, "failed"), (Action.REENTRY, "time")] * 2 + [
        (Action.TERMINATE, "failed: failure threshold exceeded")
    ]
    assert result is None


def test_a_fake_clock_never_runs_behind_real_time() -> None:
    clock = FakeClock()
    before = clock()
    clock.advance(3600)
    assert clock() >= before + 3600 * 10**9
    clock.advance_to(before)  # the past: nothing happens
    assert clock() >= before + 3600 * 10**9
    with pytest.raises(ValueError):
        clock.advance(-1)


def test_scripted_objects_resume_as_the_model_says_on_sqlite() -> None:
    run_resumption_tests(settings=SMALL)


@pytest.mark.postgres
def test_scripted_objects_resume_as_the_model_says_on_postgresql() -> None:
    if not PG_URL:
        pytest.skip("PostgreSQL not available: set PEO_TEST_POSTGRES_URL")
    run_resumption_tests(postgres_url=PG_URL, settings=SMALL)


# -- pointing the machine at your own handlers, as a user would ----------------------------

counting = peo.App()


@counting.handler("count")
def count(step: peo.Step) -> peo.Proposal:
    n = step.state.get("n", 0)
    if n >= step.goal["steps"]:
        return peo.Done({"n": n})
    if n == 1 and step.goal.get("approval"):
        return peo.WaitSignal("approve", state={"n": n + 1})
    return peo.Continue(state={"n": n + 1})


class CountingResumption(ResumptionMachine):
    app = counting
    goals: ClassVar[Mapping[str, st.SearchStrategy[dict[str, Any]]]] = {
        "count": st.fixed_dictionaries({"steps": st.integers(0, 4), "approval": st.booleans()}),
    }
    drain = True  # every object finishes once its awaited signal is delivered


TestCountingResumption = CountingResumption.TestCase
TestCountingResumption.settings = SMALL


# -- and the machine does fail when a node misbehaves --------------------------------------


def test_the_machine_catches_a_node_that_runs_a_committed_step_again(monkeypatch: pytest.MonkeyPatch) -> None:
    real_step = worker_module.Worker.step

    async def step_twice(self: Any, fold: Any, memory: Any, signals: Any) -> Any:
        await real_step(self, fold, memory, signals)  # a "retry" of an attempt that was fine
        return await real_step(self, fold, memory, signals)

    monkeypatch.setattr(worker_module.Worker, "step", step_twice)
    # Twice per attempt, so 2 runs, or more where the machine also crashed that step.
    with pytest.raises(AssertionError, match=r"side effect of step .* ran [2-9] times"):
        run_resumption_tests(settings=settings(SMALL, max_examples=60, phases=[Phase.generate]))


def test_the_machine_catches_a_cycle_that_ignores_cancellation(monkeypatch: pytest.MonkeyPatch) -> None:
    real_plan = worker_module.plan

    def plan(fold: Any, policy: Any, **kw: Any) -> Any:
        kw["signals"] = [s for s in kw.get("signals", ()) if s.name != peo.core.model.CANCEL_SIGNAL]
        return real_plan(fold, policy, **kw)

    monkeypatch.setattr(worker_module, "plan", plan)
    # Caught either as a wrong entry (a step where "cancelled" was due) or, for an object that
    # sleeps through the ignored cancel, as a memory that never reaches "terminate:cancelled".
    with pytest.raises(AssertionError, match=r"not a prefix of what the model expects|stopped short of .*cancelled"):
        run_resumption_tests(settings=settings(SMALL, max_examples=60, phases=[Phase.generate]))


def test_the_scripted_handler_can_join_an_app_of_your_own() -> None:
    app = scripted_app(peo.App())
    assert SCRIPT_HANDLER in app
