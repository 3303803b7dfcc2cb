"""Versioned state as a property (issue 16): for random histories and random sequences of
restores, deletes, undeletes and forks, the working state after each operation is the fold
of the version it names, a delete or undelete changes nothing but the flag, a fork starts
from its parent's state at the chosen seq and records where it came from, and every chain
verifies. Pure: chains are built with make_entry, as a node and the operator's client would."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

import peo
from peo.core.cycle import restore, tombstone, undelete
from peo.core.memory import Fold, genesis, instantiation_outcome, make_entry, state_at, verify_chain
from peo.core.model import Action, Context, Intent

from ._helpers import KEY, T0, Sim, keyring, rows

KEYS = st.sampled_from(["a", "b", "c"])
STEP = st.tuples(st.just("step"), st.dictionaries(KEYS, st.integers(-5, 5), min_size=1, max_size=2))
OPS = st.one_of(STEP, st.tuples(st.just("restore"), st.integers(0, 10**6)), st.just(("rm", None)),
                st.just(("undelete", None)), st.tuples(st.just("fork"), st.integers(0, 10**6)))


def fork_of(sim: Sim, seq: int) -> list[Any]:
    """The entry 0 of a fork of ``sim``'s object at ``seq`` (as peo.client.forks makes it)."""
    oid = f"fork-{seq}-{len(sim.entries)}"
    origin = {"object": sim.fold.object_id, "seq": seq, "hash": sim.entries[seq].hash.hex()}
    first = make_entry(KEY, seq=0, prev=genesis(oid), timestamp=T0, origin_node="client:test",
                       policy_ref="default@test", action=Action.INSTANTIATE,
                       outcome=instantiation_outcome(oid, Intent("work", {"n": 3}), Context(),
                                                     state=state_at(sim.entries, seq), fork=origin),
                       trace_id=oid)
    return [first]


@settings(max_examples=60, deadline=None)
@given(st.lists(OPS, min_size=1, max_size=25))
def test_every_operation_leaves_the_state_of_the_version_it_names(ops: list[tuple[str, Any]]) -> None:
    sim = Sim()
    for op, arg in ops:
        before = dict(sim.fold.state)
        if op == "step":
            if sim.fold.deleted:
                continue  # no node claims a deleted object
            sim.append(sim.conclude(peo.Continue(state=arg)))
            assert sim.fold.state == {**before, **arg}
        elif op == "restore":
            if sim.fold.deleted:
                continue  # refused: undelete first
            seq = arg % len(sim.entries)
            sim.append(restore(seq, state_at(sim.entries, seq), reason="property", by="operator"))
            assert sim.fold.state == state_at(sim.entries, seq) == state_at(sim.entries, sim.fold.seq)
        elif op == "rm":
            if sim.fold.deleted:
                continue
            status = sim.fold.status
            sim.append(tombstone("property", by="operator"))
            assert sim.fold.deleted and sim.fold.state == before and sim.fold.status is status
        elif op == "undelete":
            if not sim.fold.deleted:
                continue
            status = sim.fold.status
            sim.append(undelete(by="operator"))
            assert not sim.fold.deleted and sim.fold.state == before and sim.fold.status is status
        else:
            seq = arg % len(sim.entries)
            forked = fork_of(sim, seq)
            fold = Fold.of(forked)
            assert fold.state == state_at(sim.entries, seq)
            assert fold.fork == {"object": "obj-1", "seq": seq, "hash": sim.entries[seq].hash.hex()}
            _, verified = verify_chain(forked[0].outcome["object_id"], rows(forked), keyring())
            assert Fold.of(verified).state == fold.state
        # Anyone folding the stored chain from scratch agrees with the running fold.
        _, verified = verify_chain("obj-1", rows(sim.entries), keyring())
        again = Fold.of(verified)
        assert again.state == sim.fold.state and again.deleted == sim.fold.deleted
        assert again.state == state_at(sim.entries, sim.fold.seq)
