"""The core's part of self-healing: a restore entry, checkpoints, a shed dormancy.

A restore sets the whole working state back to what it was at an earlier seq (keys added
since are gone), recorded in a signed mutate entry that verifies like any other; a handler
may mark a step's state as its checkpoint; a node's shed is neither success nor failure.
"""

from __future__ import annotations

import peo
from peo.core.codec import structure, unstructure
from peo.core.cycle import restore, shed
from peo.core.head import head_of
from peo.core.memory import Fold, state_at, verify_chain
from peo.core.model import Action, Constraints, Intent, Status

from ._helpers import SECOND, T0, Sim, keyring


def steps(sim: Sim, *proposals: object) -> None:
    for p in proposals:
        sim.append(sim.conclude(p))


def test_a_restore_sets_the_whole_state_back_and_the_chain_still_verifies() -> None:
    sim = Sim()
    steps(sim, peo.Continue(state={"n": 1}), peo.Continue(state={"n": 2, "poison": True}))
    assert sim.fold.state == {"n": 2, "poison": True} and sim.fold.known_good == 2
    good = 1
    entry = sim.append(restore(good, state_at(sim.entries, good), reason="3 claims without progress", by="node"))
    assert entry.action is Action.MUTATE
    assert entry.outcome["restore"] == {"seq": 1, "reason": "3 claims without progress", "by": "node"}
    assert sim.fold.state == {"n": 1}  # the key added since is gone, not merely overwritten
    assert (sim.fold.restored_seq, sim.fold.restore_target, sim.fold.status) == (3, 1, Status.RUNNABLE)
    _, verified = verify_chain("obj-1", [(e.body, e.signature) for e in sim.entries], keyring())
    again = Fold.of(verified)
    assert again.state == {"n": 1} and again.restore_target == 1  # anyone folding the chain agrees
    steps(sim, peo.Continue(state={"n": 5}))
    assert sim.fold.state == {"n": 5} and state_at(sim.entries, 2) == {"n": 2, "poison": True}


def test_a_checkpoint_is_the_known_good_state_until_a_later_one() -> None:
    sim = Sim()
    steps(sim, peo.Continue(state={"n": 1}, checkpoint=True), peo.Continue(state={"n": 2}))
    assert (sim.fold.checkpoint_seq, sim.fold.known_good_seq, sim.fold.known_good) == (1, 2, 1)
    assert sim.entries[1].outcome["checkpoint"] is True and "checkpoint" not in sim.entries[2].outcome
    steps(sim, peo.Continue(state={"n": 3}, checkpoint=True))
    assert sim.fold.known_good == 3


def test_failed_steps_do_not_move_the_known_good_state() -> None:
    sim = Sim()
    steps(sim, peo.Continue(state={"n": 1}), peo.Fail("boom", state={"half": "written"}))
    assert sim.fold.known_good == 1 and sim.fold.state == {"n": 1, "half": "written"}
    assert state_at(sim.entries, sim.fold.known_good) == {"n": 1}


def test_a_shed_is_a_dormancy_that_keeps_the_failure_streak() -> None:
    sim = Sim()
    steps(sim, peo.Fail("boom"))
    assert sim.fold.consecutive_failures == 1
    sim.now += 3600 * SECOND
    sim.append(sim.plan())  # the backoff ends: reentry
    sim.append(shed("memory", until=sim.now + SECOND))
    assert sim.fold.status is Status.DORMANT and sim.fold.consecutive_failures == 1
    assert sim.entries[-1].outcome["shed"] == "memory" and sim.entries[-1].outcome["status"] == "shed"
    assert sim.fold.wake.until == sim.now + SECOND and sim.now > T0


def fail_and_wake(sim: Sim, error_class: str) -> None:
    sim.append(sim.conclude(peo.Fail("boom", error_class=error_class)))
    sim.now += 3600 * SECOND
    sim.append(sim.plan())  # the backoff ends: reentry


def test_the_class_streak_counts_failed_steps_in_a_row_of_one_error_class() -> None:
    sim = Sim(Intent("h", {}, Constraints(max_failures=50)))
    fail_and_wake(sim, "upstream")
    fail_and_wake(sim, "upstream")
    assert (sim.fold.class_streak, sim.fold.last_error_class, sim.fold.consecutive_failures) == (2, "upstream", 2)
    fail_and_wake(sim, "timeout")  # another class starts a streak of its own
    assert (sim.fold.class_streak, sim.fold.consecutive_failures) == (1, 3)
    fail_and_wake(sim, "timeout")
    assert sim.fold.class_streak == 2
    steps(sim, peo.Continue(state={"ok": True}))  # a step that succeeds ends the streak
    assert (sim.fold.class_streak, sim.fold.consecutive_failures) == (0, 0)
    fail_and_wake(sim, "timeout")
    assert sim.fold.class_streak == 1  # not 3: the streak must be unbroken


def test_a_restore_ends_the_class_streak_and_a_shed_does_not() -> None:
    sim = Sim(Intent("h", {}, Constraints(max_failures=50)))
    steps(sim, peo.Continue(state={"n": 1}))
    fail_and_wake(sim, "upstream")
    sim.append(shed("memory", until=sim.now + SECOND))
    assert sim.fold.shed == "memory"
    sim.now += 2 * SECOND
    sim.append(sim.plan())
    assert sim.fold.shed is None
    fail_and_wake(sim, "upstream")
    assert sim.fold.class_streak == 2
    sim.append(restore(1, state_at(sim.entries, 1), reason="2 failed steps", by="node"))
    assert sim.fold.class_streak == 0 and sim.fold.restore_target == 1


def test_a_shed_objects_head_says_so_until_it_wakes() -> None:
    sim = Sim()
    steps(sim, peo.Continue(state={"n": 1}))
    sim.append(shed("memory", until=sim.now + SECOND))
    assert head_of(sim.fold, now=sim.now).reason == "shed: memory"
    sim.now += 2 * SECOND
    sim.append(sim.plan())
    assert head_of(sim.fold, now=sim.now).reason is None
    steps(sim, peo.Sleep(seconds=60))
    assert head_of(sim.fold, now=sim.now).reason is None  # a handler's own sleep is not a shed


def test_max_recoveries_is_left_out_of_an_intents_encoding_while_unset() -> None:
    assert "max_recoveries" not in unstructure(Constraints())
    assert unstructure(Constraints(max_recoveries=3))["max_recoveries"] == 3
    assert structure(unstructure(Constraints(max_recoveries=3)), Constraints).max_recoveries == 3
