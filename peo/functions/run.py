"""``peo.Run``: what a durable function awaits (steps, sleeps, signal waits).

A durable function runs from the top when its object (re)starts on a node, replaying what
memory records; while the node keeps serving it, a new step's entry is handed over live
(:mod:`peo.functions.live`) and the code goes on after its commit. Each operation it
awaits has a position (0, 1, 2 ... in the order the code reaches them); its record lives in
the object's working state under the key ``fn.<position>``, written by the same signed
entry that carried the operation out:

* ``run.step(fn)`` runs ``fn`` once, then proposes ``Continue(state={key: record})`` (an
  execute entry holding the result): live, it returns the result once that entry is
  committed; replayed, it ends the cycle there, and later runs return the recorded result;
* ``run.sleep(...)`` ends the cycle with ``Sleep(state={key: record})`` (a dormancy entry);
  once the object is runnable again the sleep is over;
* ``run.wait_signal(name)`` ends the cycle with ``WaitSignal(name, state={key: record})``;
  the record names the seq of that dormancy entry, and the reentry entry right after it
  (``seq + 1``) says what ended the wait: the signal (recorded there, so every re-run returns
  the same one) or the timeout;
* ``run.wait_until(when)`` ends the cycle with ``Sleep(until=when, state={key: record})``;
* ``run.refine(goal=, constraints=)`` ends the cycle with ``Refine(..., state={key: record})``
  (a mutate entry); the record names its seq, whose ``new`` goal ``run.goal`` reads back.

``run.progress(value)`` takes no position and no cycle: the value is added (under
:data:`PROGRESS_KEY`) to the state update of whatever entry ends the cycle, if it differs
from the one recorded. Re-runs reach the same ``progress`` calls, so they write the same.

A ``Run`` is valid only inside its function, in the function's own task, while the handler
runs it: an operation called later (a ``Run`` kept after the function returned) or from
another task (``asyncio.create_task``, ``asyncio.gather``) raises :class:`~peo.UsageError`,
because the cycle it would belong to is over or is not the one that would record it.

Ending a cycle unwinds the user's code with :class:`Suspend`, a BaseException so that an
``except Exception`` in the user's code does not swallow it.
"""

from __future__ import annotations

import datetime
import inspect
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ..core.codec import DEFAULT_LIMITS, Limits, check_value, packb, unpackb
from ..core.model import (
    Action,
    Constraints,
    Continue,
    Delegate,
    Entry,
    ObjectInfo,
    Proposal,
    Refine,
    Signal,
    Sleep,
    Step,
    WaitSignal,
)
from ..errors import CodecError, DivergedError, InternalError, SignalTimeout, UsageError
from .children import ChildCall, child_results

if TYPE_CHECKING:
    from .live import LiveRun

__all__ = [
    "MAX_PROGRESS_BYTES",
    "PROGRESS_KEY",
    "VERSION_KEY",
    "Run",
    "Suspend",
    "initial_goal",
    "progress_of",
    "record_key",
]

#: The working-state key of the function's version, recorded by the object's first entry
#: after entry 0 (``app.function(..., version=)``, else a digest of the function's code).
VERSION_KEY = "fn.version"

#: The working-state key of the value a function last gave ``run.progress``.
PROGRESS_KEY = "fn.progress"
#: The largest progress value, packed: it is re-written with the entries that change it, and
#: it is meant to say "what is it doing now?", not to hold results (a step returns those).
MAX_PROGRESS_BYTES = 4096

# A step's result sits at body > outcome > state > key > record > result: 4 levels below the
# body, whose whole depth verification limits.
_RESULT_LIMITS = Limits(depth=DEFAULT_LIMITS.depth - 5)
# A progress value sits at body > outcome > state > key (its size is checked packed).
_PROGRESS_LIMITS = Limits(depth=DEFAULT_LIMITS.depth - 4)
_UNSET: Any = object()


def progress_of(info: ObjectInfo | Mapping[str, Any]) -> Any:
    """The value a durable function last gave ``run.progress`` (None if none yet), from
    ``await client.get(oid)`` or from an object's working state."""
    state = info.state if isinstance(info, ObjectInfo) else info
    return state.get(PROGRESS_KEY)


def record_key(position: int) -> str:
    """The working-state key that records the operation at ``position``."""
    return f"fn.{position}"


class Suspend(BaseException):
    """Unwinds a durable function once an operation has to be carried out by the cycle."""

    def __init__(self, proposal: Proposal):
        super().__init__("durable function suspended")
        self.proposal = proposal


class Run:
    """The handle a durable function receives: ``async def f(run: peo.Run, **goal)``.

    Await its operations one at a time, in the function itself. Code between them must be
    deterministic: on every cycle the function is re-run from the top, and it must reach the
    same operations in the same order (read the time, random numbers or the outside world
    only inside a step).
    """

    def __init__(self, step: Step, *, handover: LiveRun | None = None, version: str | None = None):
        self._step = step
        self._version = version
        # While a node holds the object, a step's entry is handed over live and the code
        # goes on after its commit (peo.functions.live); without it, the cycle ends (Suspend).
        self._handover = handover
        self._position = 0
        self._busy = False
        self._live = False
        self._task: object = None
        self._goal = initial_goal(step)
        self._progress: Any = _UNSET
        self._progress_packed = b""
        #: state updates of operations that completed in this cycle without a cycle of their
        #: own (a signal that had already arrived): recorded by whatever ends the cycle.
        self.pending: dict[str, Any] = {}
        #: the error this run raised on purpose (a timeout, a divergence, a bad result):
        #: if the function lets it escape, the object fails without retrying.
        self.raised: BaseException | None = None
        #: an operation called from another task while the function ran: the object fails
        #: even if the function swallowed the error (what it asked for was not carried out).
        self.misused: UsageError | None = None
        #: the step whose function raised a BaseException that is not an Exception, if any.
        self.escaped_from: str | None = None

    # -- the handler's side -----------------------------------------------------------

    def begin(self) -> None:
        """The function starts running in the current task: operations are valid until :meth:`end`."""
        self._task = _current_task()
        self._live = True

    def end(self) -> None:
        """This cycle's run of the function is over: later operations are refused."""
        self._live = False

    def state_update(self) -> dict[str, Any]:
        """What this cycle adds to the working state besides the record of the operation that
        ends it: the records of operations that needed no cycle, and the progress if the
        function gave one that differs from the recorded one."""
        update = dict(self.pending)
        if self._version is not None and VERSION_KEY not in self._step.state:
            update[VERSION_KEY] = self._version  # once, by the first entry that records anything
        if self._progress is not _UNSET:
            recorded = self._step.state.get(PROGRESS_KEY, _UNSET)
            # Compared packed: 1 and 1.0, or a tuple and the list it was recorded as, are
            # told apart or not exactly as the entry would be.
            if recorded is _UNSET or packb(recorded) != self._progress_packed:
                update[PROGRESS_KEY] = self._progress
        return update

    # -- what the function reads ------------------------------------------------------

    @property
    def version(self) -> str | None:
        """The version of the function this object started with (recorded by its first
        entry), or the running code's if nothing is recorded yet: compare the two to tell an
        object begun by older code."""
        recorded = self._step.state.get(VERSION_KEY)
        return recorded if isinstance(recorded, str) else self._version

    @property
    def object_id(self) -> str:
        return self._step.object_id

    @property
    def goal(self) -> dict[str, Any]:
        """The object's goal as of this point of the function: the goal it was created with
        (the function's arguments), then each recorded ``run.refine``'s."""
        return self._goal

    @property
    def idempotency_key(self) -> str:
        """The same on every attempt of the step now running (``object id:seq``): pass it to
        tools so that a retried side effect is not done twice."""
        return self._step.idempotency_key

    @property
    def attempt(self) -> int:
        return self._step.attempt

    @property
    def position(self) -> int:
        """How many operations the function has reached so far in this run."""
        return self._position

    def recorded_next(self) -> bool:
        """Does memory record an operation beyond those the function reached?"""
        return record_key(self._position) in self._step.state

    # -- operations -------------------------------------------------------------------

    async def step(self, fn: Callable[..., Any], *args: Any, name: str | None = None, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` (sync, in a thread, or async) once and record its result
        (plain data: None, bool, int, float, str, bytes, lists and string-keyed dicts).
        Re-runs return the recorded result without calling ``fn``."""
        self._check("step")
        if not callable(fn):
            raise self._raise(UsageError(f"run.step needs a function, got {type(fn).__name__}"))
        label = name if name is not None else str(getattr(fn, "__name__", type(fn).__name__))
        key, record = self._reach("step", label)
        if record is not None:
            return record.get("result")
        self._busy = True
        try:
            if inspect.iscoroutinefunction(fn):
                result = await fn(*args, **kwargs)
            else:
                import asyncio  # here, so that importing peo loads no event loop machinery

                result = await asyncio.to_thread(fn, *args, **kwargs)
                if inspect.isawaitable(result):
                    result = await result
        except BaseException as exc:
            if not isinstance(exc, Exception):  # the handler decides what it means; it names the step
                self.escaped_from = label
            raise
        finally:
            self._busy = False
        try:
            check_value(result, _RESULT_LIMITS, what=f"the result of step {label!r}")
            packb(result)
        except CodecError as exc:
            raise self._raise(UsageError(f"{exc} (a step's result must be plain data: None, bool, int, "
                                         "float, str, bytes, lists and dicts with string keys)")) from None
        proposal = Continue(state={**self.state_update(), key: self._record("step", label, result=result)})
        if self._handover is None:
            raise Suspend(proposal)
        self.pending = {}
        self._step = await self._handover.hand_over(proposal, self._step.seq)
        return result

    async def sleep(self, seconds: float = 0.0, *, minutes: float = 0.0, hours: float = 0.0,
                    days: float = 0.0) -> None:
        """Sleep durably: the object goes dormant and no node holds it until the time passes."""
        self._check("sleep")
        total = seconds + 60 * minutes + 3600 * hours + 86400 * days
        if not math.isfinite(total) or total < 0:
            raise self._raise(UsageError("run.sleep needs a finite, non-negative duration"))
        key, record = self._reach("sleep", None)
        if record is not None:
            return
        raise Suspend(Sleep(seconds=total, state={key: self._record("sleep", None)}))

    async def wait_until(self, when: float | datetime.datetime) -> None:
        """Sleep durably until ``when``: Unix time in seconds, or a timezone-aware datetime.
        A time already past still ends the cycle (a dormancy and a reentry at once), so that
        every re-run takes the same path whatever its clock says."""
        self._check("wait_until")
        until = _unix_time(when)
        if until is None:
            raise self._raise(UsageError("run.wait_until needs a Unix time in seconds (a finite number) or a "
                                         f"timezone-aware datetime, got {_show(when)}"))
        key, record = self._reach("wait_until", None)
        if record is not None:
            return
        raise Suspend(Sleep(until=until, state={key: self._record("wait_until", None, until=until)}))

    async def wait_signal(self, name: str, *, timeout: float | None = None) -> Signal:
        """Wait durably for a signal called ``name`` and return it; raise
        :class:`~peo.SignalTimeout` when ``timeout`` seconds pass first. A signal that
        arrived earlier, while the function was doing something else, is returned at once
        (each signal is returned by one wait only)."""
        self._check("wait_signal")
        key, record = self._reach("signal", name)
        if record is None:
            early = self._unclaimed(name)
            if early is not None:
                self.pending[key] = self._record("signal", name, signal=_signal_out(early))
                return early
            raise Suspend(WaitSignal(name, timeout=timeout, state={key: self._record("signal", name,
                                                                                     timeout=timeout)}))
        got = self._resolve(record)
        if got is None:
            raise self._raise(SignalTimeout(name, record.get("timeout", timeout)))
        return got

    def child(self, handler: str, /, **goal: Any) -> ChildCall:
        """A child object to start with ``handler`` and ``goal`` (it inherits this object's
        context, with this object as its parent): pass it to :meth:`gather`, or await it."""
        self._check("child")
        if not isinstance(handler, str):
            raise self._raise(UsageError("run.child needs a handler name"))
        return ChildCall(self, handler, goal)

    async def gather(self, *children: ChildCall) -> list[Any]:
        """Start ``children`` together, wait until all have ended, and return their results in
        order (None for a child that ended without a result: failed or cancelled)."""
        self._check("gather")
        bad: list[object] = [c for c in children if not isinstance(c, ChildCall) or c.run is not self]
        if bad:
            for c in bad:
                if inspect.iscoroutine(c):
                    c.close()  # it will never be awaited: spare the user Python's warning about it
            what = "a child of another run" if isinstance(bad[0], ChildCall) else type(bad[0]).__name__
            hint = " (await other operations one at a time)" if inspect.isawaitable(bad[0]) else ""
            raise self._raise(UsageError(f"run.gather takes this run's run.child(...) values, got {what}{hint}"))
        if not children:
            return []
        label = ",".join(c.handler for c in children)
        key, record = self._reach("gather", label)
        if record is None:
            raise Suspend(Delegate([c.intent() for c in children], wait=True,
                                   state={key: self._record("gather", label, count=len(children))}))
        return child_results(self._step, int(record["seq"]), int(record["count"]))

    async def refine(self, goal: dict[str, Any] | None = None, constraints: Constraints | None = None) -> None:
        """Change the object's goal and/or constraints (a mutate entry, as a handler's
        :class:`~peo.Refine`; the policy may refuse to relax constraints). From then on
        :attr:`goal` is the new goal; the function's arguments stay those it was created
        with, since every re-run calls it with them."""
        self._check("refine")
        if goal is None and constraints is None:
            raise self._raise(UsageError("run.refine needs goal= or constraints="))
        if goal is not None and not (isinstance(goal, dict) and all(isinstance(k, str) for k in goal)):
            raise self._raise(UsageError(f"run.refine's goal must be a dict with string keys, got {_show(goal)}"))
        if constraints is not None and not isinstance(constraints, Constraints):
            raise self._raise(UsageError(f"run.refine's constraints must be a peo.Constraints, "
                                         f"got {_show(constraints)}"))
        what = ",".join(n for n, v in (("goal", goal), ("constraints", constraints)) if v is not None)
        key, record = self._reach("refine", what)
        if record is None:
            raise Suspend(Refine(goal=goal, constraints=constraints, state={key: self._record("refine", what)}))
        new = self._entry(int(record["seq"]), Action.MUTATE, "refine").outcome.get("new", {})
        if "goal" in new:
            self._goal = new["goal"]

    def progress(self, value: Any) -> None:
        """Say what the function is doing now: ``value`` (plain data, at most
        :data:`MAX_PROGRESS_BYTES` packed) is recorded under :data:`PROGRESS_KEY` by the entry
        that ends this cycle, without a cycle or a position of its own. Read it with
        ``peo show`` or ``progress_of(await client.get(oid))``."""
        self._check("progress")
        if self._busy:
            # Inside a step it would be seen only on the attempt that runs the step, not on
            # the re-runs that return its recorded result: what they record would differ.
            raise self._raise(UsageError("run.progress inside a step: call it between operations"))
        try:
            check_value(value, _PROGRESS_LIMITS, what="run.progress's value")
            packed = packb(value)
        except CodecError as exc:
            raise self._raise(UsageError(f"{exc} (a progress value must be plain data: None, bool, int, float, "
                                         "str, bytes, lists and dicts with string keys)")) from None
        if len(packed) > MAX_PROGRESS_BYTES:
            raise self._raise(UsageError(f"run.progress's value is {len(packed)} bytes packed, more than the "
                                         f"{MAX_PROGRESS_BYTES} allowed (return results from steps instead)"))
        # The recorded form (a copy: the caller may change its value before the cycle ends).
        self._progress, self._progress_packed = unpackb(packed), packed

    # -- replay ------------------------------------------------------------------------

    def _check(self, op: str) -> None:
        """Refuse an operation outside the function's own run (see the module docstring)."""
        if not self._live:
            raise self._raise(UsageError(
                f"run.{op} called outside its durable function: a Run is valid only while the function it was "
                "given to runs (not after it returned, nor kept for a later cycle)"))
        task = _current_task()
        if task is None or task is not self._task:
            misuse = UsageError(
                f"run.{op} called from another task than its durable function's: await operations in the "
                "function itself, one at a time (no asyncio.create_task or asyncio.gather of run calls)")
            if self.misused is None:
                self.misused = misuse
            raise self._raise(misuse)

    def _reach(self, op: str, name: str | None) -> tuple[str, dict[str, Any] | None]:
        """Take the next position for ``op``: its key and its record, if memory has one."""
        if self._busy:
            raise self._raise(UsageError("await a durable function's operations one at a time"))
        key = record_key(self._position)
        self._position += 1
        record = self._step.state.get(key)
        if record is None:
            return key, None
        if record.get("op") != op or record.get("name") != name:
            raise self._raise(DivergedError(
                f"object {self.object_id}: operation {self._position - 1} recorded at seq {record.get('seq')} "
                f"is {_describe(record.get('op'), record.get('name'))}, the code now reaches "
                f"{_describe(op, name)}"))
        return key, dict(record)

    def _record(self, op: str, name: str | None, **extra: Any) -> dict[str, Any]:
        return {"op": op, "name": name, "seq": self._step.seq, **extra}

    def _raise(self, exc: BaseException) -> BaseException:
        self.raised = exc
        return exc

    def _entry(self, seq: int, action: Action, what: str) -> Entry:
        """The ``action`` entry at ``seq`` that a recorded operation refers to."""
        memory = self._step.memory
        entry = memory[seq] if len(memory) > seq else None
        if entry is None or entry.seq != seq or entry.action is not action:
            raise InternalError(f"object {self.object_id}: no {action} entry at seq {seq} for a recorded {what}")
        return entry

    def _resolve(self, record: dict[str, Any]) -> Signal | None:
        """The signal a recorded wait returned (None: it timed out)."""
        if "signal" in record:
            return _signal_in(record["signal"])
        after = self._entry(int(record["seq"]) + 1, Action.REENTRY, "signal wait")
        found = [_signal_in(s) for s in after.outcome.get("signals", ()) if s.get("name") == record["name"]]
        return min(found, key=lambda sig: sig.id) if found else None

    def _unclaimed(self, name: str) -> Signal | None:
        """The earliest signal called ``name`` delivered to this object (recorded in its
        memory, or in its inbox now) that no earlier wait returned."""
        claimed: set[int] = set()
        for key, record in self._step.state.items():
            # Only operation records: a progress value or a handler's own key may look alike.
            if not _is_record_key(key) or not isinstance(record, dict):
                continue
            if record.get("op") == "signal" and record.get("name") == name:
                got = self._resolve(record) if "signal" in record or _woken(record, self._step) else None
                if got is not None:
                    claimed.add(got.id)
        found: dict[int, Signal] = {}
        for entry in self._step.memory:
            for s in entry.outcome.get("signals", ()):
                if s.get("name") == name and s.get("id", 0) not in claimed:
                    found.setdefault(s.get("id", 0), _signal_in(s))
        for sig in self._step.signals:
            if sig.name == name and sig.id not in claimed:
                found.setdefault(sig.id, sig)
        return found[min(found)] if found else None


def initial_goal(step: Step) -> dict[str, Any]:
    """The goal the object was created with (entry 0's): a durable function's arguments on
    every re-run, also after ``run.refine`` changed the goal, so that the code reaches the
    same operations."""
    memory = step.memory
    first = memory[0] if len(memory) else None
    if first is not None and first.seq == 0 and first.action is Action.INSTANTIATE:
        intent = first.outcome.get("intent")
        goal = intent.get("goal") if isinstance(intent, dict) else None
        if isinstance(goal, dict):
            return goal
    return step.goal


def _current_task() -> object:
    """The asyncio task running now (None in a thread with no event loop: a sync step's)."""
    import asyncio

    try:
        return asyncio.current_task()
    except RuntimeError:
        return None


def _is_record_key(key: str) -> bool:
    return key.startswith("fn.") and key[3:].isdigit()


def _unix_time(when: object) -> float | None:
    """``when`` as Unix seconds, or None if it is neither a finite number nor an aware datetime."""
    if isinstance(when, datetime.datetime):
        return when.timestamp() if when.utcoffset() is not None else None
    if isinstance(when, bool) or not isinstance(when, int | float):
        return None
    return float(when) if math.isfinite(when) else None


def _show(value: object) -> str:
    """``value`` for an error message, briefly."""
    if isinstance(value, datetime.datetime) and value.utcoffset() is None:
        return f"the naive datetime {value.isoformat()} (give it a tzinfo)"
    text = repr(value)
    return text if len(text) <= 60 else f"a {type(value).__name__}"


def _describe(op: object, name: object) -> str:
    return f"{op} {name!r}" if name is not None else str(op)


def _signal_out(sig: Signal) -> dict[str, Any]:
    out = {"id": sig.id, "name": sig.name, "payload": sig.payload}
    if sig.sender is not None:
        out["sender"] = sig.sender
    return out


def _signal_in(out: dict[str, Any]) -> Signal:
    return Signal(out["name"], out.get("payload"), out.get("id", 0), sender=out.get("sender"))


def _woken(record: dict[str, Any], step: Step) -> bool:
    """Has the wait ``record`` describes ended (its reentry entry is in memory)?"""
    return len(step.memory) > int(record["seq"]) + 1
