"""The reads both SQL dialects make alike: :class:`Reads` (the queries, rendered once with
a dialect's placeholders) and :class:`SQLStore` (the contract's plain reads over them)."""

from __future__ import annotations

import abc
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, ClassVar

from ..core.model import Signal, Status
from ..errors import NotFoundError
from .base import ObjectRow, RefusedSignal, Store
from .sql import (
    COLUMNS,
    COUNT_DESCENDANTS,
    FORKS,
    blob,
    list_query,
    memories,
    object_row,
    refused_signals,
    signals,
)

__all__ = ["Reads", "SQLStore"]


# -- the reads both dialects make alike ------------------------------------------------------


class Reads:
    """The read queries of :class:`SQLStore`, rendered once with one dialect's placeholders
    (``param(n)``: the n-th argument, from 1)."""

    def __init__(self, param: Callable[[int], str], *, next_due: str,
                 entries_of: Callable[[list[str]], tuple[str, Sequence[Any]]],
                 contains: Callable[[str, str], str],
                 one_of: Callable[[str, list[str], Callable[[Any], str]], str],
                 push_stalled: Callable[[str, str], str],
                 inbox_by_name: str = "inbox"):
        self.param = param
        # ``push_stalled(list, node)``: the SQL of :func:`peo.store.stalls.push_stalled` (for
        # the writes shared by both dialects that count claims without progress).
        self.push_stalled = push_stalled
        # The inbox as a read by name names it: SQLite is told to use the (object_id, name,
        # id) index, else it may walk every signal of the object in id order to find the
        # few with those names.
        self.inbox_by_name = inbox_by_name
        # ``one_of(column, values, arg)``: the SQL test that ``column`` is one of ``values``
        # (not empty), binding them through ``arg(value) -> placeholder``.
        self.one_of = one_of
        # ``contains(text, part)``: the SQL test that ``text`` holds ``part`` as is (no
        # wildcards, case-sensitive: LIKE has wildcards and ignores case in SQLite).
        self.contains = contains
        # The (object_id, body, sig) rows of several objects in (object_id, seq) order:
        # the query and its arguments for a list of ids (each dialect binds a list its way).
        self.entries_of = entries_of
        self.get = f"SELECT {COLUMNS} FROM objects WHERE id = {param(1)}"
        self.entries = f"SELECT body, sig FROM entries WHERE object_id = {param(1)} AND seq > {param(2)} ORDER BY seq"
        self.entry_hash = f"SELECT hash FROM entries WHERE object_id = {param(1)} AND seq = {param(2)}"
        self.head_entries = (f"SELECT seq, body, sig FROM entries WHERE object_id = {param(1)}"
                             f" AND (seq = 0 OR seq = {param(2)})")
        self.refused = (f"SELECT id, name, reason, sender, refused_at, created_at FROM refused_signals"
                        f" WHERE object_id = {param(1)} ORDER BY refused_at DESC, id DESC LIMIT {param(2)}")
        self.count_descendants = COUNT_DESCENDANTS.format(param(1))
        self.forks = FORKS.format(param(1))
        self.next_due = next_due  # the earliest due time of a live object (each dialect's own plan)

    def inbox(self, object_id: str, limit: int | None, names: Collection[str] | None, *,
              columns: str = "id, name, payload, seal", upto: int | None = None) -> tuple[str, list[Any]]:
        """The query of :meth:`Store.inbox` and its arguments (``columns``: what to select;
        ``upto``: only ids up to it)."""
        args: list[Any] = [object_id]

        def arg(value: Any) -> str:
            args.append(value)
            return self.param(len(args))

        table = "inbox" if names is None else self.inbox_by_name
        query = f"SELECT {columns} FROM {table} WHERE object_id = {self.param(1)}"
        if names is not None:
            query += " AND " + self.one_of("name", sorted(set(names)), arg)
        if upto is not None:
            query += f" AND id <= {arg(upto)}"
        query += " ORDER BY id"
        if limit is not None:
            query += f" LIMIT {arg(max(int(limit), 0))}"
        return query, args


class SQLStore(Store):
    """The contract's plain reads, the same in both dialects: a dialect gives its rendered
    :class:`Reads` and how to run a read (``_read``)."""

    reads: ClassVar[Reads]

    @abc.abstractmethod
    async def _read(self, query: str, args: Sequence[Any] = ()) -> list[Any]:
        """The rows of one read-only query."""

    async def get(self, object_id: str) -> ObjectRow:
        rows = await self._read(self.reads.get, (object_id,))
        if not rows:
            raise NotFoundError(f"no object {object_id}")
        return object_row(rows[0])

    async def entries(self, object_id: str, after: int = -1) -> list[tuple[bytes, bytes]]:
        rows = await self._read(self.reads.entries, (object_id, after))
        return [(blob(body) or b"", blob(sig) or b"") for body, sig in rows]

    async def entries_of(self, object_ids: Sequence[str]) -> dict[str, list[tuple[bytes, bytes]]]:
        ids = list(dict.fromkeys(object_ids))
        if not ids:
            return {}
        return memories(ids, await self._read(*self.reads.entries_of(ids)))

    async def head_entries(self, object_id: str, seq: int) -> dict[int, tuple[bytes, bytes]]:
        rows = await self._read(self.reads.head_entries, (object_id, seq))
        return {s: (blob(body) or b"", blob(sig) or b"") for s, body, sig in rows}

    async def entry_hash(self, object_id: str, seq: int) -> bytes | None:
        rows = await self._read(self.reads.entry_hash, (object_id, seq))
        return blob(rows[0][0]) if rows else None

    async def inbox(self, object_id: str, *, limit: int | None = None,
                    names: Collection[str] | None = None, max_bytes: int | None = None) -> list[Signal]:
        if (names is not None and not names) or (limit is not None and limit <= 0):
            return []
        if max_bytes is None:
            return signals(await self._read(*self.reads.inbox(object_id, limit, names)))
        # Sizes first (the payloads are not read: both dialects take a blob's length from
        # its header), then the payloads of only those that fit.
        sizes = await self._read(*self.reads.inbox(object_id, limit, names, columns="id, length(payload)"))
        count, total = 0, 0
        for _, size in sizes:
            if count and total + int(size) > max_bytes:
                break
            count, total = count + 1, total + int(size)
        if not count:
            return []
        upto = int(sizes[count - 1][0])
        return signals(await self._read(*self.reads.inbox(object_id, count, names, upto=upto)))

    async def refused(self, object_id: str, *, limit: int = 20) -> list[RefusedSignal]:
        if limit <= 0:
            return []
        return refused_signals(await self._read(self.reads.refused, (object_id, int(limit))))

    async def count_descendants(self, root: str) -> int:
        rows = await self._read(self.reads.count_descendants, (root,))
        return int(rows[0][0]) if rows else 0

    async def forks(self, object_id: str) -> list[str]:
        return [str(r[0]) for r in await self._read(self.reads.forks, (object_id,))]

    async def next_due(self) -> int | None:
        rows = await self._read(self.reads.next_due)
        return rows[0][0] if rows else None

    # Last: below this line, ``list`` in the class body is this method.
    async def list(self, *, status: Status | str | None = None, limit: int | None = None,
                   parent: str | None = None, now: int | None = None,
                   handler: str | None = None, after: str | None = None,
                   labels: Mapping[str, str] | None = None, deleted: bool = False) -> list[ObjectRow]:
        query, args = list_query(self.reads.param, status=status, limit=limit, parent=parent, now=now,
                                 handler=handler, after=after, labels=labels, contains=self.reads.contains,
                                 deleted=deleted)
        return [object_row(r) for r in await self._read(query, args)]
