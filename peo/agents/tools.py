"""Tools an agent may call: ``@app.tool`` (local functions) and the tools of MCP servers.

A :class:`Tool` is what the agent loop needs to offer a tool to a model and to call it:
its name, description and JSON schema (from the function's type hints, with pydantic, which
the ``peo[llm]`` extra brings), whether it needs a human's approval, whether it is
idempotent (then it receives ``idempotency_key``), and a ``reconcile`` hook for a call
whose outcome is unknown (its node died between the call's start and its result).

The arguments a model proposes are validated against the schema before the call
(:meth:`Tool.check`): invalid arguments go back to the model, never into the tool.
:func:`call_digest` binds an approval to one exact call: the tool's name and its
canonical arguments.
"""

from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import attrs

from ..core.codec import check_name
from ..errors import CodecError, UsageError

__all__ = ["Tool", "ToolArgumentsError", "call_digest", "canonical_arguments", "tool_from_function"]

#: Parameters the loop passes itself, never part of a tool's schema.
INJECTED = ("idempotency_key",)


class ToolArgumentsError(ValueError):
    """A model's arguments do not fit the tool's schema (shown to the model, not raised)."""


def canonical_arguments(arguments: Mapping[str, Any]) -> str:
    """The arguments as canonical JSON (sorted keys, no spaces): what a digest covers."""
    return json.dumps(arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def call_digest(tool: str, arguments: Mapping[str, Any]) -> str:
    """The digest of one exact call (``sha256:`` + hex of name NUL canonical arguments):
    what an approval names, so that it approves this call and no other."""
    data = tool.encode() + b"\x00" + canonical_arguments(arguments).encode()
    return "sha256:" + hashlib.sha256(data).hexdigest()


@attrs.frozen
class Tool:
    """One tool an agent may propose to call.

    ``call`` is ``async (arguments, idempotency_key) -> result`` (plain data); ``validate``
    checks and normalises the arguments (raising :class:`ToolArgumentsError`); ``source`` is
    ``local`` or ``mcp:<server>``."""

    name: str
    description: str
    parameters: dict[str, Any]  # a JSON schema of an object
    call: Callable[[dict[str, Any], str], Awaitable[Any]] = attrs.field(repr=False)
    validate: Callable[[dict[str, Any]], dict[str, Any]] = attrs.field(repr=False)
    needs_approval: bool = False
    idempotent: bool = False
    reconcile: Callable[[dict[str, Any], str], Any] | None = attrs.field(default=None, repr=False)
    source: str = "local"

    def spec(self) -> dict[str, Any]:
        """The tool as the OpenAI chat API lists it."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def check(self, arguments: object) -> dict[str, Any]:
        """``arguments`` validated against the schema (raises :class:`ToolArgumentsError`)."""
        if not isinstance(arguments, dict):
            raise ToolArgumentsError(f"the arguments of {self.name} must be a JSON object, "
                                     f"got {type(arguments).__name__}")
        return self.validate(arguments)


def tool_from_function(fn: Callable[..., Any], *, name: str | None = None, description: str | None = None,
                       needs_approval: bool = False, idempotent: bool = False,
                       reconcile: Callable[..., Any] | None = None) -> Tool:
    """A :class:`Tool` from a sync or async function with type hints (``@app.tool``).

    The schema comes from the hints by pydantic; a hint that cannot become a schema is a
    :class:`~peo.UsageError` here, at load. An ``idempotent`` tool must take an
    ``idempotency_key`` parameter (``object id:seq:call``), which the loop passes."""
    try:
        import pydantic
    except ImportError:  # pragma: no cover - the llm extra brings it
        raise UsageError("agent tools need the llm extra: pip install 'peo[llm]'") from None
    label = name or getattr(fn, "__name__", None) or "tool"
    try:
        check_name(label, "tool name")
    except CodecError as exc:
        raise UsageError(str(exc)) from None
    if not callable(fn):
        raise UsageError(f"tool {label!r}: {fn!r} is not a function")
    if reconcile is not None and not callable(reconcile):
        raise UsageError(f"tool {label!r}: reconcile must be a function (arguments, idempotency_key) -> result")
    signature = inspect.signature(fn)
    fields: dict[str, Any] = {}
    takes_key = False
    for pname, param in signature.parameters.items():
        if pname in INJECTED:
            takes_key = True
            continue
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise UsageError(f"tool {label!r}: *{pname} cannot become a JSON schema: name each parameter")
        if param.annotation is inspect.Parameter.empty:
            raise UsageError(f"tool {label!r}: parameter {pname!r} has no type hint (the model's JSON schema "
                             "comes from the hints)")
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[pname] = (param.annotation, default)
    if idempotent and not takes_key:
        raise UsageError(f"tool {label!r}: an idempotent tool takes an idempotency_key parameter (str)")
    try:
        model = pydantic.create_model(f"{label}_arguments", __config__=pydantic.ConfigDict(extra="forbid"),
                                      **fields)
        schema = model.model_json_schema()
    except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticUserError, TypeError, NameError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UsageError(f"tool {label!r}: its type hints cannot become a JSON schema: {first}") from None
    schema.pop("title", None)
    for prop in schema.get("properties", {}).values():
        if isinstance(prop, dict):
            prop.pop("title", None)

    def validate(arguments: dict[str, Any]) -> dict[str, Any]:
        try:
            parsed = model.model_validate(arguments)
        except pydantic.ValidationError as exc:
            problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'arguments'}: {e['msg']}"
                                 for e in exc.errors())
            raise ToolArgumentsError(f"invalid arguments for {label}: {problems}") from None
        dumped: dict[str, Any] = parsed.model_dump(mode="json")
        return dumped

    is_async = inspect.iscoroutinefunction(fn)

    async def call(arguments: dict[str, Any], key: str) -> Any:
        kwargs = dict(model.model_validate(arguments))  # the hinted types, not their JSON form
        if takes_key:
            kwargs["idempotency_key"] = key
        if is_async:
            return await fn(**kwargs)
        import asyncio  # not at import: the core's purity test keeps asyncio out of `import peo`

        return await asyncio.to_thread(fn, **kwargs)

    doc = description if description is not None else inspect.getdoc(fn) or ""
    return Tool(label, doc.strip(), schema, call, validate, needs_approval=needs_approval, idempotent=idempotent,
                reconcile=reconcile, source="local")
