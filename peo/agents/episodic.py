"""The episodic buffer of an agent: the conversation it sends the model, kept under a token
budget by consolidating its older turns into a summary (and facts for the long-term store).

Pure functions, no I/O: the loop (:mod:`peo.agents.loop`) decides *when* with
:func:`needs_consolidation`, asks the model with :func:`consolidation_request` as a step of
its own, and rebuilds the buffer with :func:`apply_consolidation` from the recorded answer;
so a replay, given the same recorded answers, rebuilds exactly the same messages.

Tokens are *estimated* (:func:`estimate_tokens`: a quarter of the characters of the
messages' JSON), not counted with the model's tokenizer: peo does not know it, and the
estimate is deterministic, which replay needs. For English text it is close; for code or
other scripts it may be off by a factor of two either way, so leave a margin in the budget.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..errors import UsageError

__all__ = [
    "CONSOLIDATE_AT",
    "Buffer",
    "Consolidation",
    "apply_consolidation",
    "consolidation_request",
    "estimate_tokens",
    "needs_consolidation",
    "parse_consolidation",
    "split_point",
]

#: Consolidation runs before a model call once the buffer holds more than this fraction of
#: its budget: the rest is the headroom for the turn that call adds (the model's message and
#: its tool results), so the buffer is consolidated *before* it overflows, not after.
CONSOLIDATE_AT = 0.75
#: After consolidation the kept recent turns take at most this fraction of the budget...
RECENT_SHARE = 0.4
#: ... and the summary at most this fraction (cut beyond): together with the system and task
#: messages the buffer is then well under :data:`CONSOLIDATE_AT` again.
SUMMARY_SHARE = 0.2
#: At most this many facts are kept from one consolidation, each key and value cut to size.
MAX_FACTS = 50
MAX_KEY_CHARS = 200
MAX_VALUE_CHARS = 2000
SUMMARY_PREFIX = "Summary of earlier work: "

_INSTRUCTIONS = (
    "You consolidate the memory of an AI agent. Below are older turns of its work on a task. "
    "Write a concise summary of what was done and learned that the agent needs to go on (results, "
    "decisions, open questions), and list durable facts worth remembering beyond this task as key/value "
    "pairs (short stable keys such as 'customer.plan'). Answer with JSON only, no prose around it: "
    '{"summary": "...", "facts": [{"key": "...", "value": "..."}]}'
)


def estimate_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """An estimate of the tokens of ``messages``: a quarter of their JSON's characters
    (deterministic; see the module's docstring for how far off it may be)."""
    return len(json.dumps(list(messages), ensure_ascii=False, default=str, separators=(",", ":"))) // 4


@attrs.frozen
class Buffer:
    """The episodic buffer's policy: ``memory_tokens`` is the budget of the conversation the
    agent sends the model (estimated tokens; the tool specs are not counted), and
    ``keep_turns`` how many recent turns consolidation leaves as they are (fewer if they
    would not fit in :data:`RECENT_SHARE` of the budget; at least the last one)."""

    memory_tokens: int = 16000
    keep_turns: int = 4

    def __attrs_post_init__(self) -> None:
        if isinstance(self.memory_tokens, bool) or not isinstance(self.memory_tokens, int) \
                or self.memory_tokens < 500:
            raise UsageError(f"memory_tokens must be an integer of at least 500 (or None: no buffer limit), "
                             f"got {self.memory_tokens!r}")
        if isinstance(self.keep_turns, bool) or not isinstance(self.keep_turns, int) or self.keep_turns < 1:
            raise UsageError(f"keep_turns must be a positive integer, got {self.keep_turns!r}")

    @property
    def threshold(self) -> int:
        """The estimated tokens past which the buffer is consolidated."""
        return int(self.memory_tokens * CONSOLIDATE_AT)


def needs_consolidation(messages: Sequence[Mapping[str, Any]], budget: int) -> bool:
    """Does the buffer hold more than :data:`CONSOLIDATE_AT` of ``budget``?"""
    return estimate_tokens(messages) > int(budget * CONSOLIDATE_AT)


def _turns(messages: Sequence[Mapping[str, Any]]) -> list[int]:
    """Where each turn after the system and task messages begins: a turn is a message and
    the tool results that follow it, so an assistant's tool calls are never split from
    their results."""
    return [i for i in range(2, len(messages)) if messages[i].get("role") != "tool"]


def _is_summary(message: Mapping[str, Any]) -> bool:
    return message.get("role") == "user" and str(message.get("content") or "").startswith(SUMMARY_PREFIX)


def split_point(messages: Sequence[Mapping[str, Any]], keep_turns: int, budget: int) -> int | None:
    """The index of the first message consolidation keeps: the last ``keep_turns`` turns, or
    fewer if they exceed :data:`RECENT_SHARE` of ``budget`` (the last turn always). None when
    there is nothing worth consolidating before it (no turn, or only an earlier summary: the
    turns kept are too big for the budget, and another summary would not make them smaller)."""
    starts = _turns(messages)
    if not starts:
        return None
    limit = int(budget * RECENT_SHARE)
    keep = starts[-1]
    for start in reversed(starts[-keep_turns:]):
        if estimate_tokens(messages[start:]) > limit:
            break
        keep = start
    older = [i for i in starts if i < keep]
    if not older or (len(older) == 1 and _is_summary(messages[older[0]])):
        return None
    return keep


def _transcript(messages: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for m in messages:
        role = str(m.get("role"))
        content = m.get("content")
        text = content if isinstance(content, str) else ("" if content is None else json.dumps(content))
        for call in m.get("tool_calls") or ():
            function = call.get("function") or {}
            text += f"\n-> calls {function.get('name')}({function.get('arguments')})"
        lines.append(f"[{role}] {text.strip()}")
    return "\n\n".join(lines)


def consolidation_request(messages: Sequence[Mapping[str, Any]], upto: int) -> list[dict[str, Any]]:
    """The messages of the separate model call that consolidates ``messages[2:upto]`` (the
    turns after the system and task messages, before ``upto``): a transcript of them, so the
    call needs no tools and no tool-call pairing."""
    task = messages[1].get("content") if len(messages) > 1 else ""
    return [
        {"role": "system", "content": _INSTRUCTIONS},
        {"role": "user", "content": f"The agent's task: {task}\n\nThe older turns:\n\n"
                                    f"{_transcript(messages[2:upto])}"},
    ]


@attrs.frozen
class Consolidation:
    """What a consolidation answer says: a summary, and facts as (key, value) pairs."""

    summary: str
    facts: tuple[tuple[str, str], ...] = ()


def _json_object(text: str) -> Any:
    start, end = text.find("{"), text.rfind("}")
    if start < 0 or end <= start:
        return None
    try:
        return json.loads(text[start:end + 1])
    except ValueError:
        return None


def parse_consolidation(content: str | None, budget: int) -> Consolidation:
    """The model's answer, leniently: JSON ``{"summary", "facts"}`` (also inside a code fence
    or prose); anything else is taken as the summary itself, with no facts. The summary is
    cut to :data:`SUMMARY_SHARE` of ``budget``."""
    text = content or ""
    data = _json_object(text)
    summary: Any = text
    facts: list[tuple[str, str]] = []
    if isinstance(data, dict) and ("summary" in data or "facts" in data):
        summary = data.get("summary") or ""
        for item in data.get("facts") or () if isinstance(data.get("facts"), list) else ():
            if not isinstance(item, dict) or not isinstance(item.get("key"), str) or not item["key"].strip():
                continue
            value = item.get("value")
            value = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
            facts.append((item["key"].strip()[:MAX_KEY_CHARS], value[:MAX_VALUE_CHARS]))
    if not isinstance(summary, str):
        summary = json.dumps(summary, ensure_ascii=False, default=str)
    limit = int(budget * SUMMARY_SHARE) * 4  # characters (see estimate_tokens)
    summary = summary.strip()
    if len(summary) > limit:
        summary = summary[:limit] + " [cut]"
    return Consolidation(summary, tuple(dict(facts[:MAX_FACTS]).items()))


def apply_consolidation(messages: Sequence[Mapping[str, Any]], summary: str, upto: int) -> list[dict[str, Any]]:
    """The buffer after consolidating ``messages[2:upto]``: the system and task messages, the
    summary (as a user message, which every chat server accepts anywhere), then the kept turns."""
    note = {"role": "user", "content": SUMMARY_PREFIX + (summary or "(nothing to note)")}
    return [dict(m) for m in messages[:2]] + [note] + [dict(m) for m in messages[upto:]]
