"""Stores: where objects live. ``open_store(url)`` picks the backend from the URL.

- ``sqlite:///path.db`` (the embedded default; ``?durability=normal`` to trade the last
  commits on power loss for speed),
- ``postgresql://user@host:port/db`` (many nodes on many machines; ``?schema=name``
  keeps peo's tables in their own schema). The PostgreSQL backend is imported only when
  such a URL is opened.
"""

from __future__ import annotations

from ..errors import UsageError
from ._base import AppendItem, Claim, NewObject, ObjectRow, Store

__all__ = ["AppendItem", "Claim", "NewObject", "ObjectRow", "Store", "make_store"]

DEFAULT_URL = "sqlite:///peo.db"


def make_store(url: str) -> Store:
    """A store for ``url`` (not yet opened: ``await store.open()`` or ``async with``)."""
    if not isinstance(url, str) or not url:
        raise UsageError("a store URL is required, e.g. sqlite:///peo.db")
    if url.startswith("sqlite:"):
        from ._sqlite import SQLiteStore

        return SQLiteStore(url)
    if url.startswith(("postgresql:", "postgres:")):
        try:
            from ._postgres import PostgresStore
        except ImportError as exc:  # pragma: no cover - asyncpg is a dependency
            raise UsageError(f"PostgreSQL support needs asyncpg: pip install 'peo[postgres]' ({exc})") from None
        return PostgresStore(url)
    raise UsageError(f"unknown store URL {url!r}: use sqlite:///path.db or postgresql://...")
