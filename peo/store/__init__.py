"""Stores: where objects live. ``open_store(url)`` picks the backend from the URL and
returns the store, not yet opened (``await store.open()``, or ``async with``).

- ``sqlite:///path.db`` (the embedded default; ``?durability=normal`` to trade the last
  commits on power loss for speed),
- ``postgresql://user@host:port/db`` (many nodes on many machines; ``?schema=name``
  keeps peo's tables in their own schema). It needs the ``postgres`` extra (asyncpg:
  ``pip install 'peo[postgres]'``), imported only when such a URL is opened.

The contract is :class:`Store` (peo/store/base.py); the dialects live in
:mod:`peo.store.sqlite` and :mod:`peo.store.postgres` and share :mod:`peo.store.sql`.
"""

from __future__ import annotations

from ..errors import UsageError
from .base import (
    ALERT_LEASE_NS,
    REFUSALS_KEPT,
    AlertRow,
    AppendItem,
    Claim,
    NewObject,
    NodeRow,
    ObjectRow,
    RefusedSignal,
    SignalRefusal,
    Store,
)

__all__ = ["ALERT_LEASE_NS", "REFUSALS_KEPT", "AlertRow", "AppendItem", "Claim", "NewObject", "NodeRow",
           "ObjectRow", "RefusedSignal", "SignalRefusal", "Store", "open_store"]

_POSTGRES_EXTRA = "pip install 'peo[postgres]'"


def open_store(url: str) -> Store:
    """The store for ``url``, not yet opened: ``await store.open()`` (or ``async with``)
    connects and brings its schema up to date."""
    if not isinstance(url, str) or not url:
        raise UsageError("a store URL is required, e.g. sqlite:///peo.db")
    if url.startswith("sqlite:"):
        from .sqlite import SQLiteStore

        return SQLiteStore(url)
    if url.startswith(("postgresql:", "postgres:")):
        try:
            from .postgres import PostgresStore
        except ImportError as exc:
            if exc.name is None or exc.name.partition(".")[0] != "asyncpg":
                raise
            raise UsageError(
                f"a postgresql:// store needs the PostgreSQL driver (asyncpg): {_POSTGRES_EXTRA}"
            ) from None
        return PostgresStore(url)
    raise UsageError(f"unknown store URL {url!r}: use sqlite:///path.db or postgresql://...")
