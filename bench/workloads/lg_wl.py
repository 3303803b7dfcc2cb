"""LangGraph workloads (SQLite checkpointer; durability "sync" or "async", LangGraph's default).

Run by bench/run.py in the peers' virtualenv, in a fresh temporary directory:
    python lg_wl.py w1 --steps 1000 --durability sync
A LangGraph "object" is a thread; a step is one super-step of a one-node loop, which the
checkpointer records as one checkpoint. Prints one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sqlite3
import subprocess
import sys
import time
from typing import Any, TypedDict

from common import (
    PAYLOAD,
    audit_side_effects,
    emit,
    kill9,
    log,
    side_effect,
    store_bytes,
    w3_result,
    wait_for_lines,
)
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver
from langgraph.graph import END, START, StateGraph
from langgraph.types import Command, interrupt

DB = "lg.db"
STEP_TIMES: list[float] = []


class State(TypedDict, total=False):
    n: int
    target: int
    payload: dict[str, Any]
    file: str


def step(state: State) -> State:
    STEP_TIMES.append(time.perf_counter())
    if state.get("file"):
        side_effect(state["file"], state["n"])
    return {"n": state["n"] + 1, "payload": PAYLOAD}


async def astep(state: State) -> State:
    return {"n": state["n"] + 1, "payload": PAYLOAD}


def route(state: State) -> str:
    return END if state["n"] >= state["target"] else "step"


def loop_graph(node: Any, saver: Any) -> Any:
    builder = StateGraph(State)
    builder.add_node("step", node)
    builder.add_edge(START, "step")
    builder.add_conditional_edges("step", route)
    return builder.compile(checkpointer=saver)


def config(thread: str, steps: int) -> dict[str, Any]:
    return {"configurable": {"thread_id": thread}, "recursion_limit": steps + 10}


def saver() -> SqliteSaver:
    return SqliteSaver(sqlite3.connect(DB, check_same_thread=False))


def w1(args: argparse.Namespace) -> None:
    graph = loop_graph(step, saver())
    t0 = time.perf_counter()
    graph.invoke({"n": 0, "target": args.steps}, config("w1", args.steps), durability=args.durability)
    elapsed = time.perf_counter() - t0
    emit(
        {
            "steps": args.steps,
            "steps_per_s": args.steps / elapsed,
            "seconds": elapsed,
            "store_bytes_per_object": store_bytes(DB),
        }
    )


def w2(args: argparse.Namespace) -> None:
    async def main() -> float:
        async with AsyncSqliteSaver.from_conn_string(DB) as aio_saver:
            graph = loop_graph(astep, aio_saver)
            t0 = time.perf_counter()
            await asyncio.gather(
                *(
                    graph.ainvoke(
                        {"n": 0, "target": args.steps}, config(f"t{i}", args.steps), durability=args.durability
                    )
                    for i in range(args.objects)
                )
            )
            return time.perf_counter() - t0

    elapsed = asyncio.run(main())
    total = args.objects * args.steps
    emit(
        {
            "objects": args.objects,
            "steps": total,
            "steps_per_s": total / elapsed,
            "seconds": elapsed,
            "store_bytes_per_object": store_bytes(DB) / args.objects,
        }
    )


def w3(args: argparse.Namespace) -> None:
    graph = loop_graph(step, saver())
    graph.invoke({"n": 0, "target": args.steps}, config("w3", args.steps), durability=args.durability)
    emit(w3_result(STEP_TIMES, args.steps))


def w4_node(args: argparse.Namespace) -> None:
    """The 'node' of W4: starts the thread, or (restart) resumes it from its last checkpoint."""
    graph = loop_graph(step, saver())
    start = {"n": 0, "target": args.steps, "file": args.file} if args.start else None
    graph.invoke(start, config("w4", args.steps), durability=args.durability)


def w4(args: argparse.Namespace) -> None:
    path = os.path.abspath("side_effects.txt")
    cmd = [
        sys.executable,
        __file__,
        "w4-node",
        "--file",
        path,
        "--steps",
        str(args.steps),
        "--durability",
        args.durability,
    ]
    first = subprocess.Popen([*cmd, "--start"])
    at_kill = wait_for_lines(path, args.kill_at, first, 120)
    kill9(first)
    log(f"langgraph w4: killed at {at_kill} lines")
    t0 = time.perf_counter()
    second = subprocess.Popen(cmd)
    code = second.wait(300)
    elapsed = time.perf_counter() - t0
    emit({"killed_at": at_kill, "restart_to_done_s": elapsed, "exit": code, **audit_side_effects(path, args.steps)})


def nap(state: State) -> State:
    # Dormancy in LangGraph: an interrupt, resumed by Command(resume=...). LangGraph has no
    # timer, so "sleep for an hour" has no equivalent.
    interrupt("waiting for go")
    return {"n": 1}


def w5(args: argparse.Namespace) -> None:
    builder = StateGraph(State)
    builder.add_node("nap", nap)
    builder.add_edge(START, "nap")
    builder.add_edge("nap", END)
    graph = builder.compile(checkpointer=saver())
    t0 = time.perf_counter()
    for i in range(args.objects):
        graph.invoke({"n": 0}, config(f"nap-{i}", 1), durability=args.durability)
    park = time.perf_counter() - t0
    t0 = time.perf_counter()
    graph.invoke(Command(resume="go"), config("nap-0", 1), durability=args.durability)
    wake = time.perf_counter() - t0
    emit(
        {
            "objects": args.objects,
            "park_s": park,
            "wake_one_signal_s": wake,
            "store_bytes_per_object": store_bytes(DB) / args.objects,
        }
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("workload")
    p.add_argument("--durability", choices=["sync", "async"], default="async")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--objects", type=int, default=200)
    p.add_argument("--kill-at", type=int, default=150)
    p.add_argument("--file")
    p.add_argument("--start", action="store_true")
    p.add_argument("--idle-seconds", type=float, default=2.0)
    args = p.parse_args()
    {"w1": w1, "w2": w2, "w3": w3, "w4": w4, "w4-node": w4_node, "w5": w5}[args.workload](args)


if __name__ == "__main__":
    main()
