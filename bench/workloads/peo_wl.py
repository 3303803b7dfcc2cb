"""peo workloads. Run by bench/run.py with peo's interpreter, in a fresh temporary directory:
    python peo_wl.py w1 --steps 1000 [--store URL]
The store defaults to sqlite:///peo.db in the current directory (synchronous=FULL, peo's
default). Prints one JSON object with the figures as the last line of stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import peo_app
from common import (
    audit_side_effects,
    count_lines,
    emit,
    kill9,
    last_line_pid,
    log,
    process_hwm_mb,
    stop,
    store_bytes,
    w3_result,
    wait_for_lines,
)

import peo

HERE = Path(__file__).resolve().parent


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:")


def bytes_per_object(url: str, objects: int) -> float | None:
    return store_bytes("peo.db") / objects if is_sqlite(url) else None


async def drop_schema(url: str) -> None:
    """Each PostgreSQL run gets its own schema (?schema=NAME); drop it afterwards."""
    if is_sqlite(url):
        return
    import asyncpg

    parsed = urlparse(url)
    schema = parse_qs(parsed.query)["schema"][0]
    conn = await asyncpg.connect(parsed._replace(query="").geturl())
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


def node(url: str, args: argparse.Namespace, node_id: str = "bench") -> peo.Node:
    return peo.Node(url, peo_app.app, node_id=node_id, concurrency=args.concurrency, lease_ttl=args.lease_ttl)


async def w1(url: str, args: argparse.Namespace) -> dict[str, Any]:
    async with peo.Client(url) as client:
        n = node(url, args)
        await n.run_until_idle()  # opens the store and creates the schema: not measured
        t0 = time.perf_counter()
        oid = await client.submit("chain_fn" if args.form == "function" else "chain", goal={"steps": args.steps})
        await n.run_until_idle()
        elapsed = time.perf_counter() - t0
        assert (await client.wait(oid, timeout=10)) == {"n": args.steps}
    return {
        "steps": args.steps,
        "steps_per_s": args.steps / elapsed,
        "seconds": elapsed,
        "store_bytes_per_object": bytes_per_object(url, 1),
    }


async def w2(url: str, args: argparse.Namespace) -> dict[str, Any]:
    async with peo.Client(url) as client:
        n = node(url, args)
        await n.run_until_idle()
        goals = [{"steps": args.steps}] * args.objects
        t0 = time.perf_counter()
        oids = await client.submit_many("chain", goals)
        t_submit = time.perf_counter() - t0
        await n.run_until_idle()
        elapsed = time.perf_counter() - t0
        for oid in oids:
            assert (await client.wait(oid, timeout=10)) == {"n": args.steps}
    total = args.objects * args.steps
    return {
        "objects": args.objects,
        "steps": total,
        "steps_per_s": total / elapsed,
        "seconds": elapsed,
        "submit_s": t_submit,
        "store_bytes_per_object": bytes_per_object(url, args.objects),
    }


async def w3(url: str, args: argparse.Namespace) -> dict[str, Any]:
    async with peo.Client(url) as client:
        await client.submit("chain", goal={"steps": args.steps})
        await node(url, args).run_until_idle()
    return w3_result(peo_app.STEP_TIMES, args.steps)


# -- node processes (W4, W4b, W5 RSS, W2 on several processes) ----------------------------------


def node_cmd(url: str, args: argparse.Namespace, node_id: str, until_idle: bool) -> list[str]:
    # `python -m peo` is the `peo` console script minus any launcher shim (pyenv's adds ~0.1 s
    # of bash to every start, which W4 would count); --via lib runs `peo_wl.py node` instead.
    head = ["-m", "peo", "--store", url, "node", "--app", "peo_app:app"]
    if args.via == "lib":
        head = [__file__, "node", "--store", url]
    tail = ["--node-id", node_id, "--concurrency", str(args.concurrency)]
    tail += ["--lease-ttl", str(args.lease_ttl)] + (["--until-idle"] if until_idle else [])
    return [sys.executable, *head, *tail]


def spawn_node(url: str, args: argparse.Namespace, node_id: str, until_idle: bool) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen(node_cmd(url, args, node_id, until_idle), env=env)


async def run_node(url: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """`peo_wl.py node`: a node process through the library API (--via lib)."""
    n = node(url, args, args.node_id)
    loop = asyncio.get_running_loop()
    import signal

    loop.add_signal_handler(signal.SIGTERM, n.stop)
    await (n.run_until_idle() if args.until_idle else n.run())
    return None


async def w4(url: str, args: argparse.Namespace) -> dict[str, Any]:
    path = os.path.abspath("side_effects.txt")
    async with peo.Client(url) as client:
        oid = await client.submit("chain", goal={"steps": args.steps, "file": path})
        first = spawn_node(url, args, "n1", until_idle=True)
        at_kill = wait_for_lines(path, args.kill_at, first, 120)
        kill9(first)
        log(f"peo w4: killed at {at_kill} lines")
        t0 = time.perf_counter()
        second = spawn_node(url, args, "n1", until_idle=True)
        first_step = None
        while second.poll() is None:
            if first_step is None and count_lines(path) > at_kill:
                first_step = time.perf_counter() - t0
            time.sleep(0.0005)
        elapsed = time.perf_counter() - t0
        result = await client.wait(oid, timeout=10)
    return {
        "killed_at": at_kill,
        "restart_to_done_s": elapsed,
        "restart_to_first_step_s": first_step,
        "exit": second.returncode,
        "done": result == {"n": args.steps},
        **audit_side_effects(path, args.steps),
    }


async def w4b(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Two running nodes; kill -9 whichever runs the object at ~150; the other takes over."""
    path = os.path.abspath("side_effects.txt")
    async with peo.Client(url) as client:
        await node(url, args).run_until_idle()  # schema
        nodes = [spawn_node(url, args, f"n{i}", until_idle=False) for i in (1, 2)]
        try:
            await asyncio.sleep(args.ready_seconds)  # both nodes up and polling
            oid = await client.submit("chain", goal={"steps": args.steps, "file": path})
            at_kill = wait_for_lines(path, args.kill_at, nodes[0], 120)
            holder_pid = last_line_pid(path)
            victim = next(p for p in nodes if p.pid == holder_pid)
            t_kill = kill9(victim)
            log(f"peo w4b: killed pid {holder_pid} at {at_kill} lines")
            first_step = None
            while count_lines(path) <= at_kill:
                await asyncio.sleep(0.0005)
            first_step = time.monotonic() - t_kill
            result = await client.wait(oid, timeout=60)
            done = time.monotonic() - t_kill
        finally:
            for p in nodes:
                stop(p)
    return {
        "killed_at": at_kill,
        "takeover_first_step_s": first_step,
        "kill_to_done_s": done,
        "done": result == {"n": args.steps},
        "lease_ttl": args.lease_ttl,
        **audit_side_effects(path, args.steps),
    }


async def node_rss(url: str, args: argparse.Namespace) -> float | None:
    """Peak RSS of a node process that has been running on the store for a while."""
    proc = spawn_node(url, args, "rss", until_idle=False)
    await asyncio.sleep(args.idle_seconds)
    rss = process_hwm_mb(proc.pid)
    stop(proc)
    return rss


async def w5(url: str, args: argparse.Namespace) -> dict[str, Any]:
    n_obj = args.objects
    os.mkdir("empty")
    empty_url = "sqlite:///empty/peo.db" if is_sqlite(url) else url + "_empty"
    await node(empty_url, args).run_until_idle()  # schema only
    rss_empty = await node_rss(empty_url, args)
    await drop_schema(empty_url)

    async with peo.Client(url) as client:
        n = node(url, args)
        await n.run_until_idle()
        goals = [{"kind": "signal" if i % 2 == 0 else "sleep"} for i in range(n_obj)]
        t0 = time.perf_counter()
        oids = await client.submit_many("nap", goals)
        await n.run_until_idle()  # returns once all are dormant (nothing due for an hour)
        park = time.perf_counter() - t0
        size = bytes_per_object(url, n_obj)
        rss_dormant = await node_rss(url, args)

        # Wake one by signal, with a node running.
        runner = asyncio.create_task(n.run())
        await asyncio.sleep(0.2)
        t0 = time.perf_counter()
        await client.signal(oids[0], "go")
        await client.wait(oids[0], timeout=30)
        wake = time.perf_counter() - t0
        n.stop()
        await runner

    # 10,000 objects due at the same instant, on a running node.
    due_url = "sqlite:///due.db" if is_sqlite(url) else url + "_due"
    parked = done = 0
    all_done = asyncio.Event()

    def on_parked() -> None:
        nonlocal parked
        parked += 1

    def on_done() -> None:
        nonlocal done
        done += 1
        if done == n_obj:
            all_done.set()

    peo_app.ON_PARKED.append(on_parked)
    peo_app.ON_ALARM_DONE.append(on_done)
    async with peo.Client(due_url) as client:
        due_node = node(due_url, args)
        at = time.time() + max(3.0, 2 * park + 1)
        runner = asyncio.create_task(due_node.run())
        await client.submit_many("alarm", [{"at": at}] * n_obj)
        await asyncio.sleep(max(0.0, at - time.time()))
        parked_before_due = parked
        t_due = time.perf_counter()
        await asyncio.wait_for(all_done.wait(), 120)
        handlers_done = time.perf_counter() - t_due
        due_node.stop()
        await runner  # the last commits land before run() returns
        due_all = time.perf_counter() - t_due
    await drop_schema(due_url)
    return {
        "objects": n_obj,
        "park_s": park,
        "node_rss_empty_mb": rss_empty,
        "node_rss_dormant_mb": rss_dormant,
        "wake_one_signal_s": wake,
        "store_bytes_per_object": size,
        "due_all_done_s": due_all,
        "due_last_handler_s": handlers_done,
        "parked_before_due": parked_before_due,
    }


async def w2_nodes(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """W2 run by `--procs` node processes on one store (PostgreSQL: 3 vs 1)."""
    async with peo.Client(url) as client:
        await node(url, args).run_until_idle()  # schema
        procs = [spawn_node(url, args, f"n{i}", until_idle=False) for i in range(args.procs)]
        try:
            await asyncio.sleep(args.ready_seconds)
            t0 = time.perf_counter()
            oids = await client.submit_many("chain", [{"steps": args.steps}] * args.objects)
            for oid in oids:
                await client.wait(oid, timeout=300)
            elapsed = time.perf_counter() - t0
            rss = [process_hwm_mb(p.pid) for p in procs]
        finally:
            for p in procs:
                stop(p)
    total = args.objects * args.steps
    return {
        "procs": args.procs,
        "steps": total,
        "steps_per_s": total / elapsed,
        "seconds": elapsed,
        "node_rss_mb": max(r or 0 for r in rss),
    }


WORKLOADS: dict[str, Callable[[str, argparse.Namespace], Awaitable[dict[str, Any] | None]]] = {
    "w1": w1,
    "w2": w2,
    "w3": w3,
    "w4": w4,
    "w4b": w4b,
    "w5": w5,
    "w2-nodes": w2_nodes,
    "node": run_node,
}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("workload", choices=sorted(WORKLOADS))
    p.add_argument("--store", default="sqlite:///peo.db")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--objects", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=200)
    p.add_argument("--lease-ttl", type=float, default=1.5)
    p.add_argument("--kill-at", type=int, default=150)
    p.add_argument("--procs", type=int, default=1)
    p.add_argument(
        "--via",
        choices=["cli", "lib"],
        default="cli",
        help="start node processes with `peo node` or through the library",
    )
    p.add_argument("--form", choices=["handler", "function"], default="handler",
                   help="W1 as a handler returning proposals, or as a durable function (app.function)")
    p.add_argument("--node-id", default="bench")
    p.add_argument("--until-idle", action="store_true")
    p.add_argument("--ready-seconds", type=float, default=1.5)
    p.add_argument("--idle-seconds", type=float, default=2.0)
    args = p.parse_args()
    url = args.store

    async def go() -> dict[str, Any] | None:
        try:
            return await WORKLOADS[args.workload](url, args)
        finally:
            if args.workload != "node":
                await drop_schema(url)

    result = asyncio.run(go())
    if result is not None:
        emit(result)


if __name__ == "__main__":
    main()
