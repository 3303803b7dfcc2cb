"""Policy totals (issue 19, item 6): how deep and how large a tree of delegations may grow,
how large one object's folded state may become, and what the fold keeps for them.

The issue's cases: a handler delegating 10 self-delegating children (``wait=False``) made
23,341 objects in 5 s under ``policies/strict.toml``; an object adding 60 KB of state per
step grew without bound. Replayed here through plan/conclude, each ends at the policy's
ceiling with a reason that says which.
"""

from __future__ import annotations

import re
from collections import deque
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peo.config import load_policy
from peo.core import signals
from peo.core.codec import packb, structure, unstructure
from peo.core.cycle import Decision, conclude
from peo.core.memory import Fold, instantiation_outcome, verify_chain
from peo.core.model import Action, Context, Continue, Delegate, Done, Intent, Signal, Status, WaitSignal
from peo.core.policy import Policy
from peo.errors import CodecError

from ._helpers import KEY, T0, Sim, chain, instantiate, keyring, rows

STRICT = load_policy(Path(__file__).resolve().parents[2] / "policies" / "strict.toml")


def delegate(sim: Sim, count: int, *, descendants: int | None = None, ids: list[str] | None = None) -> Decision:
    """One step of ``sim`` that delegates ``count`` children (``wait=False``)."""
    ids = ids or [f"{sim.fold.object_id}.{i}" for i in range(count)]
    decision = conclude(sim.fold, sim.policy, Delegate([Intent("fork")] * count, wait=False), now=sim.now,
                        latency_ns=1, child_ids=ids, descendants=descendants)
    sim.append(decision)
    return decision


def refusal(decision: Decision) -> str:
    assert decision.outcome["status"] == "refused" and decision.children == ()
    return str(decision.outcome["error"]["message"])


# -- lineage in the signed context -------------------------------------------------------------


def test_a_top_level_context_encodes_as_before_lineage_existed() -> None:
    context = Context(identity="alice", trust_scope="reports", priority=2, labels={"team": "docs"})
    assert unstructure(context) == {"identity": "alice", "trust_scope": "reports", "priority": 2, "parent": None,
                                    "labels": {"team": "docs"}, "resources": {}}
    assert (context.root, context.depth) == (None, 0)


def test_children_record_their_root_and_depth_in_their_signed_entry_0() -> None:
    top = Sim(object_id="top")
    d = delegate(top, 2)
    assert [(c.context.parent, c.context.root, c.context.depth) for c in d.children] == [("top", "top", 1)] * 2
    child = d.children[0]
    entry = instantiate(child.id, child.intent, child.context)
    assert entry.outcome["context"]["root"] == "top" and entry.outcome["context"]["depth"] == 1
    _, verified = verify_chain(child.id, rows([entry]), keyring())
    assert Fold.of(verified).context == child.context
    grandchild = delegate(Sim(child.intent, child.context, object_id=child.id), 1).children[0]
    assert (grandchild.context.parent, grandchild.context.root, grandchild.context.depth) == (child.id, "top", 2)


def test_a_recorded_negative_depth_does_not_read_back() -> None:
    record = instantiation_outcome("x", Intent("h"), Context())["context"] | {"depth": -1}
    with pytest.raises(CodecError):
        structure(record, Context)


# -- depth -----------------------------------------------------------------------------------------


def test_a_delegation_deeper_than_the_policy_allows_is_refused() -> None:
    policy = Policy(max_depth=2)
    assert delegate(Sim(context=Context(root="top", depth=1), policy=policy), 1).action is Action.DELEGATE
    message = refusal(delegate(Sim(context=Context(root="top", depth=2), policy=policy), 1))
    assert message == ("Delegate refused by policy default: its children would be 3 delegations deep, "
                       "deeper than the limit of 2 ([limits] max_depth)")
    shallow = refusal(delegate(Sim(policy=Policy(max_depth=0)), 1))
    assert shallow.endswith("deeper than the limit of 0 ([limits] max_depth)")


def test_a_chain_of_single_delegations_ends_at_the_policys_depth() -> None:
    policy = Policy(max_depth=3, max_failures=2)
    sims = [Sim(policy=policy, object_id="top")]
    while sims[-1].fold.status is not Status.TERMINATED:
        d = delegate(sims[-1], 1)
        if d.children:
            c = d.children[0]
            sims.append(Sim(c.intent, c.context, policy=policy, object_id=c.id))
    assert [s.fold.context.depth for s in sims] == [0, 1, 2, 3]
    assert sims[-1].fold.reason == "failed: failure threshold exceeded"


# -- descendants --------------------------------------------------------------------------------


def test_a_delegation_that_would_take_a_tree_past_its_descendants_is_refused() -> None:
    policy = Policy(max_descendants=100)
    assert delegate(Sim(policy=policy), 10, descendants=90).action is Action.DELEGATE
    sim = Sim(context=Context(root="top", depth=1), policy=policy, object_id="mid")
    assert refusal(delegate(sim, 10, descendants=91)) == (
        "Delegate refused by policy default: 10 more objects would make 101 under root top, "
        "more than the limit of 100 ([limits] max_descendants)")
    # Not counted by the caller: not checked (the per-proposal max_children still is).
    assert delegate(Sim(policy=policy), 10).action is Action.DELEGATE


def test_a_fork_bomb_under_the_strict_policy_ends_at_its_ceilings() -> None:
    # Every object delegates 10 self-delegating children at every step, without waiting; the
    # node counts each root's descendants and passes the count in.
    policy = STRICT
    sims = {"top": Sim(Intent("fork"), policy=policy, object_id="top")}
    under: dict[str, int] = {"top": 0}
    queue = deque(["top"])
    made = 0
    while queue:
        sim = sims[queue.popleft()]
        root = sim.fold.context.root or sim.fold.object_id
        ids = [f"o{made + i}" for i in range(10)]
        d = delegate(sim, 10, descendants=under[root], ids=ids)
        for child in d.children:
            made += 1
            under[root] += 1
            sims[child.id] = Sim(child.intent, child.context, policy=policy, object_id=child.id)
            queue.append(child.id)
        if sim.fold.status is not Status.TERMINATED:
            queue.append(sim.fold.object_id)
    assert len(sims) == 1 + policy.max_descendants == 1001
    assert max(s.fold.context.depth for s in sims.values()) <= policy.max_depth
    # Every object ended, its last steps refused with the reason, none looping.
    for sim in sims.values():
        assert (sim.fold.status, sim.fold.reason) == (Status.TERMINATED, "failed: failure threshold exceeded")
        assert "more than the limit of 1000" in sim.entries[-1].outcome["error"]["message"]
        assert sim.fold.steps <= policy.max_steps


# -- folded state size -----------------------------------------------------------------------------


def size_of(state: dict[str, Any]) -> int:
    return sum(len(k) + len(packb(v)) for k, v in state.items())


def test_an_object_adding_60_kb_of_state_per_step_ends_at_the_policys_ceiling() -> None:
    sim = Sim(policy=STRICT)
    blob = "x" * 60_000
    for n in range(1000):
        d = sim.step(Continue(state={f"k{n}": blob}))
        if d.action is Action.TERMINATE:
            break
    assert d.outcome["reason"] == (f"failed: the state would grow to {size_of(sim.fold.state) + 60_003 + len(f'k{n}')}"
                                   f" bytes, above the limit of {STRICT.max_state_bytes} (policy cut-off)")
    assert d.outcome["status"] == "refused" and d.outcome["error"]["retryable"] is False
    assert "state" not in d.outcome and f"k{n}" not in sim.fold.state  # the update was not applied
    assert sim.fold.state_bytes == size_of(sim.fold.state) <= STRICT.max_state_bytes
    assert n == len(sim.fold.state) == 69  # 69 * 60 KB fit in 4 MiB, the 70th does not
    assert (sim.fold.status, sim.fold.failures) == (Status.TERMINATED, 1)


def test_rewriting_the_same_keys_never_reaches_the_ceiling() -> None:
    sim = Sim(policy=Policy(max_state_bytes=200_000, max_payload_bytes=70_000))
    for n in range(20):
        assert sim.step(Continue(state={"big": "x" * 60_000, "n": n})).outcome["status"] == "ok"
    assert sim.fold.state_bytes == size_of(sim.fold.state) < 200_000


def test_an_object_above_a_lowered_ceiling_may_still_shrink_but_not_grow() -> None:
    sim = Sim()
    sim.step(Continue(state={"a": "x" * 1000, "b": "y" * 1000}))
    sim.policy = Policy(max_state_bytes=1500)
    assert sim.step(Continue(state={"a": ""})).outcome["status"] == "ok"
    assert sim.step(Continue(state={"b": "y" * 999})).outcome["status"] == "ok"  # smaller, still above
    d = sim.step(Done("ok", state={"c": "z" * 600}))
    assert d.outcome["status"] == "refused" and "the state would grow to" in d.outcome["reason"]
    assert "result" not in d.outcome


state_updates = st.dictionaries(
    st.sampled_from(["a", "bb", "ccc", "é"]),
    st.none() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=40) | st.lists(st.integers(0, 300), max_size=5),
    max_size=3,
)


@given(st.lists(state_updates, max_size=12))
def test_property_the_fold_keeps_the_size_of_its_state_exactly_and_resumes_it(updates: list[dict[str, Any]]) -> None:
    sim = Sim()
    for update in updates:
        expected = sim.fold.state_bytes_after(update)
        sim.step(Continue(state=update))
        assert sim.fold.state_bytes == expected == size_of(sim.fold.state)
    resumed = Fold.of(sim.entries)
    assert resumed.state_bytes == sim.fold.state_bytes and resumed.state_bound >= resumed.state_bytes


# -- signal nonces ---------------------------------------------------------------------------------


def test_the_fold_keeps_the_nonce_of_every_recorded_signal() -> None:
    entries = chain("obj-1", [
        (Action.DORMANCY, {"status": "ok", "wake": {"signal": "approve"}}),
        (Action.REENTRY, {"trigger": "signal", "signals": [{"id": 1, "name": "approve", "payload": None,
                                                            "nonce": "n1"}]}),
        (Action.EXECUTE, {"status": "ok", "signals": [{"id": 2, "name": "note", "payload": 1, "nonce": "n2"},
                                                     {"id": 3, "name": "old", "payload": None}]}),
        (Action.TERMINATE, {"reason": "cancelled", "signals": [{"id": 4, "name": "peo.cancel", "nonce": "n3"}]}),
    ])
    _, verified = verify_chain("obj-1", rows(entries), keyring())
    assert Fold.of(verified).signal_nonces == {"n1", "n2", "n3"}
    assert Fold.of(verified[:2]).signal_nonces == set()


def test_a_fold_without_signed_signals_keeps_no_nonces() -> None:
    sim = Sim(now=T0)
    sim.signal("note")
    sim.step(Continue())
    assert sim.fold.signal_nonces == set()


def test_the_reasons_name_the_total_that_was_reached() -> None:
    reasons = [refusal(delegate(Sim(policy=Policy(max_depth=0)), 1)),
               refusal(delegate(Sim(policy=Policy(max_descendants=5)), 6, descendants=0))]
    assert re.search(r"deeper than the limit of 0 \(\[limits\] max_depth\)$", reasons[0])
    assert re.search(r"more than the limit of 5 \(\[limits\] max_descendants\)$", reasons[1])


def test_a_sealed_signal_is_recorded_as_received_and_its_sender_and_nonce_survive_resumption() -> None:
    sim = Sim()
    sim.step(WaitSignal("approve"))
    sealed = signals.seal(KEY, "obj-1", "approve", {"ok": 1}, nonce="ab" * 8, sent_at=T0)
    sim.inbox.append(Signal("approve", {"ok": 1}, 7, sender=KEY.key_id, seal=sealed.encode()))
    d = sim.tick()
    assert isinstance(d, Decision) and d.action is Action.REENTRY
    [record] = d.outcome["signals"]
    assert (record["sender"], record["nonce"], record["sig"]) == (KEY.key_id, "ab" * 8, sealed.signature)
    resumed = Fold.of(sim.entries)
    assert resumed.signal_nonces == {"ab" * 8}
    assert [(s.name, s.sender) for s in resumed.pending_signals] == [("approve", KEY.key_id)]
    assert signals.verify_recorded("obj-1", sim.entries, keyring()) == []
