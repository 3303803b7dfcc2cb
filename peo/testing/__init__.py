"""Test helpers for peo users: hypothesis strategies, a fake clock, and a stateful
machine that checks resumption (crash, lease loss, restart) against your own handlers.

Needs hypothesis (a development extra: ``pip install 'peo[dev]'``).

Property-based resumption tests
-------------------------------
:class:`ResumptionMachine` is a hypothesis ``RuleBasedStateMachine``. Two nodes ("a" and
"b") share one store and one :class:`FakeClock`; hypothesis interleaves these rules:

* ``submit``: a client submits an object (handler and goal drawn from ``goals``);
* ``run_cycle``: node a or b claims one object and runs exactly one cycle;
* ``crash_mid_step``: a node runs the handler (its side effect happens), then dies before
  its entry is committed (fault point ``node.after_handler`` or ``node.after_sign``); its
  lease stays behind, as a dead process leaves it;
* ``crash_after_claim``: a node claims an object and dies before doing anything;
* ``store_error_at_commit``: the store fails at ``store.before_commit`` (nothing written)
  or at ``store.after_commit`` (written, but the node hears an error) and the node must
  recover without running the step again;
* ``lease_lost_mid_step``: a node sits in a handler past its lease, the other node takes
  the object over and commits the step, then the first one wakes up and tries to append;
* ``restart``: a dead node comes back under the same id (and takes its leases back);
* ``advance_clock``: time jumps (leases expire, sleepers become due);
* ``deliver_awaited_signal``, ``send_unawaited_signal``, ``cancel``.

After every rule these invariants are checked: every chain verifies (``Client.verify``),
seqs are contiguous, an entry once seen at (object, seq) never changes (no fork), a
terminated object never gets another entry and no handler runs for it, no dormant object
wakes before its time, nothing is quarantined, the stored status is the one the last
entry implies, and a step's side effect (each handler call, keyed by its idempotency key)
ran more than once only where an attempt could not commit (a crash before the commit or a
lost lease), always with the same key. At the end (``drain``) both nodes come back,
awaited signals are delivered and the clock moves on until every object has terminated:
progress after the faults stop.

With no configuration the machine runs the built-in *scripted* handler, whose goal is a
small program of proposals (:func:`scripts`): then each chain is also compared, entry by
entry, with what a simple model (:func:`expected_actions`) says it must be.

To point it at your own handlers, subclass and set ``app`` and ``goals``::

    from hypothesis import strategies as st
    from peo.testing import ResumptionMachine

    class MyResumption(ResumptionMachine):
        app = my_app                     # your peo.App
        goals = {"count": st.fixed_dictionaries({"steps": st.integers(0, 5)})}
        drain = True                     # your objects finish once signals are delivered

    TestMyResumption = MyResumption.TestCase   # collected by pytest / unittest

or call :func:`run_resumption_tests` from a (synchronous) test function. Handlers may be
sync or async; each call counts as one side effect. The machine runs its own event loop,
so call it from a plain ``def`` test, not an ``async def`` one.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import itertools
import os
import secrets
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

import attrs

try:
    from hypothesis import HealthCheck
    from hypothesis import settings as Settings
    from hypothesis import strategies as st
    from hypothesis.stateful import (
        RuleBasedStateMachine,
        invariant,
        precondition,
        rule,
        run_state_machine_as_test,
    )
except ImportError as exc:  # pragma: no cover - hypothesis is a development extra
    raise ImportError(
        "peo.testing needs hypothesis: pip install 'peo[dev]' (or pip install hypothesis)"
    ) from exc

from ..app import App, Handler
from ..client import Client
from ..core.crypto import Keyring, SigningKey
from ..core.model import (
    Action,
    CannotDo,
    Constraints,
    Continue,
    Done,
    Entry,
    Fail,
    Intent,
    Proposal,
    Refine,
    Sleep,
    Step,
    WaitSignal,
)
from ..core.policy import Policy
from ..node import Node
from ..node._node import _Held
from ..store import Claim, ObjectRow, Store, make_store
from . import faults

__all__ = [
    "NOISE_SIGNAL",
    "SCRIPT_HANDLER",
    "FakeClock",
    "ResumptionMachine",
    "ScriptError",
    "expected_actions",
    "intents",
    "main",
    "plain_values",
    "proposals",
    "run_one_cycle",
    "run_resumption_tests",
    "scripted_app",
    "scripts",
]

T = TypeVar("T")

#: The built-in scripted handler's name (see :func:`scripted_app`).
SCRIPT_HANDLER = "peo.testing.script"
#: A signal nobody waits for: it must never wake an object or change its history.
NOISE_SIGNAL = "peo.testing.noise"


# -- time --------------------------------------------------------------------------------


class FakeClock:
    """A node clock (``Node(clock=...)``) that you move forward by hand.

    It reads real time plus an offset that only grows, so it is never behind the real
    clock that clients use when they submit or signal (a new object is due at once), yet
    ``advance(3600)`` makes an hour pass instantly: leases expire, sleepers become due.
    """

    def __init__(self) -> None:
        self.offset_ns = 0

    def __call__(self) -> int:
        return time.time_ns() + self.offset_ns

    def advance(self, seconds: float) -> None:
        if not seconds >= 0:
            raise ValueError("a clock only moves forward")
        self.offset_ns += int(seconds * 1e9)

    def advance_to(self, ns: int) -> None:
        """Move forward to ``ns`` (ns since the epoch); a time in the past is a no-op."""
        self.offset_ns += max(0, ns - self())


# -- strategies --------------------------------------------------------------------------


def plain_values(*, max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Values a goal, a state update, a signal payload or a result may hold, chosen so
    that they come back equal after a round trip through the store (no NaN, lists not
    tuples, string keys)."""
    scalars: st.SearchStrategy[Any] = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=False),
        st.text(max_size=16),
        st.binary(max_size=16),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.text(max_size=8), inner, max_size=4),
        ),
        max_leaves=max_leaves,
    )


def _names() -> st.SearchStrategy[str]:
    return st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.-0123456789", min_size=1, max_size=12).filter(
        lambda s: s[0].isalpha()
    )


def intents(
    handlers: Sequence[str] | st.SearchStrategy[str] | None = None,
    goals: st.SearchStrategy[dict[str, Any]] | None = None,
) -> st.SearchStrategy[Intent]:
    """``peo.Intent`` values: a handler from ``handlers`` (names or a strategy), a goal
    (default: a small dict of plain values) and sometimes constraints."""
    if handlers is None:
        handler_st: st.SearchStrategy[str] = _names()
    elif isinstance(handlers, st.SearchStrategy):
        handler_st = handlers
    else:
        handler_st = st.sampled_from(list(handlers))
    goal_st = goals if goals is not None else st.dictionaries(st.text(max_size=8), plain_values(), max_size=3)
    constraints = st.builds(
        Constraints,
        max_failures=st.none() | st.integers(1, 10),
        max_steps=st.none() | st.integers(1, 1000),
    )
    return st.builds(Intent, handler_st, goal_st, constraints)


def proposals(
    *,
    signal_names: Sequence[str] = ("go", "approve"),
    children: st.SearchStrategy[Intent] | None = None,
    max_sleep: float = 3600.0,
) -> st.SearchStrategy[Proposal]:
    """What a handler may return. ``Delegate`` is drawn only when ``children`` (a
    strategy of intents, e.g. :func:`intents`) is given."""
    from ..core.model import Delegate

    state = st.none() | st.dictionaries(st.text(max_size=8), plain_values(max_leaves=4), max_size=3)
    options: list[st.SearchStrategy[Proposal]] = [
        st.builds(Continue, state=state),
        st.builds(Done, plain_values(), state=state),
        st.builds(Sleep, seconds=st.floats(0, max_sleep), state=state),
        st.builds(WaitSignal, st.sampled_from(list(signal_names)),
                  timeout=st.none() | st.floats(0, max_sleep), state=state),
        st.builds(Fail, st.text(max_size=20), retryable=st.booleans(), state=state),
        st.builds(CannotDo, _names(), st.text(max_size=20), state=state),
        st.builds(Refine, goal=st.dictionaries(st.text(max_size=8), plain_values(max_leaves=4), max_size=3),
                  state=state),
    ]
    if children is not None:
        options.append(st.builds(Delegate, st.lists(children, min_size=1, max_size=3), wait=st.booleans(),
                                 state=state))
    return st.one_of(options)


# -- the scripted handler and its model ---------------------------------------------------


class ScriptError(Exception):
    """Raised by the scripted handler's ``["raise"]`` instruction."""


def scripts(
    *, max_ops: int = 6, signal_names: Sequence[str] = ("go", "approve")
) -> st.SearchStrategy[dict[str, Any]]:
    """Goals for :data:`SCRIPT_HANDLER`: ``{"ops": [...]}``, one instruction per step.

    ``["continue"]``, ``["sleep", seconds]``, ``["wait", signal name]``, ``["fail"]`` (a
    retryable Fail, then the next instruction), ``["raise"]`` (an exception, and the same
    instruction again: it fails until the failure threshold ends the object) and
    ``["done", result]``. Past the last instruction the object is done with the number
    of instructions as its result.
    """
    op = st.one_of(
        st.just(["continue"]),
        st.tuples(st.just("sleep"), st.sampled_from([0.0, 0.5, 30.0, 3600.0])).map(list),
        st.tuples(st.just("wait"), st.sampled_from(list(signal_names))).map(list),
        st.just(["fail"]),
        st.just(["raise"]),
        st.tuples(st.just("done"), plain_values(max_leaves=4)).map(list),
    )
    return st.fixed_dictionaries({"ops": st.lists(op, max_size=max_ops)})


def scripted_app(app: App | None = None) -> App:
    """An App with the scripted handler (:data:`SCRIPT_HANDLER`), added to ``app`` if given.

    Its state holds only a program counter, advanced with each proposal, so a step that is
    retried after a crash sees the same counter and does the same thing again.
    """
    app = app if app is not None else App()

    @app.handler(SCRIPT_HANDLER)
    def script(step: Step) -> Proposal:
        ops = step.goal.get("ops", [])
        pc = int(step.state.get("pc", 0))
        if pc >= len(ops):
            return Done(len(ops), state={"pc": pc})
        kind, *args = ops[pc]
        after = {"pc": pc + 1}
        if kind == "continue":
            return Continue(state=after)
        if kind == "sleep":
            return Sleep(seconds=float(args[0]), state=after)
        if kind == "wait":
            return WaitSignal(str(args[0]), state=after)
        if kind == "fail":
            return Fail("scripted failure", state=after)
        if kind == "raise":
            raise ScriptError(f"scripted exception at instruction {pc}")
        if kind == "done":
            return Done(args[0], state=after)
        raise ScriptError(f"unknown instruction {kind!r}")

    return app


ModelEntry = tuple[Action, str | None]


def expected_actions(ops: Sequence[Sequence[Any]], *, max_failures: int) -> tuple[list[ModelEntry], Any]:
    """What a scripted object's memory after entry 0 must be, and its result if done.

    Each item is (action, detail): the detail is the execute/dormancy outcome status
    ("ok", "failed"), the reentry trigger ("time", "signal") or the terminate reason.
    This is the simple model the machine compares every chain with.
    """
    out: list[ModelEntry] = []
    consecutive = 0
    pc = 0
    while True:
        if pc >= len(ops):
            out.append((Action.TERMINATE, "done"))
            return out, len(ops)
        kind = ops[pc][0]
        if kind == "continue":
            out.append((Action.EXECUTE, "ok"))
            consecutive, pc = 0, pc + 1
        elif kind in ("sleep", "wait"):
            out += [(Action.DORMANCY, "ok"), (Action.REENTRY, "time" if kind == "sleep" else "signal")]
            consecutive, pc = 0, pc + 1
        elif kind == "done":
            out.append((Action.TERMINATE, "done"))
            return out, ops[pc][1]
        else:  # fail, raise: back off, unless this failure crosses the threshold
            consecutive += 1
            if consecutive >= max_failures:
                out.append((Action.TERMINATE, "failed: failure threshold exceeded"))
                return out, None
            out += [(Action.DORMANCY, "failed"), (Action.REENTRY, "time")]
            if kind == "fail":
                pc += 1


def _detail(entry: Entry) -> str | None:
    o = entry.outcome
    if entry.action is Action.EXECUTE or entry.action is Action.DORMANCY:
        return str(o.get("status", "ok"))
    if entry.action is Action.REENTRY:
        return str(o.get("trigger"))
    if entry.action is Action.TERMINATE:
        return str(o.get("reason"))
    return None


# -- driving one node, one cycle at a time ------------------------------------------------


async def run_one_cycle(node: Node, claim: Claim) -> None:
    """Let ``node`` run exactly one cycle of an object it has just claimed, then release it.

    This is the node's own per-object code (``Node.run`` runs it for every claim), stopped
    after one appended entry: a node that is stopping finishes the step in flight and puts
    the object back, which is exactly one cycle.
    """
    node._stopping.set()
    node._held[claim.id] = _Held(claim, claim.token)
    await node._work(claim)


async def _claim_one(node: Node, object_id: str, others: Sequence[str]) -> Claim | None:
    """Claim ``object_id`` for ``node`` (if it is due and unleased), as its claim loop would."""
    handlers = sorted(h for h in node.app.handlers if node.policy.accepts_handler(h))
    claims = await node.store.claim(
        node.node_id, now=node.clock(), lease_ns=node.lease_ns, limit=1,
        handlers=handlers, scopes=node.policy.scope_filter(), exclude=[o for o in others if o != object_id],
    )
    return claims[0] if claims else None


# -- the machine --------------------------------------------------------------------------


@attrs.define
class _Gate:
    """Holds a handler call (after its side effect) until the test lets it go on."""

    entered: asyncio.Event = attrs.field(factory=asyncio.Event)
    release: asyncio.Event = attrs.field(factory=asyncio.Event)


@attrs.frozen
class _Run:
    """One handler call: the side effect a step performs."""

    key: str
    object_id: str
    seq: int
    node: str
    prev_hash: bytes  # the hash of the last entry the handler was shown
    rule: int
    consistent: bool  # step.seq and the idempotency key follow from the memory shown


@attrs.define
class _Model:
    handler: str
    goal: dict[str, Any]
    expected: list[ModelEntry] | None = None  # scripted objects only
    result: Any = None
    cancelled_after: int | None = None  # entries after entry 0 when cancel was sent


_GATE: contextvars.ContextVar[_Gate | None] = contextvars.ContextVar("peo_testing_gate", default=None)
_NODE: contextvars.ContextVar[str] = contextvars.ContextVar("peo_testing_node", default="?")

_NODE_IDS = ("a", "b")
_CRASH_POINTS = ("node.after_handler", "node.after_sign")
_STORE_POINTS = ("store.before_commit", "store.after_commit")


class ResumptionMachine(RuleBasedStateMachine):
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
        self.node_policy = cls.policy if cls.policy is not None else Policy.default()
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
        self.keys = {nid: SigningKey.generate() for nid in (*_NODE_IDS, "client")}
        self.keyring = Keyring()
        for key in self.keys.values():
            self.keyring.trust(key.public_key)
        self.app_under_test = self._wrap(user_app)
        self.models: dict[str, _Model] = {}
        self.heads: dict[str, ObjectRow] = {}
        self.chains: dict[str, list[Entry]] = {}
        self.seen: dict[tuple[str, int], bytes] = {}  # every (object, seq) -> hash ever seen
        self.terminal: dict[str, int] = {}  # object -> seq of its terminate entry
        self.runs: list[_Run] = []
        self.allowance: Counter[str] = Counter()  # key -> attempts known not to have committed
        self.signalled: set[tuple[str, int]] = set()  # (object, seq of the wait) already signalled
        self.rule_no = 0
        self.healthy = True
        self.nodes: dict[str, Node | None] = dict.fromkeys(_NODE_IDS)
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
        self.store = make_store(self.url)
        await self.store.open()
        self.client = Client(self.store, key=self.keys["client"], keyring=self.keyring, policy=self.node_policy)
        for nid in _NODE_IDS:
            self.nodes[nid] = await self._start_node(nid)

    async def _start_node(self, node_id: str) -> Node:
        """A node process starting: its own store connection; it takes its old leases back."""
        store = make_store(self.url)
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
            consistent = (
                bool(step.memory) and step.seq == step.memory[-1].seq + 1
                and step.idempotency_key == f"{step.object_id}:{step.seq}"
            )
            prev = step.memory[-1].hash if step.memory else b""
            self.runs.append(_Run(step.idempotency_key, step.object_id, step.seq, _NODE.get(), prev,
                                  self.rule_no, consistent))
            gate = _GATE.get()
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
        claim = await _claim_one(node, object_id, await self._object_ids())
        if claim is None:
            return None  # not due, or leased by someone else
        token = _NODE.set(node_id)
        if fault is not None:  # armed after the claim, so that the fault lands in the cycle
            faults.arm(f"{fault}=raise#1")
        try:
            await run_one_cycle(node, claim)
        finally:
            if fault is not None:
                faults.disarm()
            _NODE.reset(token)
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
            self.allowance[run.key] += 1

    # -- rules ----------------------------------------------------------------------------

    @precondition(lambda self: len(self.models) < self.max_objects)
    @rule(data=st.data())
    def submit(self, data: st.DataObject) -> None:
        handler = data.draw(st.sampled_from(sorted(self.goal_strategies)), label="handler")
        goal = data.draw(self.goal_strategies[handler], label="goal")

        async def go() -> None:
            oid = await self.client.submit(handler, goal)
            model = _Model(handler, goal)
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
    @rule(data=st.data(), point=st.sampled_from(_CRASH_POINTS))
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
                await _claim_one(alive, oid, await self._object_ids())
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
            await _claim_one(alive, oid, await self._object_ids())
            await self._kill(node)

        self._act(go())

    @precondition(lambda self: self._live() and self._up())
    @rule(data=st.data(), point=st.sampled_from(_STORE_POINTS))
    def store_error_at_commit(self, data: st.DataObject, point: str) -> None:
        # No allowance: the node must find out whether its entry committed (it retries or
        # recognises its own entry) and never run the step's handler a second time.
        node = data.draw(st.sampled_from(self._up()), label="node")
        oid = data.draw(st.sampled_from(self._live()), label="object")
        self._act(self._cycle(node, oid, fault=point))

    @precondition(lambda self: self._live() and len(self._up()) == 2)
    @rule(data=st.data())
    def lease_lost_mid_step(self, data: st.DataObject) -> None:
        slow = data.draw(st.sampled_from(_NODE_IDS), label="slow node")
        fast = next(n for n in _NODE_IDS if n != slow)
        oid = data.draw(st.sampled_from(self._live()), label="object")
        self._act(self._stale_writer(slow, fast, oid))

    async def _stale_writer(self, slow: str, fast: str, oid: str) -> None:
        gate = _Gate()

        async def slow_cycle() -> Claim | None:
            _GATE.set(gate)  # this task's context only: the fast node's handler runs freely
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
        entry = _decode(stored[0])
        assert entry.origin_node == fast, (
            f"{oid} seq {seq} was written by {entry.origin_node}, which had lost its lease to {fast}"
        )

    @precondition(lambda self: len(self._up()) < len(_NODE_IDS))
    @rule(data=st.data())
    def restart(self, data: st.DataObject) -> None:
        node = data.draw(st.sampled_from([n for n in _NODE_IDS if self.nodes[n] is None]), label="node")

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
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        oid = data.draw(st.sampled_from(self._live()), label="object")
        model = self.models.get(oid)
        if model is not None and model.cancelled_after is None:
            model.cancelled_after = len(self.chains[oid]) - 1
        self._act(self.client.cancel(oid))

    # -- invariants -----------------------------------------------------------------------

    @invariant()
    def chains_hold(self) -> None:
        self.healthy = False
        self._call(self._check())
        self.healthy = True

    async def _check(self, *, final: bool = False) -> None:
        assert self.store is not None
        rows = await self.store.list()
        self.heads = {row.id: row for row in rows}
        for row in rows:
            oid = row.id
            assert row.status != "quarantined", f"{oid} was quarantined: {row.reason}"
            count = await self.client.verify(oid)  # signatures, links, contiguous seq, head
            chain = [_decode(r) for r in await self.store.entries(oid)]
            assert len(chain) == count and [e.seq for e in chain] == list(range(count))
            self.chains[oid] = chain
            for e in chain:
                first = self.seen.setdefault((oid, e.seq), e.hash)
                assert first == e.hash, f"fork: {oid} seq {e.seq} changed after it was seen"
            if oid in self.terminal:
                assert row.seq == self.terminal[oid], f"{oid} got entries after it terminated"
            elif chain[-1].action is Action.TERMINATE:
                self.terminal[oid] = chain[-1].seq
            assert row.status == _status_after(chain[-1]), (
                f"{oid} is stored as {row.status} but its last entry is {chain[-1].action}"
            )
            for prev, e in itertools.pairwise(chain):
                if e.action is Action.REENTRY and e.outcome.get("trigger") == "time":
                    until = prev.outcome.get("wake", {}).get("until")
                    assert until is not None and e.timestamp >= until, f"{oid} woke early at seq {e.seq}"
            model = self.models.get(oid)
            if model is not None and model.expected is not None:
                self._compare(oid, chain, model, final=final)
        self._check_side_effects()

    def _compare(self, oid: str, chain: list[Entry], model: _Model, *, final: bool) -> None:
        assert model.expected is not None
        expected = list(model.expected)
        if model.cancelled_after is not None and model.cancelled_after < len(expected):
            expected = [*expected[: model.cancelled_after], (Action.TERMINATE, "cancelled")]
        actual = [(e.action, _detail(e)) for e in chain[1:]]
        assert actual == expected[: len(actual)], (
            f"{oid}: memory {_show(actual)} is not a prefix of what the model expects {_show(expected)}"
            f" for script {model.goal['ops']}"
        )
        if final:
            assert actual == expected, f"{oid}: memory {_show(actual)} stopped short of {_show(expected)}"
        if actual and actual[-1] == (Action.TERMINATE, "done") and model.cancelled_after is None:
            assert chain[-1].outcome.get("result") == model.result, f"{oid}: wrong result"

    def _check_side_effects(self) -> None:
        calls = Counter(run.key for run in self.runs)
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

    # -- the end: faults stop, everything must finish -----------------------------------------

    async def _drain(self) -> None:
        for nid in _NODE_IDS:
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
                await self._cycle(_NODE_IDS[i % 2], oid)
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
        for nid in _NODE_IDS:
            await self._kill(nid)
        if self.store is not None:
            await self.store.aclose()
        if self._cleanup is not None:
            await self._cleanup()


def _decode(row: tuple[bytes, bytes]) -> Entry:
    import hashlib

    from ..core.codec import decode_body

    body, sig = row
    return decode_body(body, sig, hashlib.sha256(body).digest())


def _status_after(entry: Entry) -> str:
    if entry.action is Action.TERMINATE:
        return "terminated"
    if entry.action is Action.DORMANCY or (entry.action is Action.DELEGATE and entry.outcome.get("wait")):
        return "dormant"
    return "runnable"


def _show(items: Sequence[ModelEntry]) -> str:
    return "[" + ", ".join(f"{a.value}:{d}" for a, d in items) + "]"


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



def main(argv: Sequence[str] | None = None) -> int:
    """``python -m peo.testing``: the long form of the model-based resumption tests."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m peo.testing",
                                description="Run the resumption state machine on the scripted handler.")
    p.add_argument("--examples", type=int, default=500, help="hypothesis examples (default 500)")
    p.add_argument("--steps", type=int, default=40, help="rules per example (default 40)")
    p.add_argument("--objects", type=int, default=4, help="objects per example (default 4)")
    p.add_argument("--postgres", metavar="URL", help="run on PostgreSQL (a fresh schema per example)")
    p.add_argument("--seed", type=int, help="hypothesis seed, to replay a run")
    args = p.parse_args(argv)
    import logging

    logging.getLogger("peo.node").setLevel(logging.ERROR)  # the injected faults log warnings by design
    chosen = Settings(max_examples=args.examples, stateful_step_count=args.steps, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much], database=None)
    started = time.monotonic()
    run_resumption_tests(postgres_url=args.postgres, max_objects=args.objects, settings=chosen, seed=args.seed)
    print(f"resumption machine: {args.examples} examples x up to {args.steps} steps passed"
          f" in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())
