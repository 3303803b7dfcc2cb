"""The resumption state machine (see :mod:`peo.testing` for what it does and how to point
it at your own handlers) and :func:`run_resumption_tests`. Needs hypothesis."""

from __future__ import annotations

import asyncio
import inspect
import os
import secrets
import shutil
import tempfile
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, ClassVar, TypeVar

from .. import keys
from ..app import App, Handler
from ..client import Client
from ..config import default_policy
from ..core.crypto import Keyring
from ..core.memory import Fold
from ..core.model import CANCEL_SIGNAL, Action, Entry, Step
from ..core.policy import Policy
from ..node import Node
from ..store import Claim, ObjectRow, Store, open_store
from . import faults
from ._hypothesis import (
    HealthCheck,
    RuleBasedStateMachine,
    Settings,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
    st,
)
from .checks import (
    CRASH_POINTS,
    GATE,
    NODE,
    NODE_IDS,
    STORE_POINTS,
    Gate,
    Invariants,
    Model,
    Run,
    decode,
)
from .clock import FakeClock
from .cycle import claim_one, run_one_cycle
from .script import NOISE_SIGNAL, SCRIPT_HANDLER, expected_actions, scripted_app, scripts
from .strategies import plain_values

__all__ = ["ResumptionMachine", "run_resumption_tests"]

T = TypeVar("T")


class ResumptionMachine(Invariants, RuleBasedStateMachine):
    """Stateful resumption tests; see the module docstring. Configure by subclassing."""

    #: Your handlers. None: the built-in scripted handler, checked against a model.
    app: ClassVar[App | None] = None
    #: handler name -> strategy of goals. None: scripts() for the scripted handler, ``{}``
    #: for each of your handlers.
    goals: ClassVar[Mapping[str, st.SearchStrategy[dict[str, Any]]] | None] = None
    #: Run on PostgreSQL (a fresh schema per example) instead of a temporary SQLite file.
    postgres_url: ClassVar[str | None] = None
    #: At most this many objects submitted per example (children come on top).
    max_objects: ClassVar[int] = 3
    #: Finish every object at the end of each example and check it terminated. None:
    #: on for the scripted handler, off for your own (whose objects may never finish).
    drain: ClassVar[bool | None] = None
    #: Cycles the drain may run before it reports that objects stopped making progress.
    drain_cycles: ClassVar[int] = 400
    #: The nodes' policy. None: the default policy.
    policy: ClassVar[Policy | None] = None
    #: The nodes' lease time, in (fake) seconds.
    lease_ttl: ClassVar[float] = 2.0

    def __init__(self) -> None:
        super().__init__()
        self._loop = asyncio.new_event_loop()
        self.clock = FakeClock()
        cls = type(self)
        self.node_policy = cls.policy if cls.policy is not None else default_policy()
        user_app = cls.app if cls.app is not None else scripted_app()
        if cls.goals is not None:
            self.goal_strategies = dict(cls.goals)
        elif cls.app is None:
            self.goal_strategies = {SCRIPT_HANDLER: scripts()}
        else:
            self.goal_strategies = {name: st.just({}) for name in user_app.handlers}
        if not self.goal_strategies:
            raise ValueError("ResumptionMachine needs at least one handler to submit objects to")
        self.drain_enabled = cls.drain if cls.drain is not None else cls.app is None
        self.keys = {nid: keys.generate() for nid in (*NODE_IDS, "client")}
        self.keyring = Keyring()
        for key in self.keys.values():
            self.keyring.trust(key.public_key)
        self.app_under_test = self._wrap(user_app)
        self.models: dict[str, Model] = {}
        self.heads: dict[str, ObjectRow] = {}
        self.chains: dict[str, list[Entry]] = {}
        self.seen: dict[tuple[str, int], bytes] = {}  # every (object, seq) -> hash ever seen
        self.terminal: dict[str, int] = {}  # object -> seq of its terminate entry
        self.runs: list[Run] = []
        self.allowance: Counter[str] = Counter()  # key -> attempts known not to have committed
        self.signalled: set[tuple[str, int]] = set()  # (object, seq of the wait) already signalled
        self.rule_no = 0
        self.healthy = True
        self.nodes: dict[str, Node | None] = dict.fromkeys(NODE_IDS)
        self._cleanup: Callable[[], Awaitable[None]] | None = None
        self.store: Store | None = None
        self._call(self._open())

    # -- plumbing -------------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coro)

    def _act(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run one rule's work; a failure leaves the machine unhealthy (no drain)."""
        self.rule_no += 1
        self.healthy = False
        result = self._call(coro)
        self.healthy = True
        return result

    async def open_store_url(self) -> tuple[str, Callable[[], Awaitable[None]]]:
        """A fresh store for one example, and how to dispose of it. Override for others."""
        base = type(self).postgres_url
        if base:
            schema = f"peo_m_{secrets.token_hex(6)}"
            sep = "&" if "?" in base else "?"

            async def drop() -> None:
                import asyncpg

                conn = await asyncpg.connect(base.split("?")[0])
                try:
                    await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
                finally:
                    await conn.close()

            return f"{base}{sep}schema={schema}", drop
        directory = tempfile.mkdtemp(prefix="peo-testing-")

        async def remove() -> None:
            shutil.rmtree(directory, ignore_errors=True)

        # durability=normal: these tests crash processes, not machines; no fsync needed.
        return f"sqlite:///{os.path.join(directory, 'peo.db')}?durability=normal", remove

    async def _open(self) -> None:
        self.url, self._cleanup = await self.open_store_url()
        self.store = open_store(self.url)
        await self.store.open()
        self.client = Client(self.store, key=self.keys["client"], keyring=self.keyring, policy=self.node_policy)
        for nid in NODE_IDS:
            self.nodes[nid] = await self._start_node(nid)

    async def _start_node(self, node_id: str) -> Node:
        """A node process starting: its own store connection; it takes its old leases back."""
        store = open_store(self.url)
        await store.open()
        node = Node(store, self.app_under_test, node_id=node_id, concurrency=1, lease_ttl=type(self).lease_ttl,
                    policy=self.node_policy, key=self.keys[node_id], keyring=self.keyring, clock=self.clock)
        await store.drop_leases(node_id)  # as Node.run does first
        return node

    async def _kill(self, node_id: str) -> None:
        """The node process dies: its memory and its connection are gone, its leases stay."""
        node = self.nodes[node_id]
        self.nodes[node_id] = None
        if node is not None:
            await node.store.aclose()

    def _wrap(self, app: App) -> App:
        """The app under test, each handler call recorded as one side effect."""
        wrapped = App()
        for name, handler in app.handlers.items():
            wrapped.handler(name, timeout=handler.timeout)(self._recording(handler))
        return wrapped

    def _recording(self, handler: Handler) -> Callable[[Step], Awaitable[Any]]:
        async def call(step: Step) -> Any:
            # Recorded here, checked by the invariant: an assertion raised inside a handler
            # would only become a failed step.
            first = Fold.of(step.memory).attempt_seq if step.memory else None
            consistent = (
                bool(step.memory) and step.seq == step.memory[-1].seq + 1
                and step.idempotency_key == f"{step.object_id}:{step.seq if first is None else first}"
            )
            prev = step.memory[-1].hash if step.memory else b""
            self.runs.append(Run(step.idempotency_key, step.object_id, step.seq, NODE.get(), prev,
                                 self.rule_no, consistent))
            gate = GATE.get()
            try:
                result = handler.fn(step)
                if inspect.isawaitable(result):
                    result = await result
                return result
            finally:
                if gate is not None:  # the side effect happened; now hold the step
                    gate.entered.set()
                    await gate.release.wait()

        return call

    async def _object_ids(self) -> list[str]:
        assert self.store is not None
        return [row.id for row in await self.store.list()]

    async def _cycle(self, node_id: str, object_id: str, *, fault: str | None = None) -> Claim | None:
        node = self.nodes[node_id]
        assert node is not None
        claim = await claim_one(node, object_id, await self._object_ids())
        if claim is None:
            return None  # not due, or leased by someone else
        token = NODE.set(node_id)
        if fault is not None:  # armed after the claim, so that the fault lands in the cycle
            faults.arm(f"{fault}=raise#1")
        try:
            await run_one_cycle(node, claim)
        finally:
            if fault is not None:
                faults.disarm()
            NODE.reset(token)
        return claim

    def _live(self) -> list[str]:
        return sorted(oid for oid, row in self.heads.items() if row.status in ("runnable", "dormant"))

    def _up(self) -> list[str]:
        return [nid for nid, node in self.nodes.items() if node is not None]

    def _waiting(self) -> list[tuple[str, str]]:
        """(object, signal name) for each object dormant until a signal."""
        out = []
        for oid in self._live():
            last = self.chains[oid][-1]
            if last.action is Action.DORMANCY and "signal" in last.outcome.get("wake", {}):
                out.append((oid, str(last.outcome["wake"]["signal"])))
        return out

    def _allow(self, runs_before: int) -> None:
        """The handler calls since ``runs_before`` could not commit: each may run again."""
        for run in self.runs[runs_before:]:
            self.allowance[f"{run.object_id}:{run.seq}"] += 1

    # -- rules ----------------------------------------------------------------------------

    @precondition(lambda self: len(self.models) < self.max_objects)
    @rule(data=st.data())
    def submit(self, data: st.DataObject) -> None:
        handler = data.draw(st.sampled_from(sorted(self.goal_strategies)), label="handler")
        goal = data.draw(self.goal_strategies[handler], label="goal")

        async def go() -> None:
            oid = await self.client.submit(handler, goal)
            model = Model(handler, goal)
            if handler == SCRIPT_HANDLER and type(self).app is None:
                model.expected, model.result = expected_actions(
                    goal["ops"], max_failures=self.node_policy.max_failures
                )
            self.models[oid] = model

        self._act(go())

    @precondition(lambda self: self._live() and self._up())
    @rule(data=st.data())
    def run_cycle(self, data: st.DataObject) -> None:
        node = data.draw(st.sampled_from(self._up()), label="node")
        oid = data.draw(st.sampled_from(self._live()), label="object")
        self._act(self._cycle(node, oid))

    @precondition(lambda self: self._live() and self._up())
    @rule(data=st.data(), point=st.sampled_from(CRASH_POINTS))
    def crash_mid_step(self, data: st.DataObject, point: str) -> None:
        node = data.draw(st.sampled_from(self._up()), label="node")
        oid = data.draw(st.sampled_from(self._live()), label="object")

        async def go() -> None:
            before = len(self.runs)
            claim = await self._cycle(node, oid, fault=point)
            self._allow(before)  # the node died before its commit
            if claim is not None:
                # In-process the fault unwinds and the node releases; a dead process would
                # have left its lease behind, so put it back under the dead node's name.
                alive = self.nodes[node]
                assert alive is not None
                await claim_one(alive, oid, await self._object_ids())
            await self._kill(node)

        self._act(go())

    @precondition(lambda self: self._live() and self._up())
    @rule(data=st.data())
    def crash_after_claim(self, data: st.DataObject) -> None:
        node = data.draw(st.sampled_from(self._up()), label="node")
        oid = data.draw(st.sampled_from(self._live()), label="object")

        async def go() -> None:
            alive = self.nodes[node]
            assert alive is not None
            await claim_one(alive, oid, await self._object_ids())
            await self._kill(node)

        self._act(go())

    @precondition(lambda self: self._live() and self._up())
    @rule(data=st.data(), point=st.sampled_from(STORE_POINTS))
    def store_error_at_commit(self, data: st.DataObject, point: str) -> None:
        # No allowance: the node must find out whether its entry committed (it retries or
        # recognises its own entry) and never run the step's handler a second time.
        node = data.draw(st.sampled_from(self._up()), label="node")
        oid = data.draw(st.sampled_from(self._live()), label="object")
        self._act(self._cycle(node, oid, fault=point))

    @precondition(lambda self: self._live() and len(self._up()) == 2)
    @rule(data=st.data())
    def lease_lost_mid_step(self, data: st.DataObject) -> None:
        slow = data.draw(st.sampled_from(NODE_IDS), label="slow node")
        fast = next(n for n in NODE_IDS if n != slow)
        oid = data.draw(st.sampled_from(self._live()), label="object")
        self._act(self._stale_writer(slow, fast, oid))

    async def _stale_writer(self, slow: str, fast: str, oid: str) -> None:
        gate = Gate()

        async def slow_cycle() -> Claim | None:
            GATE.set(gate)  # this task's context only: the fast node's handler runs freely
            return await self._cycle(slow, oid)

        task = asyncio.ensure_future(slow_cycle())
        entered = asyncio.ensure_future(gate.entered.wait())
        try:
            await asyncio.wait({task, entered}, return_when=asyncio.FIRST_COMPLETED)
            if not gate.entered.is_set():
                await task  # no handler ran in that cycle (a reentry, say): nothing to race
                return
            before = len(self.runs) - 1
            seq = self.runs[-1].seq
            self.clock.advance(type(self).lease_ttl * 2)  # the slow node's lease expires
            await self._cycle(fast, oid)  # the fast node takes over and commits the step
            self._allow(before)  # the slow node's attempt
        finally:
            gate.release.set()
            entered.cancel()
            await task
        stored = await self.client.store.entries(oid, after=seq - 1)
        assert stored, f"{fast} took {oid} over but did not commit seq {seq}"
        entry = decode(stored[0])
        assert entry.origin_node == fast, (
            f"{oid} seq {seq} was written by {entry.origin_node}, which had lost its lease to {fast}"
        )

    @precondition(lambda self: len(self._up()) < len(NODE_IDS))
    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        node = data.draw(st.sampled_from([n for n in NODE_IDS if self.nodes[n] is None]), label="node")

        async def go() -> None:
            self.nodes[node] = await self._start_node(node)

        self._act(go())

    @rule(seconds=st.sampled_from([0.01, 0.5, 3.0, 60.0, 3600.0]))
    def advance_clock(self, seconds: float) -> None:
        self.rule_no += 1
        self.clock.advance(seconds)

    @precondition(lambda self: self._waiting())
    @rule(data=st.data(), payload=plain_values(max_leaves=3))
    def deliver_awaited_signal(self, data: st.DataObject, payload: Any) -> None:
        oid, name = data.draw(st.sampled_from(self._waiting()), label="waiting object")
        self._act(self.client.signal(oid, name, payload))

    @precondition(lambda self: self._live())
    @rule(data=st.data())
    def send_unawaited_signal(self, data: st.DataObject) -> None:
        oid = data.draw(st.sampled_from(self._live()), label="object")
        self._act(self.client.signal(oid, NOISE_SIGNAL, None))

    @precondition(lambda self: self._live())
    @rule(data=st.data(), operator=st.booleans())
    def cancel(self, data: st.DataObject, operator: bool) -> None:
        """A cancel request that a node records on its next cycle, or (``operator``) the
        client's own cancel, which writes the entry itself when no node holds the object."""
        oid = data.draw(st.sampled_from(self._live()), label="object")
        model = self.models.get(oid)
        if model is not None and model.cancelled_after is None:
            model.cancelled_after = len(self.chains[oid]) - 1
        if operator:
            self._act(self.client.cancel(oid))
        else:
            self._act(self.client.send(oid, CANCEL_SIGNAL, None))

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def chains_hold(self) -> None:
        self.healthy = False
        self._call(self._check())
        self.healthy = True

    # -- the end: faults stop, everything must finish -----------------------------------------

    async def _drain(self) -> None:
        for nid in NODE_IDS:
            if self.nodes[nid] is None:
                self.nodes[nid] = await self._start_node(nid)
        assert self.store is not None
        for _ in range(type(self).drain_cycles):
            await self._check()
            live = self._live()
            if not live:
                break
            for oid, name in self._waiting():
                marker = (oid, self.chains[oid][-1].seq)
                if marker not in self.signalled:
                    self.signalled.add(marker)
                    await self.client.signal(oid, name, None)
            progressed = False
            for i, oid in enumerate(live):
                before = self.heads[oid].seq
                await self._cycle(NODE_IDS[i % 2], oid)
                progressed = progressed or (await self.store.get(oid)).seq != before
            if not progressed:  # nothing due now: let time pass to the next wake-up
                due = await self.store.next_due()
                if due is not None:
                    self.clock.advance_to(due)
                else:
                    self.clock.advance(type(self).lease_ttl * 2)
        await self._check(final=True)
        stuck = self._live()
        assert not stuck, f"no progress after the faults stopped: {stuck} never terminated"

    def teardown(self) -> None:
        try:
            if self.healthy and self.drain_enabled:
                self._call(self._drain())
        finally:
            try:
                self._call(self._close())
            finally:
                self._loop.run_until_complete(self._loop.shutdown_asyncgens())
                self._loop.close()

    async def _close(self) -> None:
        faults.disarm()
        for nid in NODE_IDS:
            await self._kill(nid)
        if self.store is not None:
            await self.store.aclose()
        if self._cleanup is not None:
            await self._cleanup()


def run_resumption_tests(
    app: App | None = None,
    goals: Mapping[str, st.SearchStrategy[dict[str, Any]]] | None = None,
    *,
    postgres_url: str | None = None,
    max_examples: int = 20,
    steps: int = 15,
    drain: bool | None = None,
    max_objects: int = 3,
    settings: Settings | None = None,
    seed: int | None = None,
) -> None:
    """Run :class:`ResumptionMachine` on ``app`` (default: the scripted handler).

    ``goals`` maps handler names to goal strategies (default: ``{}`` for each handler);
    ``postgres_url`` runs it on PostgreSQL (a fresh schema per example, dropped after);
    ``drain=True`` also checks that every object terminates once faults stop and awaited
    signals are delivered; ``seed`` fixes hypothesis's random choices (to replay a run).
    Call it from a synchronous test function.
    """
    attrs_: dict[str, Any] = {
        "app": app, "goals": goals, "postgres_url": postgres_url, "drain": drain, "max_objects": max_objects,
    }
    machine = type("ConfiguredResumptionMachine", (ResumptionMachine,), attrs_)
    if seed is not None:
        from hypothesis import seed as hypothesis_seed

        machine = hypothesis_seed(seed)(machine)
    chosen = settings or Settings(
        max_examples=max_examples, stateful_step_count=steps, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    run_state_machine_as_test(machine, settings=chosen)  # type: ignore[no-untyped-call]
