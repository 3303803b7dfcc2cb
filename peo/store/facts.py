"""Long-term facts (an agent's tiered memory, docs/agents.md): consolidated facts per agent
*identity*, shared by every object of that identity, in the ``facts`` table.

A fact is a key and a text value. Rows are only ever inserted: each change of a key is a
new *version* (1, 2, ...) and forgetting a key is a version too, a *tombstone* (``deleted``),
so the history of what an agent believed, and which object (and entry seq) wrote it, is
kept. Reads see the latest version of each key, and only if it is not a tombstone.

Recall is the store's own full-text search, not an index of peo's: SQLite's FTS5 (table
``facts_fts``, external content kept in sync by triggers, porter stemming) and
PostgreSQL's text search (a generated ``tsvector`` column with a GIN index, the
``english`` configuration). A query is reduced to its plain words first, joined by OR, so
that no query (quotes, ``*``, ``:``, ``NEAR``, ``&``...) is ever a syntax error.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

from ..errors import StoreError

if TYPE_CHECKING:
    from .sqlreads import Reads

__all__ = ["Fact", "FactQueries", "recall_terms"]

#: A fact row's columns in the order :func:`_fact_rows` reads them.
_COLUMNS = "f.identity, f.key, f.version, f.value, f.deleted, f.object_id, f.seq, f.created_at"
#: The most words of a recall query that are searched for (the rest are ignored).
MAX_TERMS = 32
#: How many times a write is tried again after losing a race for the next version.
_RACES = 8


@attrs.frozen
class Fact:
    """One version of one fact of one identity: a tombstone if ``deleted`` (its value is
    empty); ``object_id`` and ``seq`` name the object and entry that wrote it, if known."""

    identity: str
    key: str
    version: int
    value: str
    deleted: bool
    object_id: str | None
    seq: int | None
    created_at: int


def _fact_rows(rows: Sequence[Sequence[Any]]) -> list[Fact]:
    return [Fact(identity=str(r[0]), key=str(r[1]), version=int(r[2]), value=str(r[3]), deleted=bool(r[4]),
                 object_id=None if r[5] is None else str(r[5]), seq=None if r[6] is None else int(r[6]),
                 created_at=int(r[7])) for r in rows]


def recall_terms(query: str) -> list[str]:
    """The plain words of ``query`` (letters and digits, lower case, at most
    :data:`MAX_TERMS`): what recall searches for, whatever operators the query held."""
    return list(dict.fromkeys(re.findall(r"[^\W_]+", str(query).lower())))[:MAX_TERMS]


class FactQueries:
    """Mixed into each dialect's store (after :class:`~peo.store.sqlreads.SQLStore`)."""

    reads: ClassVar[Reads]
    #: Whose full-text search :meth:`recall` uses: "sqlite" (FTS5) or "postgres".
    text_search: ClassVar[str] = "sqlite"

    @abc.abstractmethod
    async def _read(self, query: str, args: Sequence[Any] = ()) -> list[Any]: ...

    @abc.abstractmethod
    async def _write_rows(self, statement: str, args: Sequence[Any]) -> list[Any]:
        """Run one statement in a write transaction of its own; its returned rows."""

    def _latest(self, alias: str) -> str:
        """The SQL test that row ``alias`` is the latest version of its key."""
        return (f"{alias}.version = (SELECT max(g.version) FROM facts g"
                f" WHERE g.identity = {alias}.identity AND g.key = {alias}.key)")

    async def _version(self, identity: str, key: str, value: str, deleted: bool, *, object_id: str | None,
                       seq: int | None, now: int) -> int:
        """Insert the next version of (identity, key) unless the latest already says the
        same (then return its version): one statement, so a race with another writer for the
        same version number is lost cleanly (nothing written) and tried again."""
        p = self.reads.param
        statement = (
            "INSERT INTO facts (identity, key, version, value, deleted, object_id, seq, created_at)"
            f" SELECT CAST({p(1)} AS TEXT), CAST({p(2)} AS TEXT), coalesce(max(f.version), 0) + 1,"
            f" CAST({p(3)} AS TEXT), CAST({p(4)} AS BOOLEAN), CAST({p(5)} AS TEXT), CAST({p(6)} AS BIGINT),"
            f" CAST({p(7)} AS BIGINT)"
            f" FROM facts f WHERE f.identity = {p(1)} AND f.key = {p(2)}"
            f" HAVING NOT coalesce((SELECT l.value = {p(3)} AND l.deleted = {p(4)} FROM facts l"
            f" WHERE l.identity = {p(1)} AND l.key = {p(2)} ORDER BY l.version DESC LIMIT 1), false)"
            " ON CONFLICT (identity, key, version) DO NOTHING RETURNING version"
        )
        for _ in range(_RACES):
            rows = await self._write_rows(statement, (identity, key, value, deleted, object_id, seq, now))
            if rows:
                return int(rows[0][0])
            latest = await self._latest_version(identity, key)
            if latest is not None and latest.value == value and latest.deleted == deleted:
                return latest.version
        raise StoreError(f"fact {key!r} of {identity!r} is being written by others: gave up after {_RACES} tries")

    async def _latest_version(self, identity: str, key: str) -> Fact | None:
        p = self.reads.param
        rows = _fact_rows(await self._read(
            f"SELECT {_COLUMNS} FROM facts f WHERE f.identity = {p(1)} AND f.key = {p(2)}"
            " ORDER BY f.version DESC LIMIT 1", (identity, key)))
        return rows[0] if rows else None

    async def put_fact(self, identity: str, key: str, value: str, *, object_id: str | None = None,
                       seq: int | None = None, now: int) -> int:
        return await self._version(identity, key, str(value), False, object_id=object_id, seq=seq, now=now)

    async def forget_fact(self, identity: str, key: str, *, object_id: str | None = None, seq: int | None = None,
                          now: int) -> int | None:
        latest = await self._latest_version(identity, key)
        if latest is None or latest.deleted:
            return None
        return await self._version(identity, key, "", True, object_id=object_id, seq=seq, now=now)

    async def facts(self, identity: str) -> list[Fact]:
        return _fact_rows(await self._read(
            f"SELECT {_COLUMNS} FROM facts f WHERE f.identity = {self.reads.param(1)} AND NOT f.deleted"
            f" AND {self._latest('f')} ORDER BY f.key", (identity,)))

    async def fact_history(self, identity: str, key: str) -> list[Fact]:
        p = self.reads.param
        return _fact_rows(await self._read(
            f"SELECT {_COLUMNS} FROM facts f WHERE f.identity = {p(1)} AND f.key = {p(2)} ORDER BY f.version",
            (identity, key)))

    async def recall(self, identity: str, query: str, *, limit: int = 5) -> list[Fact]:
        terms = recall_terms(query)
        if not terms or limit <= 0:
            return []
        p = self.reads.param
        live = f"f.identity = {p(1)} AND NOT f.deleted AND {self._latest('f')}"
        if self.text_search == "postgres":
            query_sql = (f"SELECT {_COLUMNS} FROM facts f, to_tsquery('english', {p(2)}) q"
                         f" WHERE f.tsv @@ q AND {live} ORDER BY ts_rank(f.tsv, q) DESC, f.key LIMIT {p(3)}")
            match = " | ".join(terms)
        else:
            query_sql = (f"SELECT {_COLUMNS} FROM facts_fts JOIN facts f ON f.id = facts_fts.rowid"
                         f" WHERE facts_fts MATCH {p(2)} AND {live} ORDER BY bm25(facts_fts), f.key LIMIT {p(3)}")
            match = " OR ".join(f'"{t}"' for t in terms)
        return _fact_rows(await self._read(query_sql, (identity, match, int(limit))))
