"""A failing handler leaves a trace to debug from: its traceback in memory, one warning
line per failed step on the node's log, and the last error on ObjectFailedError."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

import peo


def _parse_amount(text: str) -> int:
    return int(text)  # raises ValueError for "twelve"


async def run_idle(url: str, app: peo.App, **kw: Any) -> peo.Node:
    # The retry after a failure is due in well under a second: idle means nothing due within 5 s.
    node = peo.Node(url, app, **kw)
    await asyncio.wait_for(node.run_until_idle(), 60)
    return node


def failing_app() -> peo.App:
    app = peo.App()

    @app.handler("invoice")
    def invoice(step: peo.Step) -> peo.Proposal:
        return peo.Done(_parse_amount(step.goal["amount"]))

    return app


async def test_a_failed_step_records_type_message_and_the_handlers_traceback(store_url: str,
                                                                            caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="peo.node")
    async with peo.Client(store_url) as client:
        oid = await client.submit("invoice", {"amount": "twelve"}, max_failures=2)
        await run_idle(store_url, failing_app())
        with pytest.raises(peo.ObjectFailedError, match="failure threshold exceeded") as failed:
            await client.wait(oid, timeout=5)
        last = failed.value.last_error
        assert last is not None and last["class"] == "ValueError"
        assert last["message"] == "invalid literal for int() with base 10: 'twelve'"  # no class name repeated
        assert "last error: ValueError: invalid literal" in str(failed.value)
        tb = last["traceback"]
        assert "_parse_amount" in tb and "invoice" in tb and "return int(text)" in tb
        assert "peo/node/" not in tb and "asyncio" not in tb  # the node's own frames are left out
        errors = [e.outcome["error"] for e in (await client.get(oid)).memory if "error" in e.outcome]
        assert len(errors) == 2 and all(e["class"] == "ValueError" for e in errors)
    warned = [r.getMessage() for r in caplog.records if "step_failed" in r.getMessage()]
    assert len(warned) == 2 and all(oid in w and "ValueError" in w for w in warned)
    assert "seq=1 " in warned[0] and "then=dormancy" in warned[0] and "failure threshold" in warned[1]


async def test_a_handler_timeout_says_how_long_it_waited(sqlite_url: str) -> None:
    app = peo.App()

    @app.handler("slow", timeout=0.05)
    async def slow(step: peo.Step) -> peo.Proposal:
        await asyncio.sleep(10)
        return peo.Done(None)

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("slow", max_failures=1)
        await run_idle(sqlite_url, app)
        with pytest.raises(peo.ObjectFailedError) as failed:
            await client.wait(oid, timeout=5)
        assert failed.value.last_error is not None
        assert failed.value.last_error["class"] == "timeout"
        assert failed.value.last_error["message"] == "the handler did not finish within 0.05 s"


async def test_a_retried_step_keeps_its_idempotency_key_and_counts_its_attempts(sqlite_url: str) -> None:
    app = peo.App()
    seen: list[tuple[str, int, int]] = []

    @app.handler("charge")
    def charge(step: peo.Step) -> peo.Proposal:
        seen.append((step.idempotency_key, step.attempt, step.seq))
        if step.state.get("charged"):
            return peo.Done("receipt")
        if step.attempt < 3:
            raise TimeoutError("the payment API timed out (the charge may have gone through)")
        return peo.Continue(state={"charged": True})

    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("charge")
        await run_idle(sqlite_url, app)
        assert await client.wait(oid, timeout=5) == "receipt"
    keys = [k for k, _, _ in seen]
    assert [a for _, a, _ in seen] == [1, 2, 3, 1]
    assert keys[0] == keys[1] == keys[2] == f"{oid}:1"  # one logical call, one key, three attempts
    assert seen[2][2] == 5  # ... although the third attempt writes seq 5 (two backoffs between)
    assert keys[3] == f"{oid}:6"  # the step after a success begins a new key
