"""DBOS workloads (SQLite system database, DBOS's default durability).

Run by bench/run.py in the peers' virtualenv, in a fresh temporary directory:
    python dbos_wl.py w1 --steps 1000
Prints one JSON object with the figures as the last line of stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import time
from typing import Any

from common import (
    PAYLOAD,
    audit_side_effects,
    emit,
    kill9,
    log,
    process_hwm_mb,
    side_effect,
    store_bytes,
    w3_result,
    wait_for_lines,
)
from dbos import DBOS, DBOSConfig, SetWorkflowID

DB = "dbos.db"
STEP_TIMES: list[float] = []


def launch() -> None:
    config: DBOSConfig = {
        "name": "bench",
        "system_database_url": f"sqlite:///{DB}",
        "log_level": "ERROR",
        "console_log_level": "ERROR",
        "max_executor_threads": 256,
    }
    DBOS(config=config)
    DBOS.launch()


@DBOS.step()
def record(n: int) -> dict[str, Any]:
    STEP_TIMES.append(time.perf_counter())
    return {"n": n, **PAYLOAD}


@DBOS.step()
def record_with_side_effect(path: str, n: int) -> dict[str, Any]:
    side_effect(path, n)
    return {"n": n, **PAYLOAD}


@DBOS.workflow()
def chain(steps: int) -> int:
    for n in range(steps):
        record(n)
    return steps


@DBOS.workflow()
def crash_chain(path: str, steps: int) -> int:
    for n in range(steps):
        record_with_side_effect(path, n)
    return steps


@DBOS.step()
async def record_async(n: int) -> dict[str, Any]:
    return {"n": n, **PAYLOAD}


@DBOS.workflow()
async def fan(steps: int) -> int:
    for n in range(steps):
        await record_async(n)
    return steps


@DBOS.workflow()
async def nap(kind: str) -> str:
    # Dormancy in DBOS: a durable sleep, or a durable receive with a timeout.
    if kind == "sleep":
        await DBOS.sleep_async(3600)
        return "slept"
    message = await DBOS.recv_async("go", timeout_seconds=3600)
    return f"woken:{message}"


def w1(args: argparse.Namespace) -> None:
    launch()
    t0 = time.perf_counter()
    DBOS.start_workflow(chain, args.steps).get_result()
    elapsed = time.perf_counter() - t0
    DBOS.destroy()
    emit(
        {
            "steps": args.steps,
            "steps_per_s": args.steps / elapsed,
            "seconds": elapsed,
            "store_bytes_per_object": store_bytes(DB),
        }
    )


def w2(args: argparse.Namespace) -> None:
    launch()

    async def main() -> float:
        t0 = time.perf_counter()
        handles = [await DBOS.start_workflow_async(fan, args.steps) for _ in range(args.objects)]
        for h in handles:
            await h.get_result()
        return time.perf_counter() - t0

    elapsed = asyncio.run(main())
    DBOS.destroy()
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
    launch()
    DBOS.start_workflow(chain, args.steps).get_result()
    DBOS.destroy()
    emit(w3_result(STEP_TIMES, args.steps))


def w4_node(args: argparse.Namespace) -> None:
    """The 'node' of W4: starts the workflow, or (restart) lets DBOS recover it at launch."""
    launch()
    if args.start:
        with SetWorkflowID("w4"):
            handle = DBOS.start_workflow(crash_chain, args.file, args.steps)
    else:
        handle = DBOS.retrieve_workflow("w4")
    handle.get_result()
    DBOS.destroy()


def w4(args: argparse.Namespace) -> None:
    path = os.path.abspath("side_effects.txt")
    cmd = [sys.executable, __file__, "w4-node", "--file", path, "--steps", str(args.steps)]
    first = subprocess.Popen([*cmd, "--start"])
    at_kill = wait_for_lines(path, args.kill_at, first, 120)
    kill9(first)
    log(f"dbos w4: killed at {at_kill} lines")
    t0 = time.perf_counter()
    second = subprocess.Popen(cmd)
    code = second.wait(300)
    elapsed = time.perf_counter() - t0
    emit({"killed_at": at_kill, "restart_to_done_s": elapsed, "exit": code, **audit_side_effects(path, args.steps)})


def w5_node_rss(args: argparse.Namespace) -> None:
    """A DBOS process launched on the store: it recovers (loads) every pending workflow."""
    launch()
    time.sleep(args.seconds)
    emit({})  # peak_rss_mb is what the parent wants
    DBOS.destroy()
    os._exit(0)


def node_rss(seconds: float) -> float:
    out = subprocess.run(
        [sys.executable, __file__, "w5-node-rss", "--seconds", str(seconds)], check=True, capture_output=True, text=True
    ).stdout
    return float(json.loads(out.strip().splitlines()[-1])["peak_rss_mb"])


def parked() -> int:
    with sqlite3.connect(DB, timeout=30) as conn:
        (n,) = conn.execute("SELECT COUNT(DISTINCT workflow_uuid) FROM operation_outputs").fetchone()
    return int(n)


def w5(args: argparse.Namespace) -> None:
    rss_empty = node_rss(args.idle_seconds)
    launch()

    async def park() -> tuple[float, list[str]]:
        t0 = time.perf_counter()
        ids = []
        for i in range(args.objects):
            wid = f"nap-{i}"
            with SetWorkflowID(wid):
                await DBOS.start_workflow_async(nap, "sleep" if i % 2 else "signal")
            ids.append(wid)
        # Parked once every workflow has recorded its sleep or receive as a step.
        while parked() < len(ids):
            await asyncio.sleep(0.02)
        return time.perf_counter() - t0, ids

    async def wake_one() -> float:
        t0 = time.perf_counter()
        await DBOS.send_async("nap-0", "now", "go")
        await (await DBOS.retrieve_workflow_async("nap-0")).get_result()
        return time.perf_counter() - t0

    loop = asyncio.new_event_loop()
    park_s, _ = loop.run_until_complete(park())
    in_process_rss = process_hwm_mb(os.getpid())
    wake_s = loop.run_until_complete(wake_one())
    DBOS.destroy()
    size = store_bytes(DB)
    rss_dormant = node_rss(args.idle_seconds)
    emit(
        {
            "objects": args.objects,
            "park_s": park_s,
            "node_rss_empty_mb": rss_empty,
            "node_rss_dormant_mb": rss_dormant,
            "parking_process_rss_mb": in_process_rss,
            "wake_one_signal_s": wake_s,
            "store_bytes_per_object": size / args.objects,
        }
    )
    os._exit(0)  # dormant workflows' tasks are still pending on the loop


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("workload")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--objects", type=int, default=200)
    p.add_argument("--kill-at", type=int, default=150)
    p.add_argument("--file")
    p.add_argument("--start", action="store_true")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--idle-seconds", type=float, default=2.0)
    args = p.parse_args()
    fn = {"w1": w1, "w2": w2, "w3": w3, "w4": w4, "w4-node": w4_node, "w5": w5, "w5-node-rss": w5_node_rss}[
        args.workload
    ]
    fn(args)


if __name__ == "__main__":
    main()
