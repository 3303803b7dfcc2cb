"""`peo show` lists the signals a node refused to deliver, and why."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from clirun import run

import peo


def test_peo_show_lists_a_forged_signal_the_node_refused(capsys: Any, sqlite_url: str) -> None:
    app = peo.App()

    @app.handler("waiter")
    def waiter(step: peo.Step) -> peo.Proposal:
        return peo.WaitSignal("approve")

    async def setup() -> str:
        async with peo.Client(sqlite_url) as client:
            oid = await client.submit("waiter")
            await peo.Node(sqlite_url, app, idle_horizon=0).run_until_idle()
            # Behind peo's back: a row in the inbox with no seal.
            await client.store.signal(oid, "approve", {"ok": True}, now=1)
            await peo.Node(sqlite_url, app, idle_horizon=0).run_until_idle()
            return oid

    oid = asyncio.run(setup())
    code, out, _ = run(capsys, "--store", sqlite_url, "show", oid)
    assert code == 0
    assert "refused   signal approve from no key at" in out and ": unsigned" in out
    code, out, _ = run(capsys, "--store", sqlite_url, "show", oid, "--json")
    [refused] = json.loads(out)["refused_signals"]
    assert refused["name"] == "approve" and refused["sender"] is None and refused["reason"].startswith("unsigned")
