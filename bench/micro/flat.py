"""Is a step's cost flat in the length of the history? One object of N steps, as a handler
("chain") and as a durable function ("fw1"); a timestamp per step; the medians of the
first and the last tenth of the steps.

    python bench/micro/flat.py 3000 chain fw1
    PYTHONPATH=../base python bench/micro/flat.py 1000 fw1      # another tree
"""

from __future__ import annotations

import asyncio
import itertools
import os
import statistics
import sys
import tempfile
import time

import peo

app = peo.App()
TIMES: list[float] = []


def inc(n: int) -> int:
    TIMES.append(time.perf_counter())
    return n + 1


@app.function("fw1")
async def fw1(run: peo.Run, steps: int) -> int:
    n = 0
    for _ in range(steps):
        n = await run.step(inc, n)
    return n


@app.handler("chain")
def chain(step: peo.Step) -> peo.Proposal:
    TIMES.append(time.perf_counter())
    n = step.state.get("n", 0)
    return peo.Done({"n": n}) if n >= step.goal["steps"] else peo.Continue(state={"n": n + 1})


async def one(handler: str, steps: int) -> None:
    TIMES.clear()
    work = tempfile.mkdtemp()
    os.chdir(work)
    os.environ["PEO_HOME"] = os.path.join(work, ".peo")
    url = f"sqlite:///{work}/peo.db"
    async with peo.Client(url) as client:
        await client.submit(handler, {"steps": steps})
    await peo.Node(url, app, idle_horizon=0).run_until_idle()
    gaps = [b - a for a, b in itertools.pairwise(TIMES)]
    k = max(len(gaps) // 10, 1)
    print(f"{handler} {steps} steps: first tenth {statistics.median(gaps[:k]) * 1e6:.0f} µs/step, "
          f"last tenth {statistics.median(gaps[-k:]) * 1e6:.0f} µs/step, {sum(gaps):.1f} s in all")


def main() -> None:
    if len(sys.argv) < 3 or not sys.argv[1].isdigit():
        sys.exit(__doc__)
    for handler in sys.argv[2:]:
        asyncio.run(one(handler, int(sys.argv[1])))


if __name__ == "__main__":
    main()
