"""The PostgreSQL store's schema: its numbered migrations, run once per schema.

Migrations are never renumbered or rewritten: a store records how many have run and an
existing schema is upgraded in place by the ones it lacks.
"""

from __future__ import annotations

import hashlib
from typing import Any

from ..fleet import NODES_MIGRATION
from ..sql import check_creatable, migrations_to_run

__all__ = ["MIGRATIONS", "migrate"]

# Numbered migrations; the version table records how many have run. ``{s}`` is the
# quoted schema: DDL names it explicitly because the schema may have been created in the
# same transaction, and the connection's search_path was fixed before it existed.
MIGRATIONS: list[str] = [
    """
    CREATE TABLE {s}.objects (
        id TEXT PRIMARY KEY,
        handler TEXT NOT NULL,
        scope TEXT NOT NULL,
        identity TEXT NOT NULL,
        priority BIGINT NOT NULL,
        status TEXT NOT NULL,
        seq BIGINT NOT NULL,
        head BYTEA NOT NULL,
        due_at BIGINT,
        lease_owner TEXT,
        lease_token BIGINT,
        lease_until BIGINT,
        parent TEXT,
        result BYTEA,
        reason TEXT,
        wait_signal TEXT,
        wait_children BOOLEAN NOT NULL DEFAULT false,
        inbox BIGINT NOT NULL DEFAULT 0,
        created_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL
    );
    -- Only claimable objects have a due time, so claiming never scans dormant-forever
    -- or finished objects.
    CREATE INDEX objects_due ON {s}.objects (due_at) WHERE due_at IS NOT NULL;
    CREATE INDEX objects_parent ON {s}.objects (parent) WHERE parent IS NOT NULL;
    CREATE INDEX objects_status ON {s}.objects (status);
    -- busy() asks "is anything leased?": without this it would scan every object.
    CREATE INDEX objects_lease ON {s}.objects (lease_until) WHERE lease_until IS NOT NULL;
    CREATE TABLE {s}.entries (
        object_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        body BYTEA NOT NULL,
        sig BYTEA NOT NULL,
        hash BYTEA NOT NULL,
        PRIMARY KEY (object_id, seq)
    );
    CREATE TABLE {s}.inbox (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        object_id TEXT NOT NULL,
        name TEXT NOT NULL,
        payload BYTEA NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX inbox_object ON {s}.inbox (object_id, id);
    """,
    # 2: the nodes that serve each handler (peo submit warns when none does).
    NODES_MIGRATION.replace("{s}", "{s}."),
    # 3: each object's labels (entry 0's Context.labels) in its head, for listing by label
    # (see peo.store.sql.labels_text). Objects created before this have none recorded.
    """
    ALTER TABLE {s}.objects ADD COLUMN labels TEXT NOT NULL DEFAULT '';
    """,
    # 4: signed signals and lineage totals (issue 19): the inbox keeps each signal's seal
    # and is read by name; refused signals; each object's root. See the SQLite store's 7.
    """
    ALTER TABLE {s}.inbox ADD COLUMN seal BYTEA;
    CREATE INDEX inbox_object_name ON {s}.inbox (object_id, name, id);
    CREATE TABLE {s}.refused_signals (
        id BIGINT NOT NULL,
        object_id TEXT NOT NULL,
        name TEXT NOT NULL,
        reason TEXT NOT NULL,
        sender TEXT,
        refused_at BIGINT NOT NULL,
        created_at BIGINT NOT NULL
    );
    CREATE INDEX refused_signals_object ON {s}.refused_signals (object_id, refused_at, id);
    ALTER TABLE {s}.objects ADD COLUMN root TEXT;
    CREATE INDEX objects_root ON {s}.objects (root) WHERE root IS NOT NULL;
    """,
    # 5: self-healing (issue 14): claims without progress, and alert deliveries. See the
    # SQLite store's 8.
    """
    ALTER TABLE {s}.objects ADD COLUMN claim_seq BIGINT;
    ALTER TABLE {s}.objects ADD COLUMN stalls INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE {s}.objects ADD COLUMN stalled_on TEXT;
    CREATE TABLE {s}.alerts (
        object_id TEXT NOT NULL,
        incident TEXT NOT NULL,
        sink TEXT NOT NULL,
        payload BYTEA NOT NULL,
        created_at BIGINT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_at BIGINT NOT NULL,
        delivered_at BIGINT,
        last_error TEXT,
        PRIMARY KEY (object_id, incident, sink)
    );
    CREATE INDEX alerts_due ON {s}.alerts (next_at) WHERE delivered_at IS NULL;
    """,
    # 6: what a node says about itself when it registers (see the SQLite store's 9).
    """
    ALTER TABLE {s}.nodes ADD COLUMN notes TEXT;
    """,
    # 7: agents' long-term facts (issue 15; see the SQLite store's 10): full-text search on
    # a generated tsvector (the english configuration) with a GIN index.
    """
    CREATE TABLE {s}.facts (
        id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        identity TEXT NOT NULL,
        key TEXT NOT NULL,
        version BIGINT NOT NULL,
        value TEXT NOT NULL,
        deleted BOOLEAN NOT NULL DEFAULT false,
        object_id TEXT,
        seq BIGINT,
        created_at BIGINT NOT NULL,
        tsv tsvector GENERATED ALWAYS AS (to_tsvector('english'::regconfig, key || ' ' || value)) STORED,
        UNIQUE (identity, key, version)
    );
    CREATE INDEX facts_tsv ON {s}.facts USING GIN (tsv);
    """,
    # 8: versioned state (issue 16; see the SQLite store's 11).
    """
    ALTER TABLE {s}.objects ADD COLUMN deleted_at BIGINT;
    ALTER TABLE {s}.objects ADD COLUMN forked_from TEXT;
    CREATE INDEX objects_forked_from ON {s}.objects (forked_from) WHERE forked_from IS NOT NULL;
    CREATE INDEX objects_deleted ON {s}.objects (deleted_at) WHERE deleted_at IS NOT NULL;
    """,
]


async def migrate(conn: Any, schema: str, *, where: str = "this database", create: bool = True,
                  force: bool = False) -> None:
    """Create ``schema`` if missing and run the migrations it lacks, inside the caller's
    transaction on ``conn`` (an asyncpg connection). A schema without peo's tables is left
    untouched unless it may be made a store (see :func:`peo.store.sql.check_creatable`)."""
    s = f'"{schema}"'
    # Several nodes may open a fresh database at once: one advisory lock per schema
    # makes them take turns, so each migration runs exactly once.
    key = int.from_bytes(hashlib.blake2b(f"peo-migrate:{schema}".encode(), digest_size=8).digest(),
                         "big", signed=True)
    await conn.execute("SELECT pg_advisory_xact_lock($1)", key)
    tables = [r[0] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = $1", schema)]
    if "peo_schema" not in tables:
        check_creatable(where, tables, create=create, force=force)
    # Checked first: CREATE SCHEMA IF NOT EXISTS demands the CREATE privilege on
    # the database even when the schema is there already.
    if not await conn.fetchval("SELECT 1 FROM pg_namespace WHERE nspname = $1", schema):
        await conn.execute(f"CREATE SCHEMA {s}")
    await conn.execute(f"CREATE TABLE IF NOT EXISTS {s}.peo_schema (version INTEGER NOT NULL)")
    current = await conn.fetchval(f"SELECT coalesce(max(version), 0) FROM {s}.peo_schema")
    for number in migrations_to_run(current, MIGRATIONS):
        await conn.execute(MIGRATIONS[number].replace("{s}", s))
        await conn.execute(f"INSERT INTO {s}.peo_schema (version) VALUES ($1)", number + 1)
