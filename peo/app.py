"""Handler registry: ``app = peo.App()`` and ``@app.handler("name")``."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import attrs

from .core.codec import check_name
from .core.model import Retry, Step
from .errors import CodecError, UsageError
from .functions import FunctionFn, function_handler
from .healing.memory import parse_size

__all__ = ["App", "Handler"]

HandlerFn = Callable[[Step], Any] | Callable[[Step], Awaitable[Any]]
F = TypeVar("F", bound=Callable[..., Any])


@attrs.frozen
class Handler:
    name: str
    fn: Callable[[Step], Any]
    is_async: bool
    timeout: float | None  # seconds; None: the node policy's handler_timeout
    retry: Retry | None = None  # None: the intent's constraints, else the node policy, decide
    memory: int | None = None  # bytes an object of it may hold (the memory budget's reserve); None: observed
    isolation: str | None = None  # "process": each step in a child the node can kill (peo.healing.isolation)


class App:
    """The handlers a node can run (its capabilities)."""

    def __init__(self) -> None:
        self.handlers: dict[str, Handler] = {}
        self.tools: dict[str, Any] = {}  # name -> peo.agents.Tool (@app.tool)
        self._tool_of: dict[int, Any] = {}  # id(function) -> its Tool

    def handler(self, name: str, *, timeout: float | None = None, retry: Retry | None = None,
                memory: str | int | None = None, isolation: str | None = None) -> Callable[[F], F]:
        """Register a sync or async function as the handler for ``name``.

        ``retry`` (a :class:`~peo.Retry`) sets how its failed steps are retried: each of its
        settings applies where the object's intent sets none, and the node's policy applies
        where neither does. ``memory`` (``"200MiB"`` or bytes) is what one of its objects may
        hold: a node with a memory budget reserves it before starting one (docs/operations.md).
        ``isolation="process"`` runs each step in a forked child process that the node kills
        when the step runs past its timeout or grows past ``memory`` (docs/operations.md,
        "Process isolation")."""
        try:
            check_name(name, "handler name")
        except CodecError as exc:
            raise UsageError(str(exc)) from None
        if timeout is not None and not timeout > 0:
            raise UsageError("a handler timeout must be a positive number of seconds")
        if retry is not None and not isinstance(retry, Retry):
            raise UsageError("retry must be a peo.Retry(base=, max=, max_attempts=, non_retryable=)")
        reserve = None if memory is None else parse_size(memory, f"handler {name!r}: memory")
        if isolation is not None:
            from .healing.isolation import check_isolation  # not at import: it loads asyncio (the core's purity)

            check_isolation(isolation, f"handler {name!r}")

        def register(fn: F) -> F:
            if name in self.handlers:
                raise UsageError(f"handler {name!r} is already registered")
            self.handlers[name] = Handler(name, fn, inspect.iscoroutinefunction(fn), timeout, retry, reserve,
                                          isolation)
            return fn

        return register

    def function(self, name: str, *, version: str | None = None, timeout: float | None = None,
                 retry: Retry | None = None, memory: str | int | None = None,
                 isolation: str | None = None) -> Callable[[FunctionFn], FunctionFn]:
        """Register a durable function ``async def f(run: peo.Run, **goal)`` as ``name``.

        It becomes an ordinary handler: each operation it awaits (``run.step``, ``sleep``,
        ``wait_until``, ``wait_signal``, ``child``/``gather``, ``refine``) is carried out once
        and recorded in a signed entry, and its return value ends the object (``Done``).
        While a node holds the object the code runs on live between steps; after a wake-up or
        a takeover it is re-run from the top, recorded operations returning their records
        (docs/concepts.md, "Durable functions"). ``version`` (default: a digest of the
        function's code) is recorded by the object's first entry (``run.version``).
        ``timeout``, ``retry`` and ``memory`` apply to each of its steps as for :meth:`handler`;
        ``isolation`` is refused: its coroutine lives on in the node between steps."""
        if isolation is not None:
            raise UsageError(f"function {name!r}: a durable function cannot be isolated (isolation="
                             f"{isolation!r}): its coroutine stays alive in the node between steps; "
                             "isolate the work it awaits in a handler of its own (run.child)")
        register = self.handler(name, timeout=timeout, retry=retry, memory=memory)

        def wrap(fn: FunctionFn) -> FunctionFn:
            register(function_handler(fn, version=version))
            return fn

        return wrap

    def tool(self, name: str | None = None, *, description: str | None = None, needs_approval: bool = False,
             idempotent: bool = False, reconcile: Callable[..., Any] | None = None) -> Callable[[F], F]:
        """Register a sync or async function as a tool agents may call (``peo[llm]``).

        Its JSON schema comes from its type hints (a hint that cannot become one is an error
        here); ``needs_approval`` makes each call wait for a human's approval of that exact
        call; ``idempotent`` tools take an ``idempotency_key`` parameter and may be run again
        after a crash; a non-idempotent tool whose node died mid-call is not run again:
        ``reconcile(arguments, idempotency_key)`` says what happened, or a human does
        (docs/agents.md)."""
        from .agents.tools import tool_from_function

        def register(fn: F) -> F:
            made = tool_from_function(fn, name=name, description=description, needs_approval=needs_approval,
                                      idempotent=idempotent, reconcile=reconcile)
            if made.name in self.tools:
                raise UsageError(f"tool {made.name!r} is already registered")
            self.tools[made.name] = made
            self._tool_of[id(fn)] = made
            return fn

        return register

    def agent(self, name: str, *, model: Any, instructions: str = "", tools: Sequence[Any] = (),
              timeout: float | None = None, tool_timeout: float = 300.0, retry: Retry | None = None,
              memory: str | int | None = None, memory_tokens: int | None = 16000, keep_turns: int = 4) -> None:
        """Register an agent ``name``: a durable function that asks ``model`` (a
        :class:`peo.Model`) what to do next, one recorded step per model call and per tool
        call, under the node's policy (docs/agents.md). ``memory_tokens`` is the budget of
        its episodic buffer (the conversation it sends, estimated tokens; None: unbounded)
        and ``keep_turns`` how many recent turns consolidation keeps. ``tools`` are functions registered
        with :meth:`tool` (or plain typed functions), :class:`~peo.agents.Tool` values, or
        MCP servers (``peo.mcp.stdio(...)``, ``peo.mcp.http(...)``)."""
        from .agents.loop import agent_function
        from .agents.mcp_tools import MCPServer
        from .agents.tools import Tool, tool_from_function

        resolved: list[Any] = []
        for item in tools:
            if isinstance(item, Tool):
                resolved.append(item)
            elif id(item) in self._tool_of:
                resolved.append(self._tool_of[id(item)])
            elif isinstance(item, MCPServer):
                resolved.append(item)  # its tools are listed when an agent first runs (recorded)
            elif callable(item):
                resolved.append(tool_from_function(item))
            else:
                raise UsageError(f"agent {name!r}: {item!r} is not a tool (a function, a peo Tool, an MCP server)")
        fn = agent_function(model, instructions, resolved, tool_timeout=tool_timeout, memory_tokens=memory_tokens,
                            keep_turns=keep_turns)
        fn.__name__ = fn.__qualname__ = f"agent_{name}"
        self.function(name, version=f"agent:{model.name}", timeout=timeout, retry=retry, memory=memory)(fn)

    def __contains__(self, name: object) -> bool:
        return name in self.handlers
