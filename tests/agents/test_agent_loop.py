"""The agent loop over the real openai client and a real (fake) model server, on both stores:
the model proposes, the node's policy decides, and every model and tool call is a recorded
step. No timed assertions."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest

import peo
from peo.agents.approvals import answer_approval, pending
from peo.keys import generate
from peo.testing.fakellm import FakeLLMServer, Reply

pytest.importorskip("openai")


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer([]) as s:
        yield s


def model(server: FakeLLMServer) -> peo.Model:
    return peo.Model("fake-model", base_url=server.base_url, api_key_env=None, timeout=10)


def research_app(server: FakeLLMServer, calls: list[Any], **agent: Any) -> peo.App:
    app = peo.App()

    @app.tool(idempotent=True)
    def search(query: str, idempotency_key: str) -> list[str]:
        """Search the web."""
        calls.append(("search", query, idempotency_key))
        return [f"peo is a runtime ({query})"]

    @app.tool(needs_approval=True)
    def send_email(to: str, body: str) -> str:
        """Send an email."""
        calls.append(("send_email", to, body))
        return "sent"

    @app.tool()
    def delete_everything() -> str:
        """Delete all data."""
        calls.append(("delete_everything",))
        return "deleted"

    app.agent("researcher", model=model(server), instructions="You research.",
              tools=agent.pop("tools", [search, send_email, delete_everything]), **agent)
    return app


async def run_idle(url: str, app: peo.App, policy: peo.Policy | None = None) -> None:
    node = peo.Node(url, app, policy=policy) if policy is not None else peo.Node(url, app)
    await asyncio.wait_for(node.run_until_idle(), 60)


def steps(info: peo.ObjectInfo) -> list[dict[str, Any]]:
    """The recorded operations of an agent, in order."""
    records = {int(k[3:]): v for k, v in info.state.items() if k.startswith("fn.") and k[3:].isdigit()}
    return [records[i] for i in sorted(records)]


async def test_an_agent_calls_a_tool_then_finishes_and_every_call_is_recorded(store_url: str,
                                                                           server: FakeLLMServer) -> None:
    calls: list[Any] = []
    server.add(Reply.tool_call("search", {"query": "peo"}), Reply.tool_call("finish", {"result": {"answer": 42}}))
    async with peo.Client(store_url) as client:
        oid = await client.submit("researcher", {"task": "what is peo?"})
        await run_idle(store_url, research_app(server, calls))
        assert await client.wait(oid, timeout=5) == {"answer": 42}
        info = await client.get(oid)
    assert calls == [("search", "peo", calls[0][2])] and calls[0][2].startswith(oid + ":")
    ops = [(r["op"], r["name"]) for r in steps(info)]
    assert ops == [("step", "model"), ("step", "tool:search"), ("step", "model")]
    first = steps(info)[0]["result"]
    assert first["digest"].startswith("sha256:") and first["usage"]["prompt"] > 0 and "latency_ms" in first
    assert first["tool_calls"][0]["name"] == "search"
    assert server.calls == 2
    # the model saw the task, the tools the policy allows, the control tools and the tool's result
    sent = server.requests[1]
    assert sent["messages"][1]["content"] == "what is peo?"
    assert {t["function"]["name"] for t in sent["tools"]} >= {"search", "send_email", "finish", "ask_human"}
    assert "peo is a runtime" in sent["messages"][-1]["content"]


async def test_an_injected_call_to_a_forbidden_tool_is_refused_recorded_and_shown_to_the_model(
        store_url: str, server: FakeLLMServer) -> None:
    calls: list[Any] = []
    server.add(Reply.tool_call("search", {"query": "x"}),
               Reply.tool_call("delete_everything", {}),  # the search result told it to
               Reply.tool_call("finish", {"result": "ok"}))
    policy = peo.Policy.parse('[agents]\ntools = ["search", "send_email"]\n')
    async with peo.Client(store_url) as client:
        oid = await client.submit("researcher", {"task": "x"})
        await run_idle(store_url, research_app(server, calls), policy)
        assert await client.wait(oid, timeout=5) == "ok"
        info = await client.get(oid)
    assert [c[0] for c in calls] == ["search"]  # delete_everything never ran
    refused = [r for r in steps(info) if r["name"] == "refused:delete_everything"]
    assert len(refused) == 1 and "policy does not allow" in refused[0]["result"]["result"]["refused"]
    assert "delete_everything" not in {t["function"]["name"] for t in server.requests[0]["tools"]}  # not offered
    assert "refused" in server.requests[2]["messages"][-1]["content"]


async def test_an_exhausted_budget_ends_the_object_before_the_call_with_a_clear_reason(
        store_url: str, server: FakeLLMServer) -> None:
    server.add(*[Reply.tool_call("search", {"query": str(i)}) for i in range(5)])
    policy = peo.Policy.parse("[agents]\nmax_model_calls = 3\n")
    async with peo.Client(store_url) as client:
        oid = await client.submit("researcher", {"task": "loop forever"})
        await run_idle(store_url, research_app(server, []), policy)
        with pytest.raises(peo.ObjectFailedError) as failed:
            await client.wait(oid, timeout=5)
    assert "budget exhausted: model calls 4 past the policy's max_model_calls = 3" in str(failed.value)
    assert server.calls == 3  # enforced before the fourth call, not after


async def test_a_cost_budget_uses_the_price_table(store_url: str, server: FakeLLMServer) -> None:
    server.add(*[Reply.tool_call("search", {"query": str(i)}, prompt_tokens=1_000_000, completion_tokens=0)
                 for i in range(5)])
    policy = peo.Policy.parse('[agents]\nmax_cost = 2.5\n[prices]\n"fake-model" = { input = 1.0, output = 4.0 }\n')
    async with peo.Client(store_url) as client:
        oid = await client.submit("researcher", {"task": "spend"})
        await run_idle(store_url, research_app(server, []), policy)
        with pytest.raises(peo.ObjectFailedError, match="budget exhausted: cost 3 past the policy's max_cost"):
            await client.wait(oid, timeout=5)
    assert server.calls == 3


async def test_an_approval_is_bound_to_the_exact_call_and_used_once(store_url: str, server: FakeLLMServer) -> None:
    calls: list[Any] = []
    email = {"to": "ceo@example.com", "body": "hi"}
    server.add(Reply.tool_call("send_email", email), Reply.tool_call("send_email", email),
               Reply.tool_call("finish", {"result": "mailed twice"}))
    app = research_app(server, calls)
    async with peo.Client(store_url) as client:
        oid = await client.submit("researcher", {"task": "mail"})
        await run_idle(store_url, app)
        (waiting,) = await pending(client)
        assert (waiting.object_id, waiting.kind, waiting.tool, waiting.arguments) == (oid, "approval", "send_email",
                                                                                     email)
        with pytest.raises(peo.UsageError, match="waits for the approval of send_email"):
            await answer_approval(client, oid, "sha256:" + "0" * 64, approve=True)
        # A signal for other arguments (sent by hand, past the client's check) is refused by the agent.
        other = peo.agents.call_digest("send_email", {"to": "all@example.com", "body": "hi"})
        await client.signal(oid, "approve", {"digest": other, "call": waiting.call, "approve": True})
        await run_idle(store_url, app)
        assert calls == [] and len(await pending(client)) == 1
        await answer_approval(client, oid, waiting.digest or "", approve=True)
        await run_idle(store_url, app)
        assert calls == [("send_email", "ceo@example.com", "hi")]
        # The same call again needs a new approval: a second answer for the first call is stale.
        (again,) = await pending(client)
        assert again.digest == waiting.digest and again.call != waiting.call
        await client.signal(oid, "approve", {"digest": waiting.digest, "call": waiting.call, "approve": True})
        await run_idle(store_url, app)
        assert len(calls) == 1
        await answer_approval(client, oid, again.digest or "", approve=True)
        await run_idle(store_url, app)
        assert await client.wait(oid, timeout=5) == "mailed twice"
        info = await client.get(oid)
    refusals = [r["result"]["result"]["refused_approval"] for r in steps(info) if r["name"] == "approval refused"]
    assert len(refusals) == 2
    assert "but the call waiting is" in refusals[0] and refusals[1].startswith("stale approval")


async def test_a_denied_call_is_not_made_and_the_model_is_told_why(store_url: str, server: FakeLLMServer) -> None:
    calls: list[Any] = []
    server.add(Reply.tool_call("send_email", {"to": "x@example.com", "body": "b"}),
               Reply.tool_call("finish", {"result": "gave up"}))
    app = research_app(server, calls)
    async with peo.Client(store_url) as client:
        oid = await client.submit("researcher", {"task": "mail"})
        await run_idle(store_url, app)
        (waiting,) = await pending(client)
        await answer_approval(client, oid, waiting.digest or "", approve=False, reason="not this customer")
        await run_idle(store_url, app)
        assert await client.wait(oid, timeout=5) == "gave up"
    assert calls == []
    assert "denied send_email: not this customer" in server.requests[-1]["messages"][-1]["content"]


async def test_an_approval_signed_by_an_untrusted_key_never_reaches_the_agent(
        sqlite_url: str, server: FakeLLMServer) -> None:
    calls: list[Any] = []
    server.add(Reply.tool_call("send_email", {"to": "x@example.com", "body": "b"}))
    app = research_app(server, calls)
    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("researcher", {"task": "mail"})
        await run_idle(sqlite_url, app)
        (waiting,) = await pending(client)
    stranger = generate()  # a key no keyring of this deployment trusts
    async with peo.Client(sqlite_url, key=stranger) as outsider:
        await outsider.signal(oid, "approve", {"digest": waiting.digest, "call": waiting.call, "approve": True})
    await run_idle(sqlite_url, app)
    async with peo.Client(sqlite_url) as client:
        assert calls == [] and len(await pending(client)) == 1
        refused = await client.store.refused(oid)
    assert refused and refused[0].name == "approve"


async def test_bad_arguments_and_malformed_json_go_back_to_the_model_not_into_the_tool(
        store_url: str, server: FakeLLMServer) -> None:
    calls: list[Any] = []
    server.add(Reply.tool_call("search", {"query": 7, "extra": True}), Reply.raw_tool_call("search", '{"query": '),
               Reply.tool_call("finish", {"result": "done"}))
    async with peo.Client(store_url) as client:
        oid = await client.submit("researcher", {"task": "x"})
        await run_idle(store_url, research_app(server, calls))
        assert await client.wait(oid, timeout=5) == "done"
    assert calls == []
    assert "invalid arguments for search" in server.requests[1]["messages"][-1]["content"]
    assert "not valid JSON" in server.requests[2]["messages"][-1]["content"]


async def test_a_rate_limit_backs_off_for_retry_after_and_the_call_is_made_again(
        sqlite_url: str, server: FakeLLMServer) -> None:
    server.add(Reply.error(429, "slow down", retry_after=0.05), Reply.tool_call("finish", {"result": "ok"}))
    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("researcher", {"task": "x"})
        await run_idle(sqlite_url, research_app(server, []))
        assert await client.wait(oid, timeout=5) == "ok"
        info = await client.get(oid)
    failed = [e.outcome for e in info.memory if e.outcome.get("status") == "failed"]
    assert [f["error"]["class"] for f in failed] == ["rate_limit"]
    assert failed[0]["retry_in"] >= 50_000_000  # at least the server's Retry-After


@pytest.mark.parametrize(("configure", "error_class", "says"), [
    (lambda s: peo.Model("no-such-model", base_url=s.base_url, api_key_env=None), "model_not_found",
     "does not serve model 'no-such-model'"),
    (lambda s: peo.Model("fake-model", base_url="http://127.0.0.1:9/v1", api_key_env=None, timeout=5),
     "unreachable", "cannot reach the model server"),
    (lambda s: peo.Model("fake-model", base_url=s.base_url, api_key_env="PEO_TEST_NO_SUCH_KEY"), "model_config",
     "PEO_TEST_NO_SUCH_KEY"),
])
async def test_model_errors_are_recorded_with_a_clear_reason_never_a_node_crash(
        sqlite_url: str, server: FakeLLMServer, configure: Any, error_class: str, says: str) -> None:
    app = peo.App()
    app.agent("broken", model=configure(server), instructions="x")
    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("broken", {"task": "x"}, retry=peo.Retry(base=0.001, max=0.002, max_attempts=2))
        await run_idle(sqlite_url, app)
        with pytest.raises(peo.ObjectFailedError):
            await client.wait(oid, timeout=5)
        info = await client.get(oid)
    errors = [e.outcome["error"] for e in info.memory if "error" in e.outcome]
    assert errors and all(err["class"] == error_class for err in errors)
    assert says in errors[-1]["message"]


def test_a_tool_whose_hints_cannot_become_a_schema_is_refused_at_load() -> None:
    class Opaque:
        pass

    app = peo.App()
    with pytest.raises(peo.UsageError, match="its type hints cannot become a JSON schema"):
        @app.tool()
        def odd(thing: Opaque) -> None: ...

    with pytest.raises(peo.UsageError, match="has no type hint"):
        @app.tool()
        def vague(thing) -> None: ...  # type: ignore[no-untyped-def]

    with pytest.raises(peo.UsageError, match="clash"):
        clash = peo.agents.tool_from_function(_finish, name="finish")
        app.agent("a", model=peo.Model("m", api_key_env=None), tools=[clash])


def _finish(result: str) -> str:
    return result


def test_call_digests_cover_the_tool_and_its_canonical_arguments() -> None:
    d = peo.agents.call_digest
    assert d("send", {"a": 1, "b": [1, 2]}) == d("send", {"b": [1, 2], "a": 1})
    assert d("send", {"a": 1}) != d("send", {"a": 2}) != d("post", {"a": 2})
    assert json.loads(peo.agents.canonical_arguments({"b": 1, "a": "é"})) == {"a": "é", "b": 1}


async def test_an_answer_that_is_not_json_is_a_recorded_malformed_failure_and_the_call_is_made_again(
        sqlite_url: str, server: FakeLLMServer) -> None:
    server.add(Reply.malformed("<html>502 Bad Gateway</html>"), Reply.tool_call("finish", {"result": "ok"}))
    async with peo.Client(sqlite_url) as client:
        oid = await client.submit("researcher", {"task": "x"}, retry=peo.Retry(base=0.001, max=0.002))
        await run_idle(sqlite_url, research_app(server, []))
        assert await client.wait(oid, timeout=5) == "ok"
        info = await client.get(oid)
    [failed] = [e.outcome["error"] for e in info.memory if e.outcome.get("status") == "failed"]
    assert failed["class"] == "malformed" and "not a chat completion" in failed["message"]
