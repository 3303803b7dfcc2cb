"""Tiered memory: the episodic buffer stays under its budget because consolidation, a
recorded step of its own, runs before it would overflow; consolidated facts go to the
identity's long-term store (versioned, with tombstones, full-text recall on both stores).
No timed assertions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import pytest

import peo
from peo.agents.episodic import (
    CONSOLIDATE_AT,
    SUMMARY_PREFIX,
    Buffer,
    apply_consolidation,
    consolidation_request,
    estimate_tokens,
    needs_consolidation,
    parse_consolidation,
    split_point,
)
from peo.agents.facts import Facts
from peo.store import open_store
from peo.testing.fakellm import FakeLLMServer, Reply

pytest.importorskip("openai")

BUDGET = 2000  # estimated tokens of the buffer
PAGE = "lorem ipsum dolor sit amet " * 55  # ~1,500 characters: a turn is ~430 tokens, under a quarter


def model(server: FakeLLMServer) -> peo.Model:
    return peo.Model("fake-model", base_url=server.base_url, api_key_env=None, timeout=10)


def is_consolidation(request: dict[str, Any]) -> bool:
    return not request.get("tools")


def long_run(fetches: int, *, facts: bool = True, then: Callable[[int], Reply] | None = None
             ) -> Callable[[dict[str, Any]], Reply]:
    """A model that fetches ``fetches`` pages one by one, then finishes; asked to consolidate,
    it answers a summary and (with ``facts``) one fact per consolidation."""
    seen = {"model": 0, "consolidations": 0}

    def respond(request: dict[str, Any]) -> Reply:
        if is_consolidation(request):
            seen["consolidations"] += 1
            n = seen["consolidations"]
            found = [{"key": f"page.{n}", "value": f"page batch {n} mentions zanzibar"}] if facts else []
            return Reply.text("```json\n" + json.dumps({"summary": f"fetched pages, batch {n}", "facts": found})
                              + "\n```")
        seen["model"] += 1
        if seen["model"] <= fetches:
            return Reply.tool_call("fetch", {"page": seen["model"]})
        if then is not None:
            return then(seen["model"] - fetches)
        return Reply.tool_call("finish", {"result": "read them all"})

    return respond


def reader_app(server: FakeLLMServer, **agent: Any) -> peo.App:
    app = peo.App()

    @app.tool(idempotent=True)
    def fetch(page: int, idempotency_key: str) -> str:
        """Fetch one page."""
        return f"page {page}: {PAGE}"

    app.agent("reader", model=model(server), instructions="You read pages.", tools=[fetch],
              memory_tokens=agent.pop("memory_tokens", BUDGET), **agent)
    return app


async def run_idle(url: str, app: peo.App) -> None:
    await asyncio.wait_for(peo.Node(url, app).run_until_idle(), 90)


def steps(info: peo.ObjectInfo) -> list[dict[str, Any]]:
    records = {int(k[3:]): v for k, v in info.state.items() if k.startswith("fn.") and k[3:].isdigit()}
    return [records[i] for i in sorted(records)]


async def test_consolidation_keeps_the_buffer_under_its_budget_and_happens_before_overflow(store_url: str) -> None:
    with FakeLLMServer(long_run(30)) as server:
        async with peo.Client(store_url) as client:
            oid = await client.submit("reader", {"task": "read 30 pages"})
            await run_idle(store_url, reader_app(server))
            assert await client.wait(oid, timeout=5) == "read them all"
            info = await client.get(oid)
        requests = list(server.requests)
    calls = [r for r in requests if not is_consolidation(r)]
    consolidations = [i for i, r in enumerate(requests) if is_consolidation(r)]
    # Without consolidation the conversation would be several times the budget.
    assert 30 * estimate_tokens([{"role": "tool", "content": PAGE}]) > 5 * BUDGET
    assert len(consolidations) >= 5
    # Every call the agent made sent a buffer under its budget, in fact under the fraction.
    sizes = [estimate_tokens(r["messages"]) for r in calls]
    assert max(sizes) <= BUDGET * CONSOLIDATE_AT
    # Each consolidation came before an overflow: the call before it was under the budget,
    # and the buffer it left (the next call's) is smaller than that.
    for i in consolidations:
        before, after = requests[i - 1], requests[i + 1]
        assert not is_consolidation(before) and not is_consolidation(after)
        assert estimate_tokens(before["messages"]) < BUDGET
        assert estimate_tokens(after["messages"]) < estimate_tokens(before["messages"])
        assert after["messages"][2]["content"].startswith(SUMMARY_PREFIX)
    # Each is a recorded step with its summary, facts (their versions) and usage.
    records = [r for r in steps(info) if r["name"] == "consolidate"]
    assert len(records) == len(consolidations)
    first = records[0]["result"]
    assert first["summary"] == "fetched pages, batch 1" and first["stored"] is True
    assert first["facts"] == [{"key": "page.1", "value": "page batch 1 mentions zanzibar", "version": 1}]
    assert first["usage"]["prompt"] > 0 and first["upto"] > 2
    # The consolidation request holds the older turns as a transcript, and no tools.
    transcript = requests[consolidations[0]]["messages"][1]["content"]
    assert '[tool] {"result": "page 1:' in transcript and "-> calls fetch" in transcript


async def test_facts_are_shared_by_an_identity_and_recalled_by_full_text_search(store_url: str) -> None:
    with FakeLLMServer(long_run(12)) as server:
        async with peo.Client(store_url, identity="alice") as alice:
            first = await alice.submit("reader", {"task": "read"})
            await run_idle(store_url, reader_app(server))
            assert await alice.wait(first, timeout=5) == "read them all"
    recall = [Reply.tool_call("recall", {"query": 'zanzibar "batch* NEAR( OR -x:y'}),
              Reply.tool_call("finish", {"result": "recalled"})]
    found: dict[str, list[Any]] = {}
    for identity in ("alice", "bob"):
        with FakeLLMServer(list(recall)) as server:
            async with peo.Client(store_url, identity=identity) as client:
                oid = await client.submit("reader", {"task": "what do you know?"})
                await run_idle(store_url, reader_app(server))
                assert await client.wait(oid, timeout=5) == "recalled"
                (record,) = [r for r in steps(await client.get(oid)) if r["name"] == "recall"]
                found[identity] = record["result"]["facts"]
                assert "zanzibar" in server.requests[1]["messages"][-1]["content"] or identity == "bob"
    assert found["alice"] and all("zanzibar" in f["value"] for f in found["alice"])
    assert {f["key"] for f in found["alice"]} <= {f"page.{n}" for n in range(1, 10)}
    assert found["bob"] == []
    async with open_store(store_url) as store:
        written = await store.facts("alice")
        assert written and all(f.object_id == first and f.seq is not None for f in written)
        assert await store.facts("bob") == []


async def test_remember_and_forget_version_a_key_and_keep_its_history(store_url: str) -> None:
    script = [Reply.tool_call("remember", {"key": "customer.plan", "value": "basic"}),
              Reply.tool_call("remember", {"key": "customer.plan", "value": "enterprise"}),
              Reply.tool_call("remember", {"key": "customer.plan", "value": "enterprise"}),  # no new version
              Reply.tool_call("forget", {"key": "customer.plan"}),
              Reply.tool_call("forget", {"key": "customer.plan"}),  # nothing left to forget
              Reply.tool_call("remember", {"key": "", "value": "x"}),
              Reply.tool_call("finish", {"result": "ok"})]
    with FakeLLMServer(script) as server:
        async with peo.Client(store_url, identity="carol") as client:
            oid = await client.submit("reader", {"task": "note the plan"})
            await run_idle(store_url, reader_app(server))
            assert await client.wait(oid, timeout=5) == "ok"
            info = await client.get(oid)
    said = [r["result"] for r in steps(info) if r["name"] in ("remember", "forget")]
    assert said[:5] == [{"remembered": "customer.plan", "version": 1}, {"remembered": "customer.plan", "version": 2},
                        {"remembered": "customer.plan", "version": 2}, {"forgot": "customer.plan", "version": 3},
                        {"error": "no fact 'customer.plan' to forget"}]
    assert "non-empty string" in said[5]["error"]
    async with open_store(store_url) as store:
        assert await store.facts("carol") == []
        assert await store.recall("carol", "enterprise") == []  # a tombstone hides the key from recall too
        history = await store.fact_history("carol", "customer.plan")
        assert [(f.version, f.value, f.deleted) for f in history] == [(1, "basic", False), (2, "enterprise", False),
                                                                      (3, "", True)]
        assert {f.object_id for f in history} == {oid}
        facts = Facts(store, "carol")
        assert await facts.remember("customer.plan", "trial") == 4  # back to life, as a new version
        assert [f.value for f in await facts.all()] == ["trial"]


async def test_the_store_recalls_latest_live_versions_and_never_fails_on_a_query(store_url: str) -> None:
    async with open_store(store_url) as store:
        facts = Facts(store, "dave", object_id="o1", seq=3)
        await facts.remember("pet", "a cat called Whiskers")
        await facts.remember("pet", "a dog called Rex")
        await facts.remember("home", {"city": "Lisbon", "since": 2020})
        await facts.remember("food", "likes running and cats")
        await Facts(store, "erin").remember("pet", "a dog called Rex")
        assert [f.value for f in await facts.recall("dog")] == ["a dog called Rex"]
        assert await facts.recall("Whiskers") == []  # an old version is never recalled
        assert {f.key for f in await facts.recall("lisbon rex")} == {"home", "pet"}
        assert [f.key for f in await facts.recall("cat")] == ["food"]  # stemmed: cats
        for query in ['"', "*", "a AND (b", "NEAR(x y)", "x:y", "!&|<->", "-", "''", "", "   ", "_ __"]:
            assert isinstance(await facts.recall(query), list)
        assert await facts.recall("dog", limit=0) == []
        assert [(f.key, f.version, f.object_id, f.seq) for f in await facts.all()] == [
            ("food", 1, "o1", 3), ("home", 1, "o1", 3), ("pet", 2, "o1", 3)]
        assert await facts.forget("pet") == 3 and await facts.forget("pet") is None
        assert await facts.recall("dog") == []
        assert [f.value for f in await Facts(store, "erin").recall("dog")] == ["a dog called Rex"]
        with pytest.raises(peo.UsageError):
            await facts.remember("x" * 300, "too long a key")


async def test_a_consolidation_is_replayed_from_its_record_and_never_asked_again(store_url: str) -> None:
    # After the buffer consolidated, the agent waits (0 s): the cycle ends, and the next one
    # re-runs the function from the top, replaying every recorded step.
    script = long_run(8, then=lambda n: Reply.tool_call("wait", {"seconds": 0}) if n == 1
                      else Reply.tool_call("finish", {"result": "done"}))
    with FakeLLMServer(script) as server:
        async with peo.Client(store_url) as client:
            oid = await client.submit("reader", {"task": "read 8 pages"})
            await run_idle(store_url, reader_app(server))
            assert await client.wait(oid, timeout=5) == "done"
            info = await client.get(oid)
        requests = list(server.requests)
    records = steps(info)
    names = [r["name"] for r in records]
    assert names.count("consolidate") >= 1 and "wait" not in names  # a sleep is recorded by its op
    assert [r["op"] for r in records].count("sleep") == 1
    # The model was asked once per recorded model or consolidation step: never again on replay.
    assert len(requests) == names.count("model") + names.count("consolidate")
    # The call after the wait sent the consolidated buffer rebuilt from the records.
    before, after = requests[-2]["messages"], requests[-1]["messages"]
    assert after[:len(before)] == before and after[2]["content"].startswith(SUMMARY_PREFIX)


async def test_an_agent_at_its_budget_edge_still_consolidates_then_stops(sqlite_url: str, tmp_path: Any) -> None:
    reference = f"sqlite:///{tmp_path / 'reference.db'}"
    with FakeLLMServer(long_run(30)) as server:  # where the first consolidation comes, unlimited
        async with peo.Client(reference) as client:
            await client.submit("reader", {"task": "read"})
            await run_idle(reference, reader_app(server))
        edge = [is_consolidation(r) for r in server.requests].index(True)
    # A budget of exactly the calls before it: the buffer needs consolidating when no call is
    # left. Its reserve lets it run (its facts are saved); the next call is refused.
    with FakeLLMServer(long_run(30)) as server:
        policy = peo.Policy.parse(f"[agents]\nmax_model_calls = {edge}\n")
        async with peo.Client(sqlite_url, identity="frank") as client:
            oid = await client.submit("reader", {"task": "read"})
            await asyncio.wait_for(peo.Node(sqlite_url, reader_app(server), policy=policy).run_until_idle(), 60)
            with pytest.raises(peo.ObjectFailedError, match=f"budget exhausted: model calls {edge + 2} past"):
                await client.wait(oid, timeout=5)
        requests = list(server.requests)
    assert len(requests) == edge + 1 and is_consolidation(requests[-1])
    async with open_store(sqlite_url) as store:
        assert [f.key for f in await store.facts("frank")] == ["page.1"]


def test_agents_refuse_a_bad_buffer_setting_at_load() -> None:
    app = peo.App()
    with pytest.raises(peo.UsageError, match="memory_tokens must be an integer of at least 500"):
        app.agent("a", model=peo.Model("m", api_key_env=None), memory_tokens=10)
    with pytest.raises(peo.UsageError, match="keep_turns must be a positive integer"):
        app.agent("b", model=peo.Model("m", api_key_env=None), keep_turns=0)
    app.agent("c", model=peo.Model("m", api_key_env=None), memory_tokens=None)  # unbounded: allowed


# -- the episodic buffer's pure functions ----------------------------------------------------


def conversation(turns: int, size: int = 400) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "sys"}, {"role": "user", "content": "task"}]
    for i in range(turns):
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": f"c{i}", "type": "function", "function": {"name": "fetch", "arguments": "{}"}}]})
        messages.append({"role": "tool", "tool_call_id": f"c{i}", "content": "x" * size})
    return messages


def test_estimates_and_the_consolidation_threshold() -> None:
    assert estimate_tokens([]) == 0
    assert estimate_tokens([{"role": "user", "content": "x" * 4000}]) == pytest.approx(1000, abs=20)
    assert Buffer(2000).threshold == 1500 == int(2000 * CONSOLIDATE_AT)
    small, big = conversation(2), conversation(20)
    assert not needs_consolidation(small, 2000) and needs_consolidation(big, 2000)


def test_the_split_never_separates_tool_calls_from_their_results_and_keeps_recent_turns() -> None:
    messages = conversation(10)
    upto = split_point(messages, 4, 2000)
    assert upto == len(messages) - 8 and messages[upto]["role"] == "assistant"
    # Recent turns too big for their share: fewer are kept, never less than the last one.
    assert split_point(conversation(10, size=4000), 4, 2000) == len(conversation(10)) - 2
    assert split_point(conversation(1), 4, 2000) is None  # nothing older to consolidate
    # Only an earlier summary before the last turn: another summary would not help.
    summarised = apply_consolidation(conversation(10, size=4000), "s", len(conversation(10)) - 2)
    assert split_point(summarised, 4, 2000) is None


def test_a_consolidation_request_and_its_application() -> None:
    messages = conversation(6)
    upto = split_point(messages, 2, 2000)
    assert upto is not None
    request = consolidation_request(messages, upto)
    assert [m["role"] for m in request] == ["system", "user"] and "JSON" in request[0]["content"]
    assert "task" in request[1]["content"] and request[1]["content"].count("[tool]") == (upto - 2) // 2
    after = apply_consolidation(messages, "did things", upto)
    assert after[:2] == messages[:2] and after[2] == {"role": "user", "content": SUMMARY_PREFIX + "did things"}
    assert after[3:] == messages[upto:]
    assert estimate_tokens(after) < estimate_tokens(messages)


def test_consolidation_answers_are_parsed_leniently() -> None:
    parsed = parse_consolidation('Sure! {"summary": "s", "facts": [{"key": "a", "value": "1"}, {"key": 2}, '
                                 '{"key": "b", "value": {"x": 1}}, "junk"]} hope that helps', 2000)
    assert parsed.summary == "s" and parsed.facts == (("a", "1"), ("b", '{"x": 1}'))
    assert parse_consolidation("just prose, no JSON", 2000).summary == "just prose, no JSON"
    assert parse_consolidation("just prose, no JSON", 2000).facts == ()
    assert parse_consolidation(None, 2000).summary == ""
    assert parse_consolidation('{"summary": "a", "facts": "not a list"}', 2000).facts == ()
    long = parse_consolidation("y" * 100_000, 2000).summary
    assert len(long) < 2000 * 4 and long.endswith("[cut]")
