"""Properties of the cycle, driven like a node drives it: random proposals, signals and clock
values go through plan/conclude, every decision is signed with make_entry and folded."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peo.core.cycle import ALLOWED, RUN_HANDLER, Decision, Release
from peo.core.memory import Fold, verify_chain
from peo.core.model import (
    CANCEL_SIGNAL,
    Action,
    CannotDo,
    Constraints,
    Continue,
    Delegate,
    Done,
    Fail,
    Intent,
    Refine,
    Sleep,
    Status,
    WaitSignal,
)
from peo.core.policy import Policy
from peo.errors import PeoError

from ._helpers import SECOND, T0, Sim, keyring, rows

SIGNAL_NAMES = ["approve", "go", "other"]
HANDLERS = ["work", "ocr", "fax", "sub", ""]

state_updates = st.none() | st.dictionaries(
    st.sampled_from("abc"),
    st.integers(0, 9) | st.text(max_size=3) | st.tuples(st.integers(0, 3), st.integers(0, 3))
    | st.lists(st.integers(0, 3), max_size=2) | st.dictionaries(st.sampled_from("xy"), st.integers(0, 3), max_size=2),
    max_size=2,
)
deadlines = st.none() | st.integers(T0, T0 + 20_000 * SECOND)
limits = st.builds(
    Constraints,
    deadline=deadlines,
    max_failures=st.none() | st.integers(1, 8),
    max_steps=st.none() | st.integers(1, 40),
    retry_base=st.none() | st.floats(0, 10),
    retry_max=st.none() | st.floats(0, 600),
)
odd_limits = st.builds(
    Constraints,
    deadline=st.just(1.5) | st.integers(2**63, 2**64),  # cannot be recorded and read back: refused
    retry_base=st.none() | st.floats(allow_nan=True),
    retry_max=st.none() | st.floats(0, 1e300),
)
goals = st.dictionaries(st.sampled_from("xy"), st.integers(0, 5), max_size=2)
children = st.builds(Intent, handler=st.sampled_from(["ocr", "fax", "sub"]), goal=goals, constraints=limits)
odd_children = st.builds(Intent, handler=st.sampled_from(HANDLERS), goal=goals, constraints=limits | odd_limits)
odd_seconds = st.floats(-5, 30) | st.sampled_from([float("nan"), float("inf"), 1e7])

# Mostly proposals a policy accepts, so runs get long; then ones that end the object; then odd ones.
ordinary = st.one_of(
    st.builds(Continue, state=state_updates),
    st.builds(Sleep, seconds=st.floats(0, 30), state=state_updates),
    st.builds(WaitSignal, st.sampled_from(SIGNAL_NAMES), timeout=st.none() | st.floats(0, 40), state=state_updates),
    st.builds(Delegate, st.lists(children, min_size=1, max_size=2), wait=st.booleans(), state=state_updates),
    st.builds(Refine, goal=st.none() | goals, constraints=st.none() | limits, state=state_updates),
    st.builds(Fail, st.text(max_size=5), error_class=st.sampled_from(["error", "rate_limit", "timeout"]),
              state=state_updates),
    st.builds(CannotDo, st.sampled_from(["ocr", "fax"]), st.text(max_size=5), state=state_updates),
    st.sampled_from([ValueError("boom"), TimeoutError("slow")]),
)
ending = st.one_of(
    st.builds(Done, st.none() | st.integers(0, 9), state=state_updates),
    st.builds(Fail, st.text(max_size=5), retryable=st.just(False)),
    st.just(CannotDo("work", "never")),
)


def nested(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


deep = st.integers(24, 34).map(nested)  # around the depth limit of a whole entry body
odd = st.one_of(
    st.builds(Continue, state=st.just({1: 2}) | st.just({"s": {1}}) | st.builds(lambda v: {"deep": v}, deep)),
    st.builds(Done, deep),
    st.builds(Refine, goal=st.builds(lambda v: {"deep": v}, deep)),
    st.builds(Delegate, st.lists(st.builds(Intent, handler=st.just("sub"), goal=st.builds(lambda v: {"d": v}, deep)),
                                 min_size=1, max_size=1)),
    st.builds(Done, st.sets(st.integers(0, 2), min_size=1)),
    st.builds(Sleep, seconds=odd_seconds),
    st.builds(Sleep, until=st.none() | odd_seconds.map(lambda s: T0 / SECOND + s)),
    st.builds(Sleep, seconds=st.just(1), until=st.just(2)),
    st.builds(WaitSignal, st.sampled_from(["", "bad\nname"]), timeout=st.none() | st.floats(-1, 1e7)),
    st.builds(Delegate, st.lists(odd_children, max_size=3) | st.just(5), wait=st.booleans()),
    st.builds(Refine, goal=st.none() | st.just("text"), constraints=st.none() | odd_limits),
    st.builds(CannotDo, st.sampled_from(HANDLERS)),
    st.sampled_from([42, "done", None]),
)
proposals = st.sampled_from([*[ordinary] * 14, ending, odd, odd]).flatmap(lambda kind: kind)
ops = st.lists(
    st.fixed_dictionaries({
        "advance": st.sampled_from([0, 1, SECOND, 5 * SECOND, 60 * SECOND, 1000 * SECOND])
        | st.integers(0, 40 * SECOND),
        "signals": st.lists(st.sampled_from(SIGNAL_NAMES), max_size=2),
        "cancel": st.sampled_from([False] * 30 + [True]),
        "children_done": st.booleans(),
        "proposal": proposals,
    }),
    min_size=5,
    max_size=30,
)
policies = st.builds(
    Policy,
    max_failures=st.integers(2, 10),
    max_steps=st.integers(5, 60),
    max_cannot_do=st.integers(0, 3),
    max_children=st.integers(1, 2),
    max_sleep_seconds=st.sampled_from([100.0, 1e6]),
    refine_may_relax=st.booleans(),
)
objects = st.builds(Intent, handler=st.just("work"), constraints=st.builds(
    Constraints, deadline=deadlines, max_failures=st.none() | st.integers(2, 8),
    max_steps=st.none() | st.integers(1, 40)))


def snapshot(fold: Fold) -> dict[str, Any]:
    """Everything a fold says; its private slots are caches (of a lazily measured state size)."""
    return {name: getattr(fold, name) for name in Fold.__slots__ if not name.startswith("_")} | {
        "state_bytes": fold.state_bytes}


def trigger_holds(trigger: str, wait: dict[str, Any], inbox: list[str], now: int, children_done: bool) -> bool:
    if trigger == "signal":
        return wait.get("signal") in inbox
    if trigger == "children":
        return bool(wait.get("children")) and children_done
    if trigger == "time":
        return wait.get("until") is not None and now >= wait["until"]
    raise AssertionError(f"unknown trigger {trigger!r}")


@given(objects, policies, ops)
def test_property_the_cycle_follows_the_table_and_memory_folds_to_what_handlers_see(
    intent: Intent, policy: Policy, script: list[dict[str, Any]]
) -> None:
    sim = Sim(intent, policy=policy)
    for op in script:
        sim.now += op["advance"]
        for name in op["signals"]:
            sim.signal(name)
        if op["cancel"]:
            sim.signal(CANCEL_SIGNAL)
        before = sim.fold.status
        if before is Status.TERMINATED:
            # Terminated objects never act again, whatever arrives.
            with pytest.raises(PeoError):
                sim.plan(children_done=op["children_done"])
            continue
        wait = dict(sim.fold.wait or {})
        names = [s.name for s in sim.inbox]
        deadline = sim.fold.intent.constraints.deadline
        planned = sim.plan(children_done=op["children_done"])

        if isinstance(planned, Release):
            # Released only while dormant and while no trigger (or terminal condition) holds.
            assert before is Status.DORMANT
            assert CANCEL_SIGNAL not in names and (deadline is None or sim.now < deadline)
            for trigger in ("signal", "children", "time"):
                assert not trigger_holds(trigger, wait, names, sim.now, op["children_done"])
            assert planned.due_at == wait.get("until")
            continue

        if planned is RUN_HANDLER:
            assert before is Status.RUNNABLE, "a dormant object ran its handler"
            seen = dict(sim.fold.state_view())
            assert seen == Fold.of(sim.entries).state  # the handler sees the fold of the memory
            decision = sim.conclude(op["proposal"])
        else:
            assert isinstance(planned, Decision)
            decision = planned

        assert decision.action in ALLOWED[before], f"{decision.action} is not allowed from {before}"
        if decision.action is Action.REENTRY:
            assert trigger_holds(decision.outcome["trigger"], wait, names, sim.now, op["children_done"])
        if before is Status.DORMANT and decision.action is Action.TERMINATE:
            assert decision.outcome["reason"] in ("cancelled", "deadline passed")
        was_refused = decision.outcome.get("status") in ("refused", "invalid")
        if was_refused:
            assert decision.action in (Action.EXECUTE, Action.TERMINATE)
            assert decision.children == () and "wake" not in decision.outcome and "state" not in decision.outcome

        intent_before, children_before = sim.fold.intent, list(sim.fold.children)
        sim.append(decision)

        assert sim.fold.status is decision.status
        if was_refused:
            assert sim.fold.intent == intent_before and sim.fold.children == children_before
        assert snapshot(Fold.of(sim.entries)) == snapshot(sim.fold)

    # The memory the run produced verifies, and its fold is the fold the run kept.
    _, verified = verify_chain("obj-1", rows(sim.entries), keyring())
    assert snapshot(Fold.of(verified)) == snapshot(sim.fold)
    statuses = [Fold.of(sim.entries[: i + 1]).status for i in range(len(sim.entries))]
    if Status.TERMINATED in statuses:
        assert statuses.index(Status.TERMINATED) == len(statuses) - 1  # nothing after a terminate


@given(st.integers(0, 3000), st.integers(1, 3000), st.sampled_from(SIGNAL_NAMES), st.booleans())
def test_property_a_dormant_object_never_reenters_before_its_time(
    sleep_s: int, probe_s: int, signal: str, children_done: bool
) -> None:
    sim = Sim()
    sim.step(Sleep(seconds=sleep_s))
    sim.now = T0 + min(probe_s, sleep_s * 2) * SECOND - 1
    sim.signal(signal)
    planned = sim.plan(children_done=children_done)
    if sim.now < T0 + sleep_s * SECOND:
        assert planned == Release(T0 + sleep_s * SECOND)
    else:
        assert isinstance(planned, Decision) and planned.outcome == {"trigger": "time"}
