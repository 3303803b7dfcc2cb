"""One attempt of ``run.step``, and what its failure means.

A step without ``retry=`` lets its exception propagate (the object's retry settings apply,
and its last failure fails the object). With ``retry=``, a failed attempt either ends the
cycle with a :class:`~peo.Fail` carrying that Retry (the object sleeps its backoff, and the
next attempt re-runs the function to this step under the same idempotency key), or, on the
last attempt or a non-retryable class, is recorded as the step's outcome and raised in the
function as :class:`~peo.StepFailed`.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

from ..core.model import Fail, Retry, Step
from ..errors import StepFailed, StepTimeout
from .records import error_class_of, step_traceback

__all__ = ["attempt_step", "check_timeout", "failure_of", "is_final", "retry_step"]


def check_timeout(timeout: object) -> str | None:
    """What is wrong with a step's ``timeout=`` (None: nothing)."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not math.isfinite(timeout) \
            or timeout <= 0:
        return f"run.step's timeout= must be a positive number of seconds, got {timeout!r}"
    return None


async def attempt_step(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: Mapping[str, Any], label: str,
                       timeout: float | None) -> Any:
    """Call ``fn`` once: awaited if async, else in a thread (and its result awaited if it is
    awaitable: a lambda returning a coroutine). Past ``timeout`` seconds, StepTimeout; a
    sync function's thread cannot be stopped, so it runs on and its result is dropped."""
    if timeout is None and inspect.iscoroutinefunction(fn):
        return await fn(*args, **kwargs)  # the common case, without a coroutine around it
    import asyncio  # here, so that importing peo loads no event loop machinery

    async def call() -> Any:
        if inspect.iscoroutinefunction(fn):
            return await fn(*args, **kwargs)
        result = await asyncio.to_thread(fn, *args, **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return result

    if timeout is None:
        return await call()
    try:
        async with asyncio.timeout(timeout) as limit:
            return await call()
    except TimeoutError:
        if limit.expired():
            raise StepTimeout(label, timeout) from None
        raise  # the step's own TimeoutError (a tool of its timed out): it says where


def is_final(exc: Exception, retry: Retry, step: Step) -> dict[str, Any] | None:
    """The record of a failed last attempt (None: another attempt follows). The last one is
    the ``retry.max_attempts``-th, or any whose class (or a base class) ``retry`` names
    non-retryable (if it names none: the object's intent)."""
    names = retry.non_retryable if retry.non_retryable is not None else step.intent.constraints.non_retryable
    non_retryable = bool(names) and any(cls.__name__ in (names or ()) for cls in type(exc).__mro__)
    if not non_retryable and (retry.max_attempts is None or step.attempt < retry.max_attempts):
        return None
    message = str(exc) or repr(exc)
    return {"class": error_class_of(exc), "message": message[:2000], "attempts": step.attempt}


def retry_step(label: str, exc: Exception, retry: Retry) -> Fail:
    """The proposal that ends a cycle whose step attempt failed and will be tried again."""
    message = str(exc) or repr(exc)
    return Fail(f"step {label!r}: {message}", error_class=error_class_of(exc), retry=retry,
                traceback=step_traceback(exc))


def failure_of(label: str, error: Mapping[str, Any]) -> StepFailed:
    """The StepFailed a recorded step failure raises in the function."""
    return StepFailed(label, str(error.get("class", "error")), str(error.get("message", "")),
                      int(error.get("attempts", 1)))
