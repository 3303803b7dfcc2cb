"""W7, peo side: N agents of K tool-call steps each, against the bare model calls they make.

Run by bench/w7_agents.py with peo's interpreter, in a fresh temporary directory, against a
FakeLLMServer the driver runs (scripted: ``lookup`` K times per conversation, then ``finish``):
    python w7_peo.py --base-url http://127.0.0.1:PORT/v1 --agents 20 --steps 10 --concurrency 1
Measured in this one process, in this order: the bare loop (the same conversations driven by
hand with one reused ``openai.AsyncOpenAI``, no runtime), the agents on a peo node (SQLite
store, ``synchronous=FULL``, every entry signed), the bare loop again (``bare_s`` is the mean
of the two), then the bare loop with a fresh ``AsyncOpenAI`` per call (as
``peo.agents.model.complete`` did before it cached clients) and a tight loop of
``AsyncOpenAI`` construction + close.
Prints one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from typing import Any

import openai
from common import emit, log, store_bytes

import peo

MODEL = "fake-model"
INSTRUCTIONS = "You look things up, then finish."
LOOKUP_RESULT = "value-42"

app = peo.App()


@app.tool()
def lookup(key: str) -> str:
    """Look a key up."""
    return LOOKUP_RESULT


# What the bare loop offers the model: the same lookup tool and finish as the agent does.
TOOLS: list[dict[str, Any]] = [
    {"type": "function", "function": {"name": "lookup", "description": "Look a key up.",
                                      "parameters": {"type": "object", "properties": {"key": {"type": "string"}},
                                                     "required": ["key"]}}},
    {"type": "function", "function": {"name": "finish", "description": "End the task with its result.",
                                      "parameters": {"type": "object", "properties": {"result": {}},
                                                     "required": ["result"]}}},
]


async def bare_conversation(task: int, base_url: str, client: openai.AsyncOpenAI | None) -> int:
    """One agent's conversation by hand: model call, tool, model call ... until finish."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": INSTRUCTIONS},
                                      {"role": "user", "content": json.dumps({"task": task})}]
    calls = 0
    while True:
        if client is None:  # a fresh client per call, as peo.agents.model.complete once made
            async with openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120) as c:
                response = await c.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)  # type: ignore[arg-type]
        else:
            response = await client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)  # type: ignore[arg-type]
        calls += 1
        message = response.choices[0].message
        tool_calls = message.tool_calls or []
        messages.append({"role": "assistant", "content": message.content, "tool_calls": [
            {"id": c.id, "type": "function", "function": {"name": c.function.name, "arguments": c.function.arguments}}
            for c in tool_calls]})
        if not tool_calls or tool_calls[0].function.name == "finish":
            return calls
        for c in tool_calls:
            value = lookup(**json.loads(c.function.arguments))
            messages.append({"role": "tool", "tool_call_id": c.id, "content": value})


async def bare(args: argparse.Namespace, fresh: bool) -> tuple[float, int, float]:
    sem = asyncio.Semaphore(args.concurrency)
    client = None if fresh else openai.AsyncOpenAI(base_url=args.base_url, api_key="unused", max_retries=0,
                                                   timeout=120)

    async def one(i: int) -> int:
        async with sem:
            return await bare_conversation(i, args.base_url, client)

    t0, c0 = time.perf_counter(), time.process_time()
    counts = await asyncio.gather(*(one(i) for i in range(args.agents)))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    if client is not None:
        await client.close()
    return elapsed, sum(counts), cpu


class _SharedClient:
    """Diagnostic only (``--reuse-client``): ``peo.agents.model.complete`` with one client per
    process whatever it does. ``openai.AsyncOpenAI(...)`` returns a view of one client whose
    ``async with`` does not close it; peo's own code is unchanged. Written when ``complete``
    made a client per call; now that it caches one per event loop, this changes nothing."""

    def __init__(self, real: Any) -> None:
        self._real_cls, self._client = real, None

    def __call__(self, **kwargs: Any) -> Any:
        if self._client is None:
            self._client = self._real_cls(**kwargs)
        return _Unclosed(self._client)


class _Unclosed:
    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def __aenter__(self) -> Any:
        return self._client

    async def __aexit__(self, *exc: object) -> None:
        pass


async def agents(args: argparse.Namespace) -> tuple[float, int, float]:
    real = openai.AsyncOpenAI
    if args.reuse_client:
        openai.AsyncOpenAI = _SharedClient(real)  # type: ignore[misc]
    try:
        return await _agents(args)
    finally:
        openai.AsyncOpenAI = real  # type: ignore[misc]


async def _agents(args: argparse.Namespace) -> tuple[float, int, float]:
    url = "sqlite:///peo.db"
    app.agent("w7", model=peo.Model(MODEL, base_url=args.base_url, api_key_env=None),
              instructions=INSTRUCTIONS, tools=[lookup])
    async with peo.Client(url) as client:
        node = peo.Node(url, app, node_id="bench", concurrency=args.concurrency)
        await node.run_until_idle()  # opens the store and creates the schema: not measured
        t0, c0 = time.perf_counter(), time.process_time()
        oids = [await client.submit("w7", {"task": i}) for i in range(args.agents)]
        await node.run_until_idle()
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
        entries = 0
        for oid in oids:
            result = await client.wait(oid, timeout=10)
            assert result == "ok", result
            entries += len((await client.get(oid)).memory)
    return elapsed, entries, cpu


async def client_construction(n: int, base_url: str) -> float:
    """Microseconds to construct and close one AsyncOpenAI (no request)."""
    for _ in range(5):  # warm-up
        await openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120).close()
    t0 = time.perf_counter()
    for _ in range(n):
        await openai.AsyncOpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120).close()
    return (time.perf_counter() - t0) / n * 1e6


async def main(args: argparse.Namespace) -> dict[str, Any]:
    await bare_conversation(-1, args.base_url, None)  # warm-up: imports, first connection
    bare1, calls, cpu1 = await bare(args, fresh=False)
    runtime_s, entries, runtime_cpu = await agents(args)
    bare2, calls2, cpu2 = await bare(args, fresh=False)
    fresh_s, _, _ = await bare(args, fresh=True)
    construct_us = await client_construction(args.construct, args.base_url)
    assert calls == calls2 == args.agents * (args.steps + 1), (calls, calls2)
    bare_s = (bare1 + bare2) / 2
    steps = calls  # one agent step: one model call (and the tool call it asks for)
    log(f"peo: runtime {runtime_s:.3f} s, bare {bare1:.3f}/{bare2:.3f} s, fresh-client bare {fresh_s:.3f} s")
    return {
        "agents": args.agents,
        "tool_steps": args.steps,
        "steps": steps,
        "runtime_s": runtime_s,
        "bare_s": bare_s,
        "bare_first_s": bare1,
        "bare_second_s": bare2,
        "bare_us_per_call": bare_s / steps * 1e6,
        "runtime_us_per_step": runtime_s / steps * 1e6,
        "overhead_us_per_step": (runtime_s - bare_s) / steps * 1e6,
        "cpu_overhead_us_per_step": (runtime_cpu - (cpu1 + cpu2) / 2) / steps * 1e6,
        "bare_cpu_us_per_call": (cpu1 + cpu2) / 2 / steps * 1e6,
        "bare_fresh_client_us_per_call": fresh_s / steps * 1e6,
        "fresh_client_extra_us_per_call": (fresh_s - bare_s) / steps * 1e6,
        "client_construct_close_us": construct_us,
        "entries": entries,
        "entries_per_step": entries / steps,
        "store_bytes_per_object": store_bytes("peo.db") / args.agents,
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--agents", type=int, default=20)
    p.add_argument("--steps", type=int, default=10, help="lookup calls per agent before it finishes")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--reuse-client", action="store_true",
                   help="diagnostic: peo's model client reuses one AsyncOpenAI (monkeypatched here)")
    p.add_argument("--construct", type=int, default=50, help="AsyncOpenAI constructions timed")
    emit(asyncio.run(main(p.parse_args())))
