"""``peo history`` and ``peo restore`` (one object, and a fleet in bulk with a dry run by
default), on both stores; bad input is one clear line and exit 2, nothing written."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from typing import Any

import pytest
from clirun import ok, run

import peo
from peo.cli.versions import parse_time
from peo.client.operator import OPERATOR_LEASE_NS, _append_held, _owner
from peo.core.cycle import Decision, tombstone
from peo.core.memory import Fold
from peo.core.model import Entry

SECOND = 10**9


def monotonic_clock() -> Any:
    """A node clock at the real time that never gives one timestamp twice (1 µs apart)."""
    last = [0]

    def clock() -> int:
        last[0] = max(time.time_ns(), last[0] + 1000)
        return last[0]

    return clock


def deploy(bad: bool) -> peo.App:
    """``count`` counts to 3; the first version stops at 1 to wait for a ``deploy`` signal,
    and after it the bad deploy writes a wrong count while the good one goes on."""
    app = peo.App()

    @app.handler("count")
    def count(step: peo.Step) -> peo.Proposal:
        n = step.state.get("n", 0)
        if n >= 3:
            return peo.Done({"n": n})
        if n == 1 and not step.state.get("deployed"):
            return peo.Continue(state={"deployed": True}) if step.signals else peo.WaitSignal("deploy")
        return peo.Continue(state={"n": 100 if bad else n + 1})

    return app


async def run_idle(url: str, app: peo.App) -> None:
    await asyncio.wait_for(peo.Node(url, app, idle_horizon=0, clock=monotonic_clock()).run_until_idle(), 60)


def iso_at(ns: int) -> str:
    """ISO 8601 for the first microsecond at or after ``ns`` (the CLI reads microseconds)."""
    us = -(-ns // 1000)
    return dt.datetime.fromtimestamp(us // 10**6, tz=dt.UTC).replace(microsecond=us % 10**6).isoformat()


async def _delete(client: peo.Client, oid: str) -> None:
    claim = await client.store.seize(oid, _owner(client), now=time.time_ns(), lease_ns=OPERATOR_LEASE_NS)
    assert claim is not None

    async def decide(fold: Fold, memory: list[Entry]) -> Decision:
        return tombstone("test", by="operator")

    assert await _append_held(client, claim, time.time_ns(), decide)


def test_parse_time() -> None:
    now = 1_800_000_000 * SECOND
    assert parse_time("-90s", now) == now - 90 * SECOND
    assert parse_time("-30m", now) == now - 1800 * SECOND
    assert parse_time("-2h", now) == now - 7200 * SECOND
    assert parse_time("-1d", now) == now - 86_400 * SECOND
    ten = parse_time("2026-12-07T10:00:00Z", now)
    assert ten == int(dt.datetime(2026, 12, 7, 10, tzinfo=dt.UTC).timestamp()) * SECOND
    assert parse_time("2026-12-07T10:00:00", now) == ten  # naive means UTC
    assert parse_time("2026-12-07T11:00:00+01:00", now) == ten
    assert parse_time("2026-12-07T10:00:00.000001Z", now) == ten + 1000


def test_history_and_a_restore_by_seq(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    async def setup() -> str:
        async with peo.Client(store_url, identity="ops") as client:
            oid = await client.submit("count")
            await run_idle(store_url, deploy(bad=False))
            await client.signal(oid, "deploy")
            await run_idle(store_url, deploy(bad=False))
            assert await client.wait(oid, timeout=5) == {"n": 3}
            return oid

    oid = asyncio.run(setup())
    out = ok(capsys, "--store", store_url, "history", oid)
    lines = out.splitlines()
    assert lines[0].split() == ["SEQ", "TIME", "ACTION", "NODE", "STATE", "WHAT"]
    assert lines[1].split()[:5] == ["0", *lines[1].split()[1:3], "instantiate", "client:ops"]
    docs = [json.loads(line) for line in ok(capsys, "--store", store_url, "history", oid, "--json").splitlines()]
    assert [d["seq"] for d in docs] == list(range(len(lines) - 1))
    assert docs[-1]["action"] == "terminate" and "result" in docs[-1]["summary"]
    assert set(docs[0]) == {"seq", "time", "timestamp_ns", "action", "origin_node", "signer", "state_digest",
                            "restored_to", "summary"}
    target = next(d["seq"] for d in docs if d["action"] == "dormancy")  # n=1, waiting for the deploy
    out = ok(capsys, "--store", store_url, "restore", oid, "--seq", str(target), "--reason", "try again")
    assert out.strip() == (f"restored {oid} to seq {target} (its state at {docs[target]['time'][:10]} "
                           f"{docs[target]['time'][11:23]}Z): a signed entry at seq {len(docs)}; it is runnable")
    after = [json.loads(line) for line in ok(capsys, "--store", store_url, "history", oid, "--json").splitlines()]
    assert after[-1]["restored_to"] == target and after[-1]["origin_node"] == "operator:anonymous"
    assert after[-1]["state_digest"] == docs[target]["state_digest"]
    assert "state restored to seq" in after[-1]["summary"] and "try again" in after[-1]["summary"]
    assert ok(capsys, "--store", store_url, "verify", oid)


def test_a_restore_by_time_and_the_bad_input(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    async def setup() -> tuple[str, str]:
        async with peo.Client(store_url) as client:
            oid = await client.submit("count")
            gone = await client.submit("count")
            await run_idle(store_url, deploy(bad=False))
            await _delete(client, gone)
            return oid, gone

    oid, gone = asyncio.run(setup())
    docs = [json.loads(line) for line in ok(capsys, "--store", store_url, "history", oid, "--json").splitlines()]
    out = ok(capsys, "--store", store_url, "restore", oid, "--at", iso_at(docs[1]["timestamp_ns"]))
    assert out.startswith(f"restored {oid} to seq 1 ")
    code, out, err = run(capsys, "--store", store_url, "restore", oid, "--at", "-2h")  # before it existed
    assert (code, out) == (2, "") and f"object {oid} did not exist at" in err
    code, out, err = run(capsys, "--store", store_url, "restore", oid, "--at=-1d")
    assert code == 2 and "did not exist" in err
    bad: list[tuple[list[str], str]] = [
        ([oid, "--seq", "99"], "has no seq 99"),
        ([oid, "--seq", "-1"], "negative"),
        ([oid, "--at", "tuesday"], "--at 'tuesday' is not a time"),
        ([oid, "--at", "+2h"], "is not a time"),
        ([oid], "give --seq N or --at TIME"),
        ([oid, "--seq", "1", "--at", "-1h"], "not allowed with argument"),
        ([oid, "--seq", "1", "--handler", "count"], "--handler is for a bulk restore (no ID)"),
        ([oid, "--seq", "1", "--yes"], "--yes is for a bulk restore (no ID)"),
        (["--seq", "1"], "--seq names a version of one object"),
        (["--handler", "count"], "give an object ID"),
        (["--at", "-1h", "--status", "sleepy"], "invalid choice"),
        ([gone, "--seq", "0"], f"object {gone} is deleted: peo undelete {gone} first"),
    ]
    before = ok(capsys, "--store", store_url, "history", oid)
    for argv, message in bad:
        code, out, err = run(capsys, "--store", store_url, "restore", *argv)
        assert (code, out) == (2, ""), argv
        assert err.startswith("peo: error: ") and message in err and err.count("\n") == 1, (argv, err)
    assert ok(capsys, "--store", store_url, "history", oid) == before  # nothing was written
    code, out, err = run(capsys, "--store", store_url, "restore", "no-such-id", "--seq", "0")
    assert (code, out, err) == (1, "", "peo: error: no object no-such-id\n")
    for verb in ("history", "restore"):
        code, out, _ = run(capsys, verb, "--help")
        assert code == 0 and "examples:" in out
    assert "without a zone is UTC" in run(capsys, "restore", "--help")[1]


def test_a_bulk_restore_is_a_dry_run_until_yes(store_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    """The recipe: a bad deploy damaged a fleet after TIME; restore it to TIME, then the
    fixed deploy runs it on."""

    async def setup() -> tuple[list[str], str, str, int]:
        async with peo.Client(store_url) as client:
            fleet = [await client.submit("count") for _ in range(3)]
            other = await client.submit("elsewhere")  # another handler: not selected
            await run_idle(store_url, deploy(bad=False))  # each waits at n=1 for the deploy
            at = time.time_ns() + 1000
            while time.time_ns() <= at:
                await asyncio.sleep(0.001)
            late = await client.submit("count")  # created after TIME
            for oid in fleet:
                await client.signal(oid, "deploy")
            await run_idle(store_url, deploy(bad=True))  # the bad deploy
            for oid in fleet:
                assert await client.wait(oid, timeout=5) == {"n": 100}
            return fleet, other, late, at

    fleet, other, late, at = asyncio.run(setup())
    when = iso_at(at)
    out = ok(capsys, "--store", store_url, "restore", "--at", when, "--handler", "count")
    assert out.startswith(f"dry run: would restore 3 of 4 objects with handler count to their state at {when[:10]}")
    for oid in fleet:
        line = next(row for row in out.splitlines() if row.startswith(oid))
        assert line.split()[1:5] == ["count", "terminated", str(_seq(capsys, store_url, oid)), "2"]
    assert other not in out
    late_line = next(row for row in out.splitlines() if row.startswith(late))
    assert "did not exist at" in late_line
    assert ok(capsys, "--store", store_url, "history", fleet[0]).count("restored") == 0  # a dry run writes nothing

    async def hold(oid: str) -> int:
        async with peo.Client(store_url) as client:
            claim = await client.store.seize(oid, "busy-node", now=time.time_ns(), lease_ns=3600 * SECOND,
                                             final=True)
            assert claim is not None
            return claim.token

    token = asyncio.run(hold(fleet[2]))
    code, out, err = run(capsys, "--store", store_url, "restore", "--at", when, "--handler", "count", "--status",
                         "terminated", "--yes", "--reason", "undo the bad deploy")
    assert code == 1
    assert f"peo: error: {fleet[2]}: not restored: object {fleet[2]} is held by busy-node" in err
    for oid in fleet[:2]:
        assert f"restored {oid} to seq 2 " in out
    assert out.splitlines()[-1].startswith("restored 2 of 3 objects with handler count and status terminated")
    assert out.splitlines()[-1].endswith("; 1 failed; 1 skipped")

    async def fixed() -> list[Any]:
        async with peo.Client(store_url) as client:
            await client.store.release(fleet[2], token, due_at=None, now=time.time_ns())  # the busy node lets go
            for oid in fleet[:2]:  # restored to n=1, they wait for the deploy again: the fixed one
                await client.signal(oid, "deploy")
            await run_idle(store_url, deploy(bad=False))
            return [await client.wait(oid, timeout=5) for oid in fleet[:2]]

    assert asyncio.run(fixed()) == [{"n": 3}, {"n": 3}]
    # the one that was held is as the bad deploy left it
    assert ok(capsys, "--store", store_url, "history", fleet[2]).count("state restored") == 0


def _seq(capsys: pytest.CaptureFixture[str], url: str, oid: str) -> int:
    return len(ok(capsys, "--store", url, "history", oid, "--json").splitlines()) - 1
