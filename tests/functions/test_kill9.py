"""A real node process killed with SIGKILL in the middle of a durable function: another
node process takes the object over after the lease expires, replays the function from its
memory and finishes it; no recorded step runs again.

The app (written into the test's directory) appends one line per attempt of a step to a
file, fsynced before the step returns; step ``BLOCK`` waits for a file ``go`` before it
returns, so the test knows exactly which step is in flight when it kills the process.

No assertion is on wall time: each deadline only turns a hang into a failure.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import peo
from peo.core.model import Action

STEPS = 8
BLOCK = 5  # the step in flight when node a is killed
LEASE_TTL = "0.5"  # seconds: node b takes over soon after the kill
DEADLINE = 60.0  # seconds; against hangs only

APP_SOURCE = '''
import os
import time

import peo

app = peo.App()


def effect(log: str, go: str, i: int, block: int, key: str) -> int:
    with open(log, "a") as f:
        f.write(f"step-{i} key={key}\\n")
        f.flush()
        os.fsync(f.fileno())
    if i == block:
        while not os.path.exists(go):
            time.sleep(0.01)
    return i


@app.function("counted")
async def counted(run: peo.Run, log: str, go: str, steps: int, block: int) -> int:
    total = 0
    for i in range(1, steps + 1):
        total += await run.step(effect, log, go, i, block, run.idempotency_key, name=f"step-{i}")
    return total
'''


def spawn(url: str, node_id: str, cwd: Path, *extra: str) -> subprocess.Popen[bytes]:
    """``peo node`` in its own process (its stderr to a file, for a failure's message)."""
    err = (cwd / f"node-{node_id}.err").open("wb")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "peo", "--store", url, "node", "--app", "kill9app:app",
             "--node-id", node_id, "--lease-ttl", LEASE_TTL, "--concurrency", "4", *extra],
            cwd=cwd, stdout=subprocess.DEVNULL, stderr=err,
        )
    finally:
        err.close()


async def wait_for(predicate: Callable[[], bool], what: str, *procs: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        for p in procs:
            if p.poll() is not None:
                name = p.args[p.args.index("--node-id") + 1]
                raise AssertionError(f"node {name} exited ({p.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {DEADLINE:g} s")
        await asyncio.sleep(0.02)


def attempts(log: Path) -> dict[int, list[str]]:
    """Step number -> the idempotency keys of its attempts, in the order they ran."""
    seen: dict[int, list[str]] = {}
    for line in log.read_text().splitlines():
        step, _, key = line.partition(" key=")
        seen.setdefault(int(step.removeprefix("step-")), []).append(key)
    return seen


def stop(*procs: subprocess.Popen[bytes]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=30)


async def test_a_function_killed_mid_step_is_finished_by_another_node_without_running_a_step_twice(
    store_url: str, tmp_path: Path
) -> None:
    (tmp_path / "kill9app.py").write_text(APP_SOURCE)
    log, go = tmp_path / "effects.log", tmp_path / "go"
    log.touch()
    async with peo.Client(store_url) as client:
        oid = await client.submit("counted", {"log": str(log), "go": str(go), "steps": STEPS, "block": BLOCK})
        a = spawn(store_url, "a", tmp_path)
        b: subprocess.Popen[bytes] | None = None
        try:
            await wait_for(lambda: BLOCK in attempts(log), f"start of step {BLOCK} on node a", a)
            a.send_signal(signal.SIGKILL)
            assert a.wait(timeout=30) == -signal.SIGKILL
            # Node a died inside step BLOCK: steps 1..BLOCK-1 are recorded, BLOCK is not.
            assert (await client.store.get(oid)).seq == BLOCK - 1
            assert attempts(log) == {i: [f"{oid}:{i}"] for i in range(1, BLOCK + 1)}
            go.touch()
            b = spawn(store_url, "b", tmp_path, "--until-idle")
            assert await client.wait(oid, timeout=DEADLINE) == sum(range(1, STEPS + 1))
            assert b.wait(timeout=DEADLINE) == 0, (tmp_path / "node-b.err").read_text()
        finally:
            stop(a, *([b] if b is not None else []))

        ran = attempts(log)
        assert sorted(ran) == list(range(1, STEPS + 1))
        # Every step before the kill ran once; so did every step after it (on node b).
        for i in (*range(1, BLOCK), *range(BLOCK + 1, STEPS + 1)):
            assert ran[i] == [f"{oid}:{i}"], (i, ran[i])
        # The step in flight at the kill ran again on node b, with the same idempotency key.
        assert ran[BLOCK] == [f"{oid}:{BLOCK}"] * 2

        # The signed chain: entry 0, one execute per step, the terminate; all verified.
        assert await client.verify(oid) == STEPS + 2
        info = await client.get(oid)
        assert [e.seq for e in info.memory] == list(range(STEPS + 2))
        assert [e.action for e in info.memory[1:]] == [Action.EXECUTE] * STEPS + [Action.TERMINATE]
        assert [info.state[f"fn.{k}"]["result"] for k in range(STEPS)] == list(range(1, STEPS + 1))
        # Node a wrote the steps before the kill; node b the rest.
        assert [e.origin_node for e in info.memory[1:]] == ["a"] * (BLOCK - 1) + ["b"] * (STEPS - BLOCK + 2)
