"""Handler registry: ``app = peo.App()`` and ``@app.handler("name")``."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import attrs

from .core.codec import check_name
from .core.model import Step
from .errors import CodecError, UsageError

__all__ = ["App", "Handler"]

HandlerFn = Callable[[Step], Any] | Callable[[Step], Awaitable[Any]]
F = TypeVar("F", bound=Callable[..., Any])


@attrs.frozen
class Handler:
    name: str
    fn: Callable[[Step], Any]
    is_async: bool
    timeout: float | None  # seconds; None: the node policy's handler_timeout


class App:
    """The handlers a node can run (its capabilities)."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}

    def handler(self, name: str, *, timeout: float | None = None) -> Callable[[F], F]:
        """Register a sync or async function as the handler for ``name``."""
        try:
            check_name(name, "handler name")
        except CodecError as exc:
            raise UsageError(str(exc)) from None
        if timeout is not None and not timeout > 0:
            raise UsageError("a handler timeout must be a positive number of seconds")

        def register(fn: F) -> F:
            if name in self.handlers:
                raise UsageError(f"handler {name!r} is already registered")
            self.handlers[name] = Handler(name, fn, inspect.iscoroutinefunction(fn), timeout)
            return fn

        return register

    def __contains__(self, name: object) -> bool:
        return name in self.handlers
