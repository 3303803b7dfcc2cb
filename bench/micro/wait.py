"""What a verified read costs: ``Client.wait`` on finished objects, SQLite or PostgreSQL.

    python bench/micro/wait.py [sqlite|postgres] [--n 1000] [--runs 5]
    PYTHONPATH=../base python bench/micro/wait.py sqlite      # the same against another tree

"repeat" is one object waited on ``--n`` times (after its signed head was checked once,
a read is one row read and a comparison); "first" is one wait on each of ``--n`` objects
(each checks entry 0 and the head entry: a query and two signature checks). Medians of
``--runs`` runs, in microseconds per wait.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import statistics
import tempfile
import time

import peo

APP = peo.App()


@APP.handler("done")
def done(step: peo.Step) -> peo.Proposal:
    return peo.Done({"paid": 10})


async def one_run(url: str, n: int) -> tuple[float, float]:
    async with peo.Client(url) as client:
        oid = await client.submit("done")
        ids = await client.submit_many("done", [{}] * n)
    await peo.Node(url, APP, idle_horizon=0).run_until_idle()
    async with peo.Client(url) as client:
        await client.wait(oid)
        t = time.perf_counter()
        for _ in range(n):
            await client.wait(oid)
        repeat = (time.perf_counter() - t) / n * 1e6
        t = time.perf_counter()
        for i in ids:
            await client.wait(i)
        first = (time.perf_counter() - t) / n * 1e6
    return repeat, first


async def drop_schema(server: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(server)
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    ap.add_argument("store", choices=["sqlite", "postgres"], nargs="?", default="sqlite")
    ap.add_argument("--n", type=int, default=1000, help="waits per run")
    ap.add_argument("--runs", type=int, default=5, help="runs (the median is shown)")
    ap.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/test", help="server URL")
    args = ap.parse_args()
    work = tempfile.mkdtemp()
    os.chdir(work)
    os.environ["PEO_HOME"] = os.path.join(work, ".peo")
    repeats, firsts = [], []
    for i in range(args.runs):
        if args.store == "sqlite":
            url = f"sqlite:///{work}/peo-{i}.db"
        else:
            url = f"{args.postgres}?schema=bench_wait_{secrets.token_hex(4)}"
        repeat, first = asyncio.run(one_run(url, args.n))
        if args.store == "postgres":
            asyncio.run(drop_schema(args.postgres, url.rsplit("=", 1)[1]))
        repeats.append(repeat)
        firsts.append(first)
    tree = peo.__file__.rsplit("/peo/", 1)[0]
    print(f"{tree} {args.store}: repeat {statistics.median(repeats):.1f} µs/wait, "
          f"first {statistics.median(firsts):.1f} µs/wait (medians of {args.runs} x {args.n})")


if __name__ == "__main__":
    main()
