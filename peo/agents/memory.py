"""The agent loop's tiered memory steps (docs/agents.md, "Memory"): consolidating the
episodic buffer (:mod:`peo.agents.episodic`) into a summary and long-term facts, and the
``recall``, ``remember`` and ``forget`` control tools over the facts (:mod:`peo.agents.facts`).

Each is the function of one recorded step, so what it did (the model's answer, the facts
and the versions written) is in the signed entry of that step, and a replay returns the
record without asking the model or touching the store again. Writing a fact is idempotent
(a version is added only if the value differs), so a step retried after its node died
before recording it writes nothing twice.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..core.agent_rules import Usage
from ..errors import UsageError
from .episodic import Buffer, consolidation_request, parse_consolidation
from .facts import Facts
from .model import Model, complete

__all__ = ["MEMORY_TOOLS", "consolidate", "memory_tool", "with_reserve"]

_STRING = {"type": "string"}
#: The control tools of the long-term facts (offered with the other control tools).
MEMORY_TOOLS: dict[str, dict[str, Any]] = {
    "recall": {"description": "Search your long-term memory (facts remembered by you or other agents of your "
                              "identity) for facts matching some words.",
               "parameters": {"type": "object", "properties": {"query": _STRING}, "required": ["query"]}},
    "remember": {"description": "Store a durable fact in your long-term memory under a short stable key "
                                "(a new value of a key replaces the old one; its history is kept).",
                 "parameters": {"type": "object", "properties": {"key": _STRING, "value": _STRING},
                                "required": ["key", "value"]}},
    "forget": {"description": "Remove a fact from your long-term memory.",
               "parameters": {"type": "object", "properties": {"key": _STRING}, "required": ["key"]}},
}


def with_reserve(used: Usage, buffer: Buffer) -> Usage:
    """The usage a consolidation's budget check sees: ``used`` less its reserve of one model
    call and ``memory_tokens`` tokens, so that an agent at the edge of its model-call or
    token budget still consolidates (its facts reach the long-term store) before its next
    call is refused. Cost, time and children have no reserve."""
    return Usage(used.model_calls - 1, used.tokens - buffer.memory_tokens, used.cost, used.seconds, used.children)


async def consolidate(model: Model, messages: Sequence[Mapping[str, Any]], upto: int, budget: int, store: Any,
                      identity: str, object_id: str, seq: int) -> dict[str, Any]:
    """Ask the model to consolidate ``messages[2:upto]``; write the facts it names to the
    identity's long-term store; return the record: summary, facts (with their versions),
    upto, and the call's usage, digest and model."""
    response = await complete(model, consolidation_request(messages, upto))
    parsed = parse_consolidation(response.get("content"), budget)
    facts: list[dict[str, Any]] = []
    keeper = Facts(store, identity, object_id=object_id, seq=seq) if store is not None else None
    for key, value in parsed.facts:
        version = await keeper.remember(key, value) if keeper is not None else None
        facts.append({"key": key, "value": value, "version": version})
    return {"summary": parsed.summary, "facts": facts, "upto": upto, "usage": response.get("usage") or {},
            "digest": response.get("digest"), "model": response.get("model"), "stored": keeper is not None}


async def memory_tool(name: str, arguments: Mapping[str, Any], store: Any, identity: str, object_id: str,
                      seq: int) -> dict[str, Any]:
    """Carry out ``recall``, ``remember`` or ``forget``: what the model is shown (a mistake
    in the arguments is an ``error`` it can correct, never an exception)."""
    if store is None:
        return {"error": "long-term memory is not available on this node"}
    facts = Facts(store, identity, object_id=object_id, seq=seq)
    try:
        if name == "recall":
            query = arguments.get("query")
            if not isinstance(query, str):
                return {"error": "recall needs query: a string of words"}
            return {"facts": await facts.recall_data(query)}
        if name == "remember":
            key, value = arguments.get("key"), arguments.get("value")
            if value is None:
                return {"error": "remember needs key and value"}
            return {"remembered": str(key).strip(), "version": await facts.remember(str(key or ""), value)}
        key = arguments.get("key")
        version = await facts.forget(str(key or ""))
        return {"forgot": str(key).strip(), "version": version} if version is not None else \
            {"error": f"no fact {key!r} to forget"}
    except UsageError as exc:
        return {"error": str(exc)}
