"""Export and import: an object moves between stores with its whole signed memory."""

from __future__ import annotations

import pytest

import peo
from peo.core.model import Action


def app() -> peo.App:
    a = peo.App()

    @a.handler("stage")
    def stage(step: peo.Step) -> peo.Proposal:
        n = step.state.get("n", 0)
        if n == 2 and not step.state.get("paused"):
            return peo.WaitSignal("move-on", state={"paused": True})
        if n >= 4:
            return peo.Done({"n": n, "where": step.goal["trail"]})
        return peo.Continue(state={"n": n + 1})

    return a


@pytest.mark.postgres
async def test_an_object_moves_sqlite_to_postgres_and_back_and_finishes(sqlite_url: str, postgres_url: str) -> None:
    async with peo.Client(sqlite_url) as lite, peo.Client(postgres_url) as pg:
        oid = await lite.submit("stage", goal={"trail": "sqlite"})
        await peo.Node(sqlite_url, app()).run_until_idle()
        assert (await lite.get(oid, memory=False)).status is peo.Status.DORMANT

        exported = await lite.export(oid)
        assert await pg.import_(exported) == oid
        assert await pg.verify(oid) == await lite.verify(oid)
        imported = await pg.get(oid, memory=False)
        assert imported.status is peo.Status.DORMANT  # the wait survives the move

        await pg.signal(oid, "move-on")
        await peo.Node(postgres_url, app()).run_until_idle()
        assert await pg.wait(oid, timeout=10) == {"n": 4, "where": "sqlite"}

        # and back: the finished object, with the entries PostgreSQL's node appended
        back = await pg.export(oid)
        async with peo.Client(sqlite_url.replace("peo.db", "second.db")) as other:
            assert await other.import_(back) == oid
            info = await other.get(oid)
            assert info.result == {"n": 4, "where": "sqlite"}
            assert info.memory[-1].action is Action.TERMINATE
            assert await other.verify(oid) == len(info.memory)


async def test_an_import_refuses_an_object_that_exists_already(sqlite_url: str) -> None:
    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("stage", goal={"trail": "x"})
        data = await client.export(oid)
        with pytest.raises(peo.ConflictError):
            await client.import_(data)
