"""The PostgreSQL store's statements, rendered once at import time.

The head writes and wake rules are the shared templates of :mod:`peo.store.sql`, rendered
with numbered, typed placeholders (``$3::bigint``); they bind the tuples built there, the
same as the SQLite store's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .. import sql, stalls
from ..sqlreads import Reads

__all__ = [
    "APPEND_HEAD",
    "CLAIM",
    "DELETE_CONSUMED",
    "DROP_LEASES",
    "IMPORT_HEAD",
    "INSERT_ENTRY",
    "INSERT_OBJECT",
    "LOCK",
    "PRUNE_REFUSED",
    "QUARANTINE",
    "READS",
    "REFUSE",
    "RELEASE",
    "SIGNAL",
    "WAKE_PARENT",
]

# The SQL type of each parameter the shared templates name.
_TYPES = {
    "id": "text", "handler": "text", "scope": "text", "identity": "text", "parent": "text", "status": "text",
    "wait_signal": "text", "reason": "text", "name": "text", "labels": "text", "root": "text",
    "forked_from": "text",
    "priority": "bigint", "seq": "bigint", "prev_seq": "bigint", "due": "bigint", "now": "bigint",
    "consumed": "bigint", "token": "bigint",
    "hash": "bytea", "body": "bytea", "sig": "bytea", "result": "bytea",
    "wait_children": "boolean", "release": "boolean", "deleted": "boolean",
}


def _typed(position: int, name: str) -> str:
    return f"${position}::{_TYPES[name]}"


def _push_stalled(stalled_on: str, node: str) -> str:
    """:func:`peo.store.stalls.push_stalled` with arrays: ``node`` first, once, at most
    STALLED_KEPT ids (a NULL list reads as an empty one)."""
    return (f"array_to_string((array_prepend({node}, array_remove(string_to_array({stalled_on}, {stalls.NL}),"
            f" {node})))[1:{stalls.STALLED_KEPT}], {stalls.NL})")


#: Drop every lease of one owner ($1), judging each as a claim without progress or not.
DROP_LEASES = sql.drop_leases(_push_stalled, "$1::text")

INSERT_OBJECT = sql.insert_object.render(_typed)
INSERT_ENTRY = sql.insert_entry.render(_typed)
APPEND_HEAD = sql.append_head.render(_typed)
RELEASE = sql.release.render(_typed) + " RETURNING due_at"
SIGNAL = sql.signal_wake.render(_typed) + " RETURNING status, due_at"
QUARANTINE = sql.quarantine.render(_typed)
WAKE_PARENT = sql.wake_parent.render(_typed) + " RETURNING id"
IMPORT_HEAD = sql.import_head.render(_typed)

DELETE_CONSUMED = "DELETE FROM inbox WHERE object_id = $1 AND id = ANY($2::bigint[])"
PRUNE_REFUSED = sql.prune_refused.render(_typed)

# Move refused signals out of the inbox: (object id, ids, reasons, senders, now) -> how many.
REFUSE = f"""
    WITH moved AS (
        DELETE FROM inbox i USING unnest($2::bigint[], $3::text[], $4::text[]) AS r(id, reason, sender)
        WHERE i.object_id = $1::text AND i.id = r.id
        RETURNING i.id, i.name, r.reason, r.sender, i.created_at
    ), kept AS (
        INSERT INTO refused_signals (id, object_id, name, reason, sender, refused_at, created_at)
        SELECT id, $1::text, substr(name, 1, {sql.NAME_KEPT}), reason, sender, $5::bigint, created_at FROM moved
    )
    SELECT count(*) FROM moved
"""

# Lock the object rows a write is about to decide from, in id order (one fixed order for
# every multi-row locker, so two transactions never wait for each other in a cycle).
#
# Why a separate statement: under READ COMMITTED each statement reads from a snapshot taken
# when *it* starts. An UPDATE that blocks on a row lock re-reads that row once the lock is
# free, but its subqueries (EXISTS on the inbox, on the children) still see the statement's
# old snapshot. So "append: go dormant unless the awaited signal is in the inbox" racing
# "signal: insert into the inbox, wake the object if dormant" could end with the signal
# committed, the append's EXISTS blind to it, the signal's update seeing the object still
# runnable: dormant forever. Taking the row locks first and running the update as a new
# statement gives that update a snapshot taken after every transaction that held those
# rows had committed. signal() and child terminations lock the same rows before they write,
# so each such pair is strictly ordered and whichever runs second sees the first.
LOCK = "SELECT id, seq, lease_token FROM objects WHERE id = ANY($1::text[]) ORDER BY id FOR UPDATE"

# SKIP LOCKED: rows another claimer (or a writer) holds are passed over, so claimers never
# queue behind each other, and the row locks taken here make each lease exclusive. The CTE
# is MATERIALIZED so the locking select runs exactly once. Each row gets its own random
# 62-bit token, joined by rank from an array. With $9 (avoid_stalled) an object whose latest
# stall was on this owner ($10: the owner and a newline) is skipped. The SET judges the
# previous claim of each row (see peo.store.stalls.claim_set).
CLAIM = f"""
    WITH picked AS MATERIALIZED (
        SELECT id, priority, due_at FROM objects
        WHERE due_at <= $1 AND (lease_until IS NULL OR lease_until < $1)
          AND status IN ({sql.LIVE})
          AND handler = ANY($3::text[]) AND ($4::text[] IS NULL OR scope = ANY($4::text[]))
          AND id <> ALL($5::text[])
          AND (NOT $9::boolean OR {stalls.may_take(lambda name: "$1" if name == "now" else "$10::text")})
        ORDER BY priority DESC, due_at
        LIMIT $2
        FOR UPDATE SKIP LOCKED
    ), ranked AS (
        SELECT id, row_number() OVER (ORDER BY priority DESC, due_at, id) AS n FROM picked
    )
    UPDATE objects o SET lease_owner = $6, lease_token = t.token, lease_until = $7,
        {stalls.claim_set(_push_stalled, "$1")}
    FROM ranked JOIN unnest($8::bigint[]) WITH ORDINALITY AS t(token, n) USING (n)
    WHERE o.id = ranked.id
    RETURNING o.id, o.lease_token, ranked.n, {", ".join("o." + c.strip() for c in sql.CLAIM_COLUMNS.split(","))}
"""


def _numbered(n: int) -> str:
    return f"${n}"


_ENTRIES_OF = "SELECT object_id, body, sig FROM entries WHERE object_id = ANY($1::text[]) ORDER BY object_id, seq"


def _entries_of(ids: list[str]) -> tuple[str, tuple[list[str]]]:
    return _ENTRIES_OF, (ids,)


def _contains(text: str, part: str) -> str:
    return f"strpos({text}, {part}::text) > 0"


def _one_of(column: str, values: list[str], arg: Callable[[Any], str]) -> str:
    return f"{column} = ANY({arg(values)}::text[])"


READS = Reads(
    _numbered, entries_of=_entries_of, contains=_contains, one_of=_one_of,
    next_due=f"SELECT min(due_at) FROM objects WHERE due_at IS NOT NULL AND status IN ({sql.LIVE})",
    push_stalled=_push_stalled,
)
