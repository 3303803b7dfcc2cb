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
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.codec import DEFAULT_LIMITS, Limits, check_value, packb, unpackb
from ..core.model import (
    Action,
    Constraints,
    Continue,
    Delegate,
    Entry,
    Proposal,
    Refine,
    Retry,
    Signal,
    Sleep,
    Step,
    WaitSignal,
)
from ..errors import ChildFailed, CodecError, DivergedError, InternalError, SignalTimeout, UsageError
from .children import ChildCall, gather_outcome, gather_problem
from .records import (
    MAX_PROGRESS_BYTES,
    PROGRESS_KEY,
    VERSION_KEY,
    describe,
    initial_goal,
    is_record_key,
    progress_of,
    record_key,
    show,
    signal_in,
    signal_out,
    unix_time,
    woken,
)
from .steps import attempt_step, check_timeout, failure_of, is_final, retry_step

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

# A step's result sits at body > outcome > state > key > record > result: 4 levels below the
# body, whose whole depth verification limits.
_RESULT_LIMITS = Limits(depth=DEFAULT_LIMITS.depth - 5)
# A progress value sits at body > outcome > state > key (its size is checked packed).
_PROGRESS_LIMITS = Limits(depth=DEFAULT_LIMITS.depth - 4)
_UNSET: Any = object()


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
    def step_now(self) -> Step:
        """The handler step this run is in (its context, memory and the node's policy)."""
        return self._step

    @property
    def position(self) -> int:
        """How many operations the function has reached so far in this run."""
        return self._position

    def recorded_next(self) -> bool:
        """Does memory record an operation beyond those the function reached?"""
        return record_key(self._position) in self._step.state

    # -- operations -------------------------------------------------------------------

    async def step(self, fn: Callable[..., Any], *args: Any, name: str | None = None, retry: Retry | None = None,
                   timeout: float | None = None, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` (sync, in a thread, or async) once and record its result
        (plain data: None, bool, int, float, str, bytes, lists and string-keyed dicts).
        Re-runs return the recorded result without calling ``fn``.

        ``timeout`` (seconds) bounds each attempt: past it the attempt fails with
        :class:`~peo.StepTimeout`. ``retry`` gives the step its own retry settings: a failed
        attempt ends the cycle and the object sleeps its backoff before the next (each
        attempt has the same :attr:`idempotency_key`); after ``retry.max_attempts``, or on
        a class ``retry.non_retryable`` names, :class:`~peo.StepFailed` is raised here,
        recorded, so every re-run raises the same. Without ``retry``, the step's exception
        propagates and the object's retry settings apply.
        """
        self._check("step")
        if not callable(fn):
            raise self._raise(UsageError(f"run.step needs a function, got {type(fn).__name__}"))
        if retry is not None and not isinstance(retry, Retry):
            raise self._raise(UsageError(f"run.step's retry= must be a peo.Retry, got {show(retry)}"))
        problem = check_timeout(timeout)
        if problem:
            raise self._raise(UsageError(problem))
        label = name if name is not None else str(getattr(fn, "__name__", type(fn).__name__))
        key, record = self._reach("step", label)
        if record is not None:
            if "error" in record:
                raise self._raise(failure_of(label, record["error"]))
            return record.get("result")
        self._busy = True
        try:
            result = await attempt_step(fn, args, kwargs, label, timeout)
        except BaseException as exc:
            if not isinstance(exc, Exception):  # the handler decides what it means; it names the step
                self.escaped_from = label
                raise
            if retry is None:
                raise
            final = is_final(exc, retry, self._step)
            if final is None:  # another attempt, after the backoff
                raise Suspend(retry_step(label, exc, retry)) from None
            outcome: dict[str, Any] = {"error": final}
        else:
            try:  # the node checks the entry too; this says which step's result is wrong
                check_value(result, _RESULT_LIMITS, what=f"the result of step {label!r}")
            except CodecError as exc:
                raise self._raise(UsageError(f"{exc} (a step's result must be plain data: None, bool, int, "
                                             "float, str, bytes, lists and dicts with string keys)")) from None
            outcome = {"result": result}
        finally:
            self._busy = False
        proposal = Continue(state={**self.state_update(), key: self._record("step", label, **outcome)})
        if self._handover is None:
            raise Suspend(proposal)
        self.pending = {}
        self._step = await self._handover.hand_over(proposal, self._step.seq)
        if "error" in outcome:
            raise self._raise(failure_of(label, outcome["error"]))
        return result

    async def llm(self, model: Any, messages: list[dict[str, Any]], *, tools: list[dict[str, Any]] | None = None,
                  name: str = "model") -> dict[str, Any]:
        """Ask ``model`` (a :class:`peo.Model`) once, as a recorded step: re-runs return the
        recorded response (``content``, ``tool_calls``, ``usage``, ``digest``, ...) and never
        ask the model again (``peo[llm]``; docs/agents.md, "Calling the model yourself")."""
        from ..agents.model import complete  # not at import: the agent layer is optional

        result: dict[str, Any] = await self.step(complete, model, messages, tools or [], name=name)
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
        until = unix_time(when)
        if until is None:
            raise self._raise(UsageError("run.wait_until needs a Unix time in seconds (a finite number) or a "
                                         f"timezone-aware datetime, got {show(when)}"))
        key, record = self._reach("wait_until", None)
        if record is not None:
            return
        raise Suspend(Sleep(until=until, state={key: self._record("wait_until", None, until=until)}))

    async def wait_signal(self, name: str, *, timeout: float | None = None,
                          note: dict[str, Any] | None = None) -> Signal:
        """Wait durably for a signal called ``name`` and return it; raise
        :class:`~peo.SignalTimeout` when ``timeout`` seconds pass first. A signal that
        arrived earlier, while the function was doing something else, is returned at once
        (each signal is returned by one wait only). ``note`` (plain data) is recorded with
        the wait, for whoever is to send the signal (``peo pending`` shows an approval's)."""
        self._check("wait_signal")
        key, record = self._reach("signal", name)
        while record is None:
            early = self._unclaimed(name)
            if early is not None:
                self.pending[key] = self._record("signal", name, signal=signal_out(early))
                return early
            if not any(r.get("op") == "signal" and r.get("name") == name for r in self.pending.values()):
                break
            # A wait for ``name`` leaves the signals called ``name`` handed to its step in the
            # inbox (to end at once on them): one an earlier wait of this cycle returned must
            # first be recorded, and consumed, by an entry of its own, or it would end this
            # wait too. Then look again: the next step may have been handed another.
            await self._commit_pending()
        if record is None:
            extra = {"note": note} if note is not None else {}
            raise Suspend(WaitSignal(name, timeout=timeout, state={key: self._record("signal", name,
                                                                                     timeout=timeout, **extra)}))
        got = self._resolve(record)
        if got is None:
            raise self._raise(SignalTimeout(name, record.get("timeout", timeout)))
        return got

    async def _commit_pending(self) -> None:
        """End this cycle with an execute entry recording what is pending (live: hand it over
        and go on with the step after it)."""
        proposal = Continue(state=self.state_update())
        if self._handover is None:
            raise Suspend(proposal)
        self.pending = {}
        self._step = await self._handover.hand_over(proposal, self._step.seq)

    def child(self, handler: str, /, **goal: Any) -> ChildCall:
        """A child object to start with ``handler`` and ``goal`` (it inherits this object's
        context, with this object as its parent): pass it to :meth:`gather`, or await it."""
        self._check("child")
        if not isinstance(handler, str):
            raise self._raise(UsageError("run.child needs a handler name"))
        return ChildCall(self, handler, goal)

    async def gather(self, *children: ChildCall, return_exceptions: bool = False, attempts: int = 1) -> list[Any]:
        """Start ``children`` together, wait until all have ended, and return their results in
        order. A child that ended without success (failed, cancelled, quarantined) is a
        :class:`~peo.ChildFailed`: raised (the first one, naming all in ``failed``), or put
        in its child's place with ``return_exceptions=True``. With ``attempts`` above 1, the
        failed children are started again (only they, once every child has ended; those
        that succeeded keep their results), up to ``attempts`` times in all."""
        self._check("gather")
        problem = gather_problem(self, children, attempts)
        if problem:
            raise self._raise(UsageError(problem))
        if not children:
            return []
        label = ",".join(c.handler for c in children)
        key, record = self._reach("gather", label)
        if record is None:
            raise Suspend(Delegate([c.intent() for c in children], wait=True,
                                   state={key: self._record("gather", label, count=len(children))}))
        outcome = gather_outcome(self._step, record, [c.handler for c in children])
        failed = [i for i, o in enumerate(outcome) if isinstance(o, ChildFailed)]
        rounds = list(record.get("rounds", ()))
        if failed and 1 + len(rounds) < attempts:
            again = {**record, "rounds": [*rounds, {"seq": self._step.seq, "at": failed}]}
            raise Suspend(Delegate([children[i].intent() for i in failed], wait=True, state={key: again}))
        if not failed or return_exceptions:
            return outcome
        errors = tuple(outcome[i] for i in failed)
        first = errors[0]
        raise self._raise(ChildFailed(first.handler, first.child_id, first.reason, errors))

    async def refine(self, goal: dict[str, Any] | None = None, constraints: Constraints | None = None) -> None:
        """Change the object's goal and/or constraints (a mutate entry, as a handler's
        :class:`~peo.Refine`; the policy may refuse to relax constraints). From then on
        :attr:`goal` is the new goal; the function's arguments stay those it was created
        with, since every re-run calls it with them."""
        self._check("refine")
        if goal is None and constraints is None:
            raise self._raise(UsageError("run.refine needs goal= or constraints="))
        if goal is not None and not (isinstance(goal, dict) and all(isinstance(k, str) for k in goal)):
            raise self._raise(UsageError(f"run.refine's goal must be a dict with string keys, got {show(goal)}"))
        if constraints is not None and not isinstance(constraints, Constraints):
            raise self._raise(UsageError(f"run.refine's constraints must be a peo.Constraints, "
                                         f"got {show(constraints)}"))
        what = ",".join(n for n, v in (("goal", goal), ("constraints", constraints)) if v is not None)
        key, record = self._reach("refine", what)
        if record is None:
            raise Suspend(Refine(goal=goal, constraints=constraints, state={key: self._record("refine", what)}))
        new = record["new"] if "new" in record else \
            self._entry(int(record["seq"]), Action.MUTATE, "refine").outcome.get("new", {})
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
                f"is {describe(record.get('op'), record.get('name'))}, the code now reaches "
                f"{describe(op, name)}"))
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
            return signal_in(record["signal"])
        if record.get("timed_out"):  # settled at a fork (records.settled)
            return None
        after = self._entry(int(record["seq"]) + 1, Action.REENTRY, "signal wait")
        found = [signal_in(s) for s in after.outcome.get("signals", ()) if s.get("name") == record["name"]]
        return min(found, key=lambda sig: sig.id) if found else None

    def _unclaimed(self, name: str) -> Signal | None:
        """The earliest signal called ``name`` delivered to this object (recorded in its
        memory, or in its inbox now) that no earlier wait returned."""
        claimed: set[int] = set()
        # Records in memory, and those this cycle made without an entry yet (an earlier wait
        # of this cycle that returned a signal at once).
        for key, record in (*self._step.state.items(), *self.pending.items()):
            # Only operation records: a progress value or a handler's own key may look alike.
            if not is_record_key(key) or not isinstance(record, dict):
                continue
            if record.get("op") == "signal" and record.get("name") == name:
                ended = "signal" in record or record.get("timed_out") or woken(record, self._step)
                got = self._resolve(record) if ended else None
                if got is not None:
                    claimed.add(got.id)
        found: dict[int, Signal] = {}
        for entry in self._step.memory:
            for s in entry.outcome.get("signals", ()):
                if s.get("name") == name and s.get("id", 0) not in claimed:
                    found.setdefault(s.get("id", 0), signal_in(s))
        for sig in self._step.signals:
            if sig.name == name and sig.id not in claimed:
                found.setdefault(sig.id, sig)
        return found[min(found)] if found else None


def _current_task() -> object:
    """The asyncio task running now (None in a thread with no event loop: a sync step's)."""
    import asyncio

    try:
        return asyncio.current_task()
    except RuntimeError:
        return None
