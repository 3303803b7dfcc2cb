"""An operator cancel takes effect even when no node will ever run the object: the client
writes the terminate entry itself, signed with its own key, and the chain still verifies."""

from __future__ import annotations

import time

import pytest

import peo
from peo.client.operator import CancelOutcome


async def test_an_object_no_node_serves_is_cancelled_at_once_by_a_signed_operator_entry(store_url: str) -> None:
    async with peo.Client(store_url, identity="ops") as client:
        oid = await client.submit("no-such-handler")
        assert await client.cancel(oid) is CancelOutcome.CANCELLED
        info = await client.get(oid)
        assert (info.status, info.reason) == (peo.Status.TERMINATED, "cancelled")
        last = info.memory[-1]
        assert last.action is peo.Action.TERMINATE and last.signer == client.key.key_id
        assert last.origin_node == "operator:ops"
        assert await client.verify(oid) == 2  # entry 0 and the operator's terminate
        assert await client.store.inbox(oid) == []  # the request was consumed by the entry
        with pytest.raises(peo.ObjectTerminatedError):
            await client.cancel(oid)


async def test_a_cancel_of_an_object_a_live_node_holds_is_left_to_that_node_unless_forced(store_url: str) -> None:
    async with peo.Client(store_url) as client:
        oid = await client.submit("work")
        [claim] = await client.store.claim("busy-node", now=time.time_ns(), lease_ns=3600 * 10**9, limit=1,
                                           handlers=["work"], scopes=None)
        assert claim.id == oid
        assert await client.cancel(oid) is CancelOutcome.REQUESTED
        assert (await client.get(oid, memory=False)).status is peo.Status.RUNNING  # untouched
        assert await client.cancel(oid, force=True) is CancelOutcome.CANCELLED  # the node died holding it
        assert (await client.get(oid, memory=False)).reason == "cancelled"
        # The node that lost its lease can never write on top of it.
        assert (await client.store.renew("busy-node", {oid: claim.token}, until=time.time_ns() + 10**9)) == {oid}


async def test_a_dormant_object_is_cancelled_by_the_operator_too(sqlite_url: str) -> None:
    app = peo.App()

    @app.handler("waiter")
    def waiter(step: peo.Step) -> peo.Proposal:
        return peo.WaitSignal("approve")

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("waiter")
        await peo.Node(sqlite_url, app, idle_horizon=0).run_until_idle()
        assert (await client.get(oid, memory=False)).status is peo.Status.DORMANT
        assert await client.cancel(oid) is CancelOutcome.CANCELLED
        with pytest.raises(peo.ObjectFailedError, match="cancelled"):
            await client.wait(oid, timeout=1)
