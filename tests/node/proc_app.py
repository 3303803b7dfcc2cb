"""A node process for the multi-process tests: each step appends ``<idempotency key>`` to
a side-effect log before proposing, so duplicates show up as repeated lines.

Run: ``python tests/node/proc_app.py STORE_URL NODE_ID LOG_FILE [STEP_SECONDS]``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time

import peo

app = peo.App()
LOG = os.environ.get("PEO_TEST_LOG", "side-effects.log")
STEP_SECONDS = float(os.environ.get("PEO_TEST_STEP_SECONDS", "0"))


@app.handler("work")
def work(step: peo.Step) -> peo.Proposal:
    if STEP_SECONDS:
        time.sleep(STEP_SECONDS)
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{step.idempotency_key}\n".encode())
    finally:
        os.close(fd)
    n = step.state.get("n", 0)
    if n >= step.goal["steps"]:
        return peo.Done(n)
    return peo.Continue(state={"n": n + 1})


async def main(url: str, node_id: str, ttl: float) -> None:
    node = peo.Node(url, app, node_id=node_id, concurrency=8, lease_ttl=ttl)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, node.stop)
    await node.run()


if __name__ == "__main__":
    url, node_id, LOG = sys.argv[1], sys.argv[2], sys.argv[3]
    STEP_SECONDS = float(sys.argv[4]) if len(sys.argv) > 4 else 0.0
    asyncio.run(main(url, node_id, float(sys.argv[5]) if len(sys.argv) > 5 else 1.0))
