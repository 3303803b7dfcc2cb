"""The whole exception tree of peo, drawn once.

::

    PeoError                      root: catch this to catch everything peo raises on purpose
    ├── CodecError (ValueError)   bytes or values that do not form a valid record
    ├── IntegrityError            a signature, a hash link or a seq does not verify
    ├── PolicyError (ValueError)  a policy document is invalid, or input breaks its limits
    ├── UsageError (ValueError)   a caller passed something that cannot work (unknown handler...)
    ├── NotFoundError (KeyError)  no object with that id
    ├── TimeoutError (TimeoutError) wait() gave up before the object terminated
    ├── InternalError             a bug in peo itself: an invariant it checks did not hold
    ├── ObjectFailedError         wait(): the object ended without a result (failed, cancelled...)
    ├── ObjectTerminatedError     a signal to an object that has terminated (it can never be read)
    ├── ObjectDeletedError        a signal to an object an operator deleted (peo rm; peo undelete)
    ├── SignalTimeout             a durable function's run.wait_signal() timed out
    ├── StepTimeout (TimeoutError) one attempt of a durable function's run.step(timeout=) ran too long
    ├── StepFailed                a durable function's run.step(retry=) failed its last attempt
    ├── ChildFailed               a child of a durable function's run.gather() ended without success
    ├── DivergedError             a durable function's code no longer matches its recorded steps
    └── StoreError                the store failed; ``retryable`` says whether trying again helps
        ├── ConflictError         another writer took this seq first (compare-and-swap lost)
        │   └── ObjectExistsError submit(object_id=...): that id holds an object with another intent
        ├── LeaseLostError        our lease expired or was taken over by another node
        └── InboxFullError        a signal to an object whose inbox holds as many as its policy allows

No driver exception (sqlite3, asyncpg, OSError) escapes ``peo.store``: the stores translate
them at the boundary, so callers only ever see this tree.
"""

from __future__ import annotations

import builtins
from typing import Any

__all__ = [
    "ChildFailed",
    "CodecError",
    "ConflictError",
    "DivergedError",
    "InboxFullError",
    "IntegrityError",
    "InternalError",
    "LeaseLostError",
    "NotFoundError",
    "ObjectDeletedError",
    "ObjectExistsError",
    "ObjectFailedError",
    "ObjectTerminatedError",
    "PeoError",
    "PolicyError",
    "SignalTimeout",
    "StepFailed",
    "StepTimeout",
    "StoreError",
    "TimeoutError",
    "UsageError",
]


class PeoError(Exception):
    """Root of every error peo raises on purpose."""


class CodecError(PeoError, ValueError):
    """Bytes or values that do not form a valid peo record."""


class IntegrityError(PeoError):
    """A memory chain does not verify. ``seq`` names the first bad entry (or None)."""

    def __init__(self, message: str, *, object_id: str | None = None, seq: int | None = None):
        where = []
        if object_id is not None:
            where.append(f"object {object_id}")
        if seq is not None:
            where.append(f"seq {seq}")
        super().__init__(f"{', '.join(where)}: {message}" if where else message)
        self.reason = message
        self.object_id = object_id
        self.seq = seq

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_integrity, (self.reason, self.object_id, self.seq))


def _rebuild_integrity(reason: str, object_id: str | None, seq: int | None) -> IntegrityError:
    return IntegrityError(reason, object_id=object_id, seq=seq)


class PolicyError(PeoError, ValueError):
    """A policy document is invalid, or a value breaks the limits a policy sets."""


class UsageError(PeoError, ValueError):
    """The caller asked for something that cannot work (unknown handler, bad argument)."""


class NotFoundError(PeoError, KeyError):
    """No object with the given id exists in the store."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want the plain message
        return str(self.args[0]) if self.args else "not found"


class TimeoutError(PeoError, builtins.TimeoutError):
    """``Client.wait`` gave up before the object terminated. Also a builtin TimeoutError,
    so ``except TimeoutError`` written for asyncio catches it too."""


class InternalError(PeoError):
    """A bug in peo: something peo checks about itself did not hold. Please report it."""


class ObjectFailedError(PeoError):
    """The object terminated other than by ``Done`` (or was quarantined). ``last_error`` is
    the error its memory recorded last (``{"class", "message", "retryable", "traceback"?}``),
    if any: the failure that made it give up."""

    def __init__(self, object_id: str, status: str, reason: str | None,
                 last_error: dict[str, Any] | None = None):
        text = f"object {object_id} {status}: {reason or 'no reason recorded'}"
        if last_error:
            text += f" (last error: {last_error.get('class')}: {last_error.get('message')})"
        super().__init__(text)
        self.object_id = object_id
        self.status = status
        self.reason = reason
        self.last_error = last_error

    def __reduce__(self) -> tuple[object, ...]:
        return (ObjectFailedError, (self.object_id, self.status, self.reason, self.last_error))


class SignalTimeout(PeoError):
    """``await run.wait_signal(name, timeout=)`` in a durable function: the timeout passed
    before a signal called ``name`` arrived. Uncaught, it fails the object (not retried)."""

    def __init__(self, name: str, timeout: float | None):
        super().__init__(f"no signal {name!r} arrived within {timeout:g} s" if timeout is not None
                         else f"no signal {name!r} arrived")
        self.name = name
        self.timeout = timeout

    def __reduce__(self) -> tuple[object, ...]:
        return (SignalTimeout, (self.name, self.timeout))


class StepTimeout(TimeoutError):
    """One attempt of ``await run.step(fn, timeout=)`` in a durable function ran longer than
    ``timeout`` seconds. It counts as a failed attempt of the step (error class ``timeout``)."""

    def __init__(self, step: str, timeout: float):
        super().__init__(f"step {step!r} did not finish within {timeout:g} s")
        self.step = step
        self.timeout = timeout

    def __reduce__(self) -> tuple[object, ...]:
        return (StepTimeout, (self.step, self.timeout))


class StepFailed(PeoError):
    """``await run.step(fn, retry=)`` in a durable function: the step's last attempt failed
    (or it raised a class its retry names non-retryable). Recorded with the step, so every
    re-run of the function raises the same one there; catch it to go on without the step's
    result. Uncaught, it fails the object (not retried)."""

    def __init__(self, step: str, error_class: str, message: str, attempts: int):
        super().__init__(f"step {step!r} failed after {attempts} attempt{'s' if attempts != 1 else ''}: "
                         f"{error_class}: {message}")
        self.step = step
        self.error_class = error_class
        self.message = message
        self.attempts = attempts

    def __reduce__(self) -> tuple[object, ...]:
        return (StepFailed, (self.step, self.error_class, self.message, self.attempts))


class ChildFailed(PeoError):
    """A child of ``await run.gather(...)`` (or of ``await run.child(...)``) in a durable
    function ended without success: it failed, was cancelled, or was quarantined. ``reason``
    is the one its chain records. Raised by ``gather`` for the first such child, with every
    failed one in ``failed``; with ``return_exceptions=True`` each takes its child's place in
    the results instead. Uncaught, it fails the object (not retried)."""

    def __init__(self, handler: str, child_id: str, reason: str, failed: tuple[ChildFailed, ...] = ()):
        super().__init__(f"child {child_id} ({handler}) ended without success: {reason}")
        self.handler = handler
        self.child_id = child_id
        self.reason = reason
        self.failed: tuple[ChildFailed, ...] = failed or (self,)

    def __reduce__(self) -> tuple[object, ...]:
        return (ChildFailed, (self.handler, self.child_id, self.reason, self.failed if len(self.failed) > 1 else ()))


class DivergedError(PeoError):
    """A durable function, re-run from the top, reached another operation than the one its
    memory records at that position (its code changed under a running or sleeping object).
    The object fails without running the new operation."""


class StoreError(PeoError):
    """The store failed. ``retryable`` says whether trying the same call again may help."""

    retryable: bool = True

    def __init__(self, message: str, *, retryable: bool | None = None):
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class ConflictError(StoreError):
    """Another writer appended at this seq first: our compare-and-swap lost."""

    retryable = False


class ObjectExistsError(ConflictError):
    """``submit(..., object_id=ID)``: an object with that id exists and its recorded intent
    differs from the one submitted (``differences`` names what differs). The same intent
    again is not an error: submit returns the existing object's id."""

    def __init__(self, object_id: str, differences: tuple[str, ...] = ()):
        what = f": {', '.join(differences)} differ" if differences else ""
        super().__init__(f"object {object_id} already exists with a different intent{what}")
        self.object_id = object_id
        self.differences = tuple(differences)

    def __reduce__(self) -> tuple[object, ...]:
        return (ObjectExistsError, (self.object_id, self.differences))


class LeaseLostError(ConflictError):
    """Our lease on the object expired or was taken; we must not write to it."""


class InboxFullError(StoreError):
    """A signal to an object that already has ``waiting`` signals in its inbox, the most its
    policy allows (``limit``): nothing was written. Not retryable as such: sending again
    helps only once the object has read some (an operation failure, CLI exit 1)."""

    retryable = False

    def __init__(self, object_id: str, waiting: int, limit: int):
        super().__init__(
            f"object {object_id} has {waiting} signals waiting, the most its policy allows; "
            "the signal was not delivered (send it again once the object has read some)"
        )
        self.object_id = object_id
        self.waiting = waiting
        self.limit = limit

    def __reduce__(self) -> tuple[object, ...]:
        return (InboxFullError, (self.object_id, self.waiting, self.limit))


class ObjectTerminatedError(PeoError):
    """A signal was sent to an object that has terminated: no cycle will ever read it, so
    nothing was written. An operation failure (CLI exit 1), not a usage error."""

    def __init__(self, object_id: str, reason: str | None = None):
        why = f" ({reason})" if reason else ""
        super().__init__(f"object {object_id} has terminated{why}: a signal would never be read")
        self.object_id = object_id
        self.reason = reason

    def __reduce__(self) -> tuple[object, ...]:
        return (ObjectTerminatedError, (self.object_id, self.reason))


class ObjectDeletedError(PeoError):
    """A signal was sent to an object an operator deleted (``peo rm``): no node claims it,
    so nothing was written. ``deleted_at`` is when (ns). An operation failure (CLI exit 1);
    ``peo undelete`` brings the object back."""

    def __init__(self, object_id: str, deleted_at: int | None = None):
        when = ""
        if deleted_at is not None:
            import datetime

            stamp = datetime.datetime.fromtimestamp(deleted_at / 1e9, datetime.UTC)
            when = f" at {stamp.strftime('%Y-%m-%dT%H:%M:%SZ')}"
        super().__init__(f"object {object_id} is deleted (peo rm{when}): peo undelete {object_id} to send it signals")
        self.object_id = object_id
        self.deleted_at = deleted_at

    def __reduce__(self) -> tuple[object, ...]:
        return (ObjectDeletedError, (self.object_id, self.deleted_at))
