"""Per-handler retry settings on a running node, on both stores: ``@app.handler(retry=)``
bounds and paces a handler's retries, names exceptions that fail the object at once, and a
submit's own ``retry=`` (recorded in the intent) takes precedence over the handler's."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import peo


class Declined(Exception):
    pass


class CardDeclined(Declined):
    pass


def flaky_app(retry: peo.Retry | None, calls: list[tuple[str, int]]) -> peo.App:
    app = peo.App()

    @app.handler("pay", retry=retry)
    def pay(step: peo.Step) -> peo.Proposal:
        calls.append((step.object_id, step.attempt))
        kind = step.goal.get("raise", "value")
        if kind == "declined":
            raise CardDeclined("card declined")
        if kind == "key":
            raise KeyError("sku")
        raise ValueError("upstream said no")

    return app


async def run_idle(url: str, app: peo.App) -> None:
    node = peo.Node(url, app)
    await asyncio.wait_for(node.run_until_idle(), 60)


def attempts(calls: list[tuple[str, int]], oid: str) -> int:
    return sum(1 for o, _ in calls if o == oid)


async def failed(client: Any, oid: str) -> peo.ObjectFailedError:
    with pytest.raises(peo.ObjectFailedError) as info:
        await client.wait(oid, timeout=5)
    return info.value


async def test_the_handlers_retry_bounds_attempts_and_names_non_retryable_errors(store_url: str) -> None:
    calls: list[tuple[str, int]] = []
    retry = peo.Retry(base=0.01, max=0.02, max_attempts=2, non_retryable=(Declined,))
    async with peo.Client(store_url) as client:
        flaky = await client.submit("pay", {"raise": "value"})
        declined = await client.submit("pay", {"raise": "declined"})
        await run_idle(store_url, flaky_app(retry, calls))
        err = await failed(client, flaky)
        assert attempts(calls, flaky) == 2 and "failure threshold exceeded" in str(err)
        # A subclass of a non-retryable class fails at once: one attempt, no backoff entry.
        err = await failed(client, declined)
        assert attempts(calls, declined) == 1 and err.reason == "failed: non-retryable failure"
        assert err.last_error is not None and err.last_error["class"] == "CardDeclined"
        assert err.last_error["retryable"] is False
        assert [e.action for e in (await client.get(declined)).memory] == [peo.Action.INSTANTIATE,
                                                                           peo.Action.TERMINATE]
        # The handler's settings are the node's: nothing of them is written in the intent.
        assert (await client.get(flaky)).intent.constraints == peo.Constraints()


async def test_a_submits_retry_is_recorded_in_the_intent_and_comes_before_the_handlers(store_url: str) -> None:
    calls: list[tuple[str, int]] = []
    handler_retry = peo.Retry(base=0.01, max_attempts=1, non_retryable=("KeyError",))
    async with peo.Client(store_url) as client:
        mine = peo.Retry(base=0.01, max=0.02, max_attempts=3, non_retryable=())
        more = await client.submit("pay", {"raise": "key"}, retry=mine)
        plain = await client.submit("pay", {"raise": "key"})
        info = await client.get(more)
        assert info.intent.constraints == peo.Constraints(max_failures=3, retry_base=0.01, retry_max=0.02,
                                                          non_retryable=())
        await run_idle(store_url, flaky_app(handler_retry, calls))
        await failed(client, more)
        await failed(client, plain)
        # Its own list (none) and its own max_attempts win over the handler's.
        assert attempts(calls, more) == 3 and attempts(calls, plain) == 1


async def test_submit_refuses_a_retry_that_disagrees_with_max_failures(sqlite_url: str) -> None:
    async with peo.Client(sqlite_url) as client:
        with pytest.raises(peo.UsageError, match="disagree"):
            await client.submit("pay", max_failures=2, retry=peo.Retry(max_attempts=3))
        with pytest.raises(peo.UsageError):
            await client.submit("pay", retry={"base": 1})  # type: ignore[arg-type]
        oid = await client.submit("pay", max_failures=3, retry=peo.Retry(max_attempts=3))
        assert (await client.get(oid)).intent.constraints.max_failures == 3
        ids = await client.submit_many("pay", [{}, {}], retry=peo.Retry(non_retryable=(ValueError,)))
        for oid in ids:
            assert (await client.get(oid)).intent.constraints.non_retryable == ("ValueError",)


def test_a_handler_retry_must_be_a_retry_value() -> None:
    app = peo.App()
    with pytest.raises(peo.UsageError):
        app.handler("x", retry=3)  # type: ignore[arg-type]
    app.handler("y", retry=peo.Retry(max_attempts=2))(lambda step: peo.Done())
    assert app.handlers["y"].retry == peo.Retry(max_attempts=2)
