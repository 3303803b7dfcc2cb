"""Random durable-function programs (peo.testing.programs): whatever the program and
wherever the node crashes, the function ends as an uninterrupted run does, each step's side
effect ran once (or, if a crash cut it off, again under the same idempotency key), and
every chain verifies.

Each example runs the program twice in a FunctionEnv (SQLite, fake clock): uninterrupted,
then with crashes armed after seqs drawn from those the uninterrupted run wrote.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import peo
from peo.testing.programs import (
    ChildrenOp,
    Effect,
    FunctionRun,
    Program,
    ProgressOp,
    SendSignal,
    SleepOp,
    StepOp,
    WaitOp,
    crash_points,
    programs,
    register_programs,
    run_function,
    run_program,
)

REPO = Path(__file__).resolve().parents[2]
DAY = 86_400.0
# A third of the profile's examples (ci: 20; each runs a program twice, ~0.1 s a run).
EXAMPLES = max(10, settings().max_examples // 3)
# pytest-timeout's 120 s is for the whole test: give the long profile (666 examples) room.
pytestmark = pytest.mark.timeout(max(120, EXAMPLES))
GUARD = 60.0  # seconds, against a hang only

app = peo.App()
PROGRAMS = register_programs(app)  # one registration serves every example


def run(program: Program, crash_after: list[int] | None = None) -> FunctionRun:
    return asyncio.run(asyncio.wait_for(run_program(PROGRAMS, program, crash_after=crash_after or []), GUARD))


def uninterrupted_and_crashed(data: st.DataObject) -> tuple[Program, FunctionRun, FunctionRun, list[int]]:
    program = data.draw(programs(), label="program")
    baseline = run(program)
    points = data.draw(crash_points(baseline.seqs), label="crash after")
    return program, baseline, run(program, points), points


def keys_by_step(effects: tuple[Effect, ...]) -> dict[tuple[int, int | None], list[str]]:
    keys: dict[tuple[int, int | None], list[str]] = defaultdict(list)
    for effect in effects:
        keys[effect.step].append(effect.key)
    return dict(keys)


# -- the properties ------------------------------------------------------------------------


@settings(max_examples=EXAMPLES)
@given(st.data())
def test_a_crashed_run_ends_with_the_uninterrupted_runs_result(data: st.DataObject) -> None:
    _, baseline, crashed, points = uninterrupted_and_crashed(data)
    assert crashed.result == baseline.result
    # Every distinct seq armed fired (the crashed run writes those seqs too); a seq armed
    # twice fires again only if another object commits it later.
    fired = Counter(c.seq for c in crashed.crashes)
    assert set(fired) == set(points)
    assert not fired - Counter(points)


@settings(max_examples=EXAMPLES)
@given(st.data())
def test_each_step_ran_once_per_idempotency_key(data: st.DataObject) -> None:
    program, baseline, crashed, _ = uninterrupted_and_crashed(data)
    steps = sorted(program.steps(), key=repr)

    # Uninterrupted: every step ran exactly once, each under its own key.
    assert sorted((e.step for e in baseline.effects), key=repr) == steps
    assert len({e.key for e in baseline.effects}) == len(baseline.effects)

    # Crashed: every step ran, each under exactly one key, and no two steps share a key.
    keys = keys_by_step(crashed.effects)
    assert sorted(keys, key=repr) == steps
    assert all(len(set(k)) == 1 for k in keys.values()), keys
    assert len({k[0] for k in keys.values()}) == len(keys)
    # A crash right after an entry never runs a recorded step again, so the program's own
    # steps ran exactly once. Only a child's step may run twice: its sibling's crash cut it
    # off in flight (its side effect done, its entry not committed), and the next node ran
    # it again under the same key. Each crash cuts off at most the other two siblings.
    assert all(len(k) == 1 for (_, child), k in keys.items() if child is None), keys
    again = len(crashed.effects) - len(keys)
    assert again <= 2 * len(crashed.crashes)


@settings(max_examples=EXAMPLES)
@given(st.data())
def test_every_chain_verifies_and_a_crash_adds_no_entry(data: st.DataObject) -> None:
    _, baseline, crashed, _ = uninterrupted_and_crashed(data)
    for one in (baseline, crashed):
        assert one.verified == one.entries  # client.verify checked every entry of every object
        assert one.unsent == ()  # each on_wait signal was waited for
    # The same objects (the function and its children), with as many entries each.
    assert sorted(crashed.entries.values()) == sorted(baseline.entries.values())
    assert crashed.entries[crashed.object_id] == baseline.entries[baseline.object_id]


# -- examples --------------------------------------------------------------------------------

EVERYTHING = Program((
    StepOp(1),
    WaitOp("early", "early"),
    SleepOp(3 * DAY),
    WaitOp("on_wait", "on_wait", timeout=DAY),
    WaitOp("never", "never", timeout=60.0),
    ChildrenOp((1, 2, 3), sleep=DAY),
    ProgressOp(7),
    ChildrenOp((4,)),
    StepOp(2),
))


def test_a_program_with_every_operation_survives_a_crash_after_each_entry() -> None:
    baseline = run(EVERYTHING)
    assert baseline.result == [[0, 1], 1, None, 3, "timeout", [[5, 1], [5, 2], [5, 3]], None, [[7, 4]], [8, 2]]
    assert len(baseline.entries) == 5  # the function and its four children
    for seq in baseline.seqs:
        crashed = run(EVERYTHING, [seq])
        assert [c.seq for c in crashed.crashes] == [seq]
        assert crashed.result == baseline.result, seq
        assert sorted(e.step for e in crashed.effects if e.child is None) == [(0, None), (8, None)]


def test_a_seq_armed_twice_crashes_a_child_too() -> None:
    program = Program((ChildrenOp((1, 2, 3), sleep=60.0),))
    baseline = run(program)
    crashed = run(program, [1, 1, 1])  # the parent's delegate entry, then the children's steps
    # The first crash is the parent's, the next a child's. (A third may not fire: the node
    # commits the children's entries in batches, and the first crash of a batch kills it.)
    assert [c.seq for c in crashed.crashes] in ([1, 1], [1, 1, 1])
    assert len({c.object_id for c in crashed.crashes}) == len(crashed.crashes)
    assert crashed.result == baseline.result == [[[0, 1], [0, 2], [0, 3]]]
    keys = keys_by_step(crashed.effects)
    assert all(len(set(k)) == 1 for k in keys.values())


def test_programs_refuse_what_the_driver_cannot_run() -> None:
    for ops in ([WaitOp("a"), WaitOp("a")], [WaitOp("a", "never")], [ChildrenOp(())]):
        try:
            Program(tuple(ops))
        except peo.UsageError:
            continue
        raise AssertionError(f"{ops} accepted")


def test_run_function_sends_signals_to_any_function() -> None:
    own = peo.App()

    @own.function("approve")
    async def approve(run: peo.Run) -> object:
        first = await run.wait_signal("go")
        await run.step(str, "between")
        second = await run.wait_signal("go")
        return [first.payload, second.payload]

    signals = [SendSignal("go", "early", "early"), SendSignal("go", "late")]
    plain = asyncio.run(run_function(own, "approve", signals=signals))
    done = asyncio.run(run_function(own, "approve", signals=signals, crash_after=[1]))
    assert plain.result == done.result == ["early", "late"]
    assert [c.seq for c in done.crashes] == [1]
    assert done.unsent == ()


def test_two_waits_in_one_cycle_do_not_return_the_same_signal() -> None:
    own = peo.App()

    @own.function("twice")
    async def twice(run: peo.Run) -> object:
        first = await run.wait_signal("go")  # the signal sent before: returned at once
        second = await run.wait_signal("go")  # must wait for another one
        return [first.payload, second.payload]

    signals = [SendSignal("go", 1, "early"), SendSignal("go", 2, "on_wait")]
    done = asyncio.run(run_function(own, "twice", signals=signals))
    assert done.result == [1, 2]  # found by these programs: the second wait once returned the first signal


def test_the_guide_example_runs_as_written(tmp_path: Path) -> None:
    text = (REPO / "docs" / "testing.md").read_text()
    section = text.split("## Random programs", 1)[1]
    [example] = re.findall(r"```python\n(.*?)```", section, re.S)
    (tmp_path / "test_example.py").write_text(example)
    env = {k: v for k, v in os.environ.items() if k not in ("PEO_STORE", "PEO_FAULTS")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "test_example.py"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
