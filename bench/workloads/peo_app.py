"""The peo handlers the benchmark runs, in-process or in `peo node --app peo_app:app`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from common import PAYLOAD, side_effect

import peo

app = peo.App()

# Start time of every "chain" step, for W3 (in-process nodes only).
STEP_TIMES: list[float] = []
# Called on each finished "alarm" object (W5), set by the workload that runs the node.
ON_ALARM_DONE: list[Callable[[], None]] = []
ON_PARKED: list[Callable[[], None]] = []


@app.handler("chain")
async def chain(step: peo.Step) -> peo.Proposal:
    """`steps` sequential steps, each recording the ~256-byte payload as its state update."""
    STEP_TIMES.append(time.perf_counter())
    n = step.state.get("n", 0)
    if n >= step.goal["steps"]:
        return peo.Done({"n": n})
    if "file" in step.goal:
        side_effect(step.goal["file"], n)
    return peo.Continue(state={"n": n + 1, "payload": PAYLOAD})


async def record(n: int) -> dict[str, Any]:
    """One step of W1 in function form: what DBOS's @DBOS.step returns in its own W1."""
    STEP_TIMES.append(time.perf_counter())
    return {"n": n, **PAYLOAD}


@app.function("chain_fn")
async def chain_fn(run: peo.Run, steps: int) -> dict[str, int]:
    """W1 as a durable function: `steps` awaited steps, each a signed entry holding its result."""
    for n in range(steps):
        await run.step(record, n)
    return {"n": steps}


@app.handler("nap")
async def nap(step: peo.Step) -> peo.Proposal:
    """Dormant until a signal "go" (goal kind "signal") or for an hour (kind "sleep")."""
    if step.state.get("parked"):
        return peo.Done({"woken": [s.name for s in step.signals]})
    if step.goal["kind"] == "sleep":
        return peo.Sleep(seconds=3600, state={"parked": True})
    return peo.WaitSignal("go", state={"parked": True})


@app.handler("alarm")
async def alarm(step: peo.Step) -> peo.Proposal:
    """Sleeps until the goal's `at` (Unix seconds), then finishes: W5's due-at-once."""
    if step.state.get("parked"):
        for fn in ON_ALARM_DONE:
            fn()
        return peo.Done(None)
    for fn in ON_PARKED:
        fn()
    return peo.Sleep(until=step.goal["at"], state={"parked": True})
