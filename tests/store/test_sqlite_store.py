"""What only the SQLite store promises: schema upgrades in place, and writes that wait out
another process's lock without blocking the event loop."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest
from test_contract import new_object

import peo
from peo.store import open_store
from peo.store.sqlite import connection, schema

app = peo.App()


@app.handler("count")
def count(step: peo.Step) -> peo.Proposal:
    n = step.state.get("n", 0)
    return peo.Done(n) if n >= 3 else peo.Continue(state={"n": n + 1})


@app.handler("wait")
def wait(step: peo.Step) -> peo.Proposal:
    for s in step.signals:
        if s.name == "go":
            return peo.Done(s.payload)
    return peo.WaitSignal("go")


def table_sql(path: str, name: str) -> str:
    with sqlite3.connect(path) as db:
        return str(db.execute("SELECT sql FROM sqlite_master WHERE name = ?", (name,)).fetchone()[0])


def downgrade_to_version_2(path: str) -> None:
    """Rewrite a store into exactly the layout migrations 1 and 2 produced (entries keyed by
    (object_id, seq) WITHOUT ROWID, a status index, no claim index, no nodes table, no labels
    column, no seals, refused signals or roots, no stall counts or alerts, no facts, no deletion or
    fork columns), keeping its rows."""
    with sqlite3.connect(path, isolation_level=None) as db:
        db.executescript(
            """
            BEGIN;
            DROP INDEX objects_deleted;
            DROP INDEX objects_forked_from;
            ALTER TABLE objects DROP COLUMN forked_from;
            ALTER TABLE objects DROP COLUMN deleted_at;
            DROP TABLE facts_fts;
            DROP TABLE facts;
            CREATE TABLE entries_v2 (
                object_id TEXT NOT NULL, seq INTEGER NOT NULL, body BLOB NOT NULL, sig BLOB NOT NULL,
                hash BLOB NOT NULL, PRIMARY KEY (object_id, seq)
            ) WITHOUT ROWID;
            INSERT INTO entries_v2 SELECT object_id, seq, body, sig, hash FROM entries;
            DROP TABLE entries;
            ALTER TABLE entries_v2 RENAME TO entries;
            DROP INDEX objects_claim;
            CREATE INDEX objects_status ON objects (status);
            DROP TABLE IF EXISTS nodes;
            ALTER TABLE objects DROP COLUMN labels;
            DROP INDEX inbox_object_name;
            ALTER TABLE inbox DROP COLUMN seal;
            DROP TABLE refused_signals;
            DROP INDEX objects_root;
            ALTER TABLE objects DROP COLUMN root;
            DROP TABLE alerts;
            ALTER TABLE objects DROP COLUMN stalled_on;
            ALTER TABLE objects DROP COLUMN stalls;
            ALTER TABLE objects DROP COLUMN claim_seq;
            DELETE FROM peo_schema WHERE version > 2;
            COMMIT;
            """
        )


async def test_a_store_from_schema_version_2_is_upgraded_with_its_memories_intact(sqlite_url: str) -> None:
    path = sqlite_url.removeprefix("sqlite:///")
    async with peo.Client(sqlite_url) as client:
        done = await client.submit("count")
        waiting = await client.submit("wait")
    await peo.Node(sqlite_url, app, node_id="old").run_until_idle()
    async with peo.Client(sqlite_url) as client:
        assert (await client.get(waiting)).status == "dormant"
        await client.signal(waiting, "go", "upgraded")  # in the inbox across the upgrade
    downgrade_to_version_2(path)
    assert "WITHOUT ROWID" in table_sql(path, "entries")

    async with peo.Client(sqlite_url) as client:
        assert "WITHOUT ROWID" not in table_sql(path, "entries")
        [old] = await client.store.inbox(waiting)  # kept, without the seal version 2 had no room for
        assert (old.name, old.payload, old.seal) == ("go", "upgraded", None)
        assert await client.verify(done) == 5  # instantiate, three steps, terminate
        assert await client.wait(done, timeout=5) == 3
        third = await client.submit("count")
    await peo.Node(sqlite_url, app, node_id="new").run_until_idle()
    async with peo.Client(sqlite_url) as client:
        assert await client.wait(third, timeout=5) == 3
        # An unsealed signal is refused (the default policy), visibly; the object still waits.
        assert [r.id for r in await client.store.refused(waiting)] == [old.id]
        assert await client.store.inbox(waiting) == []
        assert (await client.store.get(waiting)).status == "dormant"
        await client.signal(waiting, "go", "upgraded")
    await peo.Node(sqlite_url, app, node_id="new").run_until_idle()
    async with peo.Client(sqlite_url) as client:
        assert await client.wait(waiting, timeout=5) == "upgraded"
        for oid in (done, waiting, third):
            await client.verify(oid)  # raises if a chain does not verify
    with sqlite3.connect(path) as db:
        assert [r[0] for r in db.execute("SELECT version FROM peo_schema ORDER BY version")] == list(
            range(1, len(schema.MIGRATIONS) + 1)
        )
        # Still one entry per (object, seq): the unique index replaced the primary key.
        with pytest.raises(sqlite3.IntegrityError):
            db.execute("INSERT INTO entries SELECT object_id, seq, body, sig, hash FROM entries LIMIT 1")


async def test_a_write_waits_for_another_process_lock_while_the_loop_keeps_running(sqlite_url: str) -> None:
    path = sqlite_url.removeprefix("sqlite:///")
    async with open_store(sqlite_url) as store:
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # another process holds the write lock
            obj = new_object()
            write = asyncio.create_task(store.create([obj]))
            # The loop is free while the write waits: these sleeps return, and the lock is
            # still held (a loop blocked in the write would never get here to release it).
            for _ in range(20):
                await asyncio.sleep(0.005)
            assert not write.done()
            other.execute("COMMIT")
            await write
        finally:
            other.close()
        assert (await store.get(obj.id)).head == obj.entry.hash


async def test_a_node_waits_for_a_store_another_process_keeps_locked(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(connection, "BUSY_TIMEOUT_MS", 50)  # give up on the lock quickly
    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("count")
    other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # held while the node starts
        node = peo.Node(sqlite_url, app, node_id="patient")
        running = asyncio.create_task(node.run_until_idle())
        while "store_open_failed" not in caplog.text:  # the node could not open, and says so
            assert not running.done(), "the node gave up instead of waiting"
            await asyncio.sleep(0.01)
        other.execute("COMMIT")
        await asyncio.wait_for(running, 60)
    finally:
        other.close()
    async with peo.Client(sqlite_url) as client:
        assert await client.wait(oid, timeout=5) == 3


async def test_a_node_stopped_while_waiting_for_its_store_returns(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(connection, "BUSY_TIMEOUT_MS", 50)
    async with peo.Client(sqlite_url):
        pass  # the schema exists
    other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        node = peo.Node(sqlite_url, app, node_id="stopped")
        running = asyncio.create_task(node.run())
        while "store_open_failed" not in caplog.text:
            await asyncio.sleep(0.01)
        node.stop()
        await asyncio.wait_for(running, 60)
    finally:
        other.execute("ROLLBACK")
        other.close()
