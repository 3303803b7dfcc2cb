"""Idempotent submission with a caller-chosen id (issue 12), on both stores: the same id and
intent again returns the existing object and writes nothing; another intent raises
ObjectExistsError (CLI exit 1) naming what differs; submits racing on one id create one
object; a bad id is a usage error (exit 2). Also the retry options of ``peo submit``."""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

import pytest

import peo
from peo import cli

UUID7 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def show(capsys: pytest.CaptureFixture[str], url: str, oid: str) -> dict[str, Any]:
    code, out, err = run(capsys, "--store", url, "show", oid, "--json")
    assert code == 0, err
    doc: dict[str, Any] = json.loads(out)
    return doc


# -- the client -------------------------------------------------------------------------------


async def test_the_same_id_and_intent_again_returns_the_existing_object(store_url: str) -> None:
    async with peo.Client(store_url) as client:
        kw: dict[str, Any] = {"priority": 3, "labels": {"team": "web"}, "deadline": 3600, "max_failures": 4,
                              "retry": peo.Retry(base=1.5, non_retryable=(ValueError,))}
        assert await client.submit("checkout", {"order": 123}, object_id="order-123", **kw) == "order-123"
        await asyncio.sleep(0.01)  # the deadline is taken relative to each submit, not as an instant
        assert await client.submit("checkout", {"order": 123}, object_id="order-123", **kw) == "order-123"
        info = await client.get("order-123")
        assert len(info.memory) == 1 and [o.id for o in await client.list()] == ["order-123"]
        assert info.intent.constraints.non_retryable == ("ValueError",) and info.intent.constraints.retry_base == 1.5
        # Generated ids are still UUIDv7.
        assert UUID7.match(await client.submit("checkout", {"order": 124}))


async def test_the_same_id_with_another_intent_raises_and_says_what_differs(store_url: str) -> None:
    async with peo.Client(store_url) as client:
        await client.submit("checkout", {"order": 1}, object_id="req-7", labels={"a": "b"})
        cases: list[tuple[str, dict[str, Any], dict[str, Any], tuple[str, ...]]] = [
            ("checkout", {"order": 2}, {"labels": {"a": "b"}}, ("goal",)),
            ("refund", {"order": 1}, {"labels": {"a": "b"}}, ("handler",)),
            ("checkout", {"order": 1}, {}, ("labels",)),
            ("checkout", {"order": 1}, {"labels": {"a": "b"}, "priority": 1, "scope": "other"}, ("scope", "priority")),
            ("checkout", {"order": 1}, {"labels": {"a": "b"}, "deadline": 60, "retry": peo.Retry(max_attempts=2)},
             ("constraints.deadline", "constraints.max_failures")),
        ]
        for handler, goal, kw, differences in cases:
            with pytest.raises(peo.ObjectExistsError) as info:
                await client.submit(handler, goal, object_id="req-7", **kw)
            assert info.value.differences == differences and info.value.object_id == "req-7"
            assert isinstance(info.value, peo.ConflictError) and not info.value.retryable
            assert str(info.value).startswith("object req-7 already exists with a different intent: ")
        assert len((await client.get("req-7")).memory) == 1
    async with peo.Client(store_url, identity="bob") as other:
        with pytest.raises(peo.ObjectExistsError, match="identity differ"):
            await other.submit("checkout", {"order": 1}, object_id="req-7", labels={"a": "b"})


async def test_submits_racing_on_one_id_create_one_object(store_url: str) -> None:
    clients = [peo.Client(store_url) for _ in range(4)]
    for c in clients:
        await c.open()
    try:
        same = await asyncio.gather(*(c.submit("checkout", {"n": 1}, object_id="race-1") for c in clients))
        assert same == ["race-1"] * 4
        # Different intents racing: exactly one wins, the others are told it exists.
        got = await asyncio.gather(*(c.submit("checkout", {"n": i}, object_id="race-2")
                                     for i, c in enumerate(clients)), return_exceptions=True)
        assert sum(1 for g in got if g == "race-2") == 1
        assert all(isinstance(g, peo.ObjectExistsError) for g in got if g != "race-2")
        assert sorted(o.id for o in await clients[0].list()) == ["race-1", "race-2"]
    finally:
        for c in clients:
            await c.aclose()


async def test_a_bad_id_is_a_usage_error_and_nothing_is_written(sqlite_url: str) -> None:
    async with peo.Client(sqlite_url) as client:
        for bad in ("", "a b", "tab\there", "x" * 129, "new\nline", "nbsp\u00a0", 7):
            with pytest.raises(peo.UsageError):
                await client.submit("checkout", object_id=bad)  # type: ignore[arg-type]
        assert await client.submit("checkout", object_id="x" * 128) == "x" * 128
        assert await client.submit("checkout", object_id="tenant/ü:42") == "tenant/ü:42"
        with pytest.raises(peo.UsageError):
            await client.submit_many("checkout", [{}], object_id="many")
        assert sorted(o.id for o in await client.list()) == sorted(["x" * 128, "tenant/ü:42"])


# -- the command line -------------------------------------------------------------------------


def test_peo_submit_id_is_idempotent_and_exits_1_saying_what_differs(capsys, store_url) -> None:
    argv = ["--store", store_url, "submit", "checkout", "--id", "order-123", "--goal", '{"order": 123}']
    for _ in range(2):  # stderr only warns that no node serves "checkout" yet
        code, out, err = run(capsys, *argv)
        assert (code, out) == (0, "order-123\n") and "error" not in err
    code, out, err = run(capsys, *argv[:-1], '{"order": 124}', "--priority", "5")
    assert (code, out) == (1, "")
    assert err == "peo: error: object order-123 already exists with a different intent: goal, priority differ\n"
    assert len(show(capsys, store_url, "order-123")["memory"]) == 1
    for bad in ("has space", "x" * 129):
        code, out, err = run(capsys, "--store", store_url, "submit", "checkout", "--id", bad)
        assert (code, out) == (2, "") and "object id" in err


def test_peo_submit_records_the_retry_options_in_the_intent(capsys, sqlite_url) -> None:
    code, out, err = run(capsys, "--store", sqlite_url, "submit", "checkout", "--retry-base", "2", "--retry-max", "60",
                         "--max-attempts", "3", "--non-retryable", "ValueError, KeyError")
    assert code == 0, err
    constraints = show(capsys, sqlite_url, out.strip())["intent"]["constraints"]
    assert constraints | {"deadline": None} == {"deadline": None, "max_failures": 3, "max_steps": None,
                                                 "retry_base": 2.0, "retry_max": 60.0,
                                                 "non_retryable": ["ValueError", "KeyError"]}
    for bad in (["--non-retryable", "not a class"], ["--max-attempts", "0"], ["--retry-base", "-1"],
                ["--max-failures", "2", "--max-attempts", "3"]):
        code, out, err = run(capsys, "--store", sqlite_url, "submit", "checkout", *bad)
        assert (code, out) == (2, ""), bad
