"""What a durable function records in its object's working state, and how it reads it back.

Each operation the function reaches has a position (0, 1, 2 ...) and, once carried out, a
record under the key ``fn.<position>`` (:func:`record_key`): ``{"op", "name", "seq", ...}``,
written by the same signed entry that carried the operation out. Besides them, the state
holds the function's version (:data:`VERSION_KEY`) and its last progress value
(:data:`PROGRESS_KEY`). Pure: no I/O, no clock.
"""

from __future__ import annotations

import builtins
import datetime
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..core.model import Action, Entry, ObjectInfo, Signal, Step
from ..tracebacks import traceback_without

__all__ = [
    "MAX_PROGRESS_BYTES",
    "PROGRESS_KEY",
    "VERSION_KEY",
    "describe",
    "error_class_of",
    "gathered",
    "initial_goal",
    "is_record_key",
    "progress_of",
    "record_key",
    "settled",
    "show",
    "signal_in",
    "signal_out",
    "step_traceback",
    "unix_time",
    "woken",
]

#: The working-state key of the function's version, recorded by the object's first entry
#: after entry 0 (``app.function(..., version=)``, else a digest of the function's code).
VERSION_KEY = "fn.version"

#: The working-state key of the value a function last gave ``run.progress``.
PROGRESS_KEY = "fn.progress"
#: The largest progress value, packed: it is re-written with the entries that change it, and
#: it is meant to say "what is it doing now?", not to hold results (a step returns those).
MAX_PROGRESS_BYTES = 4096

# Frames of peo.functions itself, left out of a failed step's recorded traceback.
_OWN_FRAMES = str(Path(__file__).resolve().parent) + os.sep


def progress_of(info: ObjectInfo | Mapping[str, Any]) -> Any:
    """The value a durable function last gave ``run.progress`` (None if none yet), from
    ``await client.get(oid)`` or from an object's working state."""
    state = info.state if isinstance(info, ObjectInfo) else info
    return state.get(PROGRESS_KEY)


def record_key(position: int) -> str:
    """The working-state key that records the operation at ``position``."""
    return f"fn.{position}"


def is_record_key(key: str) -> bool:
    return key.startswith("fn.") and key[3:].isdigit()


def error_class_of(exc: BaseException) -> str:
    """The error class a failed step is recorded with: ``timeout`` for any TimeoutError (as
    the node records a handler's), else the exception's class name."""
    return "timeout" if isinstance(exc, builtins.TimeoutError) else type(exc).__name__


def step_traceback(exc: BaseException) -> str:
    """A failed step's traceback, without the frames of peo.functions calling it."""
    return traceback_without(exc, (_OWN_FRAMES,))


def unix_time(when: object) -> float | None:
    """``when`` as Unix seconds, or None if it is neither a finite number nor an aware datetime."""
    if isinstance(when, datetime.datetime):
        return when.timestamp() if when.utcoffset() is not None else None
    if isinstance(when, bool) or not isinstance(when, int | float):
        return None
    return float(when) if math.isfinite(when) else None


def show(value: object) -> str:
    """``value`` for an error message, briefly."""
    if isinstance(value, datetime.datetime) and value.utcoffset() is None:
        return f"the naive datetime {value.isoformat()} (give it a tzinfo)"
    text = repr(value)
    return text if len(text) <= 60 else f"a {type(value).__name__}"


def describe(op: object, name: object) -> str:
    return f"{op} {name!r}" if name is not None else str(op)


def signal_out(sig: Signal) -> dict[str, Any]:
    out = {"id": sig.id, "name": sig.name, "payload": sig.payload}
    if sig.sender is not None:
        out["sender"] = sig.sender
    return out


def signal_in(out: dict[str, Any]) -> Signal:
    return Signal(out["name"], out.get("payload"), out.get("id", 0), sender=out.get("sender"))


def woken(record: dict[str, Any], step: Step) -> bool:
    """Has the wait ``record`` describes ended (its reentry entry is in memory)?"""
    return len(step.memory) > int(record["seq"]) + 1


def initial_goal(step: Step) -> dict[str, Any]:
    """The goal the object was created with (entry 0's): a durable function's arguments on
    every re-run, also after ``run.refine`` changed the goal, so that the code reaches the
    same operations."""
    memory = step.memory
    first = memory[0] if len(memory) else None
    if first is not None and first.seq == 0 and first.action is Action.INSTANTIATE:
        intent = first.outcome.get("intent")
        goal = intent.get("goal") if isinstance(intent, dict) else None
        if isinstance(goal, dict):
            return goal
    return step.goal


def settled(state: dict[str, Any], memory: Sequence[Entry]) -> dict[str, Any]:
    """``state`` (a function's working state after the last entry of ``memory``) with each
    record that points at an entry of ``memory`` given its answer, so that it replays without
    that memory: a fork starts from it, and its own memory holds only its entry 0.

    A signal wait that ended records the signal it returned (or ``timed_out``); one still
    waiting is dropped, so that the fork reaches the wait afresh and waits for itself; a
    refine records the goal it set. A gather's record is kept as it is: its children are the
    parent's, which the fork does not have (forking past a gather is refused)."""
    out = dict(state)
    last = len(memory) - 1
    for key, record in state.items():
        if not is_record_key(key) or not isinstance(record, dict):
            continue
        op, seq = record.get("op"), record.get("seq")
        if not isinstance(seq, int):
            continue
        if op == "signal" and "signal" not in record and "timed_out" not in record:
            if seq + 1 > last:
                del out[key]
                continue
            after = memory[seq + 1].outcome.get("signals", ())
            found = [s for s in after if isinstance(s, dict) and s.get("name") == record.get("name")]
            first = min(found, key=lambda s: int(s.get("id", 0))) if found else None
            out[key] = {**record, "signal": first} if first is not None else {**record, "timed_out": True}
        elif op == "refine" and "new" not in record and seq <= last:
            out[key] = {**record, "new": memory[seq].outcome.get("new", {})}
    return out


def gathered(state: dict[str, Any]) -> bool:
    """Does ``state`` record a gather (children a fork of it would not have)?"""
    return any(is_record_key(k) and isinstance(r, dict) and r.get("op") == "gather" for k, r in state.items())
