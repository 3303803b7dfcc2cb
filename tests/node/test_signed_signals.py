"""Nothing unsigned reaches a decision: a node delivers a signal only if a key it trusts
sealed it for this object, the policy lets that key send it, it was not delivered before
and an entry can hold it. Everything else is refused once, visibly, and the object keeps
waiting: no hot loop, no side effect, nothing laundered into a signed entry."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from rawsql import raw

import peo
from peo.core import signals
from peo.core.codec import packb
from peo.keys import generate
from peo.store import Store

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def approvals_app(runs: list[int], *, needed: int = 1) -> peo.App:
    """Waits for ``needed`` approvals, then ends with who sent them."""
    app = peo.App()

    @app.handler("waiter")
    def waiter(step: peo.Step) -> peo.Proposal:
        runs.append(step.seq)
        got = list(step.state.get("got", [])) + [[s.sender, s.payload] for s in step.signals if s.name == "approve"]
        if len(got) >= needed:
            return peo.Done(got)
        return peo.WaitSignal("approve", state={"got": got})

    return app


async def run_idle(url: str, app: peo.App, **kw: Any) -> peo.Node:
    node = peo.Node(url, app, idle_horizon=kw.pop("idle_horizon", 1.0), **kw)
    # A guard, not a timing: a node that loops would otherwise hang the test.
    await asyncio.wait_for(node.run_until_idle(), 120)
    return node


async def forge(url: str, oid: str, name: str, payload: Any, seal: bytes | None = None, copies: int = 1) -> None:
    """Write signals into the inbox behind peo's back, and wake the object as a signal would."""
    for _ in range(copies):
        await raw(url, "INSERT INTO inbox (object_id, name, payload, created_at, seal) VALUES (?, ?, ?, 0, ?)",
                  oid, name, packb(payload), seal)
    await raw(url, "UPDATE objects SET inbox = inbox + ?, due_at = 0 WHERE id = ?", copies, oid)


async def waiting(client: peo.Client, oid: str) -> bool:
    info = await client.get(oid, memory=False)
    return info.status is peo.Status.DORMANT


async def test_a_forged_inbox_row_is_refused_visibly_and_a_signed_signal_still_gets_through(
        store_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="peo.node")
    runs: list[int] = []
    async with peo.Client(store_url) as client:
        oid = await client.submit("waiter")
        await run_idle(store_url, approvals_app(runs))
        await forge(store_url, oid, "approve", {"ok": True})
        await run_idle(store_url, approvals_app(runs))
        assert await waiting(client, oid) and runs == [1]  # never delivered: the handler did not run
        [refused] = await client.store.refused(oid)
        assert refused.name == "approve" and refused.reason.startswith("unsigned")
        assert sum("signal_refused" in r.getMessage() for r in caplog.records) == 1

        await client.signal(oid, "approve", {"ok": True})
        await run_idle(store_url, approvals_app(runs))
        assert await client.wait(oid, timeout=5) == [[client.key.key_id, {"ok": True}]]
        memory = (await client.get(oid)).memory
        [received] = [s for e in memory for s in e.outcome.get("signals", ())]
        assert received["sender"] == client.key.key_id and len(received["sig"]) == 64
        assert signals.verify_recorded(oid, memory, client.keyring) == []


async def test_a_copied_signed_signal_is_refused_as_a_replay(store_url: str) -> None:
    runs: list[int] = []
    async with peo.Client(store_url) as client:
        oid = await client.submit("waiter")
        other = await client.submit("waiter")
        await run_idle(store_url, approvals_app(runs, needed=2))
        await client.signal(oid, "approve", "first")
        await run_idle(store_url, approvals_app(runs, needed=2))
        assert await waiting(client, oid)  # one approval of two
        [rec] = [s for e in (await client.get(oid)).memory for s in e.outcome.get("signals", ())]
        copied = signals.Seal(rec["sender"], rec["nonce"], rec["sent_at"], rec["sig"]).encode()
        await forge(store_url, oid, "approve", "first", copied)  # the same object, again
        await forge(store_url, other, "approve", "first", copied)  # another object
        await run_idle(store_url, approvals_app(runs, needed=2))
        assert await waiting(client, oid) and await waiting(client, other)
        assert (await client.store.refused(oid))[0].reason.startswith("replayed")
        assert (await client.store.refused(other))[0].reason == "bad signature"


async def test_only_the_keys_a_rule_names_may_send_a_signal(store_url: str, tmp_path: Any) -> None:
    ops = generate()
    policy = peo.Policy.parse(f"""
        [trust]
        keys = {{ "{ops.public_key.hex()}" = ["ops"] }}
        [[signals.rules]]
        name = "approve"
        objects = ["payments"]
        senders = ["ops"]
    """)
    runs: list[int] = []
    async with peo.Client(store_url, policy=policy) as client, \
            peo.Client(store_url, key=ops, policy=policy, identity="ops") as operator:
        oid = await client.submit("waiter", scope="payments")
        await run_idle(store_url, approvals_app(runs), policy=policy)
        await client.signal(oid, "approve", "by the submitter")
        await run_idle(store_url, approvals_app(runs), policy=policy)
        assert await waiting(client, oid)
        [refused] = await client.store.refused(oid)
        assert refused.reason.startswith(f"the policy does not allow key {client.key.key_id} to send 'approve'")
        await operator.signal(oid, "approve", "by ops")
        await run_idle(store_url, approvals_app(runs), policy=policy)
        assert await client.wait(oid, timeout=5) == [[ops.key_id, "by ops"]]


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth - 1):
        value = [value]
    return value


async def test_a_signal_too_deep_to_record_is_refused_where_it_is_sent_and_by_the_node(
        store_url: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="peo.node")
    runs: list[int] = []
    async with peo.Client(store_url) as client:
        oid = await client.submit("waiter")
        await run_idle(store_url, approvals_app(runs))
        deep = nested(29)
        with pytest.raises(peo.UsageError, match="signal 'approve'"):
            await client.signal(oid, "approve", deep)
        seal = signals.seal(client.key, oid, "approve", deep, nonce="deep", sent_at=1).encode()
        await forge(store_url, oid, "approve", deep, seal)
        await run_idle(store_url, approvals_app(runs))
        assert await waiting(client, oid) and runs == [1]
        assert (await client.store.refused(oid))[0].reason.startswith("cannot be recorded")
        messages = [r.getMessage() for r in caplog.records]
        assert not any("node_error" in m or "node_bug" in m for m in messages)
        assert len(messages) < 10


async def test_large_signals_arrive_a_bounded_batch_at_a_time(store_url: str) -> None:
    app = peo.App()
    runs: list[int] = []

    @app.handler("collector")
    def collector(step: peo.Step) -> peo.Proposal:
        runs.append(step.seq)
        n = step.state.get("n", 0) + sum(len(s.payload) for s in step.signals if s.name == "note")
        return peo.Done(n) if n >= 5 * 250_000 else peo.WaitSignal("note", state={"n": n})

    async with peo.Client(store_url) as client:
        oid = await client.submit("collector")
        for _ in range(5):
            await client.signal(oid, "note", "x" * 250_000)
        await run_idle(store_url, app)
        assert await client.wait(oid, timeout=5) == 5 * 250_000
        assert len(runs) <= 6  # one step per batch that fits an entry, not one per retry


async def test_a_flood_of_forged_signals_is_refused_in_bounded_batches(store_url: str,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="peo.node")
    runs: list[int] = []
    largest: list[int] = [0]
    async with peo.Client(store_url) as client:
        oid = await client.submit("waiter")
        await run_idle(store_url, approvals_app(runs))
        n = 40_000
        if store_url.startswith("sqlite"):
            await raw(store_url, "WITH RECURSIVE k(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM k WHERE i < ?)"
                      " INSERT INTO inbox (object_id, name, payload, created_at) SELECT ?, 'approve', ?, 0 FROM k",
                      n, oid, packb(None))
        else:
            await raw(store_url, "INSERT INTO inbox (object_id, name, payload, created_at)"
                      " SELECT ?, 'approve', ?, 0 FROM generate_series(1, ?)", oid, packb(None), n)
        await raw(store_url, "UPDATE objects SET inbox = inbox + ?, due_at = 0 WHERE id = ?", n, oid)
        node = peo.Node(store_url, approvals_app(runs), idle_horizon=1.0)
        real_inbox = node.store.inbox

        async def inbox(*a: Any, **kw: Any) -> list[peo.Signal]:
            got = await real_inbox(*a, **kw)
            largest[0] = max(largest[0], len(got))
            return got

        node.store.inbox = inbox  # type: ignore[method-assign]
        await asyncio.wait_for(node.run_until_idle(), 300)
        assert await waiting(client, oid) and runs == [1]
        assert 0 < largest[0] <= node.policy.signal_batch  # the inbox is never loaded whole
        assert (await client.get(oid, memory=False)).seq == 1  # nothing was written for them
        assert len(await client.store.refused(oid, limit=1000)) <= 100  # the refused list is bounded too
        lines = sum("signal_refused" in r.getMessage() for r in caplog.records)
        assert lines <= n // node.policy.signal_batch + 1  # one line per refused batch
        await client.signal(oid, "approve", "real")
        await run_idle(store_url, approvals_app(runs))
        assert await client.wait(oid, timeout=5) == [[client.key.key_id, "real"]]


async def test_a_signal_beyond_the_inbox_ceiling_is_refused_to_its_sender(store_url: str) -> None:
    policy = peo.Policy.parse("[signals]\nmax_inbox = 3\n")
    async with peo.Client(store_url, policy=policy) as client:
        oid = await client.submit("waiter")
        for i in range(3):
            await client.signal(oid, "note", i)
        with pytest.raises(peo.InboxFullError, match="3 signals waiting"):
            await client.signal(oid, "note", 3)
        store: Store = client.store
        assert len(await store.inbox(oid)) == 3
