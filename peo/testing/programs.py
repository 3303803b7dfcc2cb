"""Random durable-function programs, and a driver that runs any durable function with
crashes injected, to check that a crashed run ends like an uninterrupted one.

A :class:`Program` is a list of operations (:class:`StepOp`, :class:`SleepOp`,
:class:`WaitOp`, :class:`ChildrenOp`, :class:`ProgressOp`); :func:`programs` is a hypothesis
strategy for them. :func:`register_programs` registers one interpreter function on an
:class:`~peo.App` that reads the program from its goal (one registration serves every
example), and a child function for :class:`ChildrenOp`. Each step's side effect appends an
:class:`Effect` (operation index, child index, ``run.idempotency_key``) to a list the test
owns. :func:`run_program` runs a program in a :class:`~peo.testing.FunctionEnv` with crashes
after the given seqs and returns a :class:`FunctionRun`: the result, the effects of that
run, the crashes that fired, every object's entry count and verified chain.

:func:`run_function` is the same driver for any durable function (yours): it submits the
object, sends the :class:`SendSignal` s you give (at once, or when the object waits for
them), serves it to the end on the fake clock with crashes after the given seqs, and
verifies every chain; :func:`crash_points` draws crash seqs from an uninterrupted run's.
See docs/testing.md, "Random programs".

The strategies need hypothesis (``pip install 'peo[dev]'``); the rest of the module does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

import attrs

from ..app import App
from ..errors import SignalTimeout, UsageError
from ..functions import Run
from .timeskip import DAY, Crash, FunctionEnv, StuckError

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy

__all__ = [
    "ChildrenOp",
    "Effect",
    "FunctionRun",
    "Op",
    "Program",
    "ProgramFunctions",
    "ProgressOp",
    "SendSignal",
    "SleepOp",
    "StepOp",
    "WaitOp",
    "crash_points",
    "programs",
    "register_programs",
    "run_function",
    "run_program",
]

#: When the driver sends a signal: right after submit (before the function can reach the
#: wait), when the object is dormant waiting for it, or never (the wait's timeout fires).
SendWhen: TypeAlias = Literal["early", "on_wait", "never"]


# -- the program model ---------------------------------------------------------------------


@attrs.frozen
class StepOp:
    """``await run.step(...)``: a side effect (an :class:`Effect`) returning ``[op, value]``."""

    value: int


@attrs.frozen
class SleepOp:
    """``await run.sleep(seconds)``; the result holds None."""

    seconds: float


@attrs.frozen
class WaitOp:
    """``await run.wait_signal(name, timeout=timeout)``; the result holds the signal's
    payload, or ``"timeout"``. The driver sends the signal as ``send`` says (payload: the
    operation's index). ``send="never"`` needs a timeout; names are unique in a program."""

    name: str
    send: SendWhen = "on_wait"
    timeout: float | None = None


@attrs.frozen
class ChildrenOp:
    """Children, each running the child function (one step returning ``[op, value]``, then
    a sleep of ``sleep`` seconds if not 0): one is awaited as ``await run.child(...)``,
    several as ``await run.gather(...)``; the result holds the list of their results."""

    values: tuple[int, ...]
    sleep: float = 0.0


@attrs.frozen
class ProgressOp:
    """``run.progress({"op": index, "value": value})`` (no entry of its own); result None."""

    value: int


Op: TypeAlias = StepOp | SleepOp | WaitOp | ChildrenOp | ProgressOp


@attrs.frozen
class Effect:
    """One run of a step's side effect: the operation's index in the program, the child's
    index for a child's step (None for the program's own), and ``run.idempotency_key``."""

    op: int
    key: str
    child: int | None = None

    @property
    def step(self) -> tuple[int, int | None]:
        return (self.op, self.child)


@attrs.frozen
class SendSignal:
    """A signal :func:`run_function` sends to the object: ``when="early"`` right after
    submit, ``"on_wait"`` when the object is dormant waiting for ``name`` (each at most
    once, in the order given)."""

    name: str
    payload: Any = None
    when: Literal["early", "on_wait"] = "on_wait"


@attrs.frozen
class Program:
    """A random durable-function program: ``ops`` run in order by the interpreter."""

    ops: tuple[Op, ...] = ()

    def __attrs_post_init__(self) -> None:
        names = [op.name for op in self.ops if isinstance(op, WaitOp)]
        if len(names) != len(set(names)):
            raise UsageError("a program's waits need distinct signal names")
        if any(isinstance(op, WaitOp) and op.send == "never" and op.timeout is None for op in self.ops):
            raise UsageError("a wait whose signal is never sent needs a timeout")
        if any(isinstance(op, ChildrenOp) and not op.values for op in self.ops):
            raise UsageError("a ChildrenOp needs at least one child")

    def goal(self) -> dict[str, Any]:
        """The interpreter's goal: ``{"ops": [...]}``, plain data."""
        return {"ops": [{"op": type(op).__name__, **attrs.asdict(op, value_serializer=_plain)}
                        for op in self.ops]}

    def signals(self) -> list[SendSignal]:
        """What the driver sends: each wait's signal (payload: its index) unless ``never``."""
        return [SendSignal(op.name, i, op.send) for i, op in enumerate(self.ops)
                if isinstance(op, WaitOp) and op.send != "never"]

    def steps(self) -> list[tuple[int, int | None]]:
        """Every step a run must carry out, as :attr:`Effect.step` names it."""
        out: list[tuple[int, int | None]] = []
        for i, op in enumerate(self.ops):
            if isinstance(op, StepOp):
                out.append((i, None))
            elif isinstance(op, ChildrenOp):
                out.extend((i, j) for j in range(len(op.values)))
        return out


def _plain(_inst: object, _field: object, value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


# -- the interpreter ------------------------------------------------------------------------


@attrs.frozen
class ProgramFunctions:
    """What :func:`register_programs` registered: the app, the interpreter's and the child
    function's handler names, and the list every step's side effect appends to."""

    app: App
    name: str
    child: str
    effects: list[Effect]


def _effect(effects: list[Effect], op: int, child: int | None, key: str, value: int) -> list[int]:
    effects.append(Effect(op, key, child))
    return [op, value]


def register_programs(app: App, effects: list[Effect] | None = None, *, name: str = "peo.program",
                      child: str = "peo.program.child") -> ProgramFunctions:
    """Register the program interpreter as the durable function ``name`` on ``app`` (its goal
    is :meth:`Program.goal`), and the function its children run as ``child``. Each step's
    side effect appends an :class:`Effect` to ``effects`` (a new list if None)."""
    log: list[Effect] = [] if effects is None else effects

    @app.function(name)
    async def interpret(run: Run, ops: list[dict[str, Any]]) -> list[Any]:
        out: list[Any] = []
        for i, op in enumerate(ops):
            kind = op["op"]
            if kind == "StepOp":
                key = run.idempotency_key  # the key of the step about to run (if it runs)
                out.append(await run.step(_effect, log, i, None, key, op["value"], name=f"op{i}"))
            elif kind == "SleepOp":
                await run.sleep(op["seconds"])
                out.append(None)
            elif kind == "WaitOp":
                try:
                    out.append((await run.wait_signal(op["name"], timeout=op["timeout"])).payload)
                except SignalTimeout:
                    out.append("timeout")
            elif kind == "ChildrenOp":
                calls = [run.child(child, op=i, child=j, value=v, sleep=op["sleep"])
                         for j, v in enumerate(op["values"])]
                out.append([await calls[0]] if len(calls) == 1 else await run.gather(*calls))
            elif kind == "ProgressOp":
                run.progress({"op": i, "value": op["value"]})
                out.append(None)
            else:
                raise UsageError(f"unknown program operation {kind!r}")
        return out

    @app.function(child)
    async def program_child(run: Run, op: int, child: int, value: int, sleep: float) -> Any:
        key = run.idempotency_key
        result = await run.step(_effect, log, op, child, key, value, name="effect")
        if sleep:
            await run.sleep(sleep)
        return result

    return ProgramFunctions(app, name, child, log)


# -- the driver -------------------------------------------------------------------------------


@attrs.frozen
class FunctionRun:
    """One run of a function to its end (:func:`run_function`).

    ``result``: its result; ``object_id``: the submitted object; ``crashes``: those that
    fired; ``entries``: every object's entry count (its own and its descendants', by id);
    ``verified``: what ``client.verify`` returned for each (it raises if a chain is bad);
    ``effects``: what was appended to the ``effects`` list during the run; ``unsent``:
    ``on_wait`` signals never sent (the object never waited for them)."""

    object_id: str
    result: Any
    crashes: tuple[Crash, ...]
    entries: dict[str, int]
    verified: dict[str, int]
    effects: tuple[Any, ...] = ()
    unsent: tuple[SendSignal, ...] = ()

    @property
    def seqs(self) -> list[int]:
        """Every seq some object of the run wrote after entry 0: where a crash may be armed."""
        return list(range(1, max(self.entries.values())))


async def run_function(app: App, handler: str, goal: dict[str, Any] | None = None, *,
                       signals: Sequence[SendSignal] = (), crash_after: Sequence[int] = (),
                       effects: list[Any] | None = None, concurrency: int = 32,
                       max_jumps: int = 1000) -> FunctionRun:
    """Submit ``handler`` with ``goal`` in a new :class:`FunctionEnv` of ``app``, send
    ``signals``, and serve it to its end on the fake clock, with a crash armed after each
    seq of ``crash_after`` (of whichever object commits that seq first: children
    included). Whenever nothing is due, an ``on_wait`` signal the object waits for is sent,
    or else the clock jumps to the next due time. Every object's chain is verified.

    Raises :class:`StuckError` if the object waits for a signal that is not coming and no
    timer is set, :class:`~peo.ObjectFailedError` if it ended without a result."""
    start = len(effects) if effects is not None else 0
    async with FunctionEnv(app, concurrency=concurrency) as env:
        for seq in crash_after:
            env.crash_after(seq)
        oid = await env.submit(handler, **(goal or {}))
        for sig in signals:
            if sig.when == "early":
                await env.signal(oid, sig.name, sig.payload)
        pending = [sig for sig in signals if sig.when == "on_wait"]
        result = await _drive(env, oid, pending, max_jumps)
        rows = await env.store.list()
        entries = {row.id: row.seq + 1 for row in rows}
        verified = {row.id: int(await env.client.verify(row.id)) for row in rows}
        return FunctionRun(oid, result, tuple(env.crashes), entries, verified,
                           tuple(effects[start:]) if effects is not None else (), tuple(pending))


async def _drive(env: FunctionEnv, oid: str, pending: list[SendSignal], max_jumps: int) -> Any:
    """``env.result(oid)``, sending each pending signal once the object waits for it."""
    for _ in range(max_jumps + 1):
        await env.serve()
        info = await env.summary(oid)
        if info.status.is_final:
            return await env.client.wait(oid, timeout=30)
        sig = next((s for s in pending if s.name == info.waiting_for), None)
        if sig is not None:
            pending.remove(sig)
            await env.signal(oid, sig.name, sig.payload)
            continue
        due = await env.store.next_due()
        if due is None:
            raise StuckError(f"object {oid} waits ({info.status}, for {info.waiting_for!r}) and no timer is set")
        if due > env.clock():
            env.clock.advance_to(due)
    raise StuckError(f"object {oid} did not end within {max_jumps} jumps of the clock")


async def run_program(functions: ProgramFunctions, program: Program, *, crash_after: Sequence[int] = (),
                      concurrency: int = 32) -> FunctionRun:
    """Run ``program`` with the interpreter ``functions`` names (see :func:`run_function`);
    ``effects`` of the result are the :class:`Effect` s of this run."""
    return await run_function(functions.app, functions.name, program.goal(), signals=program.signals(),
                              crash_after=crash_after, effects=functions.effects, concurrency=concurrency)


# -- strategies -------------------------------------------------------------------------------


def programs(*, max_ops: int = 8, max_sleep: float = 3 * DAY) -> SearchStrategy[Program]:
    """Programs of up to ``max_ops`` operations: steps, sleeps of up to ``max_sleep`` seconds,
    signal waits (signal sent early, on wait, or never with a timeout that fires; with or
    without a timeout), 1-3 children, progress values. Shrinks towards fewer, simpler ops."""
    from ._hypothesis import st

    values = st.integers(0, 1000)
    seconds = st.integers(0, int(max_sleep)).map(float)
    timeouts = st.integers(1, int(max_sleep)).map(float)
    op: SearchStrategy[Op] = st.one_of(
        st.builds(StepOp, values),
        st.builds(SleepOp, seconds),
        st.builds(WaitOp, st.just(""), st.sampled_from(["on_wait", "early"]), st.none() | timeouts),
        st.builds(WaitOp, st.just(""), st.just("never"), timeouts),
        st.builds(ChildrenOp, st.lists(values, min_size=1, max_size=3).map(tuple), st.just(0.0) | seconds),
        st.builds(ProgressOp, values),
    )
    return st.lists(op, max_size=max_ops).map(_named)


def _named(ops: list[Op]) -> Program:
    """Each wait gets its own signal name (``s`` and its index)."""
    return Program(tuple(attrs.evolve(op, name=f"s{i}") if isinstance(op, WaitOp) else op
                         for i, op in enumerate(ops)))


def crash_points(seqs: Sequence[int], *, max_size: int = 3) -> SearchStrategy[list[int]]:
    """Up to ``max_size`` seqs among ``seqs`` (an uninterrupted run's :attr:`FunctionRun.seqs`)
    to arm crashes after, sorted; possibly none. A seq may come twice: the first crash fires
    after the first object that commits it (often the parent), the second after the next
    (a child's, or a sibling's)."""
    from ._hypothesis import st

    if not seqs:
        return st.just([])
    return st.lists(st.sampled_from(sorted(set(seqs))), max_size=max_size).map(sorted)
