"""The tools of Model Context Protocol servers as :class:`~peo.agents.tools.Tool` values.

::

    import peo.mcp

    files = peo.mcp.stdio("npx", "-y", "@modelcontextprotocol/server-filesystem", "/srv/data")
    search = peo.mcp.http("https://search.example/mcp", headers={"Authorization": "Bearer ..."})
    tools = await files.tools()          # list[Tool], source "mcp:server-filesystem"
    result = await files.call("read_file", {"path": "/srv/data/a.txt"}, idempotency_key="obj:5:0")

An :class:`MCPServer` is configuration only (a frozen value, no live connection): every
``tools()`` and every call opens its own connection (spawns the command, or opens the HTTP
session), does its one thing within ``timeout`` seconds and closes it. That is slower than
a kept session but has nothing to go stale across node restarts, and a crashed server
costs one call, not the agent.

A call's result is plain data: ``{"content": [...], "structured": ..., "is_error": bool}``
(a text block becomes its text, any other block its JSON form). A tool that failed
(``isError``) is a result, not an exception: the model sees it. A server that cannot be
started or reached, dies, times out or answers with something that is not MCP raises
:class:`MCPError` (a :class:`~peo.errors.PeoError`) whose ``error_class`` says which.

The ``mcp`` SDK (the ``peo[mcp]`` extra) is imported only when a server is used: this
module imports neither it nor asyncio/anyio at import.
"""

from __future__ import annotations

import json
import os
import shlex
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import attrs

from ..errors import PeoError, UsageError
from .tools import Tool, ToolArgumentsError

if TYPE_CHECKING:
    from mcp import Client

__all__ = ["MCPError", "MCPServer", "http", "plain_result", "schema_validator", "stdio"]

#: ``MCPError.error_class`` values.
UNAVAILABLE = "mcp_unavailable"  # the command does not start, exits before answering, or the URL does not answer
CRASHED = "mcp_crashed"  # the server died (or closed the connection) in the middle of a call
TIMEOUT = "mcp_timeout"  # no answer within the server's timeout
PROTOCOL = "mcp_protocol"  # an answer that is not valid MCP, or a result that cannot become plain data
REFUSED = "mcp_refused"  # the server answered the request with a JSON-RPC error (unknown tool, bad params...)

_INSTALL = "MCP tools need the mcp extra: pip install 'peo[mcp]'"
#: Launchers whose first non-option argument names the server better than they do.
_LAUNCHERS = ("python", "python3", "node", "npx", "uvx", "uv", "bunx", "bun", "deno", "pipx", "pnpm", "npm", "yarn",
              "docker", "podman", "sh", "bash")
_STDERR_TAIL = 4000

T = TypeVar("T")


class MCPError(PeoError):
    """An MCP server failed: ``error_class`` is ``mcp_unavailable``, ``mcp_crashed``,
    ``mcp_timeout``, ``mcp_protocol`` or ``mcp_refused``; ``server`` names it."""

    def __init__(self, message: str, *, error_class: str, server: str | None = None):
        super().__init__(message)
        self.error_class = error_class
        self.server = server


def _approval(value: Iterable[str] | bool) -> frozenset[str] | bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) or not all(isinstance(v, str) for v in value):
        raise UsageError("needs_approval is True, False or a set of tool names")
    return frozenset(value)


def _require_sdk() -> None:
    try:
        import mcp  # noqa: F401
    except ImportError:
        raise UsageError(_INSTALL) from None


def _default_name(command: str, args: tuple[str, ...]) -> str:
    """A server's name from its command line: the script, module or package a launcher runs
    (``python -m files`` -> ``files``, ``npx -y @org/server-x`` -> ``server-x``), else the
    command's own name."""
    base = os.path.basename(command.rstrip("/"))
    picked = base
    if base.split(".")[0].rstrip("0123456789") in _LAUNCHERS:
        rest = iter(args)
        for arg in rest:
            if arg == "-m":
                picked = next(rest, base)
                break
            if arg in ("-c", "-e", "--eval"):  # inline code: no better name than the launcher
                break
            if arg.startswith("-") or arg in ("run", "exec", "x", "dlx", "tool"):
                continue
            picked = arg
            break
    name = picked.rstrip("/").rsplit("/", 1)[-1]
    name = name.split("@")[0] or name
    for suffix in (".py", ".js", ".mjs", ".cjs", ".ts", ".exe"):
        if name.endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return name or base or "mcp"


@attrs.frozen
class MCPServer:
    """How to reach one MCP server (configuration only: no live connection).

    ``kind`` is ``stdio`` (``command``, ``args``, ``env``, ``cwd``) or ``http`` (``url``,
    ``headers``). ``timeout`` bounds the connection and each list or call, in seconds.
    ``needs_approval`` is ``True`` (every tool), ``False`` or the names of the tools that
    need a human's approval. ``idempotency_arg`` names the argument that receives the
    call's idempotency key, for the tools whose input schema declares it (it is then
    hidden from the model's schema and the tool is idempotent)."""

    kind: Literal["stdio", "http"]
    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] | None = attrs.field(default=None, hash=False)
    cwd: str | None = None
    url: str | None = None
    headers: Mapping[str, str] | None = attrs.field(default=None, hash=False, repr=False)
    timeout: float = 30.0
    needs_approval: frozenset[str] | bool = attrs.field(default=False, converter=_approval)
    idempotency_arg: str | None = "idempotency_key"

    def __attrs_post_init__(self) -> None:
        if self.kind == "stdio" and not self.command:
            raise UsageError("an MCP stdio server needs a command")
        if self.kind == "http" and not (self.url and self.url.startswith(("http://", "https://"))):
            raise UsageError(f"an MCP http server needs an http:// or https:// URL, got {self.url!r}")
        if not isinstance(self.timeout, int | float) or isinstance(self.timeout, bool) or not self.timeout > 0:
            raise UsageError(f"MCP server {self.name}: timeout must be a positive number of seconds")
        if not self.name or any(ord(c) < 32 for c in self.name):
            raise UsageError("an MCP server's name must be a non-empty printable string")

    @property
    def source(self) -> str:
        return f"mcp:{self.name}"

    def describe(self) -> str:
        """The command line or URL, for messages."""
        if self.kind == "http":
            return str(self.url)
        return shlex.join([str(self.command), *self.args])

    def _needs_approval(self, tool: str) -> bool:
        if isinstance(self.needs_approval, bool):
            return self.needs_approval
        return tool in self.needs_approval

    # -- the two operations ------------------------------------------------------------------

    async def list_tools(self) -> list[dict[str, Any]]:
        """The server's tools as plain data (``name``, ``description``, ``input_schema``)."""

        async def op(client: Client) -> list[dict[str, Any]]:
            listed: list[dict[str, Any]] = []
            cursor: str | None = None
            for _ in range(100):  # a paginator that never ends cannot hang us
                page = await client.list_tools(cursor=cursor)
                for t in page.tools:
                    listed.append({"name": t.name, "description": t.description or t.title or "",
                                   "input_schema": dict(t.input_schema or {"type": "object"})})
                cursor = page.next_cursor
                if not cursor:
                    break
            return listed

        return await self._run(op, "list its tools")

    async def tools(self) -> list[Tool]:
        """Connect, list the server's tools and return them as :class:`Tool` values."""
        out: list[Tool] = []
        for spec in await self.list_tools():
            out.append(self.tool_from_spec(spec))
        return out

    async def call(self, tool: str, arguments: Mapping[str, Any], *, idempotency_key: str | None = None
                   ) -> dict[str, Any]:
        """Call one tool; ``idempotency_key`` goes into ``arguments[idempotency_arg]`` when
        given (the :class:`Tool`'s call passes it only if the tool's schema declares it).
        Returns ``{"content": [...], "structured": ..., "is_error": bool}``."""
        args = dict(arguments)
        if idempotency_key is not None and self.idempotency_arg:
            args[self.idempotency_arg] = idempotency_key

        async def op(client: Client) -> dict[str, Any]:
            result = await client.call_tool(tool, args)
            return plain_result(result, self.name, tool)

        return await self._run(op, f"call {tool}")

    def tool_from_spec(self, spec: dict[str, Any]) -> Tool:
        """The :class:`Tool` of one tool as :meth:`list_tools` gave it (an agent records the
        list once and rebuilds its tools from the record)."""
        name = spec["name"]
        schema = spec["input_schema"]
        props = schema.get("properties")
        takes_key = bool(self.idempotency_arg and isinstance(props, dict) and self.idempotency_arg in props)
        parameters = schema
        if takes_key:  # the loop passes the key itself: the model never sees it
            parameters = dict(schema)
            parameters["properties"] = {k: v for k, v in props.items() if k != self.idempotency_arg}
            if isinstance(schema.get("required"), list):
                parameters["required"] = [r for r in schema["required"] if r != self.idempotency_arg]
        check = schema_validator(parameters, name)

        async def call(arguments: dict[str, Any], key: str) -> Any:
            return await self.call(name, arguments, idempotency_key=key if takes_key else None)

        return Tool(name, spec["description"], parameters, call, check, needs_approval=self._needs_approval(name),
                    idempotent=takes_key, source=self.source)

    # -- one connection per operation --------------------------------------------------------

    async def _run(self, op: Callable[[Client], Awaitable[T]], what: str) -> T:
        _require_sdk()
        import tempfile

        import anyio
        from mcp import Client

        # A stdio server's stderr goes to a temporary file: its last lines explain a failure.
        errlog = tempfile.TemporaryFile("w+", encoding="utf-8", errors="replace") if self.kind == "stdio" else None  # noqa: SIM115
        phase = "connect"
        try:
            try:
                # One cancel scope around the whole connection (the SDK's task groups must
                # open and close inside it); its deadline restarts when the handshake is done.
                with anyio.fail_after(self.timeout) as deadline:
                    async with self._transport(errlog) as transport, Client(transport, cache=None) as client:
                        phase = "op"
                        deadline.deadline = anyio.current_time() + self.timeout
                        result = await op(client)
                        phase = "close"
                return result
            except BaseException as exc:
                raise self._translate(exc, phase, what, errlog) from None
        finally:
            if errlog is not None:
                errlog.close()

    @asynccontextmanager
    async def _transport(self, errlog: Any) -> AsyncIterator[Any]:
        if self.kind == "http":
            import httpx2
            from mcp.client.streamable_http import streamable_http_client

            timeout = httpx2.Timeout(self.timeout, read=max(self.timeout, 300.0))
            async with httpx2.AsyncClient(headers=dict(self.headers or {}), timeout=timeout) as http_client:
                yield streamable_http_client(str(self.url), http_client=http_client)
        else:
            from mcp import StdioServerParameters
            from mcp.client.stdio import stdio_client

            params = StdioServerParameters(command=str(self.command), args=list(self.args),
                                           env=dict(self.env) if self.env is not None else None, cwd=self.cwd)
            yield stdio_client(params, errlog=errlog)

    def _translate(self, exc: BaseException, phase: str, what: str, errlog: Any) -> BaseException:
        """``exc`` (raised while connecting, during the operation, or closing) as an
        :class:`MCPError`; cancellation and interrupts pass through untouched."""
        import anyio
        import pydantic
        from mcp.shared.exceptions import MCPError as SDKError
        from mcp_types import CONNECTION_CLOSED

        if isinstance(exc, MCPError | UsageError):
            return exc
        inner = _leaf(exc)
        if isinstance(inner, MCPError):
            return inner
        if isinstance(exc, KeyboardInterrupt | SystemExit) or isinstance(inner, anyio.get_cancelled_exc_class()):
            return exc
        if not isinstance(exc, Exception):
            return exc
        who = f"MCP server {self.name} ({self.describe()})"
        tail = _stderr_tail(errlog)
        said = f"; its stderr ends: {tail}" if tail else ""
        if isinstance(inner, TimeoutError):
            if phase == "connect":
                return MCPError(f"{who} did not complete the MCP handshake within {self.timeout:g}s{said}",
                                error_class=TIMEOUT, server=self.name)
            return MCPError(f"{who} did not {what} within {self.timeout:g}s", error_class=TIMEOUT, server=self.name)
        if isinstance(inner, SDKError) and inner.code != CONNECTION_CLOSED:
            return MCPError(f"{who} refused to {what}: {inner.message} (code {inner.code})",
                            error_class=REFUSED if phase == "op" else PROTOCOL, server=self.name)
        if isinstance(inner, pydantic.ValidationError | ValueError | RuntimeError) and not isinstance(
                inner, SDKError | OSError | UnicodeError):
            first = _one_line(inner)
            if phase == "op":
                return MCPError(f"{who} answered {what} with something that is not valid MCP: {first}",
                                error_class=PROTOCOL, server=self.name)
        if phase == "connect":
            if isinstance(inner, FileNotFoundError | PermissionError) and self.kind == "stdio":
                reason = inner.strerror or type(inner).__name__
                return MCPError(f"{who} cannot be started: {reason}", error_class=UNAVAILABLE, server=self.name)
            if isinstance(inner, SDKError) or self.kind == "stdio":
                return MCPError(f"{who} exited or closed its connection before the MCP handshake "
                                f"({_one_line(inner)}){said}", error_class=UNAVAILABLE, server=self.name)
            return MCPError(f"{who} cannot be reached: {_one_line(inner)}", error_class=UNAVAILABLE,
                            server=self.name)
        if isinstance(inner, SDKError | OSError | EOFError) or _is_transport_error(inner):
            return MCPError(f"{who} died or closed the connection during {what} ({_one_line(inner)}){said}",
                            error_class=CRASHED, server=self.name)
        return MCPError(f"{who} failed to {what}: {_one_line(inner)}{said}", error_class=PROTOCOL, server=self.name)


def _is_transport_error(exc: BaseException) -> bool:
    try:
        import httpx2
    except ImportError:  # pragma: no cover - mcp brings it
        return False
    return isinstance(exc, httpx2.TransportError | httpx2.HTTPStatusError)


def _leaf(exc: BaseException) -> BaseException:
    """The first non-group exception in ``exc`` (task groups wrap what their tasks raise),
    preferring one that is not a cancellation."""
    if isinstance(exc, BaseExceptionGroup):
        leaves = [_leaf(e) for e in exc.exceptions]
        import anyio

        cancelled = anyio.get_cancelled_exc_class()
        for leaf in leaves:
            if not isinstance(leaf, cancelled):
                return leaf
        return leaves[0]
    return exc


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    return first[:300]


def _stderr_tail(errlog: Any) -> str:
    """The last lines of what a stdio server wrote to stderr (its reason for dying), on one line."""
    if errlog is None:
        return ""
    try:
        errlog.flush()
        errlog.seek(0, os.SEEK_END)
        size = errlog.tell()
        errlog.seek(max(0, size - _STDERR_TAIL))
        text = errlog.read()
    except (OSError, ValueError):
        return ""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines[-3:])[-500:]


# -- results as plain data ---------------------------------------------------------------------


def plain_result(result: Any, server: str, tool: str) -> dict[str, Any]:
    """An SDK ``CallToolResult`` as ``{"content", "structured", "is_error"}`` of JSON values;
    :class:`MCPError` (``mcp_protocol``) if it cannot be."""
    content: list[Any] = []
    for block in result.content or []:
        if getattr(block, "type", None) == "text" and isinstance(getattr(block, "text", None), str):
            content.append(block.text)
        else:
            try:
                content.append(block.model_dump(mode="json", by_alias=True, exclude_none=True))
            except Exception as exc:
                raise MCPError(f"MCP server {server}: a content block of {tool} cannot become JSON: {_one_line(exc)}",
                               error_class=PROTOCOL, server=server) from None
    out = {"content": content, "structured": result.structured_content, "is_error": bool(result.is_error)}
    try:
        return json.loads(json.dumps(out, allow_nan=False, ensure_ascii=False))  # type: ignore[no-any-return]
    except (TypeError, ValueError) as exc:
        raise MCPError(f"MCP server {server}: the result of {tool} is not plain JSON data: {_one_line(exc)}",
                       error_class=PROTOCOL, server=server) from None


# -- argument validation -----------------------------------------------------------------------


def schema_validator(schema: dict[str, Any], tool: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A ``validate`` for :class:`Tool`: the arguments checked against a JSON schema with
    ``jsonschema`` (which the mcp SDK depends on); :class:`ToolArgumentsError` lists every
    problem. A schema that is itself invalid falls back to checking required properties
    and primitive types."""
    try:
        import jsonschema  # type: ignore[import-untyped]
        from jsonschema.validators import validator_for  # type: ignore[import-untyped]
    except ImportError:  # pragma: no cover - the mcp extra brings it
        return _basic_validator(schema, tool)
    cls = validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError:
        return _basic_validator(schema, tool)
    validator = cls(schema)

    def validate(arguments: dict[str, Any]) -> dict[str, Any]:
        errors = sorted(validator.iter_errors(arguments), key=lambda e: [str(p) for p in e.absolute_path])
        if errors:
            problems = "; ".join(f"{'.'.join(str(p) for p in e.absolute_path) or 'arguments'}: {e.message}"
                                 for e in errors[:10])
            raise ToolArgumentsError(f"invalid arguments for {tool}: {problems}")
        return dict(arguments)

    return validate


_JSON_TYPES: dict[str, Callable[[object], bool]] = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "object": lambda v: isinstance(v, dict),
    "array": lambda v: isinstance(v, list),
    "null": lambda v: v is None,
}


def _anything(value: object) -> bool:
    return True


def _basic_validator(schema: dict[str, Any], tool: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    props = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    required = [r for r in schema.get("required", []) if isinstance(r, str)] if isinstance(
        schema.get("required"), list) else []
    closed = schema.get("additionalProperties") is False

    def validate(arguments: dict[str, Any]) -> dict[str, Any]:
        problems = [f"{r}: a required property is missing" for r in required if r not in arguments]
        for key, value in arguments.items():
            spec = props.get(key) if isinstance(props, dict) else None
            if spec is None:
                if closed:
                    problems.append(f"{key}: not a parameter of {tool}")
                continue
            kinds = spec.get("type") if isinstance(spec, dict) else None
            kinds = [kinds] if isinstance(kinds, str) else kinds
            if isinstance(kinds, list) and kinds and not any(_JSON_TYPES.get(k, _anything)(value)
                                                             for k in kinds if isinstance(k, str)):
                problems.append(f"{key}: expected {' or '.join(map(str, kinds))}, got {type(value).__name__}")
        if problems:
            raise ToolArgumentsError(f"invalid arguments for {tool}: {'; '.join(problems)}")
        return dict(arguments)

    return validate


# -- constructors ------------------------------------------------------------------------------


def stdio(command: str, *args: str, env: Mapping[str, str] | None = None, cwd: str | os.PathLike[str] | None = None,
          name: str | None = None, timeout: float = 30.0, needs_approval: Iterable[str] | bool = False,
          idempotency_arg: str | None = "idempotency_key") -> MCPServer:
    """An MCP server the SDK runs as a child process and talks to over its stdin/stdout.

    ``env`` is added to the few variables the SDK passes on (PATH, HOME, ...), not to the
    whole environment. ``name`` defaults to the script, module or package the command runs."""
    if not isinstance(command, str) or not command:
        raise UsageError("peo.mcp.stdio needs a command, e.g. peo.mcp.stdio('python', '-m', 'my_server')")
    if not all(isinstance(a, str) for a in args):
        raise UsageError("peo.mcp.stdio: every argument must be a str")
    argv = tuple(args)
    approval = _approval(needs_approval)
    return MCPServer("stdio", name or _default_name(command, argv), command=command, args=argv,
                     env=dict(env) if env is not None else None, cwd=os.fspath(cwd) if cwd is not None else None,
                     timeout=timeout, needs_approval=approval, idempotency_arg=idempotency_arg)


def http(url: str, *, headers: Mapping[str, str] | None = None, name: str | None = None, timeout: float = 30.0,
         needs_approval: Iterable[str] | bool = False, idempotency_arg: str | None = "idempotency_key") -> MCPServer:
    """An MCP server over streamable HTTP at ``url`` (e.g. ``http://127.0.0.1:8000/mcp``).
    ``name`` defaults to the URL's host."""
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise UsageError(f"peo.mcp.http needs an http:// or https:// URL, got {url!r}")
    if name is None:
        from urllib.parse import urlsplit

        name = urlsplit(url).hostname or "mcp"
    approval = _approval(needs_approval)
    return MCPServer("http", name, url=url, headers=dict(headers) if headers is not None else None, timeout=timeout,
                     needs_approval=approval, idempotency_arg=idempotency_arg)
