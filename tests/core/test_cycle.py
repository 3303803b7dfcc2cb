"""The cycle: each proposal becomes exactly one of six actions, as the policy allows."""

from __future__ import annotations

import hashlib
import re
from typing import Any

import attrs
import pytest

from peo.core.cycle import ALLOWED, RUN_HANDLER, Decision, Release
from peo.core.memory import verify_chain
from peo.core.model import (
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
from peo.core.policy import Policy
from peo.errors import PeoError

from ._helpers import SECOND, T0, Sim, keyring, rows


def refused(decision: Decision, kind: str) -> None:
    """Assert ``decision`` records a refusal of a ``kind`` proposal and does nothing else."""
    assert decision.action is Action.EXECUTE
    assert decision.status is Status.RUNNABLE
    assert decision.outcome["status"] == "refused"
    assert decision.outcome["error"]["class"] == "refused"
    assert decision.outcome["error"]["message"].startswith(f"{kind} refused by policy")
    assert decision.children == () and "wake" not in decision.outcome and "new" not in decision.outcome


# -- the transition table --------------------------------------------------------------------------


def test_the_transition_table_is_the_one_the_docs_draw() -> None:
    drawn = {
        Status.RUNNABLE: {Action.EXECUTE, Action.MUTATE, Action.DELEGATE, Action.DORMANCY, Action.TERMINATE},
        Status.DORMANT: {Action.REENTRY, Action.TERMINATE},
        Status.TERMINATED: set(),
        Status.QUARANTINED: set(),
    }
    assert drawn == ALLOWED


def test_a_runnable_object_runs_its_handler() -> None:
    assert Sim().plan() is RUN_HANDLER


# -- each proposal -------------------------------------------------------------------------------


def test_continue_records_one_executed_step_and_its_state_update() -> None:
    sim = Sim()
    d = sim.step(Continue(state={"n": 1}), latency_ns=42)
    assert (d.action, d.status, d.due_at) == (Action.EXECUTE, Status.RUNNABLE, 0)
    assert d.outcome == {"latency": 42, "status": "ok", "state": {"n": 1}}
    assert (sim.fold.state, sim.fold.steps) == ({"n": 1}, 1)


def test_done_terminates_with_the_result() -> None:
    sim = Sim()
    d = sim.step(Done({"answer": 42}, state={"n": 2}))
    assert (d.action, d.status) == (Action.TERMINATE, Status.TERMINATED)
    assert (d.outcome["reason"], d.outcome["result"], d.outcome["state"]) == ("done", {"answer": 42}, {"n": 2})
    assert (sim.fold.status, sim.fold.result, sim.fold.state) == (Status.TERMINATED, {"answer": 42}, {"n": 2})


def test_sleep_for_seconds_goes_dormant_until_then() -> None:
    sim = Sim()
    d = sim.step(Sleep(seconds=1.5))
    assert (d.action, d.status, d.due_at) == (Action.DORMANCY, Status.DORMANT, T0 + 3 * SECOND // 2)
    assert d.outcome["wake"] == {"until": T0 + 3 * SECOND // 2}
    assert sim.fold.wait == {"until": T0 + 3 * SECOND // 2}


def test_sleep_until_a_unix_time_goes_dormant_until_that_time() -> None:
    sim = Sim()
    d = sim.step(Sleep(until=T0 / SECOND + 60))
    assert d.outcome["wake"] == {"until": T0 + 60 * SECOND}


def test_sleep_until_a_past_time_wakes_at_once() -> None:
    sim = Sim()
    assert sim.step(Sleep(until=0)).due_at == T0


@pytest.mark.parametrize(
    ("proposal", "why"),
    [
        (Sleep(), "exactly one of"),
        (Sleep(seconds=1, until=2), "exactly one of"),
        (Sleep(seconds=float("nan")), "finite"),
        (Sleep(seconds=float("inf")), "finite"),
        (Sleep(until="tomorrow"), "finite"),  # type: ignore[arg-type]
        (Sleep(seconds=10**9), "longer than the 2.592e\\+06 s allowed"),
    ],
)
def test_a_sleep_the_policy_does_not_allow_is_refused(proposal: Sleep, why: str) -> None:
    d = Sim().step(proposal)
    refused(d, "Sleep")
    assert re.search(why, d.outcome["error"]["message"])


def test_wait_signal_goes_dormant_until_the_named_signal_or_the_timeout() -> None:
    sim = Sim()
    d = sim.step(WaitSignal("approve", timeout=30))
    assert (d.action, d.status, d.wait_signal, d.due_at) == (Action.DORMANCY, Status.DORMANT, "approve",
                                                            T0 + 30 * SECOND)
    assert sim.fold.wait == {"signal": "approve", "until": T0 + 30 * SECOND}
    d = Sim().step(WaitSignal("approve"))
    assert (d.outcome["wake"], d.due_at) == ({"signal": "approve"}, None)


@pytest.mark.parametrize(
    "proposal",
    [WaitSignal(""), WaitSignal("bad\nname"), WaitSignal("x", timeout=-1), WaitSignal("x", timeout=float("nan")),
     WaitSignal("x", timeout=10**9)],
)
def test_a_signal_wait_the_policy_does_not_allow_is_refused(proposal: WaitSignal) -> None:
    refused(Sim().step(proposal), "WaitSignal")


def test_delegate_creates_children_with_parent_lineage_and_the_parent_waits_for_them() -> None:
    sim = Sim(context=Context(identity="me", trust_scope="s"))
    d = sim.step(Delegate([Intent("a", goal={"i": 1}), Intent("b")]))
    assert (d.action, d.status, d.wait_children, d.due_at) == (Action.DELEGATE, Status.DORMANT, True, None)
    assert [(c.id, c.intent.handler, c.context.parent) for c in d.children] == [
        ("child-1", "a", "obj-1"), ("child-2", "b", "obj-1")]
    assert all(c.context.trust_scope == "s" and c.context.identity == "me" for c in d.children)
    assert d.outcome["children"] == [{"id": "child-1", "intent": {"handler": "a", "goal": {"i": 1}, "constraints": {
        "deadline": None, "max_failures": None, "max_steps": None, "retry_base": None, "retry_max": None}}},
        {"id": "child-2", "intent": d.outcome["children"][1]["intent"]}]
    assert (sim.fold.children, sim.fold.status, sim.fold.wait) == (["child-1", "child-2"], Status.DORMANT,
                                                                   {"children": True})


def test_delegate_without_waiting_keeps_the_parent_runnable() -> None:
    d = Sim().step(Delegate([Intent("a")], wait=False))
    assert (d.action, d.status, d.due_at) == (Action.DELEGATE, Status.RUNNABLE, 0)


@pytest.mark.parametrize(
    ("proposal", "policy"),
    [
        (Delegate([]), Policy()),
        (Delegate([Intent("a")] * 3), Policy(max_children=2)),
        (Delegate([Intent("a")]), Policy(child_handlers=frozenset({"b"}))),
        (Delegate(["not an intent"]), Policy()),  # type: ignore[list-item]
        (Delegate(5), Policy()),  # type: ignore[arg-type]
        (Delegate([Intent("")]), Policy()),
        (Delegate([Intent("a", goal={"blob": "x" * 100})]), Policy(max_payload_bytes=50)),
        (Delegate([Intent("a", constraints=Constraints(deadline=1.5))]), Policy()),  # type: ignore[arg-type]
    ],
    ids=["none", "too-many", "handler-not-allowed", "not-intents", "not-a-sequence", "empty-handler",
         "goal-too-big", "unreadable-constraints"],
)
def test_a_delegation_the_policy_does_not_allow_is_refused_and_creates_no_child(
    proposal: Delegate, policy: Policy
) -> None:
    sim = Sim(policy=policy)
    refused(sim.step(proposal), "Delegate")
    assert sim.fold.children == [] and sim.fold.status is Status.RUNNABLE


def test_refine_records_the_old_and_new_goal_and_the_object_keeps_its_history() -> None:
    sim = Sim(Intent("work", goal={"n": 3}))
    sim.step(Continue(state={"done": 1}))
    d = sim.step(Refine(goal={"n": 5}))
    assert (d.action, d.status) == (Action.MUTATE, Status.RUNNABLE)
    assert (d.outcome["old"], d.outcome["new"]) == ({"goal": {"n": 3}}, {"goal": {"n": 5}})
    assert sim.fold.intent.goal == {"n": 5} and sim.fold.state == {"done": 1}
    assert [e.action for e in sim.entries] == [Action.INSTANTIATE, Action.EXECUTE, Action.MUTATE]


def test_refine_may_tighten_constraints() -> None:
    sim = Sim(Intent("work", constraints=Constraints(deadline=T0 + 100 * SECOND, max_steps=50)))
    tighter = Constraints(deadline=T0 + 10 * SECOND, max_steps=5)
    d = sim.step(Refine(constraints=tighter))
    assert d.action is Action.MUTATE
    assert d.outcome["old"]["constraints"]["max_steps"] == 50 and d.outcome["new"]["constraints"]["max_steps"] == 5
    assert sim.fold.intent.constraints == tighter


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (Constraints(deadline=T0 + SECOND), Constraints(deadline=T0 + 2 * SECOND)),
        (Constraints(deadline=T0 + SECOND), Constraints()),  # dropping a limit relaxes it
        (Constraints(max_failures=2), Constraints(max_failures=3)),
        (Constraints(max_steps=2), Constraints(max_steps=None)),
    ],
)
def test_refine_may_not_relax_constraints_unless_the_policy_says_so(old: Constraints, new: Constraints) -> None:
    sim = Sim(Intent("work", constraints=old))
    d = sim.step(Refine(constraints=new))
    refused(d, "Refine")
    assert "relaxes" in d.outcome["error"]["message"] and sim.fold.intent.constraints == old
    relaxed = Sim(Intent("work", constraints=old), policy=Policy(refine_may_relax=True))
    assert relaxed.step(Refine(constraints=new)).action is Action.MUTATE
    assert relaxed.fold.intent.constraints == new


@pytest.mark.parametrize(
    "proposal",
    [
        Refine(),
        Refine(goal="not a dict"),  # type: ignore[arg-type]
        Refine(goal={"k": {1, 2}}),
        Refine(constraints={"deadline": 5}),  # type: ignore[arg-type]
        Refine(constraints=Constraints(deadline=1.5)),  # type: ignore[arg-type]
        Refine(constraints=Constraints(max_steps="10")),  # type: ignore[arg-type]
    ],
    ids=["nothing", "goal-not-a-dict", "goal-not-plain", "constraints-not-constraints", "float-deadline",
         "str-max-steps"],
)
def test_a_refinement_that_could_not_be_recorded_faithfully_is_refused(proposal: Refine) -> None:
    sim = Sim()
    refused(sim.step(proposal), "Refine")
    assert sim.fold.intent == Intent("work", goal={"n": 3})


def test_a_retryable_failure_goes_dormant_for_a_backoff_computed_from_the_record() -> None:
    sim = Sim()
    d = sim.step(Fail("flaky", error_class="rate_limit", state={"tried": 1}))
    assert (d.action, d.status) == (Action.DORMANCY, Status.DORMANT)
    assert d.outcome["error"] == {"class": "rate_limit", "message": "flaky", "retryable": True}
    seed = hashlib.sha256(b"obj-1:1").digest()
    expected = Policy().backoff_ns(1, "rate_limit", 1_000, None, None, seed)
    assert d.outcome["retry_in"] == expected and d.outcome["wake"] == {"until": T0 + expected}
    assert (sim.fold.consecutive_failures, sim.fold.last_error_class, sim.fold.state) == (1, "rate_limit",
                                                                                         {"tried": 1})


def test_the_backoff_grows_with_consecutive_failures() -> None:
    sim = Sim(policy=Policy(max_failures=10))
    delays = []
    for _ in range(4):
        delays.append(sim.step(Fail("again")).outcome["retry_in"])
        sim.now = sim.fold.wait["until"]  # type: ignore[index]
        assert sim.tick().action is Action.REENTRY  # type: ignore[union-attr]
    assert delays == sorted(delays) and delays[-1] > 4 * delays[0]


def test_a_non_retryable_failure_terminates_the_object() -> None:
    sim = Sim()
    d = sim.step(Fail("impossible", retryable=False))
    assert (d.action, d.outcome["reason"], d.outcome["status"]) == (Action.TERMINATE, "failed: non-retryable failure",
                                                                   "failed")


def test_the_failure_threshold_terminates_the_object() -> None:
    sim = Sim(Intent("work", constraints=Constraints(max_failures=2)))
    assert sim.step(Fail("one")).action is Action.DORMANCY
    sim.now = sim.fold.wait["until"]  # type: ignore[index]
    sim.tick()
    d = sim.step(Fail("two"))
    assert (d.action, d.outcome["reason"]) == (Action.TERMINATE, "failed: failure threshold exceeded")


def test_an_exception_from_the_handler_is_a_retryable_failure_named_after_its_class() -> None:
    d = Sim().step(ValueError("boom"))
    assert d.action is Action.DORMANCY
    # The class is recorded once, beside the message (not "ValueError: ValueError: boom").
    assert d.outcome["error"] == {"class": "ValueError", "message": "boom", "retryable": True}
    d = Sim().step(TimeoutError("slow"))
    assert d.outcome["error"]["class"] == "timeout"
    assert Sim().step(TimeoutError()).outcome["error"]["message"] == "the handler timed out"  # never empty
    assert Sim().step(KeyError()).outcome["error"]["message"] == "KeyError()"


def test_a_failed_step_records_the_handler_traceback_within_the_policy_limit() -> None:
    tb = "Traceback (most recent call last):\n" + "".join(f'  File "tool.py", line {i}\n' for i in range(500))
    d = Sim().step_raising(ValueError("boom"), traceback=tb)
    assert len(tb) > 8192 and d.outcome["error"]["traceback"] == "...\n" + tb[-8192:]  # the last frames kept
    small = Sim(policy=Policy(max_traceback_bytes=100)).step_raising(ValueError("boom"), traceback=tb)
    assert small.outcome["error"]["traceback"].startswith("...\n") and len(small.outcome["error"]["traceback"]) == 104
    none = Sim(policy=Policy(max_traceback_bytes=0)).step_raising(ValueError("boom"), traceback=tb)
    assert "traceback" not in none.outcome["error"]


@pytest.mark.parametrize("bad", [None, "done", 42, {"state": {}}])
def test_a_value_that_is_not_a_proposal_ends_the_object_as_a_handler_bug(bad: Any) -> None:
    # It would be returned again on every attempt: not retried as if it were transient.
    sim = Sim()
    d = sim.step(bad)
    assert (d.action, d.outcome["status"], d.outcome["error"]["class"]) == (Action.TERMINATE, "invalid", "invalid")
    assert d.outcome["reason"] == "failed: invalid proposal (a handler bug)"
    assert d.outcome["error"]["retryable"] is False and "not a peo proposal" in d.outcome["error"]["message"]
    assert sim.fold.status is Status.TERMINATED and sim.fold.failures == 1


@pytest.mark.parametrize(
    "proposal",
    [Continue(state="nope"), Continue(state={1: 2}), Continue(state={"x": object()}),  # type: ignore[arg-type]
     Done({"set": {1}})],
)
def test_a_state_update_or_result_that_cannot_be_stored_is_invalid_and_not_applied(proposal: Any) -> None:
    sim = Sim()
    d = sim.step(proposal)
    assert d.outcome["status"] == "invalid" and sim.fold.state == {} and sim.fold.status is Status.TERMINATED
    assert "state" not in d.outcome and "result" not in d.outcome


def _nested(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


@pytest.mark.parametrize(
    "make",
    [lambda v: Continue(state={"deep": v}), lambda v: Done(v), lambda v: Refine(goal={"deep": v}),
     lambda v: Delegate([Intent("sub", goal={"deep": v})])],
    ids=["state", "result", "refined-goal", "child-goal"],
)
def test_whatever_the_cycle_records_verifies_however_deeply_a_payload_is_nested(make: Any) -> None:
    # Verification limits the depth of a whole entry body; a payload sits some levels deep
    # in it, so the cycle must refuse one that fits on its own but not inside the entry.
    accepted = 0
    for levels in range(20, 36):
        sim = Sim()
        d = sim.step(make(_nested(levels)))
        if d.outcome.get("status") not in ("invalid", "refused"):
            accepted += 1
        verify_chain("obj-1", rows(sim.entries), keyring())
    assert 0 < accepted < 16


def test_a_payload_larger_than_the_policy_allows_is_invalid() -> None:
    assert Sim(policy=Policy(max_payload_bytes=100)).step(Continue(state={"blob": "x" * 200})).outcome["status"] \
        == "invalid"
    assert Sim(policy=Policy(max_payload_bytes=100)).step(Done("x" * 200)).outcome["status"] == "invalid"


def test_a_refused_proposal_is_recorded_as_refused_and_never_carried_out() -> None:
    sim = Sim()
    d = sim.step(Sleep(seconds=10**9, state={"slept": True}))
    refused(d, "Sleep")
    entry = sim.entries[-1]
    assert entry.action is Action.EXECUTE and entry.outcome["status"] == "refused"
    # Not carried out: no dormancy, and not even the proposal's state update.
    assert (sim.fold.status, sim.fold.wait, sim.fold.state) == (Status.RUNNABLE, None, {})
    assert "state" not in entry.outcome


def test_refusals_count_toward_the_failure_threshold() -> None:
    sim = Sim(Intent("work", constraints=Constraints(max_failures=3)))
    for _ in range(2):
        refused(sim.step(Sleep()), "Sleep")
    d = sim.step(Sleep())
    assert (d.action, d.outcome["reason"]) == (Action.TERMINATE, "failed: failure threshold exceeded")


# -- negative capability ----------------------------------------------------------------------


def test_cannot_do_is_recorded_as_a_structured_constraint() -> None:
    sim = Sim()
    d = sim.step(CannotDo("ocr", "no OCR engine on this node"))
    assert (d.action, d.status) == (Action.EXECUTE, Status.RUNNABLE)
    assert (d.outcome["status"], d.outcome["capability"], d.outcome["reason"]) == (
        "cannot_do", "ocr", "no OCR engine on this node")
    assert sim.fold.cannot_do == {"ocr"}


def test_a_later_delegation_to_something_the_object_cannot_do_is_refused() -> None:
    sim = Sim()
    sim.step(CannotDo("ocr"))
    d = sim.step(Delegate([Intent("ocr")]))
    refused(d, "Delegate")
    assert "cannot do" in d.outcome["error"]["message"]
    assert sim.step(Delegate([Intent("translate")])).action is Action.DELEGATE


def test_cannot_do_survives_resumption_from_memory() -> None:
    sim = Sim()
    sim.step(CannotDo("ocr"))
    sim.step(Continue())
    from peo.core.memory import Fold

    assert Fold.of(sim.entries).cannot_do == {"ocr"}


def test_an_object_that_cannot_do_its_own_handler_terminates() -> None:
    d = Sim().step(CannotDo("work", "the tool is gone"))
    assert (d.action, d.outcome["reason"]) == (Action.TERMINATE, "cannot do its own handler")
    assert (d.outcome["capability"], d.outcome["cannot_do_reason"]) == ("work", "the tool is gone")


def test_too_many_cannot_do_constraints_stop_the_object() -> None:
    sim = Sim(policy=Policy(max_cannot_do=2))
    sim.step(CannotDo("a"))
    sim.step(CannotDo("b"))
    d = sim.step(CannotDo("c"))
    assert (d.action, d.outcome["reason"]) == (Action.TERMINATE, "too many cannot-do constraints (policy cut-off)")


# -- terminal conditions --------------------------------------------------------------------------


@pytest.mark.parametrize("dormant", [False, True])
def test_a_passed_deadline_terminates_a_runnable_or_dormant_object(dormant: bool) -> None:
    sim = Sim(Intent("work", constraints=Constraints(deadline=T0 + 10 * SECOND)))
    if dormant:
        sim.step(Sleep(seconds=60))
    sim.now = T0 + 10 * SECOND - 1
    assert sim.plan() is RUN_HANDLER or isinstance(sim.plan(), Release)
    sim.now += 1
    d = sim.tick()
    assert isinstance(d, Decision)
    assert (d.action, d.outcome["reason"], sim.fold.status) == (Action.TERMINATE, "deadline passed",
                                                               Status.TERMINATED)


@pytest.mark.parametrize("dormant", [False, True])
def test_a_cancel_signal_terminates_the_object_and_is_consumed(dormant: bool) -> None:
    sim = Sim()
    if dormant:
        sim.step(WaitSignal("approve"))
    sim.signal("other")
    sim.signal(CANCEL_SIGNAL, {"by": "ops"})
    d = sim.tick()
    assert isinstance(d, Decision)
    assert (d.action, d.outcome["reason"], d.consumed) == (Action.TERMINATE, "cancelled", (2,))
    assert d.outcome["signals"] == [{"id": 2, "name": CANCEL_SIGNAL, "payload": {"by": "ops"}}]
    assert sim.fold.status is Status.TERMINATED


def test_cancellation_wins_over_a_passed_deadline() -> None:
    sim = Sim(Intent("work", constraints=Constraints(deadline=T0)))
    sim.signal(CANCEL_SIGNAL)
    assert sim.tick().outcome["reason"] == "cancelled"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("intent", "policy"),
    [(Intent("work", constraints=Constraints(max_steps=3)), Policy()), (Intent("work"), Policy(max_steps=3))],
    ids=["object-budget", "policy-budget"],
)
def test_a_spent_step_budget_terminates_the_object(intent: Intent, policy: Policy) -> None:
    sim = Sim(intent, policy=policy)
    for _ in range(3):
        sim.step(Continue())
    d = sim.tick()
    assert (d.action, d.outcome["reason"]) == (Action.TERMINATE, "step budget exhausted (policy cut-off)")  # type: ignore[union-attr]


def test_a_terminated_object_can_never_act_again() -> None:
    sim = Sim()
    sim.step(Done())
    with pytest.raises(PeoError, match="can never act again"):
        sim.plan()
    sim.signal(CANCEL_SIGNAL)
    with pytest.raises(PeoError, match="can never act again"):
        sim.plan()


# -- dormancy and reentry --------------------------------------------------------------------------


def test_a_sleeping_object_is_released_until_its_time_comes_then_reenters() -> None:
    sim = Sim()
    sim.step(Sleep(seconds=10))
    sim.now = T0 + 10 * SECOND - 1
    assert sim.tick() == Release(T0 + 10 * SECOND)
    sim.now += 1
    d = sim.tick()
    assert isinstance(d, Decision)
    assert (d.action, d.outcome, d.status) == (Action.REENTRY, {"trigger": "time"}, Status.RUNNABLE)
    assert sim.plan() is RUN_HANDLER


def test_a_signal_wait_ignores_other_signals_and_reenters_on_the_named_one() -> None:
    sim = Sim()
    sim.step(WaitSignal("approve"))
    sim.signal("unrelated")
    assert sim.tick() == Release(None)
    sim.signal("approve", {"ok": True})
    d = sim.tick()
    assert isinstance(d, Decision)
    assert (d.action, d.outcome["trigger"], d.consumed) == (Action.REENTRY, "signal", (2,))
    assert sim.fold.pending_signals == (Signal("approve", {"ok": True}, 2),)
    assert [s.name for s in sim.inbox] == ["unrelated"]


def test_a_signal_wait_with_a_timeout_reenters_when_the_time_is_up() -> None:
    sim = Sim()
    sim.step(WaitSignal("approve", timeout=5))
    sim.now = T0 + 5 * SECOND
    assert sim.tick().outcome == {"trigger": "time"}  # type: ignore[union-attr]


def test_waiting_for_a_signal_the_step_was_just_given_ends_at_once() -> None:
    sim = Sim()
    sim.signal("approve")
    d = sim.step(WaitSignal("approve"))
    assert d.consumed == () and [s.name for s in sim.inbox] == ["approve"]
    assert sim.tick().outcome["trigger"] == "signal"  # type: ignore[union-attr]


def test_a_parent_waiting_for_children_is_released_until_all_are_done() -> None:
    sim = Sim()
    sim.step(Delegate([Intent("a"), Intent("b")]))
    assert sim.tick(children_done=False) == Release(None)
    d = sim.tick(children_done=True)
    assert (d.action, d.outcome) == (Action.REENTRY, {"trigger": "children"})  # type: ignore[union-attr]


def test_children_being_done_does_not_wake_an_object_that_waits_for_something_else() -> None:
    sim = Sim()
    sim.step(Sleep(seconds=60))
    assert sim.tick(children_done=True) == Release(T0 + 60 * SECOND)


def test_signals_delivered_to_a_step_are_recorded_and_consumed() -> None:
    sim = Sim()
    sim.signal("note", [1, 2])
    d = sim.step(Continue())
    assert d.outcome["signals"] == [{"id": 1, "name": "note", "payload": [1, 2]}] and d.consumed == (1,)
    assert sim.inbox == []


def test_a_dormant_object_never_runs_its_handler() -> None:
    sim = Sim()
    sim.step(Sleep(seconds=1))
    assert isinstance(sim.plan(), Release)
    sim.now += SECOND
    assert isinstance(sim.plan(), Decision)


def test_every_decision_is_allowed_by_the_table_for_the_status_it_leaves() -> None:
    sim = Sim()
    script: list[tuple[Any, int]] = [
        (Continue(), 0), (Refine(goal={"n": 1}), 0), (CannotDo("x"), 0), (Delegate([Intent("c")]), 0),
        (None, 0), (Sleep(seconds=1), 0), (None, SECOND), (Fail("f"), 0),
    ]
    for proposal, advance in script:
        sim.now += advance
        before = sim.fold.status
        d = sim.step(proposal) if proposal is not None else sim.tick(children_done=True)
        assert isinstance(d, Decision) and d.action in ALLOWED[before] and sim.fold.status is d.status


def test_decisions_are_pure_values_that_can_be_compared() -> None:
    a, b = Sim(), Sim()
    assert a.conclude(Continue(state={"x": 1})) == b.conclude(Continue(state={"x": 1}))
    assert attrs.asdict(a.conclude(Sleep(seconds=1))) == attrs.asdict(b.conclude(Sleep(seconds=1)))


def test_every_attempt_of_a_step_shares_one_idempotency_key_until_it_succeeds() -> None:
    sim = Sim()
    sim.step(Continue())  # seq 1: a step that succeeded
    assert sim.fold.attempt_seq is None  # the next step starts afresh at seq 2
    sim.step(ValueError("flaky tool"))  # seq 2: first attempt of the next step fails; backs off
    assert sim.fold.attempt_seq == 2
    sim.now = sim.fold.wait["until"]  # type: ignore[index]
    sim.tick()  # seq 3: reentry (time)
    sim.step(Fail("still flaky"))  # seq 4: second attempt, same step
    assert sim.fold.attempt_seq == 2 and sim.fold.consecutive_failures == 2
    sim.now = sim.fold.wait["until"]  # type: ignore[index]
    sim.tick()  # seq 5
    sim.step(Continue())  # seq 6: the third attempt succeeds
    assert sim.fold.attempt_seq is None
