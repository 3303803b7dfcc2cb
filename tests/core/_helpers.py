"""Builders shared by the core tests: fixed keys, objects and chains made with make_entry,
and ``Sim``, which drives plan/conclude against a Fold exactly as a node does, minus I/O."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from peo.core.crypto import Keyring, SigningKey
from peo.core.cycle import RUN_HANDLER, Decision, Release, conclude, plan
from peo.core.memory import Fold, genesis, instantiation_outcome, make_entry
from peo.core.model import Action, Context, Entry, Intent, Signal
from peo.core.policy import Policy

SEED = bytes(range(32))
KEY = SigningKey(SEED)
OTHER_KEY = SigningKey(bytes(range(100, 132)))
SECOND = 1_000_000_000
T0 = 1_700_000_000 * SECOND  # an arbitrary, fixed "now"


def keyring(*keys: SigningKey, scopes: Sequence[str] = ("*",)) -> Keyring:
    ring = Keyring()
    for key in keys or (KEY,):
        ring.trust(key.public_key, scopes)
    return ring


def instantiate(
    object_id: str = "obj-1",
    intent: Intent | None = None,
    context: Context | None = None,
    *,
    key: SigningKey = KEY,
    timestamp: int = T0,
) -> Entry:
    intent = intent or Intent("work", goal={"n": 3})
    return make_entry(
        key, seq=0, prev=genesis(object_id), timestamp=timestamp, origin_node="node-a",
        policy_ref="default@test", action=Action.INSTANTIATE,
        outcome=instantiation_outcome(object_id, intent, context or Context()), trace_id=object_id,
    )


def follow(prev: Entry, action: Action, outcome: dict[str, Any], *, key: SigningKey = KEY,
           timestamp: int | None = None) -> Entry:
    """The entry after ``prev``."""
    return make_entry(
        key, seq=prev.seq + 1, prev=prev.hash, timestamp=prev.timestamp + 1 if timestamp is None else timestamp,
        origin_node="node-a", policy_ref="default@test", action=action, outcome=outcome, trace_id=prev.trace_id,
    )


def chain(object_id: str, outcomes: Sequence[tuple[Action, dict[str, Any]]], *, key: SigningKey = KEY,
          intent: Intent | None = None, context: Context | None = None) -> list[Entry]:
    entries = [instantiate(object_id, intent, context, key=key)]
    for action, outcome in outcomes:
        entries.append(follow(entries[-1], action, outcome, key=key))
    return entries


def rows(entries: Sequence[Entry]) -> list[tuple[bytes, bytes]]:
    return [(e.body, e.signature) for e in entries]


class Sim:
    """One object and a node's loop around it: an inbox, a clock, the chain and its fold."""

    def __init__(self, intent: Intent | None = None, context: Context | None = None, *,
                 policy: Policy | None = None, now: int = T0, object_id: str = "obj-1"):
        self.policy = policy or Policy()
        self.now = now
        self.entries = [instantiate(object_id, intent, context, timestamp=now)]
        self.fold = Fold(self.entries[0])
        self.inbox: list[Signal] = []
        self._signal_ids = 0
        self._child_ids = 0

    def signal(self, name: str, payload: Any = None) -> Signal:
        self._signal_ids += 1
        sig = Signal(name, payload, self._signal_ids)
        self.inbox.append(sig)
        return sig

    def plan(self, *, children_done: bool = False) -> Decision | Release | object:
        return plan(self.fold, self.policy, now=self.now, signals=tuple(self.inbox), children_done=children_done)

    def conclude(self, proposal: object, *, latency_ns: int = 1_000, traceback: str | None = None) -> Decision:
        ids = []
        children = getattr(proposal, "children", None)
        try:
            count = len(list(children)) if children is not None else 0
        except TypeError:
            count = 0
        for _ in range(count):
            self._child_ids += 1
            ids.append(f"child-{self._child_ids}")
        return conclude(self.fold, self.policy, proposal, now=self.now, latency_ns=latency_ns,
                        signals=tuple(self.inbox), child_ids=ids, traceback=traceback)

    def append(self, decision: Decision) -> Entry:
        entry = follow(self.entries[-1], decision.action, decision.outcome, timestamp=self.now)
        self.fold.apply(entry)
        self.entries.append(entry)
        self.inbox = [s for s in self.inbox if s.id not in decision.consumed]
        return entry

    def step(self, proposal: object, *, latency_ns: int = 1_000) -> Decision:
        """Run one handler step that returns ``proposal``; the object must be runnable."""
        planned = self.plan()
        assert planned is RUN_HANDLER, f"expected the handler to run, plan said {planned!r}"
        decision = self.conclude(proposal, latency_ns=latency_ns)
        self.append(decision)
        return decision

    def step_raising(self, exc: BaseException, *, traceback: str) -> Decision:
        """A handler step that raised ``exc``, with the traceback the node formatted for it."""
        assert self.plan() is RUN_HANDLER
        decision = self.conclude(exc, traceback=traceback)
        self.append(decision)
        return decision

    def tick(self, *, children_done: bool = False) -> Decision | Release:
        """A cycle in which the handler does not run: plan decided (reentry, terminate) or released."""
        planned = self.plan(children_done=children_done)
        assert planned is not RUN_HANDLER, "plan wanted to run the handler"
        assert isinstance(planned, Decision | Release)
        if isinstance(planned, Decision):
            self.append(planned)
        return planned
