"""The PostgreSQL store: many nodes on many machines (``postgresql://user@host:port/db``).

``?schema=NAME`` keeps peo's tables in their own schema (default ``peo``; created if
missing). Semantics mirror the SQLite store exactly; how they are made safe under
concurrency is told in :mod:`.store`.

The driver is asyncpg (the ``postgres`` extra: ``pip install 'peo[postgres]'``): it is
asyncio-native, has LISTEN/NOTIFY built in, needs no libpq, and its binary protocol and
statement cache keep the many small statements cheap.

- :mod:`.url`: parsing a store URL (needs no driver);
- :mod:`.schema`: the numbered migrations, run once per schema;
- :mod:`.connection`: the pool, transactions, errors;
- :mod:`.notify`: NOTIFY when work becomes due, LISTEN while idle;
- :mod:`.statements`: the SQL, rendered once (head writes and wake rules from
  :mod:`peo.store.sql`);
- :mod:`.store`: the contract methods.
"""

from __future__ import annotations

from .store import PostgresStore
from .url import parse_postgres_url

__all__ = ["PostgresStore", "parse_postgres_url"]
