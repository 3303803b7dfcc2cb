"""The model client: one chat-completions call to any OpenAI-compatible server.

:class:`Model` is configuration only (server, model name, the *name* of the environment
variable that holds the API key: the key itself is read at call time and never recorded).
:func:`complete` makes one call with the ``openai`` package (``peo[llm]``) and returns what
the agent's memory records: the request's digest, the response's content and tool calls
(their arguments as the raw text the model wrote), token usage and latency.

Errors become a :class:`ModelError` with an ``error_class`` the node's semantic backoff
understands (``rate_limit`` with the server's Retry-After, ``timeout``, ``upstream``,
``unreachable``, ``malformed``) or, where a retry cannot help (a wrong model name, a
refused key, a missing key variable is retried: the operator may set it), one that fails
the object at once with a clear reason. None of them is ever a traceback in the node.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..errors import PeoError, UsageError

__all__ = ["Model", "ModelError", "close_clients", "complete", "request_digest"]


def _positive(what: str) -> Any:
    def check(_: object, __: object, value: object) -> None:
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float) or not value > 0):
            raise UsageError(f"Model {what} must be a positive number")

    return check


@attrs.frozen
class Model:
    """An OpenAI-compatible model server and the model to ask.

    ``base_url`` (default: ``OPENAI_BASE_URL``, else OpenAI's) is any compatible server:
    vLLM, Ollama (``http://127.0.0.1:11434/v1``), llama.cpp, LM Studio. ``api_key_env``
    names the environment variable holding the key (``None``: the server needs none).
    ``timeout`` bounds one call (seconds)."""

    name: str
    base_url: str | None = None
    api_key_env: str | None = "OPENAI_API_KEY"
    timeout: float = attrs.field(default=120.0, validator=_positive("timeout"))
    temperature: float | None = None
    max_tokens: int | None = attrs.field(default=None, validator=_positive("max_tokens"))

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise UsageError("Model needs a model name, e.g. peo.Model('gpt-4o-mini')")
        if self.base_url is not None and not str(self.base_url).startswith(("http://", "https://")):
            raise UsageError(f"Model base_url must be an http:// or https:// URL, got {self.base_url!r}")
        if self.api_key_env is not None and (not isinstance(self.api_key_env, str) or not self.api_key_env):
            raise UsageError("Model api_key_env must name an environment variable (or be None)")

    def describe(self) -> dict[str, Any]:
        """What memory may record about the model (never the key)."""
        return {"model": self.name, "base_url": self.base_url}


class ModelError(PeoError):
    """A model call failed. ``error_class`` names the failure for the backoff; a
    ``retryable`` one is tried again after it, ``retry_after`` seconds at least."""

    def __init__(self, error_class: str, message: str, *, retryable: bool = True, retry_after: float | None = None):
        super().__init__(message)
        self.error_class = error_class
        self.retryable = retryable
        self.retry_after = retry_after


def request_digest(model: str, messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]]) -> str:
    """The SHA-256 of the request's canonical JSON: what a recorded response answered."""
    data = json.dumps({"model": model, "messages": messages, "tools": tools}, sort_keys=True,
                      separators=(",", ":"), ensure_ascii=False, default=str)
    return "sha256:" + hashlib.sha256(data.encode()).hexdigest()


def _key(model: Model) -> str:
    if model.api_key_env is None:
        return "unused"  # a local server that checks no key; the client insists on one
    key = os.environ.get(model.api_key_env)
    if not key:
        raise ModelError("model_config", f"the environment variable {model.api_key_env} (the API key of "
                         f"{model.name}) is not set on this node: set it and the call is tried again")
    return key


def _retry_after(exc: Any) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    value = headers.get("retry-after") if headers is not None else None
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 < seconds < 86_400 else None


def _error(exc: Exception, model: Model) -> ModelError:
    import openai

    where = model.base_url or "the default OpenAI endpoint"
    text = str(getattr(exc, "message", None) or exc).strip().splitlines()
    detail = text[0][:500] if text else type(exc).__name__
    if isinstance(exc, openai.RateLimitError):
        return ModelError("rate_limit", f"rate limited by {where}: {detail}", retry_after=_retry_after(exc))
    if isinstance(exc, openai.APITimeoutError):
        return ModelError("timeout", f"{model.name} at {where} did not answer within {model.timeout:g} s")
    if isinstance(exc, openai.APIConnectionError):
        return ModelError("unreachable", f"cannot reach the model server at {where}: {detail}")
    if isinstance(exc, openai.NotFoundError):
        return ModelError("model_not_found", f"{where} does not serve model {model.name!r}: {detail}",
                          retryable=False)
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        return ModelError("model_auth", f"{where} refused the API key in {model.api_key_env}: {detail}",
                          retryable=False)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        if status >= 500:
            return ModelError("upstream", f"{where} answered {status}: {detail}")
        return ModelError("model_request", f"{where} refused the request ({status}): {detail}", retryable=False)
    if isinstance(exc, openai.APIResponseValidationError | json.JSONDecodeError | ValueError):
        return ModelError("malformed", f"{where} answered with something that is not a chat completion: {detail}")
    return ModelError("model_error", f"{type(exc).__name__}: {detail}")


# One client per event loop, server, key and timeout: building one costs tens of
# milliseconds (an SSL context), and its connection pool keeps connections open between
# calls. The node closes them when it stops (close_clients).
_clients: dict[tuple[int, str | None, str, float], tuple[Any, Any]] = {}


def _client(model: Model, key: str) -> Any:
    import asyncio

    import openai

    loop = asyncio.get_running_loop()
    slot = (id(loop), model.base_url, key, model.timeout)
    found = _clients.get(slot)
    if found is not None and found[0]() is loop and not found[1].is_closed():
        return found[1]
    client = openai.AsyncOpenAI(base_url=model.base_url, api_key=key, max_retries=0, timeout=model.timeout)
    _clients[slot] = (weakref.ref(loop), client)
    return client


async def close_clients() -> None:
    """Close the model clients of the running event loop (a node calls it as it stops)."""
    import asyncio

    loop = asyncio.get_running_loop()
    for slot, (ref, client) in list(_clients.items()):
        if ref() is loop or ref() is None:
            del _clients[slot]
            if ref() is loop:
                await client.close()


async def complete(model: Model, messages: Sequence[Mapping[str, Any]],
                   tools: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    """One chat-completions call; returns the record of it (plain data)."""
    try:
        import openai
    except ImportError:
        raise ModelError("model_config", "the model client needs the llm extra on this node: "
                         "pip install 'peo[llm]'") from None
    digest = request_digest(model.name, messages, tools)
    options: dict[str, Any] = {}
    if tools:
        options["tools"] = list(tools)
    if model.temperature is not None:
        options["temperature"] = model.temperature
    if model.max_tokens is not None:
        options["max_tokens"] = model.max_tokens
    started = time.perf_counter_ns()
    client = _client(model, _key(model))
    body = {"model": model.name, "messages": list(messages), **options}
    try:
        # The client's generic POST with the body as it is, read back as plain JSON: the
        # typed ``chat.completions.create`` walks every message of the request through its
        # parameter transforms and the answer through pydantic models, ~10 ms of CPU per
        # call on a 20-message conversation, for JSON peo builds and reads itself.
        raw = await client.post("/chat/completions", body=body, cast_to=object)
    except openai.OpenAIError as exc:
        raise _error(exc, model) from None
    except (json.JSONDecodeError, ValueError) as exc:
        raise _error(exc, model) from None
    latency_ms = (time.perf_counter_ns() - started) / 1e6
    return {"digest": digest, "model": model.name, **_answer(raw, model), "latency_ms": round(latency_ms, 3)}


def _answer(raw: object, model: Model) -> dict[str, Any]:
    """What a chat completion says (content, tool calls, finish reason, usage), checked."""
    where = model.base_url or "the default OpenAI endpoint"
    choices = raw.get("choices") if isinstance(raw, dict) else None
    first = choices[0] if isinstance(choices, list) and choices else None
    message = first.get("message") if isinstance(first, dict) else None
    if not isinstance(message, dict):
        shown = str(raw)[:200]
        raise ModelError("malformed", f"{where} answered with something that is not a chat completion: {shown}")
    calls: list[dict[str, Any]] = []
    for call in message.get("tool_calls") or ():
        function = call.get("function") if isinstance(call, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str):
            raise ModelError("malformed", f"{where} answered with a tool call that names no function: {call!r:.200}")
        arguments = function.get("arguments")
        calls.append({"id": str(call.get("id") or f"call_{len(calls)}"), "name": function["name"],
                      "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments)})
    content = message.get("content")
    usage = raw.get("usage") if isinstance(raw, dict) else None
    usage = usage if isinstance(usage, dict) else {}

    def count(key: str) -> int:
        value = usage.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0

    return {
        "content": content if isinstance(content, str) or content is None else json.dumps(content),
        "tool_calls": calls,
        "finish_reason": first.get("finish_reason") if isinstance(first, dict) else None,
        "usage": {"prompt": count("prompt_tokens"), "completion": count("completion_tokens")},
    }
