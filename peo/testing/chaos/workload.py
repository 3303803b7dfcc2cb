"""The chaos workload: one handler whose every step leaves a side effect in a log file."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from ...app import App
from ...core.model import Continue, Done, Proposal, Sleep, Step

__all__ = ["HANDLER", "LOG_DIR_ENV", "app", "chaos_step"]

#: The chaos workload's handler name.
HANDLER = "chaos"
#: Where the handler appends its side effects (one file per process); set by the worker.
LOG_DIR_ENV = "PEO_CHAOS_LOG_DIR"

app = App()
_log_fd: int | None = None


def _effect(key: str) -> None:
    """The step's side effect: one line in this process's log. O_APPEND writes land whole
    and survive SIGKILL (they are in the kernel once write() returns)."""
    global _log_fd
    if _log_fd is None:
        directory = Path(os.environ.get(LOG_DIR_ENV) or "chaos-effects")
        directory.mkdir(parents=True, exist_ok=True)
        _log_fd = os.open(directory / f"{os.getpid()}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_log_fd, f"{key}\n".encode())


@app.handler(HANDLER)
async def chaos_step(step: Step) -> Proposal:
    """``goal = {"steps": S, "step_ms": M, "sleep_every": K}``: S steps, then Done(S)."""
    n = int(step.state.get("n", 0))
    _effect(step.idempotency_key)
    # The wait comes after the side effect: a kill in it leaves an effect without a commit.
    await asyncio.sleep(float(step.goal.get("step_ms", 0)) / 1000)
    if n >= int(step.goal["steps"]):
        return Done(n)
    every = int(step.goal.get("sleep_every", 0))
    if every and (n + 1) % every == 0:
        return Sleep(seconds=0.02, state={"n": n + 1})
    return Continue(state={"n": n + 1})
