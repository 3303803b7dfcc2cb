"""Turn a durable function into an ordinary handler (what ``App.function`` registers)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from ..core.model import Done, Fail, Proposal, Step
from ..errors import DivergedError, UsageError
from .run import Run, Suspend

__all__ = ["FunctionFn", "function_handler"]

FunctionFn = Callable[..., Awaitable[Any]]


def function_handler(fn: FunctionFn) -> Callable[[Step], Awaitable[Proposal]]:
    """The handler that runs ``fn(run, **goal)`` from the top for one cycle.

    The cycle ends at the first operation memory does not record yet (its proposal carries
    it out and records it), or with ``Done(result)`` when the function returns. An exception
    from the user's code is a failed step (retried with backoff, under the same idempotency
    key); an error the run raised on purpose and the function let escape (a signal timeout,
    a divergence, a result that cannot be recorded) fails the object at once.
    """
    if not inspect.iscoroutinefunction(fn):
        raise UsageError(f"a durable function must be an async function (async def), got {fn!r}")

    async def handler(step: Step) -> Proposal:
        last = step.memory[-1] if step.memory else None
        if last is not None and last.outcome.get("status") == "refused":
            # The node's policy refused what the last cycle proposed. A handler may propose
            # something else; a function would re-run the same code to the same operation
            # (running a step's side effect again for nothing): it fails instead.
            error = last.outcome.get("error") or {}
            return Fail(f"the function's operation was refused: {error.get('message', 'no reason recorded')}",
                        retryable=False, error_class="refused")
        run = Run(step)
        try:
            result = await fn(run, **step.goal)
        except Suspend as suspend:
            if isinstance(run.raised, DivergedError):  # caught by the function: never papered over
                return _fail(run.raised)
            return _with_state(suspend.proposal, run.pending)
        except Exception as exc:
            if exc is not run.raised:
                raise
            return _fail(exc)
        if isinstance(run.raised, DivergedError):
            return _fail(run.raised)
        if run.recorded_next():
            diverged = DivergedError(f"object {step.object_id}: the function returned after {run.position} "
                                     "operation(s), but its memory records more")
            return _fail(diverged)
        return Done(result, state=run.pending or None)

    handler.__name__ = handler.__qualname__ = getattr(fn, "__name__", "function")
    return handler


def _with_state(proposal: Proposal, pending: dict[str, Any]) -> Proposal:
    """``proposal`` with ``pending`` added to its state update."""
    if not pending:
        return proposal
    return attrs.evolve(proposal, state={**pending, **(proposal.state or {})})


def _fail(exc: BaseException) -> Fail:
    """An error the run raised on purpose: the object fails at once (a retry would repeat it)."""
    return Fail(str(exc), retryable=False, error_class=type(exc).__name__)
