"""Lineage totals (issue 19), on both stores: each object records its top-level ancestor
(``root``) as created, appended as a child or imported, and the objects under one root are
counted by an index. Also: a store from before these columns upgrades in place."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import AsyncIterator
from typing import Any

import attrs
import pytest
from test_contract import SEC, T0, Tracked, claim_one, commit, head, new_object, next_entry

from peo.core.model import Action, Status
from peo.ids import new_id
from peo.store import NewObject, Store, open_store
from peo.store.postgres import schema as pg_schema
from peo.store.sqlite import schema as sqlite_schema


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with open_store(store_url) as s:
        yield s


def under(root: str | None, **kw: Any) -> NewObject:
    return attrs.evolve(new_object(**kw), root=root)


async def test_root_is_recorded_and_descendants_are_counted_whichever_way_they_came(store: Store) -> None:
    top = Tracked(under(None))
    await store.create([top.obj])
    assert (await store.get(top.id)).root is None
    assert await store.count_descendants(top.id) == 0

    # Created directly (a client submitting under a root), as children of an append, imported.
    direct = under(top.id, parent=top.id)
    await store.create([direct])
    claim = await claim_one(store, top.id)
    kids = (under(top.id, parent=top.id), under(top.id, parent=top.id))
    await commit(store, top, top.step(claim, status="dormant", due_at=None, action=Action.DELEGATE,
                                      wait_children=True, children=kids, release=True))
    grandchild = under(top.id, parent=kids[0].id, due_at=T0 - SEC)
    e1 = next_entry(grandchild.entry)
    await store.import_object(grandchild, [e1], head("runnable", T0), now=T0)

    for obj in (direct, *kids, grandchild):
        assert (await store.get(obj.id)).root == top.id
    assert await store.count_descendants(top.id) == 4
    assert await store.count_descendants(kids[0].id) == 0  # counted under the top-level root only
    assert await store.count_descendants(new_id()) == 0
    # Other lineages do not count.
    await store.create([under(None), under(new_id())])
    assert await store.count_descendants(top.id) == 4
    # Finished descendants still count: a total, not a count of the live ones.
    assert [r.root for r in await store.list(parent=top.id)] == [top.id] * 3


async def test_a_losing_append_records_no_descendants(store: Store) -> None:
    top = Tracked(under(None))
    await store.create([top.obj])
    claim = await claim_one(store, top.id)
    item = top.step(claim, action=Action.DELEGATE, children=(under(top.id, parent=top.id),))
    item = attrs.evolve(item, token=claim.token + 1)
    assert await store.append([item], now=T0) == [None]
    assert await store.count_descendants(top.id) == 0


async def test_an_append_that_would_take_a_tree_past_its_bound_writes_nothing(store: Store) -> None:
    top = Tracked(under(None))
    await store.create([top.obj, under(top.id, parent=top.id), under(top.id, parent=top.id)])  # 2 under it
    claim = await claim_one(store, top.id)
    three = tuple(under(top.id, parent=top.id) for _ in range(3))
    item = attrs.evolve(top.step(claim, action=Action.DELEGATE, children=three), max_descendants=4)
    assert await store.append([item], now=T0) == [None]  # 2 + 3 > 4: as if the seq were lost
    assert await store.count_descendants(top.id) == 2 and (await store.get(top.id)).seq == 0
    two = tuple(under(top.id, parent=top.id) for _ in range(2))
    item = attrs.evolve(top.step(claim, action=Action.DELEGATE, children=two), max_descendants=4)
    assert await store.append([item], now=T0) != [None]  # 2 + 2 fits exactly
    assert await store.count_descendants(top.id) == 4


# -- upgrading a store from before issue 19 ----------------------------------------------------

#: What each store's migrations before issue 19 leave out (in the order to undo them):
#: the later migrations' first (issue 15's facts, issue 14's), then issue 19's.
_UNDO = (
    "DROP INDEX {s}objects_deleted",
    "DROP INDEX {s}objects_forked_from",
    "ALTER TABLE {s}objects DROP COLUMN forked_from",
    "ALTER TABLE {s}objects DROP COLUMN deleted_at",
    "DROP TABLE IF EXISTS {s}facts_fts",  # SQLite's (its triggers go with the facts table)
    "DROP TABLE {s}facts",
    "ALTER TABLE {s}nodes DROP COLUMN notes",
    "DROP TABLE {s}alerts",
    "ALTER TABLE {s}objects DROP COLUMN stalled_on",
    "ALTER TABLE {s}objects DROP COLUMN stalls",
    "ALTER TABLE {s}objects DROP COLUMN claim_seq",
    "DROP INDEX {s}inbox_object_name",
    "ALTER TABLE {s}inbox DROP COLUMN seal",
    "DROP TABLE {s}refused_signals",
    "DROP INDEX {s}objects_root",
    "ALTER TABLE {s}objects DROP COLUMN root",
)


async def downgrade(url: str) -> None:
    """Rewrite the store into the layout it had before issue 19's migration, keeping its rows."""
    if url.startswith("sqlite:"):
        path = url.removeprefix("sqlite:///")
        with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
            db.execute("BEGIN")
            for statement in _UNDO:
                db.execute(statement.format(s=""))
            db.execute("DELETE FROM peo_schema WHERE version > 6")
            db.execute("COMMIT")
        return
    import asyncpg

    from peo.store.postgres.url import parse_postgres_url

    dsn, schema, _, _ = parse_postgres_url(url)
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction():
            for statement in _UNDO:
                await conn.execute(statement.format(s=f'"{schema}".'))
            await conn.execute(f'DELETE FROM "{schema}".peo_schema WHERE version > 3')
    finally:
        await conn.close()


async def test_a_store_from_before_signed_signals_and_roots_upgrades_in_place(store_url: str) -> None:
    async with open_store(store_url) as s:
        old = Tracked(new_object())
        await s.create([old.obj])
        claim = await claim_one(s, old.id)
        await commit(s, old, old.step(claim, status="dormant", due_at=None, action=Action.DORMANCY,
                                      wait_signal="approve", release=True))
        waiting = await s.signal(old.id, "approve", {"ok": 1}, now=T0 + 1, seal=b"lost in the downgrade")
    await downgrade(store_url)

    async with open_store(store_url) as s:
        row = await s.get(old.id)
        assert (row.root, row.status, row.seq, row.inbox) == (None, Status.DORMANT, 1, 1)
        [signal] = await s.inbox(old.id, names={"approve"})
        assert (signal.id, signal.payload, signal.seal) == (waiting, {"ok": 1}, None)
        assert await s.entries(old.id) == [(e.body, e.signature) for e in (old.obj.entry, old.last)]
        # Everything new works on the upgraded store.
        assert await s.refuse_signals(old.id, [(waiting, "unsigned", None)], now=T0 + 2) == 1
        assert [r.id for r in await s.refused(old.id)] == [waiting]
        await s.create([under(old.id, parent=old.id)])
        assert await s.count_descendants(old.id) == 1
        sealed = await s.signal(old.id, "approve", None, now=T0 + 3, seal=b"seal", max_inbox=5)
        assert [(x.id, x.seal) for x in await s.inbox(old.id)] == [(sealed, b"seal")]
    migrations = sqlite_schema.MIGRATIONS if store_url.startswith("sqlite:") else pg_schema.MIGRATIONS
    async with open_store(store_url) as s:  # reopening runs nothing twice
        assert await s.count_descendants(old.id) == 1
    assert await schema_versions(store_url) == list(range(1, len(migrations) + 1))


async def schema_versions(url: str) -> list[int]:
    if url.startswith("sqlite:"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as db:
            return [r[0] for r in db.execute("SELECT version FROM peo_schema ORDER BY version")]
    import asyncpg

    from peo.store.postgres.url import parse_postgres_url

    dsn, schema, _, _ = parse_postgres_url(url)
    conn = await asyncpg.connect(dsn)
    try:
        return [r[0] for r in await conn.fetch(f'SELECT version FROM "{schema}".peo_schema ORDER BY version')]
    finally:
        await conn.close()
