"""Forks: a new object from another's state at one version, with a verifiable origin."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from rawsql import raw

import peo
from peo.client.forks import Origin
from peo.client.operator import OPERATOR_LEASE_NS, _append_held
from peo.core.cycle import Decision, tombstone
from peo.core.memory import Fold, state_at
from peo.core.model import Action, Entry


def pipeline_app(world: dict[str, str], calls: Counter[str]) -> peo.App:
    """A durable function of two steps: fetch (reads the world) then analyse (uses the goal)."""
    app = peo.App()

    def fetch(topic: str) -> str:
        calls["fetch"] += 1
        return f"{topic}@{world['source']}"

    def analyse(text: str, style: str) -> str:
        calls["analyse"] += 1
        return f"{style}({text})"

    @app.function("pipeline")
    async def pipeline(run: peo.Run, topic: str, style: str = "short") -> dict[str, Any]:
        fetched = await run.step(fetch, topic)
        report = await run.step(analyse, fetched, style)
        return {"fetched": fetched, "report": report}

    return app


async def run_idle(url: str, app: peo.App) -> None:
    await asyncio.wait_for(peo.Node(url, app, idle_horizon=0).run_until_idle(), 60)


def seq_recording(memory: list[Entry], key: str) -> int:
    """The seq of the entry whose state update records ``key`` (a function's operation)."""
    return next(e.seq for e in memory if key in (e.outcome.get("state") or {}))


async def test_a_fork_at_a_middle_seq_finishes_differently_and_leaves_its_parent_unchanged(store_url: str) -> None:
    world, calls = {"source": "v1"}, Counter[str]()
    app = pipeline_app(world, calls)
    async with peo.Client(store_url, identity="ann") as client:
        parent = await client.submit("pipeline", goal={"topic": "bees"}, labels={"team": "lab"}, priority=3)
        await run_idle(store_url, app)
        assert await client.wait(parent, timeout=5) == {"fetched": "bees@v1", "report": "short(bees@v1)"}
        before = await client.get(parent)
        fetched_at = seq_recording(list(before.memory), "fn.0")
        assert fetched_at < before.seq  # a middle seq: after the fetch, before the end
        assert calls == Counter(fetch=1, analyse=1)

        # Same goal, changed world: a fork after the fetch replays it (the recorded page),
        # one from before it fetches again.
        world["source"] = "v2"
        async with peo.Client(store_url, identity="bob", key=client.key) as bob:
            after_fetch = await bob.fork(parent, seq=fetched_at, goal={"topic": "bees", "style": "long"})
        from_start = await client.fork(parent, seq=0)
        await run_idle(store_url, app)
        assert await client.wait(after_fetch, timeout=5) == {"fetched": "bees@v1", "report": "long(bees@v1)"}
        assert await client.wait(from_start, timeout=5) == {"fetched": "bees@v2", "report": "short(bees@v2)"}
        assert calls == Counter(fetch=2, analyse=3)  # the fork after the fetch did not fetch again

        after = await client.get(parent)
        assert (after.seq, after.result, after.memory) == (before.seq, before.result, before.memory)
        fork = await client.get(after_fetch)
        first = fork.memory[0]
        assert first.signer == client.key.key_id and first.action is Action.INSTANTIATE
        assert first.outcome["fork"] == {"object": parent, "seq": fetched_at,
                                         "hash": before.memory[fetched_at].hash.hex()}
        assert first.outcome["state"] == state_at(list(before.memory), fetched_at)
        assert fork.intent.goal == {"topic": "bees", "style": "long"} and fork.intent.handler == "pipeline"
        ctx = fork.context
        assert (ctx.identity, ctx.trust_scope, ctx.priority, dict(ctx.labels)) == ("bob", "default", 3, {"team": "lab"})
        assert ctx.parent is None and ctx.root is None  # a fork is not a child
        assert await client.store.forks(parent) == [after_fetch, from_start]
        assert await client.store.forks(after_fetch) == []
        assert [r.id for r in await client.list(parent=parent)] == []

        for oid in (after_fetch, from_start):
            verified = await client.verify(oid)
            assert verified == len((await client.get(oid)).memory) and verified.origin is Origin.OK
        plain = await client.verify(parent)
        assert plain == len(before.memory) and plain.origin is Origin.NONE


async def test_a_fork_of_a_terminated_object_at_its_head_runs_again_and_a_fork_of_a_fork_verifies(
        store_url: str) -> None:
    world, calls = {"source": "v1"}, Counter[str]()
    app = pipeline_app(world, calls)
    async with peo.Client(store_url) as client:
        parent = await client.submit("pipeline", goal={"topic": "ants"})
        await run_idle(store_url, app)
        await client.wait(parent, timeout=5)
        head = (await client.get(parent, memory=False)).seq
        again = await client.fork(parent)  # at the head: the whole record is replayed
        assert (await client.get(again, memory=False)).status is peo.Status.RUNNABLE
        await run_idle(store_url, app)
        assert await client.wait(again, timeout=5) == {"fetched": "ants@v1", "report": "short(ants@v1)"}
        assert calls == Counter(fetch=1, analyse=1)
        assert (await client.get(again)).memory[0].outcome["fork"]["seq"] == head
        # A fork of the fork at its seq 0 starts from the state its entry 0 carries: both
        # steps are recorded there, so even another goal replays them.
        grand = await client.fork(again, seq=0, goal={"topic": "ants", "style": "tiny"})
        await run_idle(store_url, app)
        assert await client.wait(grand, timeout=5) == {"fetched": "ants@v1", "report": "short(ants@v1)"}
        assert calls == Counter(fetch=1, analyse=1)
        assert (await client.verify(grand)).origin is Origin.OK
        assert await client.store.forks(again) == [grand]


async def test_the_goal_a_fork_keeps_is_the_one_as_of_its_seq(store_url: str) -> None:
    app = peo.App()

    @app.handler("refiner")
    def refiner(step: peo.Step) -> peo.Proposal:
        if step.goal.get("round", 0) < 2:
            return peo.Refine(goal={"round": step.goal.get("round", 0) + 1})
        return peo.Done(step.goal["round"])

    async with peo.Client(store_url) as client:
        oid = await client.submit("refiner", goal={"round": 0})
        await run_idle(store_url, app)
        assert await client.wait(oid, timeout=5) == 2
        info = await client.get(oid)
        assert [e.action for e in info.memory][:3] == [Action.INSTANTIATE, Action.MUTATE, Action.MUTATE]
        fork = await client.fork(oid, seq=1)
        assert (await client.get(fork)).intent.goal == {"round": 1}
        assert (await client.get(await client.fork(oid, seq=0))).intent.goal == {"round": 0}


async def test_verify_names_the_origin_when_the_parent_no_longer_matches(store_url: str) -> None:
    async with peo.Client(store_url) as client:
        parent = await client.submit("nobody-serves-this", goal={"n": 1})
        fork = await client.fork(parent, seq=0)
        assert (await client.verify(fork)).origin is Origin.OK
        # Another object now stands under the parent's id: its chain verifies, but its entry 0
        # is not the one the fork was made from.
        await raw(store_url, "DELETE FROM entries WHERE object_id = ?", parent)
        await raw(store_url, "DELETE FROM objects WHERE id = ?", parent)
        await client.submit("nobody-serves-this", goal={"n": 2}, object_id=parent)
        assert await client.verify(parent) == 1
        with pytest.raises(peo.IntegrityError, match=f"fork origin {parent} at seq 0: the parent's entry at that "
                                                     "seq is not the one the fork records") as caught:
            await client.verify(fork)
        assert caught.value.seq == 0 and caught.value.object_id == fork


async def test_verify_fails_a_fork_whose_parent_history_was_tampered_and_fork_refuses_it(store_url: str) -> None:
    app = pipeline_app({"source": "v1"}, Counter())
    async with peo.Client(store_url) as client:
        parent = await client.submit("pipeline", goal={"topic": "owls"})
        await run_idle(store_url, app)
        await client.wait(parent, timeout=5)
        fork = await client.fork(parent, seq=1)
        [(body,)] = await raw(store_url, "SELECT body FROM entries WHERE object_id = ? AND seq = 1", parent)
        forged = bytes(body).replace(b"owls", b"bats")
        assert forged != bytes(body)
        await raw(store_url, "UPDATE entries SET body = ? WHERE object_id = ? AND seq = 1", forged, parent)
        with pytest.raises(peo.IntegrityError, match=f"fork origin {parent} at seq 1: the parent does not verify"):
            await client.verify(fork)
        with pytest.raises(peo.IntegrityError):  # a fork of tampered history is refused
            await client.fork(parent, seq=1)
        assert await client.store.forks(parent) == [fork]


async def test_a_fork_whose_parent_is_gone_is_unverifiable_not_failed(store_url: str, tmp_path: Path) -> None:
    async with peo.Client(store_url) as client:
        parent = await client.submit("nobody-serves-this")
        fork = await client.fork(parent)
        await raw(store_url, "DELETE FROM entries WHERE object_id = ?", parent)
        await raw(store_url, "DELETE FROM objects WHERE id = ?", parent)
        verified = await client.verify(fork)
        assert verified == 1 and verified.entries == 1
        assert verified.origin is Origin.UNVERIFIABLE and verified.note is not None and parent in verified.note
        data = await client.export(fork)
    # Exported alone, a fork keeps its lineage in another store, where its origin is unverifiable too.
    async with peo.Client(f"sqlite:///{tmp_path / 'other.db'}", key=client.key) as other:
        assert await other.import_(data) == fork
        assert (await other.verify(fork)).origin is Origin.UNVERIFIABLE
        assert await other.store.forks(parent) == [fork]


async def test_fork_refuses_bad_input_and_writes_nothing(store_url: str) -> None:
    async with peo.Client(store_url) as client:
        oid = await client.submit("nobody-serves-this")
        with pytest.raises(peo.NotFoundError):
            await client.fork("no-such-object")
        with pytest.raises(peo.UsageError, match="has seqs 0 to 0: cannot fork it at seq 1"):
            await client.fork(oid, seq=1)
        with pytest.raises(peo.UsageError, match="cannot fork it at seq -1"):
            await client.fork(oid, seq=-1)
        with pytest.raises(peo.UsageError, match="seq must be an integer"):
            await client.fork(oid, seq=True)
        with pytest.raises(peo.UsageError, match="goal must be a JSON object"):
            await client.fork(oid, goal=["not", "a", "dict"])  # type: ignore[arg-type]
        assert await client.store.forks(oid) == []

        # A deleted object (an operator's signed tombstone) is not forked: undelete it first.
        now = time.time_ns()
        claim = await client.store.seize(oid, "operator:test", now=now, lease_ns=OPERATOR_LEASE_NS)
        assert claim is not None

        async def delete(fold: Fold, memory: list[Entry]) -> Decision:
            return tombstone("test", by="operator")

        assert await _append_held(client, claim, now, delete)
        with pytest.raises(peo.UsageError, match="is deleted: undelete it first"):
            await client.fork(oid, seq=0)
        assert await client.store.forks(oid) == []
        assert await raw(store_url, "SELECT count(*) FROM objects") == [(1,)]


def approval_app(calls: Counter[str]) -> peo.App:
    """A durable function that waits for a person's answer, then acts on it (or on a timeout)."""
    app = peo.App()

    def act(answer: str) -> str:
        calls[answer] += 1
        return f"acted on {answer}"

    @app.function("review")
    async def review(run: peo.Run, doc: str) -> dict[str, Any]:
        try:
            signal = await run.wait_signal("answer", timeout=3600)
            answer = str(signal.payload)
        except peo.SignalTimeout:
            answer = "timeout"
        done = await run.step(act, answer)
        return {"doc": doc, "done": done}

    return app


async def test_a_fork_past_a_signal_wait_replays_the_answer_and_one_before_it_waits_afresh(store_url: str) -> None:
    calls = Counter[str]()
    app = approval_app(calls)
    async with peo.Client(store_url) as client:
        parent = await client.submit("review", goal={"doc": "q3"})
        await run_idle(store_url, app)
        await client.signal(parent, "answer", "yes")
        await run_idle(store_url, app)
        assert await client.wait(parent, timeout=5) == {"doc": "q3", "done": "acted on yes"}
        memory = list((await client.get(parent)).memory)
        woke = next(e.seq for e in memory if e.action is Action.REENTRY)
        waited = woke - 1

        # Past the wait: the fork's starting state holds the answer; it acts on it itself.
        past = await client.fork(parent, seq=woke)
        await run_idle(store_url, app)
        assert await client.wait(past, timeout=5) == {"doc": "q3", "done": "acted on yes"}
        assert calls["yes"] == 2
        assert (await client.verify(past)).origin is Origin.OK

        # At the wait (not yet answered there): the fork waits for an answer of its own.
        pending = await client.fork(parent, seq=waited)
        await run_idle(store_url, app)
        assert (await client.get(pending, memory=False)).status is peo.Status.DORMANT
        await client.signal(pending, "answer", "no")
        await run_idle(store_url, app)
        assert await client.wait(pending, timeout=5) == {"doc": "q3", "done": "acted on no"}
        assert (await client.verify(pending)).origin is Origin.OK
        assert (await client.get(parent, memory=False)).seq == memory[-1].seq  # the parent never moved
