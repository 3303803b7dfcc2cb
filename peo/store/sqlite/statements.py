"""The SQLite store's statements, rendered once at import time.

The head writes and wake rules are the shared templates of :mod:`peo.store.sql`, rendered
with SQLite's numbered placeholders (``?3``); they bind the tuples built there.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import sql, stalls
from ..sqlreads import Reads

__all__ = [
    "APPEND_HEAD",
    "DELETE_CONSUMED",
    "DROP_LEASES",
    "IMPORT_HEAD",
    "INSERT_ENTRY",
    "INSERT_OBJECT",
    "PRUNE_REFUSED",
    "QUARANTINE",
    "READS",
    "RELEASE",
    "SIGNAL",
    "WAKE_PARENT",
]


def _numbered(position: int, _: str) -> str:
    return f"?{position}"


def _param(position: int) -> str:
    """The reads' placeholders are numbered too: a shared statement may bind one value twice."""
    return f"?{position}"


def _push_stalled(stalled_on: str, node: str) -> str:
    return f"{stalls.SQLITE_PUSH}({stalled_on}, {node})"  # registered on the writer (see connection.py)


#: Drop every lease of one owner (?1), judging each as a claim without progress or not.
DROP_LEASES = sql.drop_leases(_push_stalled, "?1")


INSERT_OBJECT = sql.insert_object.render(_numbered)
INSERT_ENTRY = sql.insert_entry.render(_numbered)
APPEND_HEAD = sql.append_head.render(_numbered)
RELEASE = sql.release.render(_numbered)
SIGNAL = sql.signal_wake.render(_numbered)
QUARANTINE = sql.quarantine.render(_numbered)
WAKE_PARENT = sql.wake_parent.render(_numbered)
IMPORT_HEAD = sql.import_head.render(_numbered)
PRUNE_REFUSED = sql.prune_refused.render(_numbered)
DELETE_CONSUMED = "DELETE FROM inbox WHERE id = ? AND object_id = ?"

# INDEXED BY: without statistics SQLite may walk the table instead. objects_due holds only
# objects with a due time, so these never read a dormant-forever or finished object.


def _entries_of(ids: list[str]) -> tuple[str, list[str]]:
    marks = ",".join("?" * len(ids))
    return f"SELECT object_id, body, sig FROM entries WHERE object_id IN ({marks}) ORDER BY object_id, seq", ids


def _contains(text: str, part: str) -> str:
    return f"instr({text}, {part}) > 0"


def _one_of(column: str, values: list[str], arg: Callable[[Any], str]) -> str:
    return f"{column} IN ({', '.join(arg(v) for v in values)})"


READS = Reads(_param, entries_of=_entries_of, contains=_contains, one_of=_one_of,
              push_stalled=_push_stalled, inbox_by_name="inbox INDEXED BY inbox_object_name", next_due=(
    "SELECT due_at FROM objects INDEXED BY objects_due WHERE due_at IS NOT NULL"
    f" AND status IN ({sql.LIVE}) ORDER BY due_at LIMIT 1"
))
