"""The fake OpenAI-compatible server, driven by the real openai client over a real socket."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import openai
import pytest

from peo.testing.fakellm import FakeLLMServer, Reply

MESSAGES: list[Any] = [{"role": "user", "content": "find x"}]


@asynccontextmanager
async def client_for(server: FakeLLMServer, api_key: str = "x", timeout: float = 10.0,
                     ) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key=api_key, max_retries=0, timeout=timeout)
    try:
        yield client
    finally:
        await client.close()


async def ask(client: openai.AsyncOpenAI, model: str = "fake-model", **kwargs: Any) -> Any:
    return await client.chat.completions.create(model=model, messages=MESSAGES, **kwargs)


async def test_text_reply_and_usage() -> None:
    async with FakeLLMServer([Reply.text("All done.", prompt_tokens=10, completion_tokens=3), Reply.text("again")]
                             ) as server, client_for(server) as client:
        first = await ask(client)
        assert first.choices[0].message.content == "All done."
        assert first.choices[0].message.tool_calls is None
        assert first.choices[0].finish_reason == "stop"
        assert first.model == "fake-model"
        assert first.id == "chatcmpl-1"
        assert first.usage is not None
        assert (first.usage.prompt_tokens, first.usage.completion_tokens, first.usage.total_tokens) == (10, 3, 13)
        second = await ask(client)
        assert second.usage is not None
        assert second.usage.prompt_tokens == max(1, len(json.dumps(MESSAGES)) // 4)
        assert second.usage.completion_tokens == 1
        assert server.calls == 2
        assert server.requests[0]["messages"] == MESSAGES
        assert server.requests[0]["model"] == "fake-model"


async def test_tool_calls_are_parsed() -> None:
    script = [
        Reply.tool_call("search", {"query": "x"}),
        Reply.tool_calls([("search", {"q": 1}), ("write", {"t": "a"})]),
        Reply.tool_call("read", {"path": "a"}, id="call_mine"),
        Reply.raw_tool_call("search", '{"query": '),
    ]
    async with FakeLLMServer(script) as server, client_for(server) as client:
        one = await ask(client, tools=[{"type": "function", "function": {"name": "search", "parameters": {}}}])
        assert one.choices[0].finish_reason == "tool_calls"
        (call,) = one.choices[0].message.tool_calls
        assert call.type == "function"
        assert call.function.name == "search"
        assert json.loads(call.function.arguments) == {"query": "x"}
        assert call.id == "call_1"
        assert server.requests[0]["tools"][0]["function"]["name"] == "search"

        two = await ask(client)
        calls = two.choices[0].message.tool_calls
        assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
            ("search", {"q": 1}), ("write", {"t": "a"})]
        assert len({c.id for c in calls} | {call.id}) == 3

        three = await ask(client)
        assert three.choices[0].message.tool_calls[0].id == "call_mine"

        raw = await ask(client)
        arguments = raw.choices[0].message.tool_calls[0].function.arguments
        assert arguments == '{"query": '
        with pytest.raises(json.JSONDecodeError):
            json.loads(arguments)


async def test_rate_limit_carries_retry_after() -> None:
    async with FakeLLMServer([Reply.error(429, "slow down", retry_after=2.0)]) as server, client_for(server) as client:
        with pytest.raises(openai.RateLimitError) as info:
            await ask(client)
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "2"
    assert info.value.code == "rate_limit_exceeded"
    assert "slow down" in info.value.message


@pytest.mark.parametrize(("reply", "error"), [
    (Reply.error(500, "boom"), openai.InternalServerError),
    (Reply.error(400, "bad"), openai.BadRequestError),
    (Reply.error(503, "down"), openai.InternalServerError),
])
async def test_server_errors(reply: Reply, error: type[openai.APIStatusError]) -> None:
    async with FakeLLMServer([reply]) as server, client_for(server) as client:
        with pytest.raises(error) as info:
            await ask(client)
    assert info.value.status_code == reply.status
    assert reply.message in info.value.message


async def test_malformed_body_raises() -> None:
    async with FakeLLMServer([Reply.malformed("this is not json")]) as server, client_for(server) as client:
        with pytest.raises((openai.OpenAIError, json.JSONDecodeError)):
            await ask(client)


async def test_wrong_model_is_not_found() -> None:
    async with FakeLLMServer([Reply.text("never")]) as server, client_for(server) as client:
        with pytest.raises(openai.NotFoundError) as info:
            await ask(client, model="gpt-nothing")
        assert "The model `gpt-nothing` does not exist" in info.value.message
        assert info.value.code == "model_not_found"
        assert server.calls == 1  # recorded, but the scripted reply is still there
        assert server.remaining == 1


async def test_any_model_when_model_is_none() -> None:
    async with FakeLLMServer([Reply.text("ok")], model=None) as server, client_for(server) as client:
        reply = await ask(client, model="whatever")
        assert reply.model == "whatever"


async def test_api_key_is_checked() -> None:
    async with FakeLLMServer([Reply.text("ok")], api_key="sekrit") as server:
        async with client_for(server, api_key="wrong") as client:
            with pytest.raises(openai.AuthenticationError):
                await ask(client)
        async with client_for(server, api_key="sekrit") as client:
            assert (await ask(client)).choices[0].message.content == "ok"


async def test_hang_times_out_on_the_client() -> None:
    async with FakeLLMServer([Reply.hang(30), Reply.text("after")]) as server, \
            client_for(server, timeout=0.2) as client:
        with pytest.raises(openai.APITimeoutError):
            await ask(client)
        assert (await ask(client)).choices[0].message.content == "after"


async def test_script_exhausted_is_a_500() -> None:
    async with FakeLLMServer([Reply.text("only")]) as server, client_for(server) as client:
        await ask(client)
        with pytest.raises(openai.InternalServerError) as info:
            await ask(client)
        assert "exhausted" in info.value.message
        assert "2 requests" in info.value.message
        server.add(Reply.text("more"))
        assert (await ask(client)).choices[0].message.content == "more"


async def test_callable_script_sees_the_messages() -> None:
    def respond(body: dict[str, Any]) -> Reply:
        last = body["messages"][-1]
        if last["role"] == "tool":
            return Reply.text(f"result was {last['content']}")
        return Reply.tool_call("search", {"query": last["content"]})

    async with FakeLLMServer(respond) as server, client_for(server) as client:
        first = await ask(client)
        call = first.choices[0].message.tool_calls[0]
        assert json.loads(call.function.arguments) == {"query": "find x"}
        messages: list[Any] = [*MESSAGES, first.choices[0].message.model_dump(exclude_none=True),
                               {"role": "tool", "tool_call_id": call.id, "content": "42"}]
        second = await client.chat.completions.create(model="fake-model", messages=messages)
        assert second.choices[0].message.content == "result was 42"
        assert server.requests[1]["messages"][-1]["tool_call_id"] == call.id
        with pytest.raises(TypeError):
            server.add(Reply.text("no"))


async def test_callable_script_errors_become_500() -> None:
    def respond(body: dict[str, Any]) -> Reply:
        raise ValueError("oops")

    async with FakeLLMServer(respond) as server, client_for(server) as client:
        with pytest.raises(openai.InternalServerError):
            await ask(client)
        assert [type(e) for e in server.errors] == [ValueError]


async def test_streaming_is_refused_and_models_listed() -> None:
    async with FakeLLMServer([Reply.text("x")]) as server, client_for(server) as client:
        with pytest.raises(openai.BadRequestError) as info:
            await ask(client, stream=True)
        assert "not supported" in info.value.message
        models = await client.models.list()
        assert [m.id for m in models.data] == ["fake-model"]


def test_sync_use_and_restart() -> None:
    server = FakeLLMServer([Reply.text("a")])
    with pytest.raises(RuntimeError):
        _ = server.base_url
    with server:
        client = openai.OpenAI(base_url=server.base_url, api_key="x", max_retries=0)
        try:
            assert client.chat.completions.create(model="fake-model", messages=MESSAGES).choices[0].message.content \
                == "a"
        finally:
            client.close()
    server.stop()  # idempotent


async def test_many_requests_reuse_connections() -> None:
    respond: Callable[[dict[str, Any]], Reply] = lambda body: Reply.text("ok")  # noqa: E731
    async with FakeLLMServer(respond) as server, client_for(server) as client:
        for _ in range(50):
            await ask(client)
        assert server.calls == 50
        assert server.open_connections == 1  # keep-alive: one connection served them all
