"""``peo.Run``: what a durable function awaits (steps, sleeps, signal waits).

A durable function is re-run from the top on every cycle of its object. Each operation it
awaits has a position (0, 1, 2 ... in the order the code reaches them); its record lives in
the object's working state under the key ``fn.<position>``, written by the same signed
entry that carried the operation out:

* ``run.step(fn)`` runs ``fn`` once, then ends the cycle with ``Continue(state={key: record})``
  (an execute entry holding the result); later cycles return the recorded result;
* ``run.sleep(...)`` ends the cycle with ``Sleep(state={key: record})`` (a dormancy entry);
  once the object is runnable again the sleep is over;
* ``run.wait_signal(name)`` ends the cycle with ``WaitSignal(name, state={key: record})``;
  the record names the seq of that dormancy entry, and the reentry entry right after it
  (``seq + 1``) says what ended the wait: the signal (recorded there, so every re-run returns
  the same one) or the timeout.

Ending a cycle unwinds the user's code with :class:`Suspend`, a BaseException so that an
``except Exception`` in the user's code does not swallow it.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

from ..core.codec import DEFAULT_LIMITS, Limits, check_value, packb
from ..core.model import Action, Continue, Delegate, Proposal, Signal, Sleep, Step, WaitSignal
from ..errors import CodecError, DivergedError, InternalError, SignalTimeout, UsageError
from .children import ChildCall, child_results

__all__ = ["Run", "Suspend", "record_key"]

# A step's result sits at body > outcome > state > key > record > result: 4 levels below the
# body, whose whole depth verification limits.
_RESULT_LIMITS = Limits(depth=DEFAULT_LIMITS.depth - 5)


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

    Await its operations one at a time. Code between them must be deterministic: on every
    cycle the function is re-run from the top, and it must reach the same operations in the
    same order (read the time, random numbers or the outside world only inside a step).
    """

    def __init__(self, step: Step):
        self._step = step
        self._position = 0
        self._busy = False
        #: state updates of operations that completed in this cycle without a cycle of their
        #: own (a signal that had already arrived): recorded by whatever ends the cycle.
        self.pending: dict[str, Any] = {}
        #: the error this run raised on purpose (a timeout, a divergence, a bad result):
        #: if the function lets it escape, the object fails without retrying.
        self.raised: BaseException | None = None

    @property
    def object_id(self) -> str:
        return self._step.object_id

    @property
    def goal(self) -> dict[str, Any]:
        return self._step.goal

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

    async def step(self, fn: Callable[..., Any], *args: Any, name: str | None = None, **kwargs: Any) -> Any:
        """Run ``fn(*args, **kwargs)`` (sync, in a thread, or async) once and record its result
        (plain data: None, bool, int, float, str, bytes, lists and string-keyed dicts).
        Re-runs return the recorded result without calling ``fn``."""
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
        finally:
            self._busy = False
        try:
            check_value(result, _RESULT_LIMITS, what=f"the result of step {label!r}")
            packb(result)
        except CodecError as exc:
            raise self._raise(UsageError(f"{exc} (a step's result must be plain data: None, bool, int, "
                                         "float, str, bytes, lists and dicts with string keys)")) from None
        raise Suspend(Continue(state={key: self._record("step", label, result=result)}))

    async def sleep(self, seconds: float = 0.0, *, minutes: float = 0.0, hours: float = 0.0,
                    days: float = 0.0) -> None:
        """Sleep durably: the object goes dormant and no node holds it until the time passes."""
        total = seconds + 60 * minutes + 3600 * hours + 86400 * days
        if not math.isfinite(total) or total < 0:
            raise self._raise(UsageError("run.sleep needs a finite, non-negative duration"))
        key, record = self._reach("sleep", None)
        if record is not None:
            return
        raise Suspend(Sleep(seconds=total, state={key: self._record("sleep", None)}))

    async def wait_signal(self, name: str, *, timeout: float | None = None) -> Signal:
        """Wait durably for a signal called ``name`` and return it; raise
        :class:`~peo.SignalTimeout` when ``timeout`` seconds pass first. A signal that
        arrived earlier, while the function was doing something else, is returned at once
        (each signal is returned by one wait only)."""
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

    def _resolve(self, record: dict[str, Any]) -> Signal | None:
        """The signal a recorded wait returned (None: it timed out)."""
        if "signal" in record:
            return _signal_in(record["signal"])
        seq = record["seq"]
        memory = self._step.memory
        after = memory[seq + 1] if len(memory) > seq + 1 else None
        if after is None or after.seq != seq + 1 or after.action is not Action.REENTRY:
            raise InternalError(f"object {self.object_id}: the wait at seq {seq} has no reentry after it")
        found = [_signal_in(s) for s in after.outcome.get("signals", ()) if s.get("name") == record["name"]]
        return min(found, key=lambda sig: sig.id) if found else None

    def _unclaimed(self, name: str) -> Signal | None:
        """The earliest signal called ``name`` delivered to this object (recorded in its
        memory, or in its inbox now) that no earlier wait returned."""
        claimed: set[int] = set()
        for record in self._step.state.values():
            if isinstance(record, dict) and record.get("op") == "signal" and record.get("name") == name:
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

    def child(self, handler: str, /, **goal: Any) -> ChildCall:
        """A child object to start with ``handler`` and ``goal`` (it inherits this object's
        context, with this object as its parent): pass it to :meth:`gather`, or await it."""
        if not isinstance(handler, str):
            raise self._raise(UsageError("run.child needs a handler name"))
        return ChildCall(self, handler, goal)

    async def gather(self, *children: ChildCall) -> list[Any]:
        """Start ``children`` together, wait until all have ended, and return their results in
        order (None for a child that ended without a result: failed or cancelled)."""
        bad = [c for c in children if not isinstance(c, ChildCall)]
        if bad:
            raise self._raise(UsageError(f"run.gather takes run.child(...) values, got {type(bad[0]).__name__}"))
        if not children:
            return []
        label = ",".join(c.handler for c in children)
        key, record = self._reach("gather", label)
        if record is None:
            raise Suspend(Delegate([c.intent() for c in children], wait=True,
                                   state={key: self._record("gather", label, count=len(children))}))
        return child_results(self._step, int(record["seq"]), int(record["count"]))

    # -- replay ------------------------------------------------------------------------

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
