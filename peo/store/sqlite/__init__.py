"""The SQLite store: the embedded default (``sqlite:///path.db``).

WAL mode; ``synchronous=FULL`` by default so a commit survives power loss, or
``?durability=normal`` (survives a process crash, may lose the last commits on power
loss). Writes use ``BEGIN IMMEDIATE`` so a compare-and-swap never has to be retried
half-way. Several processes may share one file: SQLite serializes their writers.

- :mod:`.schema`: the numbered migrations and opening a file;
- :mod:`.connection`: the URL, the writer and reader connections, transactions, errors;
- :mod:`.statements`: the SQL, rendered once (head writes and wake rules from
  :mod:`peo.store.sql`);
- :mod:`.store`: the contract methods.
"""

from __future__ import annotations

from .connection import parse_sqlite_url
from .store import SQLiteStore

__all__ = ["SQLiteStore", "parse_sqlite_url"]
