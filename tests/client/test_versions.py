"""History and point-in-time restore (issue 16, items 1 and 2), on both stores: a restore is
an operator-signed entry that sets the working state back to an earlier version's; the
history before it stays, so a restore is itself undone by another."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import attrs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import peo
from peo.client.operator import OPERATOR_LEASE_NS, _append_held, _owner
from peo.client.versions import Version, seq_at, state_digest, versions_of
from peo.core.crypto import Keyring, SigningKey
from peo.core.cycle import Decision, restore, tombstone
from peo.core.memory import Fold, genesis, instantiation_outcome, make_entry, state_at, verify_chain
from peo.core.model import Action, Context, Entry, Intent, Status

SECOND = 10**9


def monotonic_clock() -> Any:
    """A node clock that never repeats a timestamp (1 µs apart at least) and stays at the
    real time otherwise, so each entry's time is distinct and a restore's ``now`` (the real
    time) is never before them."""
    last = [0]

    def clock() -> int:
        last[0] = max(time.time_ns(), last[0] + 1000)
        return last[0]

    return clock


def counting_app(bad: bool) -> peo.App:
    """``count``: counts to its goal's ``to``, one step at a time, and ends with the total.
    With ``bad`` (a buggy deploy), its second step writes a wrong count that the run then
    builds on; without it, the same state runs on correctly."""
    app = peo.App()

    @app.handler("count")
    def count(step: peo.Step) -> peo.Proposal:
        n = step.state.get("n", 0)
        if n >= step.goal["to"]:
            return peo.Done({"n": n, "log": step.state.get("log", [])})
        if bad and n == 1:
            return peo.Continue(state={"n": 100, "log": [*step.state.get("log", []), "bad"]})
        return peo.Continue(state={"n": n + 1, "log": [*step.state.get("log", []), n + 1]})

    @app.handler("waits")
    def waits(step: peo.Step) -> peo.Proposal:
        if "asked" not in step.state:
            return peo.Continue(state={"asked": True})
        return peo.WaitSignal("go")

    return app


async def run_idle(url: str, app: peo.App) -> None:
    await asyncio.wait_for(peo.Node(url, app, idle_horizon=0, clock=monotonic_clock()).run_until_idle(), 60)


async def test_history_lists_every_entry_with_a_digest_of_its_state(store_url: str) -> None:
    async with peo.Client(store_url, identity="ops") as client:
        oid = await client.submit("count", {"to": 3})
        await run_idle(store_url, counting_app(bad=False))
        assert await client.wait(oid, timeout=5) == {"n": 3, "log": [1, 2, 3]}
        versions = await client.history(oid)
        memory = (await client.get(oid)).memory
    assert [v.seq for v in versions] == [e.seq for e in memory] == list(range(len(memory)))
    assert [v.action for v in versions] == [e.action for e in memory]
    assert versions[0].action is Action.INSTANTIATE and versions[-1].action is Action.TERMINATE
    assert versions[0].origin_node == "client:ops" and versions[0].signer == client.key.key_id
    for v, e in zip(versions, memory, strict=True):
        assert (v.timestamp, v.origin_node, v.signer, v.outcome) == (e.timestamp, e.origin_node, e.signer, e.outcome)
        assert v.state_digest == state_digest(state_at(memory, v.seq))  # the incremental fold agrees
        assert len(v.state_digest) == 16 and int(v.state_digest, 16) >= 0
    assert versions[0].state_digest == state_digest({})
    assert versions[-1].state_digest == versions[-2].state_digest  # the terminate changed nothing
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        versions[0].seq = 5  # type: ignore[misc]


def test_a_state_digest_does_not_depend_on_key_order() -> None:
    assert state_digest({"a": 1, "b": {"x": [1, {"q": 2, "p": 3}]}}) == \
        state_digest({"b": {"x": [1, {"p": 3, "q": 2}]}, "a": 1})
    assert state_digest({"a": 1}) != state_digest({"a": 2})


async def test_a_terminated_object_restored_by_seq_runs_on_to_a_different_end(store_url: str) -> None:
    async with peo.Client(store_url, identity="ops") as client:
        oid = await client.submit("count", {"to": 3})
        await run_idle(store_url, counting_app(bad=True))  # the buggy deploy
        assert await client.wait(oid, timeout=5) == {"n": 100, "log": [1, "bad"]}
        before = await client.history(oid)
        good = next(v.seq for v in before if v.outcome.get("state") == {"n": 1, "log": [1]})
        assert await client.restore(oid, seq=good, reason="undo the bad deploy") == good
        info = await client.get(oid)
        assert (info.status, info.result, info.reason) == (peo.Status.RUNNABLE, None, None)
        assert info.state == {"n": 1, "log": [1]}
        last = info.memory[-1]
        assert last.seq == before[-1].seq + 1 and last.action is Action.MUTATE
        assert last.signer == client.key.key_id and last.origin_node == "operator:ops"
        assert last.outcome["restore"] == {"seq": good, "reason": "undo the bad deploy", "by": "operator"}
        assert [e.body for e in info.memory[: len(before)]] == [e.body for e in (await client.get(oid)).memory][
            : len(before)]  # the history before it is untouched
        await run_idle(store_url, counting_app(bad=False))  # the fixed deploy
        assert await client.wait(oid, timeout=5) == {"n": 3, "log": [1, 2, 3]}
        assert await client.verify(oid) == len((await client.get(oid)).memory)
        after = await client.history(oid)
    assert after[len(before)].restored_to == good
    assert after[len(before)].state_digest == before[good].state_digest  # same state, same digest


async def test_restore_by_time_takes_the_last_entry_written_at_or_before_it(store_url: str) -> None:
    async with peo.Client(store_url) as client:
        oid = await client.submit("count", {"to": 4})
        await run_idle(store_url, counting_app(bad=False))
        versions = await client.history(oid)
        stamps = [v.timestamp for v in versions]
        assert stamps == sorted(set(stamps))
        now = stamps[-1] + 3600 * SECOND  # an hour after the end (the clock is injected)
        # exactly at entry 2's time, and between entries 2 and 3: both are version 2
        assert await client.restore(oid, at=stamps[2], now=now) == 2
        assert (await client.get(oid)).state == {"n": 2, "log": [1, 2]}
        assert await client.restore(oid, at=(stamps[2] + stamps[3]) // 2, now=now + 1) == 2
        # a datetime (naive means UTC), a microsecond after entry 1
        moment = dt.datetime.fromtimestamp(stamps[1] // 1000 / 1e6 + 1e-6, tz=dt.UTC).replace(tzinfo=None)
        assert await client.restore(oid, at=moment, now=now + 2) == 1
        info = await client.get(oid)
    restores = [e for e in info.memory if "restore" in e.outcome]
    assert [e.timestamp for e in restores] == [now, now + 1, now + 2]  # the entry's time is ``now``
    assert info.state == {"n": 1, "log": [1]}


async def test_a_restore_is_undone_by_restoring_to_the_seq_before_it(store_url: str) -> None:
    async with peo.Client(store_url) as client:
        oid = await client.submit("count", {"to": 3})
        await run_idle(store_url, counting_app(bad=False))
        ended = await client.get(oid)
        await client.restore(oid, seq=1)
        assert (await client.get(oid)).state == {"n": 1, "log": [1]}
        assert await client.restore(oid, seq=ended.seq) == ended.seq  # undo: the state before the restore
        info = await client.get(oid)
        versions = await client.history(oid)
        assert await client.verify(oid) == ended.seq + 3
    assert info.state == ended.state
    assert info.status is peo.Status.RUNNABLE  # it runs again (to the same end: its state says it is done)
    assert versions[-1].state_digest == versions[ended.seq].state_digest != versions[-2].state_digest


async def test_a_dormant_and_a_quarantined_object_are_restored_and_runnable(store_url: str) -> None:
    async with peo.Client(store_url) as client:
        dormant = await client.submit("waits")
        quarantined = await client.submit("count", {"to": 2})
        await run_idle(store_url, counting_app(bad=False))
        assert (await client.get(dormant, memory=False)).status is peo.Status.DORMANT
        await client.store.quarantine(quarantined, "flagged for a look", now=time.time_ns())
        assert (await client.get(quarantined, memory=False)).status is peo.Status.QUARANTINED
        assert await client.restore(dormant, seq=0) == 0
        assert await client.restore(quarantined, seq=1) == 1
        d = await client.get(dormant)
        q = await client.get(quarantined)
        assert (d.status, d.state) == (peo.Status.RUNNABLE, {})
        assert (q.status, q.state, q.reason) == (peo.Status.RUNNABLE, {"n": 1, "log": [1]}, None)
        await run_idle(store_url, counting_app(bad=False))
        assert await client.wait(quarantined, timeout=5) == {"n": 2, "log": [1, 2]}
        assert (await client.get(dormant, memory=False)).status is peo.Status.DORMANT  # it asked again


async def _unchanged(client: peo.Client, oid: str, row: Any) -> None:
    after = await client.store.get(oid)
    assert (after.seq, after.head, after.status, after.due_at, after.lease_owner) == (
        row.seq, row.head, row.status, row.due_at, row.lease_owner)


async def test_refusals_write_nothing(store_url: str) -> None:
    async with peo.Client(store_url) as client:
        oid = await client.submit("count", {"to": 2})
        await run_idle(store_url, counting_app(bad=False))
        row = await client.store.get(oid)
        created = (await client.history(oid))[0].timestamp
        cases: list[tuple[dict[str, Any], str]] = [
            ({"seq": row.seq + 1}, f"has no seq {row.seq + 1}: its history ends at seq {row.seq}"),
            ({"seq": -1}, "non-negative"),
            ({"seq": True}, "non-negative"),
            ({}, "exactly one of seq"),
            ({"seq": 1, "at": created}, "exactly one of seq"),
            ({"at": created - 1}, "did not exist at"),
            ({"at": "yesterday"}, "a Unix time in ns"),
            ({"at": time.time_ns() + 3600 * SECOND}, "in the future"),
        ]
        for kwargs, message in cases:
            with pytest.raises(peo.UsageError, match=message):
                await client.restore(oid, **kwargs)
            await _unchanged(client, oid, row)
        with pytest.raises(peo.NotFoundError, match="no object nope"):
            await client.restore("nope", seq=0)


async def test_a_deleted_object_is_refused_until_it_is_undeleted(store_url: str) -> None:
    async with peo.Client(store_url) as client:
        oid = await client.submit("no-node-serves-this")
        claim = await client.store.seize(oid, _owner(client), now=time.time_ns(), lease_ns=OPERATOR_LEASE_NS)
        assert claim is not None

        async def delete(fold: Fold, memory: list[Entry]) -> Decision:
            return tombstone("test", by="operator")

        assert await _append_held(client, claim, time.time_ns(), delete)
        row = await client.store.get(oid)
        with pytest.raises(peo.UsageError, match=f"object {oid} is deleted: peo undelete {oid} first"):
            await client.restore(oid, seq=0)
        await _unchanged(client, oid, row)


async def test_an_object_a_node_holds_is_refused_unless_forced(store_url: str) -> None:
    async with peo.Client(store_url) as client:
        oid = await client.submit("work", {"x": 1})
        [claim] = await client.store.claim("busy-node", now=time.time_ns(), lease_ns=3600 * SECOND, limit=1,
                                           handlers=["work"], scopes=None)
        assert claim.id == oid
        with pytest.raises(peo.UsageError, match="is held by busy-node: stop it first"):
            await client.restore(oid, seq=0)
        assert (await client.store.get(oid)).lease_owner == "busy-node"
        assert await client.restore(oid, seq=0, force=True) == 0  # the node died holding it
        assert (await client.get(oid, memory=False)).status is peo.Status.RUNNABLE


async def test_a_chain_that_does_not_verify_is_refused(store_url: str) -> None:
    async with peo.Client(store_url) as client:
        oid = await client.submit("count", {"to": 2})
        await run_idle(store_url, counting_app(bad=False))
    stranger = peo.Client(store_url, keyring=Keyring())  # trusts no key at all
    async with stranger:
        with pytest.raises(peo.IntegrityError):
            await stranger.history(oid)
        with pytest.raises(peo.IntegrityError):
            await stranger.restore(oid, seq=0)


# -- the property: restores on an in-memory chain ----------------------------------------------

KEY = SigningKey(bytes(range(32)))
T0 = 1_700_000_000 * SECOND


def _ring() -> Keyring:
    ring = Keyring()
    ring.trust(KEY.public_key, ["*"])
    return ring


def _append(memory: list[Entry], fold: Fold, action: Action, outcome: dict[str, Any]) -> None:
    last = memory[-1]
    entry = make_entry(KEY, seq=last.seq + 1, prev=last.hash, timestamp=last.timestamp + SECOND,
                       origin_node="node-a", policy_ref="p", action=action, outcome=outcome, trace_id="obj")
    fold.apply(entry)
    memory.append(entry)


operation = st.one_of(
    st.tuples(st.just("step"), st.dictionaries(st.sampled_from("abcd"), st.integers(0, 3), max_size=3)),
    st.tuples(st.just("restore"), st.integers(0, 10**6)),
    st.tuples(st.just("end"), st.none()),
)


@settings(max_examples=40, deadline=None)
@given(st.lists(operation, min_size=1, max_size=25))
def test_after_each_restore_the_state_is_that_of_the_chosen_seq(ops: list[tuple[str, Any]]) -> None:
    first = make_entry(KEY, seq=0, prev=genesis("obj"), timestamp=T0, origin_node="client:t", policy_ref="p",
                       action=Action.INSTANTIATE,
                       outcome=instantiation_outcome("obj", Intent("h", {}), Context()), trace_id="obj")
    memory, fold = [first], Fold(first)
    for kind, arg in ops:
        if kind == "step":
            _append(memory, fold, Action.EXECUTE, {"status": "ok", "state": arg} if arg else {"status": "ok"})
        elif kind == "end":
            _append(memory, fold, Action.TERMINATE, {"reason": "done", "result": None, "status": "ok"})
        else:
            chosen = arg % len(memory)
            expected = state_at(memory, chosen)
            decided = restore(chosen, state_at(memory, chosen), reason="prop", by="operator")
            _append(memory, fold, decided.action, decided.outcome)
            assert fold.state == expected == state_at(memory, memory[-1].seq)
            assert fold.status is Status.RUNNABLE and fold.result is None
            undone = memory[-1].seq - 1  # the undo: back to the state just before the restore
            expect_undo = state_at(memory, undone)
            decided = restore(undone, expect_undo, reason="undo", by="operator")
            _append(memory, fold, decided.action, decided.outcome)
            assert fold.state == expect_undo
        assert Fold.of(memory).state == fold.state
    tip, verified = verify_chain("obj", [(e.body, e.signature) for e in memory], _ring())
    assert tip is not None and tip.seq == len(memory) - 1
    versions: list[Version] = versions_of(verified)
    assert [v.state_digest for v in versions] == [state_digest(state_at(memory, e.seq)) for e in memory]
    assert seq_at("obj", memory, memory[-1].timestamp) == memory[-1].seq
    assert seq_at("obj", memory, T0 + SECOND - 1) == 0
