"""What resuming a durable function costs after a takeover, by the length of its history.

One object runs a function of N + M cheap steps (``await run.step(inc, i)``). Node a serves
it while it stays live (a step costs the same at step N as at step 1), and stops right
after entry N is committed (it is told to stop inside step N; the worker then releases the
object). Node b, another Node with its own App (so none of node a's live coroutines: as a
new process would be), claims the object: it loads and verifies the N + 1 entries, then
replays the function from the top (N recorded results returned, nothing run again) up to
step N + 1, then goes on live for the M steps left.

Reported per N (medians of ``--runs``):

* resume: node b's claim -> entry N + 1 committed, split into load (claim -> the function
  starts: reading and verifying the chain, folding it), replay (the function starts -> step
  N + 1's function is called) and step+commit (-> entry N + 1 committed);
* the per-step cost (median gap between step calls) of the last M steps before the stop
  (node a) and of the M steps after the resume (node b): flat if they are equal.

    python bench/micro/resume.py                            # N = 1000 and 10000, M = 200, SQLite
    python bench/micro/resume.py --n 1000 10000 --runs 3
    python bench/micro/resume.py --n 50 --m 20 --runs 1     # smoke: a few seconds
    python bench/micro/resume.py --store postgresql://postgres@127.0.0.1:5432/test
    python bench/micro/resume.py --n 10000 --runs 1 --profile    # where node b's time goes

SQLite is a temporary file with the default durability (fsync per commit); a PostgreSQL URL
gets a fresh schema per run, dropped afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import itertools
import os
import pstats
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import peo
from peo.store import open_store


class Probe:
    """Timestamps (time.perf_counter) taken inside the function, its steps and node b's store."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.steps: dict[int, float] = {}  # step i -> when its function was called (last time)
        self.starts: list[float] = []  # each time the function body starts (a run from the top)
        self.stop_a: Callable[[], None] | None = None
        self.claimed: float | None = None  # node b's first claim returned it
        self.committed: float | None = None  # node b committed entry n + 1


def make_app(probe: Probe) -> peo.App:
    """A new App each time: live coroutines are kept per app registration, and node b must
    start without node a's (a new process would)."""
    app = peo.App()

    def inc(i: int) -> int:
        probe.steps[i] = time.perf_counter()
        if i == probe.n - 1 and probe.stop_a is not None:  # the N-th step: node a stops after its commit
            probe.stop_a()
        return i + 1

    @app.function("resume", version="bench")
    async def resume(run: peo.Run, n: int, m: int) -> int:
        probe.starts.append(time.perf_counter())
        total = 0
        for i in range(n + m):
            total += await run.step(inc, i)
        return total

    return app


def wrap(store: Any, name: str, after: Callable[[Any, Any], None]) -> None:
    """Call ``after(args, result)`` when the store's coroutine method ``name`` returns."""
    call: Callable[..., Awaitable[Any]] = getattr(store, name)

    async def wrapped(*args: Any, **kwargs: Any) -> Any:
        result = await call(*args, **kwargs)
        after(args, result)
        return result

    setattr(store, name, wrapped)


async def one(base_url: str, n: int, m: int, profiler: cProfile.Profile | None = None) -> dict[str, float]:
    work = tempfile.mkdtemp(prefix="peo-resume-")
    os.environ["PEO_HOME"] = os.path.join(work, ".peo")
    schema = None
    if base_url.startswith("postgresql"):
        schema = f"bench_{secrets.token_hex(6)}"
        url = f"{base_url}{'&' if '?' in base_url else '?'}schema={schema}"
    else:
        url = f"sqlite:///{work}/peo.db"
    try:
        return await _measure(url, n, m, profiler)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if schema is not None:
            import asyncpg

            conn = await asyncpg.connect(base_url.split("?")[0])
            try:
                await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            finally:
                await conn.close()


async def _measure(url: str, n: int, m: int, profiler: cProfile.Profile | None) -> dict[str, float]:
    probe = Probe(n)
    loop = asyncio.get_running_loop()
    async with peo.Client(url) as client:
        oid = await client.submit("resume", {"n": n, "m": m})

        # Node a: N steps, live, then a graceful stop right after entry N is committed.
        app_a = make_app(probe)
        node_a = peo.Node(url, app_a, node_id="a", idle_horizon=0)
        probe.stop_a = lambda: loop.call_soon_threadsafe(node_a.stop)  # inc runs in a thread
        await node_a.run_until_idle()
        probe.stop_a = None
        for handler in app_a.handlers.values():  # node a is gone: so are its live coroutines
            live = getattr(handler.fn, "live_runs", None)
            if live is not None:
                live.clear()
        head = await client.store.get(oid)
        if head.seq != n:
            raise SystemExit(f"node a stopped at entry {head.seq}, not {n}")
        before = [probe.steps[i] for i in range(max(n - m, 0), n)]
        probe.starts.clear()

        # Node b: takes the object over, replays N steps, goes on with M.
        store_b = open_store(url)
        await store_b.open()

        def claimed(args: Any, claims: Any) -> None:
            if probe.claimed is None and any(c.id == oid for c in claims):
                probe.claimed = time.perf_counter()

        def appended(args: Any, results: Any) -> None:
            for item, seq in zip(args[0], results, strict=True):
                if probe.committed is None and seq is not None and item.entry.seq == n + 1:
                    probe.committed = time.perf_counter()

        wrap(store_b, "claim", claimed)
        wrap(store_b, "append", appended)
        node_b = peo.Node(store_b, make_app(probe), node_id="b", idle_horizon=0)
        try:
            if profiler is not None:
                profiler.enable()
            await node_b.run_until_idle()
        finally:
            if profiler is not None:
                profiler.disable()
            await store_b.aclose()
        result = await client.wait(oid, timeout=60)
        if result != sum(range(1, n + m + 1)):
            raise SystemExit(f"wrong result {result}")
        assert probe.claimed is not None and probe.committed is not None and len(probe.starts) == 1
        after = [probe.steps[i] for i in range(n, n + m)]
    started, first_new = probe.starts[0], probe.steps[n]
    return {
        "resume": probe.committed - probe.claimed,
        "load": started - probe.claimed,
        "replay": first_new - started,
        "step+commit": probe.committed - first_new,
        "before": statistics.median(b - a for a, b in itertools.pairwise(before)),
        "after": statistics.median(b - a for a, b in itertools.pairwise(after)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, nargs="+", default=[1000, 10_000], help="recorded steps before the takeover")
    ap.add_argument("--m", type=int, default=200, help="steps after the resume (and measured before it)")
    ap.add_argument("--runs", type=int, default=3, help="runs per N (medians are shown)")
    ap.add_argument("--store", default="sqlite", help="'sqlite' (a temporary file) or a postgresql:// URL")
    ap.add_argument("--profile", action="store_true",
                    help="profile node b (cProfile, main thread) and print its top functions")
    args = ap.parse_args()
    if min(args.n) < 2 or args.m < 3 or args.runs < 1:
        sys.exit("--n must be at least 2, --m at least 3, --runs at least 1")
    if args.store != "sqlite" and not args.store.startswith("postgresql://"):
        sys.exit("--store is 'sqlite' or a postgresql:// URL")
    store = "SQLite (temp file)" if args.store == "sqlite" else "PostgreSQL"
    print(f"{store}, M = {args.m} steps after the resume; medians of {args.runs} run(s), (min-max) of the runs")
    print(f"{'N':>7} {'resume ms':>20} {'load ms':>9} {'replay ms':>10} {'replay µs/op':>13} "
          f"{'step+commit ms':>15} {'before µs/step':>20} {'after µs/step':>20}")
    for n in args.n:
        profiler = cProfile.Profile() if args.profile else None
        runs = [asyncio.run(one(args.store, n, args.m, profiler)) for _ in range(args.runs)]

        def med(key: str, scale: float, runs: list[dict[str, float]] = runs) -> float:
            return statistics.median(r[key] for r in runs) * scale

        def spread(key: str, scale: float, fmt: str, runs: list[dict[str, float]] = runs) -> str:
            values = [r[key] * scale for r in runs]
            return (f"{med(key, scale):{fmt}}" if len(values) == 1
                    else f"{med(key, scale):{fmt}} ({min(values):{fmt}}-{max(values):{fmt}})")

        print(f"{n:>7} {spread('resume', 1e3, '.0f'):>20} {med('load', 1e3):>9.0f} {med('replay', 1e3):>10.1f} "
              f"{med('replay', 1e6 / n):>13.1f} {med('step+commit', 1e3):>15.1f} "
              f"{spread('before', 1e6, '.0f'):>20} {spread('after', 1e6, '.0f'):>20}", flush=True)
        if profiler is not None:
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
