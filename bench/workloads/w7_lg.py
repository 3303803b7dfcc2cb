"""W7, LangGraph side: N prebuilt ReAct agents of K tool-call steps, against the bare model calls.

Run by bench/w7_agents.py in the peers' virtualenv, in a fresh temporary directory, against a
FakeLLMServer the driver runs (scripted: ``lookup`` K times per conversation, then the text
``ok``, which ends a ReAct agent):
    python w7_lg.py --base-url http://127.0.0.1:PORT/v1 --agents 20 --steps 10 --durability sync
The agent is ``langgraph.prebuilt.create_react_agent`` with ``langchain_openai.ChatOpenAI``
and the SQLite checkpointer on a file (``SqliteSaver``; ``AsyncSqliteSaver`` with
``--concurrency`` above 1, where the agents run as asyncio tasks). The bare loop drives the
same conversations by hand with the same ChatOpenAI (``bind_tools``, ``invoke``/``ainvoke``),
no graph and no checkpointer; it runs before and after the agents (``bare_s`` is the mean).
Prints one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import time
from typing import Any

from common import emit, log, store_bytes
from langchain_core.messages import HumanMessage, SystemMessage, ToolMessage
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.prebuilt import create_react_agent

MODEL = "fake-model"
INSTRUCTIONS = "You look things up, then finish."
LOOKUP_RESULT = "value-42"
DB = "lg.db"


@tool
def lookup(key: str) -> str:
    """Look a key up."""
    return LOOKUP_RESULT


def chat(base_url: str) -> ChatOpenAI:
    return ChatOpenAI(model=MODEL, base_url=base_url, api_key="x", max_retries=0, timeout=120)  # type: ignore[arg-type]


def task(i: int) -> str:
    return json.dumps({"task": i})


def start(i: int) -> list[Any]:
    return [SystemMessage(INSTRUCTIONS), HumanMessage(task(i))]


def bare_sync(bound: Any, i: int) -> int:
    messages, calls = start(i), 0
    while True:
        ai = bound.invoke(messages)
        calls += 1
        messages.append(ai)
        if not ai.tool_calls:
            return calls
        for c in ai.tool_calls:
            messages.append(ToolMessage(lookup.func(**c["args"]), tool_call_id=c["id"]))  # type: ignore[attr-defined]


async def bare_async(bound: Any, i: int) -> int:
    messages, calls = start(i), 0
    while True:
        ai = await bound.ainvoke(messages)
        calls += 1
        messages.append(ai)
        if not ai.tool_calls:
            return calls
        for c in ai.tool_calls:
            messages.append(ToolMessage(lookup.func(**c["args"]), tool_call_id=c["id"]))  # type: ignore[attr-defined]


def config(i: int, steps: int) -> dict[str, Any]:
    return {"configurable": {"thread_id": f"t{i}"}, "recursion_limit": 2 * steps + 10}


def check(out: dict[str, Any], steps: int) -> int:
    final = out["messages"][-1]
    assert final.content == "ok", final
    return sum(1 for m in out["messages"] if m.type == "ai")


def run_sync(args: argparse.Namespace) -> dict[str, Any]:
    bound = chat(args.base_url).bind_tools([lookup])
    bare_sync(bound, -1)  # warm-up: imports, first connection

    def bare() -> tuple[float, int, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        n = sum(bare_sync(bound, i) for i in range(args.agents))
        return time.perf_counter() - t0, n, time.process_time() - c0

    bare1, calls, cpu1 = bare()
    saver = SqliteSaver(sqlite3.connect(DB, check_same_thread=False))
    graph = create_react_agent(chat(args.base_url), [lookup], prompt=INSTRUCTIONS, checkpointer=saver)
    graph.invoke({"messages": [HumanMessage(task(-1))]}, config(-1, args.steps), durability=args.durability)
    t0, c0 = time.perf_counter(), time.process_time()
    model_calls = 0
    for i in range(args.agents):
        out = graph.invoke({"messages": [HumanMessage(task(i))]}, config(i, args.steps), durability=args.durability)
        model_calls += check(out, args.steps)
    runtime_s, runtime_cpu = time.perf_counter() - t0, time.process_time() - c0
    bare2, calls2, cpu2 = bare()
    return result(args, runtime_s, bare1, bare2, calls, calls2, model_calls, runtime_cpu, (cpu1 + cpu2) / 2)


async def run_async(args: argparse.Namespace) -> dict[str, Any]:
    bound = chat(args.base_url).bind_tools([lookup])
    await bare_async(bound, -1)
    sem = asyncio.Semaphore(args.concurrency)

    async def limited(coro: Any) -> Any:
        async with sem:
            return await coro

    async def bare() -> tuple[float, int, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        counts = await asyncio.gather(*(limited(bare_async(bound, i)) for i in range(args.agents)))
        return time.perf_counter() - t0, sum(counts), time.process_time() - c0

    bare1, calls, cpu1 = await bare()
    async with AsyncSqliteSaver.from_conn_string(DB) as saver:
        graph = create_react_agent(chat(args.base_url), [lookup], prompt=INSTRUCTIONS, checkpointer=saver)
        await graph.ainvoke({"messages": [HumanMessage(task(-1))]}, config(-1, args.steps),
                            durability=args.durability)
        t0, c0 = time.perf_counter(), time.process_time()
        outs = await asyncio.gather(*(limited(graph.ainvoke({"messages": [HumanMessage(task(i))]},
                                                            config(i, args.steps), durability=args.durability))
                                      for i in range(args.agents)))
        runtime_s, runtime_cpu = time.perf_counter() - t0, time.process_time() - c0
    model_calls = sum(check(out, args.steps) for out in outs)
    bare2, calls2, cpu2 = await bare()
    return result(args, runtime_s, bare1, bare2, calls, calls2, model_calls, runtime_cpu, (cpu1 + cpu2) / 2)


def result(args: argparse.Namespace, runtime_s: float, bare1: float, bare2: float, calls: int, calls2: int,
           model_calls: int, runtime_cpu: float, bare_cpu: float) -> dict[str, Any]:
    expected = args.agents * (args.steps + 1)
    assert calls == calls2 == model_calls == expected, (calls, calls2, model_calls, expected)
    bare_s = (bare1 + bare2) / 2
    steps = calls
    with sqlite3.connect(DB) as conn:
        checkpoints = conn.execute("SELECT count(*) FROM checkpoints WHERE thread_id != 't-1'").fetchone()[0]
    conn.close()
    log(f"langgraph-{args.durability}: runtime {runtime_s:.3f} s, bare {bare1:.3f}/{bare2:.3f} s")
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
        "cpu_overhead_us_per_step": (runtime_cpu - bare_cpu) / steps * 1e6,
        "bare_cpu_us_per_call": bare_cpu / steps * 1e6,
        "checkpoints_per_step": checkpoints / steps,
        "store_bytes_per_object": store_bytes(DB) / (args.agents + 1),
    }


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--base-url", required=True)
    p.add_argument("--agents", type=int, default=20)
    p.add_argument("--steps", type=int, default=10, help="lookup calls per agent before it ends")
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--durability", choices=["sync", "async", "exit"], default="sync")
    args = p.parse_args()
    emit(run_sync(args) if args.concurrency == 1 else asyncio.run(run_async(args)))
