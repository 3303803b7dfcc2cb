"""The SQLite store's schema: its numbered migrations, and opening a database file.

Migrations are never renumbered or rewritten: a store records how many have run and an
existing file is upgraded in place by the ones it lacks.
"""

from __future__ import annotations

import random
import sqlite3
import time

from ..fleet import NODES_MIGRATION
from ..sql import check_creatable, migrations_to_run

__all__ = ["MIGRATIONS", "setup"]

# Numbered migrations; the version table records how many have run.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE objects (
        id TEXT PRIMARY KEY,
        handler TEXT NOT NULL,
        scope TEXT NOT NULL,
        identity TEXT NOT NULL,
        priority INTEGER NOT NULL,
        status TEXT NOT NULL,
        seq INTEGER NOT NULL,
        head BLOB NOT NULL,
        due_at INTEGER,
        lease_owner TEXT,
        lease_token INTEGER,
        lease_until INTEGER,
        parent TEXT,
        result BLOB,
        reason TEXT,
        wait_signal TEXT,
        wait_children INTEGER NOT NULL DEFAULT 0,
        inbox INTEGER NOT NULL DEFAULT 0,
        created_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    -- Only claimable objects have a due time, so claiming never scans dormant-forever
    -- or finished objects.
    CREATE INDEX objects_due ON objects (due_at) WHERE due_at IS NOT NULL;
    CREATE INDEX objects_parent ON objects (parent) WHERE parent IS NOT NULL;
    CREATE INDEX objects_status ON objects (status);
    CREATE TABLE entries (
        object_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        body BLOB NOT NULL,
        sig BLOB NOT NULL,
        hash BLOB NOT NULL,
        PRIMARY KEY (object_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE inbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        object_id TEXT NOT NULL,
        name TEXT NOT NULL,
        payload BLOB NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX inbox_object ON inbox (object_id, id);
    """,
    # 2: leases are looked up by expiry (is anything leased right now?) without a scan.
    """
    CREATE INDEX objects_lease ON objects (lease_until) WHERE lease_until IS NOT NULL;
    """,
    # 3: entries in append order (a rowid table) with a unique (object_id, seq) index.
    # Keyed by (object_id, seq), the rows of many objects stepping together landed on as
    # many B-tree pages, so a group commit of 200 objects wrote ~200 pages; in append order
    # it writes the few pages the new rows fill plus the small index's (3-4x faster here).
    """
    CREATE TABLE entries_v3 (
        object_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        body BLOB NOT NULL,
        sig BLOB NOT NULL,
        hash BLOB NOT NULL
    );
    INSERT INTO entries_v3 (object_id, seq, body, sig, hash)
        SELECT object_id, seq, body, sig, hash FROM entries ORDER BY object_id, seq;
    DROP TABLE entries;
    ALTER TABLE entries_v3 RENAME TO entries;
    CREATE UNIQUE INDEX entries_object_seq ON entries (object_id, seq);
    """,
    # 4: claimable objects by priority, then due time: a claim reads the due objects of the
    # highest priority level first and stops at its limit, instead of sorting every due
    # object (10,000 woken at once made each claim sort 10,000 rows).
    """
    CREATE INDEX objects_claim ON objects (priority, due_at) WHERE due_at IS NOT NULL;
    -- Rewritten on every change of status (twice per wake-up) and of little use with a
    -- handful of distinct values: listing by status scans the table in id order instead.
    DROP INDEX objects_status;
    """,
    # 5: the nodes that serve each handler (peo submit warns when none does).
    NODES_MIGRATION.replace("{s}", ""),
    # 6: each object's labels (entry 0's Context.labels) in its head, for listing by label
    # (see peo.store.sql.labels_text). Objects created before this have none recorded.
    """
    ALTER TABLE objects ADD COLUMN labels TEXT NOT NULL DEFAULT '';
    """,
    # 7: signed signals and lineage totals (issue 19). Each inbox row keeps the sender's
    # signed envelope (its seal: NULL for a signal sent before signals were signed), and
    # bounded reads of the inbox by name find an awaited signal among many others (the wake
    # rules' EXISTS uses the same index). Refused signals move to a table of their own
    # (the newest REFUSALS_KEPT per object). Each object records its top-level ancestor
    # (root), so that the objects under one root are counted by an index: objects created
    # before this record none and count as top-level.
    """
    ALTER TABLE inbox ADD COLUMN seal BLOB;
    CREATE INDEX inbox_object_name ON inbox (object_id, name, id);
    CREATE TABLE refused_signals (
        id INTEGER NOT NULL,
        object_id TEXT NOT NULL,
        name TEXT NOT NULL,
        reason TEXT NOT NULL,
        sender TEXT,
        refused_at INTEGER NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX refused_signals_object ON refused_signals (object_id, refused_at, id);
    ALTER TABLE objects ADD COLUMN root TEXT;
    CREATE INDEX objects_root ON objects (root) WHERE root IS NOT NULL;
    """,
    # 8: self-healing (issue 14). Each claim records the seq it began at (claim_seq); a claim
    # that ends without progress (its node died or gave up holding the object, the seq
    # unchanged) adds one to stalls and its node to stalled_on (newest first, one per line),
    # across nodes and restarts; progress resets stalls. Alerts: one row per object,
    # incident and sink, so that a delivery is neither lost nor repeated across restarts.
    """
    ALTER TABLE objects ADD COLUMN claim_seq INTEGER;
    ALTER TABLE objects ADD COLUMN stalls INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE objects ADD COLUMN stalled_on TEXT;
    CREATE TABLE alerts (
        object_id TEXT NOT NULL,
        incident TEXT NOT NULL,
        sink TEXT NOT NULL,
        payload BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at INTEGER NOT NULL,
        delivered_at INTEGER,
        last_error TEXT,
        PRIMARY KEY (object_id, incident, sink)
    );
    CREATE INDEX alerts_due ON alerts (next_at) WHERE delivered_at IS NULL;
    """,
    # 9: what a node says about itself when it registers (a configuration repair: it runs
    # on the known-good copy of a profile or policy that went bad), for peo nodes.
    """
    ALTER TABLE nodes ADD COLUMN notes TEXT;
    """,
    # 10: agents' long-term facts (issue 15): versioned keys per identity, a tombstone being
    # a version (see peo.store.facts). Rows are only inserted; FTS5 indexes the live ones
    # (external content: the text is stored once, in facts), kept in sync by triggers.
    """
    CREATE TABLE facts (
        id INTEGER PRIMARY KEY,
        identity TEXT NOT NULL,
        key TEXT NOT NULL,
        version INTEGER NOT NULL,
        value TEXT NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0,
        object_id TEXT,
        seq INTEGER,
        created_at INTEGER NOT NULL,
        UNIQUE (identity, key, version)
    );
    CREATE VIRTUAL TABLE facts_fts USING fts5(key, value, content='facts', content_rowid='id',
                                              tokenize='porter unicode61');
    CREATE TRIGGER facts_fts_insert AFTER INSERT ON facts WHEN NOT new.deleted BEGIN
        INSERT INTO facts_fts (rowid, key, value) VALUES (new.id, new.key, new.value);
    END;
    CREATE TRIGGER facts_fts_delete AFTER DELETE ON facts WHEN NOT old.deleted BEGIN
        INSERT INTO facts_fts (facts_fts, rowid, key, value) VALUES ('delete', old.id, old.key, old.value);
    END;
    """,
    # 11: versioned state (issue 16): when an operator's tombstone deleted the object (NULL:
    # not deleted; its head is otherwise as before), and the object a fork was forked from.
    """
    ALTER TABLE objects ADD COLUMN deleted_at INTEGER;
    ALTER TABLE objects ADD COLUMN forked_from TEXT;
    CREATE INDEX objects_forked_from ON objects (forked_from) WHERE forked_from IS NOT NULL;
    CREATE INDEX objects_deleted ON objects (deleted_at) WHERE deleted_at IS NOT NULL;
    """,
]


def statements(script: str) -> list[str]:
    """The SQL statements of a migration: split at semicolons, except those inside a
    statement (a trigger's body), which SQLite's own parser tells apart."""
    out: list[str] = []
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\n;"):
                out.append(pending)
            pending = ""
    if pending.strip(" \t\n;"):
        out.append(pending)
    return out


def setup(conn: sqlite3.Connection, *, durability: str, busy_timeout_ms: int, where: str = "this file",
          create: bool = True, force: bool = False) -> None:
    """Set the connection up (WAL, durability) and bring the schema to the current version.
    Runs on the connection's own thread: it may wait for other processes' locks. A file
    without peo's tables is left untouched unless it may be made a store (see
    :func:`peo.store.sql.check_creatable`)."""
    conn.execute(f"PRAGMA busy_timeout = {busy_timeout_ms}")
    tables = [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")]
    if "peo_schema" not in tables:
        check_creatable(where, tables, create=create, force=force)  # before WAL: that writes the file
    # Switching a fresh file to WAL takes an exclusive lock and SQLite answers "locked"
    # at once instead of waiting out busy_timeout: nodes opening a new store together
    # would fail, so retry briefly.
    for attempt in range(100):
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == 99:
                raise
            time.sleep(0.01 + 0.04 * random.random())
    conn.execute(f"PRAGMA synchronous = {durability.upper()}")
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("CREATE TABLE IF NOT EXISTS peo_schema (version INTEGER NOT NULL)")
        row = conn.execute("SELECT max(version) FROM peo_schema").fetchone()
        current = row[0] if row and row[0] is not None else 0
        for number in migrations_to_run(current, MIGRATIONS):
            for statement in statements(MIGRATIONS[number]):
                conn.execute(statement)
            conn.execute("INSERT INTO peo_schema (version) VALUES (?)", (number + 1,))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
