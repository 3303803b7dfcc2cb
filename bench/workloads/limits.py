"""Hardware and library limits that bound any per-step path on this machine.

    python limits.py sqlite --sync FULL --rows 1     raw SQLite commits/s (WAL)
    python limits.py ed25519                          pynacl sign and verify per second
    python limits.py msgpack                          msgpack round trips per second
    python limits.py postgres --url URL               asyncpg commits/s, one row each
Prints one JSON object as the last line of stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import time
from typing import Any

from common import PAYLOAD, emit

ROW = json.dumps(PAYLOAD).encode()


def timed(fn: Any, seconds: float) -> tuple[int, float]:
    """Call fn() until `seconds` have passed; returns (calls, elapsed)."""
    n = 0
    t0 = time.perf_counter()
    deadline = t0 + seconds
    while True:
        fn()
        n += 1
        if n % 16 == 0 and time.perf_counter() >= deadline:
            return n, time.perf_counter() - t0


def sqlite_limit(args: argparse.Namespace) -> dict[str, Any]:
    conn = sqlite3.connect("limits.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={args.sync}")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
    rows = [(ROW,)] * args.rows

    def commit() -> None:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t (body) VALUES (?)", rows)
        conn.execute("COMMIT")

    n, elapsed = timed(commit, args.seconds)
    conn.close()
    return {
        "sync": args.sync,
        "rows_per_txn": args.rows,
        "commits_per_s": n / elapsed,
        "rows_per_s": n * args.rows / elapsed,
    }


def ed25519_limit(args: argparse.Namespace) -> dict[str, Any]:
    from nacl.signing import SigningKey

    key = SigningKey.generate()
    message = ROW + b"\x00" * 64  # about one memory entry
    signed = key.sign(message)
    verify_key = key.verify_key
    signs, t_sign = timed(lambda: key.sign(message), args.seconds)
    verifies, t_verify = timed(lambda: verify_key.verify(signed), args.seconds)
    return {"sign_per_s": signs / t_sign, "verify_per_s": verifies / t_verify}


def msgpack_limit(args: argparse.Namespace) -> dict[str, Any]:
    import msgpack

    n, elapsed = timed(lambda: msgpack.unpackb(msgpack.packb(PAYLOAD)), args.seconds)
    return {"round_trips_per_s": n / elapsed}


def postgres_limit(args: argparse.Namespace) -> dict[str, Any]:
    import asyncpg

    async def main() -> dict[str, Any]:
        conn = await asyncpg.connect(args.url)
        table = f"bench_limits_{int(time.time() * 1000)}"
        await conn.execute(f"CREATE TABLE {table} (id bigserial PRIMARY KEY, body bytea)")
        try:
            n = 0
            t0 = time.perf_counter()
            while time.perf_counter() - t0 < args.seconds:
                # One row per transaction, synchronous_commit at the server's default (on).
                await conn.execute(f"INSERT INTO {table} (body) VALUES ($1)", ROW)
                n += 1
            elapsed = time.perf_counter() - t0
        finally:
            await conn.execute(f"DROP TABLE {table}")
            await conn.close()
        return {"commits_per_s": n / elapsed}

    return asyncio.run(main())


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("limit", choices=["sqlite", "ed25519", "msgpack", "postgres"])
    p.add_argument("--sync", choices=["FULL", "NORMAL"], default="FULL")
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--url", default="postgresql://postgres@127.0.0.1:5432/test")
    args = p.parse_args()
    fn = {"sqlite": sqlite_limit, "ed25519": ed25519_limit, "msgpack": msgpack_limit, "postgres": postgres_limit}[
        args.limit
    ]
    emit(fn(args))


if __name__ == "__main__":
    main()
