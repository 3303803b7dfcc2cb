"""What the CLI prints: terminal-safe text, JSON-safe values, aligned tables, times, and the
one-line summary of what a memory entry recorded.

Output for people is aligned plain text (no extra dependency); ``--json`` output is for
programs and is always valid JSON (bytes become hex strings, non-finite floats strings).
"""

from __future__ import annotations

import datetime as _dt
import enum
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import IO, Any

__all__ = ["clean", "compact", "dumps", "iso", "jsonable", "plural", "short_outcome", "table", "when"]


def clean(text: object, limit: int | None = None) -> str:
    """Text from the store, made safe for a terminal: control characters (which could
    carry escape sequences from an untrusted object) are shown escaped."""
    s = str(text)
    s = "".join(c if (32 <= ord(c) != 127 and not 0x80 <= ord(c) < 0xA0) else repr(c)[1:-1] for c in s)
    if limit is not None and len(s) > limit:
        s = s[: max(limit - 1, 0)] + "…"
    return s


_PLURALS = {"entry": "entries", "child": "children"}


def plural(n: int, word: str) -> str:
    """``word`` for a count of ``n``: "1 entry", "2 entries", "1 claim", "3 claims"."""
    return word if n == 1 else _PLURALS.get(word, word + "s")


def jsonable(value: Any) -> Any:
    """A JSON-safe copy: bytes become hex strings, tuples lists, keys strings, and a
    non-finite float its name (JSON has no NaN)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {(k if isinstance(k, str) else str(jsonable(k))): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    import attrs

    if attrs.has(type(value)):
        from ..core.codec import unstructure

        return jsonable(unstructure(value))
    return str(value)


def dumps(value: Any, *, indent: int | None = 2) -> str:
    """``value`` as JSON text (see :func:`jsonable`)."""
    return json.dumps(jsonable(value), indent=indent, ensure_ascii=False, allow_nan=False)


def compact(value: Any, limit: int = 60) -> str:
    """``value`` as one short line of JSON, cut at ``limit`` characters."""
    return clean(json.dumps(jsonable(value), ensure_ascii=False, separators=(",", ":")), limit)


def when(ns: int | None) -> str:
    """A time (ns since the epoch) for people: UTC to the millisecond; ``-`` for none."""
    if ns is None:
        return "-"
    t = _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def iso(ns: int) -> str:
    """A time (ns since the epoch) for programs: ISO 8601 in UTC."""
    return _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.UTC).isoformat().replace("+00:00", "Z")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], out: IO[str]) -> None:
    """An aligned plain-text table (the last column is not padded)."""
    cells = [[clean(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))

    def line(values: Sequence[str]) -> str:
        parts = [v.ljust(widths[i]) for i, v in enumerate(values[:-1])]
        return "  ".join([*parts, values[-1]]).rstrip()

    print(line(list(headers)), file=out)
    for r in cells:
        print(line(r), file=out)


def short_outcome(action: str, o: Mapping[str, Any], limit: int = 100) -> str:
    """One line saying what an entry recorded."""
    parts: list[str] = []
    if action == "instantiate":
        raw = o.get("intent")
        intent: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        parts.append(f"{intent.get('handler', '?')} {compact(intent.get('goal', {}), 40)}")
    if "reason" in o and action == "terminate":
        parts.append(str(o["reason"]))
    status = o.get("status")
    if status == "shed":  # a node let it go, short of memory
        parts.append(f"shed ({o.get('shed', '?')})")
    elif (status is not None and status != "ok") or (status == "ok" and action == "execute"):
        parts.append(str(status))
    restored = o.get("restore")
    if action == "mutate" and isinstance(restored, Mapping):
        parts.append(f"state restored to seq {restored.get('seq')} by {restored.get('by')}: {restored.get('reason')}")
    if o.get("checkpoint") is True:
        parts.append("checkpoint")
    err = o.get("error")
    if isinstance(err, Mapping):
        parts.append(f"{err.get('class')}: {err.get('message')}")
    if "trigger" in o:
        parts.append(f"trigger {o['trigger']}")
    if isinstance(o.get("retry_in"), int):
        parts.append(f"retry in {o['retry_in'] / 1e9:.2f} s")
    wake = o.get("wake")
    if isinstance(wake, Mapping):
        if wake.get("signal"):
            parts.append(f"wait for signal {wake['signal']}")
        if isinstance(wake.get("until"), int):
            parts.append(f"until {when(wake['until'])[11:]}")  # the time of day; the date is in TIME
    if isinstance(o.get("children"), list):
        n = len(o["children"])
        parts.append(f"{n} {plural(n, 'child')}" + (" (wait)" if o.get("wait") else ""))
    if action == "mutate" and isinstance(o.get("new"), Mapping) and o["new"]:
        parts.append("refined " + ", ".join(sorted(map(str, o["new"]))))
    if action == "execute" and o.get("status") == "cannot_do":
        parts.append(f"cannot do {o.get('capability')}")
    if isinstance(o.get("signals"), list):
        names = [str(s.get("name")) for s in o["signals"] if isinstance(s, Mapping)]
        parts.append("signals " + ",".join(names))
    if "state" in o:
        ops = [_operation(k, v) for k, v in o["state"].items() if str(k)[3:].isdigit() and str(k).startswith("fn.")] \
            if isinstance(o["state"], Mapping) else []
        ops = [op for op in ops if op]
        parts.append("; ".join(ops) if ops else "state " + compact(o["state"], 30))
    if action == "terminate" and o.get("result") is not None:
        parts.append("result " + compact(o["result"], 30))
    if isinstance(o.get("latency"), int):
        parts.append(f"{o['latency'] / 1e6:.1f} ms")
    return clean("; ".join(parts), limit)


def _operation(key: str, record: Any) -> str:
    """A durable function's recorded operation in brief (an agent's model and tool calls)."""
    if not isinstance(record, Mapping):
        return ""
    op, name, result = record.get("op"), record.get("name"), record.get("result")
    if op == "step" and name == "model" and isinstance(result, Mapping):
        calls = [f"{c.get('name')}({compact_args(c.get('arguments'))})" for c in result.get("tool_calls") or ()
                 if isinstance(c, Mapping)]
        raw = result.get("usage")
        usage: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        said = ", ".join(calls) if calls else compact(result.get("content"), 30)
        return f"model -> {said} ({usage.get('prompt', 0)}+{usage.get('completion', 0)} tokens)"
    if op == "step":
        shown = compact(result, 30) if "error" not in record else f"failed: {compact(record['error'], 30)}"
        return f"{key} {name} -> {shown}"
    if op == "signal":
        return f"{key} wait for {name}"
    return f"{key} {op}" + (f" {name}" if name else "")


def compact_args(raw: Any) -> str:
    """A tool call's arguments (the model's JSON text) in brief."""
    return clean(str(raw), 40)

