"""Turn a durable function into an ordinary handler (what ``App.function`` registers)."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import attrs

from ..core.model import Done, Fail, Proposal, Step
from ..errors import DivergedError, UsageError
from .live import LiveRun, LiveRuns
from .run import Run, Suspend, initial_goal

__all__ = ["FunctionFn", "function_handler"]

FunctionFn = Callable[..., Awaitable[Any]]

# BaseExceptions that are not Exceptions and still propagate: they stop the process or
# cancel the node's task (its handler timeout, its shutdown). Any other one (a library's
# own "abort" class) would escape the node's handling of failed steps and end its worker, so
# it is recorded as a failed step instead.
_PROPAGATE: tuple[type[BaseException], ...] = (KeyboardInterrupt, SystemExit, GeneratorExit)


def code_version(fn: FunctionFn) -> str:
    """A digest of a function's code: its source if Python can find it, else its bytecode
    and constants (``sha256:`` and 16 hex digits)."""
    import hashlib

    try:
        text = inspect.getsource(fn).encode()
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        text = repr((code.co_code, code.co_consts)).encode() if code is not None else repr(fn).encode()
    return "sha256:" + hashlib.sha256(text).hexdigest()[:16]


def function_handler(fn: FunctionFn, *, version: str | None = None) -> Callable[[Step], Awaitable[Proposal]]:
    """The handler that runs ``fn(run, **goal)`` from the top for one cycle (``goal`` as the
    object was created with it, also after ``run.refine``).

    The cycle ends at the first operation memory does not record yet (its proposal carries
    it out and records it), or with ``Done(result)`` when the function returns. An exception
    from the user's code is a failed step (retried with backoff, under the same idempotency
    key); an error the run raised on purpose and the function let escape (a signal timeout,
    a divergence, a result that cannot be recorded, a misused ``Run``) fails the object at
    once, as does a BaseException that is not an Exception (KeyboardInterrupt, SystemExit
    and cancellation excepted: they propagate).
    """
    if not inspect.iscoroutinefunction(fn):
        raise UsageError(f"a durable function must be an async function (async def), got {fn!r}")
    if version is not None and (not isinstance(version, str) or not version or len(version) > 200):
        raise UsageError("a durable function's version must be a non-empty string of at most 200 characters")
    recorded_version = version if version is not None else code_version(fn)

    live_runs = LiveRuns()

    async def handler(step: Step) -> Proposal:
        last = step.memory[-1] if step.memory else None
        if last is not None and last.outcome.get("status") == "refused":
            # The node's policy refused what the last cycle proposed. A handler may propose
            # something else; a function would re-run the same code to the same operation
            # (running a step's side effect again for nothing): it fails instead.
            error = last.outcome.get("error") or {}
            return Fail(f"the function's operation was refused: {error.get('message', 'no reason recorded')}",
                        retryable=False, error_class="refused")
        live = live_runs.take(step)
        if live is not None:
            live.resume(step)  # the coroutine is still inside the run.step whose entry was just committed
        else:
            live = LiveRun(lambda handover: _cycle(fn, step, handover, recorded_version))  # from the top
        proposal = await live.next_proposal()
        live_runs.keep(step.object_id, live)
        return proposal

    handler.live_runs = live_runs  # type: ignore[attr-defined]  # for tests and benchmarks
    handler.__name__ = handler.__qualname__ = getattr(fn, "__name__", "function")
    return handler


async def _cycle(fn: FunctionFn, step: Step, handover: LiveRun, version: str) -> Proposal:
    """Run ``fn`` from the top (replaying what memory records) until an operation ends the
    cycle (a sleep, a wait, children, a refine), it returns, or it fails; meanwhile each new
    step's entry is handed over live and the code goes on after its commit."""
    run = Run(step, handover=handover, version=version)
    run.begin()
    try:
        result = await fn(run, **initial_goal(step))
    except Suspend as suspend:
        fatal = _fatal(run)
        if fatal is not None:  # caught by the function: never papered over
            return _fail(fatal, run)
        return _with_state(suspend.proposal, run.state_update())
    except Exception as exc:
        fatal = _fatal(run)  # e.g. asyncio.gather of two steps: each misuse is an error
        if fatal is not None:
            return _fail(fatal, run)
        if exc is not run.raised:
            raise
        return _fail(exc, run)
    except BaseException as exc:
        if _propagates(exc):
            raise
        return _aborted(exc, run)
    finally:
        run.end()
    fatal = _fatal(run)
    if fatal is not None:
        return _fail(fatal, run)
    if run.recorded_next():
        diverged = DivergedError(f"object {step.object_id}: the function returned after {run.position} "
                                 "operation(s), but its memory records more")
        return _fail(diverged, run)
    return Done(result, state=run.state_update() or None)


def _fatal(run: Run) -> BaseException | None:
    """An error that fails the object even if the function caught it: a divergence (the
    code no longer matches memory) or an operation called from another task (not done)."""
    if isinstance(run.raised, DivergedError):
        return run.raised
    return run.misused


def _propagates(exc: BaseException) -> bool:
    import asyncio  # here, so that importing peo loads no event loop machinery

    kinds = (*_PROPAGATE, asyncio.CancelledError)
    if isinstance(exc, BaseExceptionGroup):
        return exc.subgroup(kinds) is not None
    return isinstance(exc, kinds)


def _with_state(proposal: Proposal, update: dict[str, Any]) -> Proposal:
    """``proposal`` with ``update`` added to its state update."""
    if not update:
        return proposal
    return attrs.evolve(proposal, state={**update, **(proposal.state or {})})


def _fail(exc: BaseException, run: Run) -> Fail:
    """An error the run raised on purpose: the object fails at once (a retry would repeat it).
    What the cycle recorded so far (progress, a signal it returned) goes with the failure,
    unless the code diverged: nothing it did is recorded on top of a divergent history."""
    state = None if isinstance(exc, DivergedError) else run.state_update() or None
    return Fail(str(exc), retryable=False, error_class=type(exc).__name__, state=state)


def _aborted(exc: BaseException, run: Run) -> Fail:
    """A BaseException that is not an Exception: recorded as a failure, not retried (such a
    class says "stop", not "try again"), named with the step it came from, if any."""
    where = f"step {run.escaped_from!r}" if run.escaped_from is not None else "the function"
    message = f"{where} raised {type(exc).__name__}, a BaseException that is not an Exception"
    text = str(exc)
    return Fail(f"{message}: {text}" if text else message, retryable=False, error_class=type(exc).__name__,
                state=run.state_update() or None)
