"""Delete, undelete and purge: a delete is a signed tombstone that hides and freezes an
object without changing it; an undelete brings it back exactly as it was; only a purge of
objects deleted long enough ago destroys data, never what a live object depends on."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from rawsql import raw

import peo
from peo.errors import ObjectDeletedError


def counting_app() -> peo.App:
    app = peo.App()

    @app.handler("count")
    def count(step: peo.Step) -> peo.Proposal:
        n = step.state.get("n", 0) + 1
        return peo.Done({"n": n}) if n >= 3 else peo.Continue(state={"n": n})

    @app.handler("waiter")
    def waiter(step: peo.Step) -> peo.Proposal:
        if step.signals:
            return peo.Done({"got": step.signals[0].payload})
        return peo.WaitSignal("approve")

    @app.handler("parent")
    def parent(step: peo.Step) -> peo.Proposal:
        if step.state.get("sent"):
            return peo.Done("parent done")
        return peo.Delegate([peo.Intent("waiter")], wait=False, state={"sent": True})

    return app


async def run_idle(url: str, app: peo.App) -> None:
    await asyncio.wait_for(peo.Node(url, app, idle_horizon=0).run_until_idle(), 60)


async def ids(client: peo.Client, **kw: Any) -> set[str]:
    return {r.id for r in await client.list(**kw)}


async def count_rows(url: str, table: str, oid: str) -> int:
    column = "id" if table == "objects" else "object_id"
    [(n,)] = await raw(url, f"SELECT count(*) FROM {table} WHERE {column} = ?", oid)
    return int(n)


async def test_a_deleted_object_is_hidden_and_left_alone_until_undeleted_then_it_finishes(store_url: str) -> None:
    app = counting_app()
    async with peo.Client(store_url, identity="ops") as client:
        oid = await client.submit("count")
        other = await client.submit("count")
        seq = await client.rm(oid, reason="not needed")
        assert seq == 1
        info = await client.get(oid)
        last = info.memory[-1]
        assert last.outcome["tombstone"] == {"reason": "not needed", "by": "operator"}
        assert last.signer == client.key.key_id and last.origin_node == "operator:ops"
        assert info.status is peo.Status.RUNNABLE  # nothing else of its head changed

        assert await ids(client) == {other}
        assert await ids(client, deleted=True) == {oid}
        [summary] = await client.list(deleted=True)
        assert summary.deleted_at is not None

        await run_idle(store_url, app)  # no node claims it
        assert (await client.store.get(oid)).seq == 1
        assert await client.wait(other, timeout=5) == {"n": 3}

        with pytest.raises(ObjectDeletedError, match=f"object {oid} is deleted .*peo undelete {oid}"):
            await client.signal(oid, "hello")
        assert await client.store.inbox(oid) == []
        with pytest.raises(peo.UsageError, match="already deleted"):
            await client.rm(oid)

        assert await client.undelete(oid) == 2
        assert oid in await ids(client) and await ids(client, deleted=True) == set()
        assert (await client.store.get(oid)).deleted_at is None
        await run_idle(store_url, app)
        assert await client.wait(oid, timeout=5) == {"n": 3}
        with pytest.raises(peo.UsageError, match="not deleted"):
            await client.undelete(oid)
        await client.verify(oid)  # the operator's entries are part of a chain that verifies


async def test_a_dormant_object_keeps_waiting_through_a_delete_and_a_signal_then_wakes_it(store_url: str) -> None:
    app = counting_app()
    async with peo.Client(store_url) as client:
        oid = await client.submit("waiter")
        await run_idle(store_url, app)
        before = await client.store.get(oid)
        assert (before.status, before.wait_signal) == (peo.Status.DORMANT, "approve")
        await client.rm(oid)
        deleted = await client.store.get(oid)
        assert (deleted.status, deleted.wait_signal, deleted.due_at) == (peo.Status.DORMANT, "approve", None)
        first_deleted_at = deleted.deleted_at
        assert first_deleted_at is not None
        with pytest.raises(ObjectDeletedError):
            await client.signal(oid, "approve", True)

        await client.undelete(oid)
        back = await client.store.get(oid)
        assert (back.status, back.wait_signal, back.due_at, back.deleted_at) == (
            peo.Status.DORMANT, "approve", before.due_at, None)
        await run_idle(store_url, app)
        assert (await client.store.get(oid)).seq == back.seq  # still waiting
        await client.signal(oid, "approve", "yes")
        await run_idle(store_url, app)
        assert await client.wait(oid, timeout=5) == {"got": "yes"}


async def test_a_terminated_or_quarantined_object_is_deleted_and_back_as_it_was(store_url: str) -> None:
    app = counting_app()
    async with peo.Client(store_url) as client:
        done = await client.submit("count")
        await run_idle(store_url, app)
        await client.rm(done)
        # Its status and result still come from its signed terminate entry.
        info = await client.get(done)
        assert (info.status, info.result, info.reason) == (peo.Status.TERMINATED, {"n": 3}, "done")
        assert await client.wait(done, timeout=5) == {"n": 3}
        await client.undelete(done)
        assert (await client.get(done)).status is peo.Status.TERMINATED
        assert await client.wait(done, timeout=5) == {"n": 3}

        flagged = await client.submit("no-such-handler")
        await client.store.quarantine(flagged, "looked odd", now=time.time_ns())
        await client.rm(flagged)
        row = await client.store.get(flagged)
        assert (row.status, row.reason, row.due_at) == (peo.Status.QUARANTINED, "looked odd", None)
        assert row.deleted_at is not None
        await client.undelete(flagged)
        row = await client.store.get(flagged)
        assert (row.status, row.reason, row.deleted_at) == (peo.Status.QUARANTINED, "looked odd", None)
        assert (await client.resume(flagged)).status is peo.Status.RUNNABLE


async def test_an_object_a_node_holds_is_not_deleted_unless_forced(store_url: str) -> None:
    async with peo.Client(store_url) as client:
        oid = await client.submit("work")
        [claim] = await client.store.claim("busy-node", now=time.time_ns(), lease_ns=3600 * 10**9, limit=1,
                                           handlers=["work"], scopes=None)
        with pytest.raises(peo.UsageError, match="held by a node"):
            await client.rm(oid)
        assert (await client.store.get(oid)).seq == 0
        await client.rm(oid, force=True)  # the node died holding it
        assert (await client.store.renew("busy-node", {oid: claim.token}, until=time.time_ns() + 10**9)) == {oid}
        with pytest.raises(peo.NotFoundError):
            await client.rm("no-such-object")


async def test_purge_keeps_what_a_live_object_depends_on_and_drops_the_rest(store_url: str) -> None:
    app = counting_app()
    async with peo.Client(store_url) as client:
        parent = await client.submit("parent")
        await run_idle(store_url, app)
        [child] = [r.id for r in await client.list(parent=parent)]
        origin = await client.submit("count")
        fork = await client.submit("count")
        await raw(store_url, "UPDATE objects SET forked_from = ? WHERE id = ?", origin, fork)
        lone = await client.submit("count")
        await run_idle(store_url, app)
        for oid in (parent, origin, lone):
            await client.rm(oid)
        await client.signal(child, "unrelated")  # a live child with data of its own
        now = time.time_ns()

        report = await client.purge(deleted_before=now)  # a dry run by default
        assert report.dry_run and report.purged == (lone,)
        kept = {k.id: k.why for k in report.kept}
        assert kept == {parent: f"the parent of {child} (live)", origin: f"the fork origin of {fork} (live)"}
        assert await count_rows(store_url, "entries", lone) > 0  # nothing changed

        assert (await client.purge(deleted_before=(await client.store.get(lone)).deleted_at or 0,
                                   dry_run=False)).purged == ()  # deleted at, not before

        report = await client.purge(deleted_before=now, dry_run=False)
        assert report.purged == (lone,) and not report.dry_run
        for table in ("objects", "entries", "inbox", "refused_signals", "alerts"):
            assert await count_rows(store_url, table, lone) == 0
        with pytest.raises(peo.NotFoundError):
            await client.store.get(lone)
        assert await count_rows(store_url, "entries", parent) > 0
        assert (await client.get(child)).status is peo.Status.DORMANT

        # Once what depended on them is deleted too, both go, together with it.
        await client.rm(child)
        await client.rm(fork)
        report = await client.purge(deleted_before=time.time_ns(), dry_run=False)
        assert set(report.purged) == {parent, child, origin, fork} and report.kept == ()
        for oid in (parent, child, origin, fork):
            assert await count_rows(store_url, "entries", oid) == 0
            assert await count_rows(store_url, "inbox", oid) == 0


async def test_purge_never_destroys_an_object_that_is_not_deleted(store_url: str) -> None:
    async with peo.Client(store_url) as client:
        live = await client.submit("count")
        gone = await client.submit("count")
        await client.rm(gone)
        await client.undelete(gone)
        report = await client.purge(deleted_before=time.time_ns() + 10**12, dry_run=False)
        assert report.purged == () and report.kept == ()
        assert await count_rows(store_url, "entries", live) == 1
        assert await count_rows(store_url, "entries", gone) == 3
        with pytest.raises(peo.UsageError):
            await client.purge(deleted_before="yesterday")  # type: ignore[arg-type]


async def test_a_node_that_claims_a_deleted_object_lets_it_go_without_acting(store_url: str) -> None:
    async with peo.Client(store_url) as client:
        oid = await client.submit("count")
        await client.rm(oid)
        # Behind peo's back (or an import that lost the deletion): the row says not deleted, due.
        await raw(store_url, "UPDATE objects SET deleted_at = NULL, due_at = 0 WHERE id = ?", oid)
        await run_idle(store_url, counting_app())
        row = await client.store.get(oid)
        assert row.seq == 1 and row.lease_owner is None and row.status is peo.Status.RUNNABLE


async def test_an_exported_deleted_object_is_imported_deleted(store_url: str, tmp_path: Any) -> None:
    async with peo.Client(store_url) as client:
        oid = await client.submit("count")
        await client.rm(oid, reason="archived")
        data = await client.export(oid)
    elsewhere = f"sqlite:///{tmp_path}/elsewhere.db"
    async with peo.Client(elsewhere) as other:
        assert await other.import_(data) == oid
        assert oid not in await ids(other) and oid in await ids(other, deleted=True)
        await run_idle(elsewhere, counting_app())
        assert (await other.store.get(oid)).seq == 1  # no node touched it
