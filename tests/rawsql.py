"""Edit a store behind peo's back, on either backend: what an attacker with write access
to the database (and no trusted key) can do. ``?`` placeholders in both dialects."""

from __future__ import annotations

import re
import sqlite3
from typing import Any


async def raw(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Run one statement on the store at ``url``; its rows (if it returns any)."""
    if url.startswith("sqlite:///"):
        con = sqlite3.connect(url.removeprefix("sqlite:///"))
        try:
            with con:
                return [tuple(r) for r in con.execute(sql, args).fetchall()]
        finally:
            con.close()
    import asyncpg

    from peo.store.postgres.url import parse_postgres_url

    dsn, schema, _, _ = parse_postgres_url(url)
    n = iter(range(1, 1000))
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"SET search_path TO {schema}")
        return [tuple(r) for r in await conn.fetch(re.sub(r"\?", lambda _: f"${next(n)}", sql), *args)]
    finally:
        await conn.close()
