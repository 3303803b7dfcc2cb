"""The resumption machine's records (handler calls, models of objects) and its invariants.

No hypothesis needed here: :mod:`peo.testing.machine` mixes :class:`Invariants` into the
hypothesis state machine and calls :meth:`Invariants._check` after every rule.
"""

from __future__ import annotations

import asyncio
import contextvars
import hashlib
import itertools
from collections import Counter
from collections.abc import Sequence
from typing import Any

import attrs

from ..client import Client
from ..core.codec import decode_body
from ..core.memory import Fold
from ..core.model import Action, Entry
from ..store import ObjectRow, Store
from .script import ModelEntry, detail

__all__ = ["CRASH_POINTS", "GATE", "NODE", "NODE_IDS", "STORE_POINTS", "Gate", "Invariants", "Model", "Run"]


@attrs.define
class Gate:
    """Holds a handler call (after its side effect) until the test lets it go on."""

    entered: asyncio.Event = attrs.field(factory=asyncio.Event)
    release: asyncio.Event = attrs.field(factory=asyncio.Event)


@attrs.frozen
class Run:
    """One handler call: the side effect a step performs."""

    key: str
    object_id: str
    seq: int
    node: str
    prev_hash: bytes  # the hash of the last entry the handler was shown
    rule: int
    consistent: bool  # step.seq and the idempotency key follow from the memory shown


@attrs.define
class Model:
    handler: str
    goal: dict[str, Any]
    expected: list[ModelEntry] | None = None  # scripted objects only
    result: Any = None
    cancelled_after: int | None = None  # entries after entry 0 when cancel was sent


#: The gate of the handler calls in this task (set by the slow node of a lease race).
GATE: contextvars.ContextVar[Gate | None] = contextvars.ContextVar("peo_testing_gate", default=None)
#: The node whose cycle runs in this task (recorded with each handler call).
NODE: contextvars.ContextVar[str] = contextvars.ContextVar("peo_testing_node", default="?")

NODE_IDS = ("a", "b")
CRASH_POINTS = ("node.after_handler", "node.after_sign")
STORE_POINTS = ("store.before_commit", "store.after_commit")


def decode(row: tuple[bytes, bytes]) -> Entry:
    body, sig = row
    return decode_body(body, sig, hashlib.sha256(body).digest())


def show(items: Sequence[ModelEntry]) -> str:
    return "[" + ", ".join(f"{a.value}:{d}" for a, d in items) + "]"


class Invariants:
    """What must hold after every rule (mixed into :class:`~peo.testing.ResumptionMachine`)."""

    store: Store | None
    client: Client
    models: dict[str, Model]
    heads: dict[str, ObjectRow]
    chains: dict[str, list[Entry]]
    seen: dict[tuple[str, int], bytes]  # every (object, seq) -> hash ever seen
    terminal: dict[str, int]  # object -> seq of its terminate entry
    runs: list[Run]
    allowance: Counter[str]  # key -> attempts known not to have committed

    async def _check(self, *, final: bool = False) -> None:
        assert self.store is not None
        rows = await self.store.list()
        self.heads = {row.id: row for row in rows}
        for row in rows:
            await self._check_object(row, final=final)
        self._check_side_effects()

    async def _check_object(self, row: ObjectRow, *, final: bool) -> None:
        assert self.store is not None
        oid = row.id
        assert row.status != "quarantined", f"{oid} was quarantined: {row.reason}"
        count = await self.client.verify(oid)  # signatures, links, contiguous seq, head
        chain = [decode(r) for r in await self.store.entries(oid)]
        assert len(chain) == count and [e.seq for e in chain] == list(range(count))
        self.chains[oid] = chain
        for e in chain:
            first = self.seen.setdefault((oid, e.seq), e.hash)
            assert first == e.hash, f"fork: {oid} seq {e.seq} changed after it was seen"
        if oid in self.terminal:
            assert row.seq == self.terminal[oid], f"{oid} got entries after it terminated"
        elif chain[-1].action is Action.TERMINATE:
            self.terminal[oid] = chain[-1].seq
        assert row.status == Fold.of(chain).status, (
            f"{oid} is stored as {row.status} but its last entry is {chain[-1].action}"
        )
        for prev, e in itertools.pairwise(chain):
            if e.action is Action.REENTRY and e.outcome.get("trigger") == "time":
                until = prev.outcome.get("wake", {}).get("until")
                assert until is not None and e.timestamp >= until, f"{oid} woke early at seq {e.seq}"
        model = self.models.get(oid)
        if model is not None and model.expected is not None:
            self._compare(oid, chain, model, final=final)

    def _compare(self, oid: str, chain: list[Entry], model: Model, *, final: bool) -> None:
        assert model.expected is not None
        expected = list(model.expected)
        if model.cancelled_after is not None and model.cancelled_after < len(expected):
            expected = [*expected[: model.cancelled_after], (Action.TERMINATE, "cancelled")]
        actual = [(e.action, detail(e)) for e in chain[1:]]
        assert actual == expected[: len(actual)], (
            f"{oid}: memory {show(actual)} is not a prefix of what the model expects {show(expected)}"
            f" for script {model.goal['ops']}"
        )
        if final:
            assert actual == expected, f"{oid}: memory {show(actual)} stopped short of {show(expected)}"
        if actual and actual[-1] == (Action.TERMINATE, "done") and model.cancelled_after is None:
            assert chain[-1].outcome.get("result") == model.result, f"{oid}: wrong result"

    def _check_side_effects(self) -> None:
        # Counted per attempt (object, seq): every attempt of one step shares its key.
        calls = Counter(f"{run.object_id}:{run.seq}" for run in self.runs)
        for run in self.runs:
            oid, seq = run.object_id, run.seq
            assert run.consistent, f"step {run.key} on {run.node}: its seq or key does not follow its memory"
            assert self.seen.get((oid, seq - 1)) == run.prev_hash, (
                f"the handler for {run.key} ran on a memory that is not the stored one"
            )
            if oid in self.terminal:
                assert seq <= self.terminal[oid], f"a handler ran for {oid} after it terminated"
        for key, n in calls.items():
            oid, _, at = key.rpartition(":")
            committed = 1 if (oid, int(at)) in self.seen else 0
            assert n <= committed + self.allowance[key], (
                f"the side effect of step {key} ran {n} times; {committed} commit(s),"
                f" {self.allowance[key]} attempt(s) that could not commit"
            )
