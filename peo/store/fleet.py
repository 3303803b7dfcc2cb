"""The fleet as a store sees it: which nodes serve which handlers, what is due that a node
cannot serve, and an operator taking an object over (to write a cancel no node will write).

The same SQL in both dialects (placeholders from the dialect's :class:`~peo.store.sqlreads.Reads`);
each dialect supplies ``_write_rows``, one statement in one write transaction.
"""

from __future__ import annotations

import abc
import secrets
from collections.abc import Collection, Sequence
from typing import Any, ClassVar

from .base import Claim, NodeRow
from .sql import CLAIM_COLUMNS, FINAL, LIVE, claim_of
from .sqlreads import Reads
from .stalls import claim_set

__all__ = ["NODES_MIGRATION", "FleetQueries", "serves"]

#: The table both dialects' migrations create (``{s}``: the PostgreSQL schema prefix).
NODES_MIGRATION = """
    CREATE TABLE {s}nodes (
        id TEXT PRIMARY KEY,
        handlers TEXT NOT NULL,
        seen_at BIGINT NOT NULL
    );
"""


def serves(kind: tuple[str, str], handlers: Collection[str] | None, scopes: Collection[str] | None) -> bool:
    """Does a node serving ``handlers`` in ``scopes`` (None: any) serve objects of this
    (handler, trust scope)?"""
    handler, scope = kind
    return (handlers is None or handler in handlers) and (scopes is None or scope in scopes)


class FleetQueries:
    """Mixed into each dialect's store (after :class:`~peo.store.sqlreads.SQLStore`)."""

    reads: ClassVar[Reads]

    @abc.abstractmethod
    async def _read(self, query: str, args: Sequence[Any] = ()) -> list[Any]: ...

    @abc.abstractmethod
    async def _write_rows(self, statement: str, args: Sequence[Any]) -> list[Any]:
        """Run one statement in a write transaction of its own; its returned rows."""

    async def register_node(self, node_id: str, handlers: Collection[str], *, now: int,
                            notes: str | None = None) -> None:
        p = self.reads.param
        await self._write_rows(
            f"INSERT INTO nodes (id, handlers, seen_at, notes) VALUES ({p(1)}, {p(2)}, {p(3)}, {p(4)})"
            " ON CONFLICT (id) DO UPDATE SET handlers = excluded.handlers, seen_at = excluded.seen_at,"
            " notes = excluded.notes",
            (node_id, "\n".join(sorted(handlers)), now, None if notes is None else notes[:4000]),
        )

    async def nodes(self, *, since: int = 0) -> list[NodeRow]:
        rows = await self._read(f"SELECT id, handlers, seen_at, notes FROM nodes WHERE seen_at >= {self.reads.param(1)}"
                                " ORDER BY seen_at DESC, id", (since,))
        return [NodeRow(str(i), tuple(h for h in str(text).split("\n") if h), int(seen), notes)
                for i, text, seen, notes in rows]

    async def served_handlers(self, *, since: int) -> set[str]:
        rows = await self._read(f"SELECT handlers FROM nodes WHERE seen_at >= {self.reads.param(1)}", (since,))
        return {h for (text,) in rows for h in str(text).split("\n") if h}

    async def due_counts(self, *, now: int) -> dict[tuple[str, str], int]:
        rows = await self._read(
            f"SELECT handler, scope, count(*) FROM objects WHERE due_at <= {self.reads.param(1)}"
            f" AND status IN ({LIVE}) GROUP BY handler, scope",
            (now,),
        )
        return {(str(h), str(sc)): int(n) for h, sc, n in rows}

    async def leased_kinds(self, *, now: int) -> set[tuple[str, str]]:
        rows = await self._read(
            f"SELECT DISTINCT handler, scope FROM objects WHERE lease_until > {self.reads.param(1)}", (now,))
        return {(str(h), str(sc)) for h, sc in rows}

    async def busy(self, *, now: int, handlers: Collection[str] | None = None,
                   scopes: Collection[str] | None = None) -> bool:
        if any(serves(kind, handlers, scopes) for kind in await self.due_counts(now=now)):
            return True
        return any(serves(kind, handlers, scopes) for kind in await self.leased_kinds(now=now))

    async def seize(self, object_id: str, owner: str, *, now: int, lease_ns: int, force: bool = False,
                    final: bool = False) -> Claim | None:
        p = self.reads.param
        token = secrets.randbits(62)
        # The claim's SET judges the previous claim if its lease lapsed (see Store.claim).
        rows = await self._write_rows(
            f"UPDATE objects SET lease_owner = {p(1)}, lease_token = {p(2)}, lease_until = {p(3)},"
            f" {claim_set(self.reads.push_stalled, p(5))}"
            f" WHERE id = {p(4)} AND status IN ({LIVE}{', ' + FINAL if final else ''})"
            f" AND (lease_until IS NULL OR lease_until < {p(5)} OR {p(6)}) RETURNING {CLAIM_COLUMNS}",
            (owner, token, now + lease_ns, object_id, now, force),
        )
        if not rows:
            return None
        return claim_of(object_id, token, rows[0])


