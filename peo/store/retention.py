"""Retention: destroying the data of deleted objects (``peo purge``), the one place peo
ever destroys an object's history.

Deleting an object (``peo rm``) is a signed tombstone entry: nothing is lost and ``peo
undelete`` brings it back. Only :meth:`RetentionQueries.purge` removes rows, and only of
objects deleted before a given time. An object that another object still depends on is
kept: its children name it (``parent``), its descendants name it (``root``) and its forks
name it (``forked_from``); dropping it would leave them pointing at nothing (a fork's
origin could no longer be checked). It goes once they are gone too, in this purge or a
later one.

The plan is read first (the candidates through the ``objects_deleted`` index, their
dependents through the parent, root and fork indexes); then one transaction deletes
every row of the planned objects. Each delete carries the same guard, so that what
changed since the plan (an undelete, a new dependent) is never destroyed: only an object
still deleted before the time, every dependent of which goes with it.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import attrs

if TYPE_CHECKING:
    from .sqlreads import Reads

__all__ = ["DATA_TABLES", "Kept", "PurgeReport", "RetentionQueries"]

#: Every table keyed by an object's id that holds that object's data (``objects`` last).
#: ``facts`` is not one: a fact belongs to an agent identity; its object_id only says which
#: object wrote it.
DATA_TABLES = ("entries", "inbox", "refused_signals", "alerts")

#: How many ids one read of the plan binds (SQLite limits a statement's parameters).
_CHUNK = 500


@attrs.frozen
class Kept:
    """A deleted object a purge keeps, and why (what still depends on it)."""

    id: str
    deleted_at: int
    why: str


@attrs.frozen
class PurgeReport:
    """What a purge destroyed (``dry_run``: would destroy) and what it kept."""

    deleted_before: int
    dry_run: bool
    purged: tuple[str, ...]  # object ids, sorted
    kept: tuple[Kept, ...]  # by id


class RetentionQueries:
    """Mixed into each dialect's store (after :class:`~peo.store.sqlreads.SQLStore`)."""

    reads: ClassVar[Reads]

    @abc.abstractmethod
    async def _read(self, query: str, args: Sequence[Any] = ()) -> list[Any]: ...

    @abc.abstractmethod
    async def _write_steps(self, steps: Sequence[tuple[str, Sequence[Any]]], *,
                           lock: Sequence[str] = ()) -> list[list[Any]]:
        """Run ``steps`` (statement, arguments) in one write transaction, after locking the
        object rows ``lock`` (PostgreSQL; SQLite serializes writers); each step's rows."""

    async def purge(self, *, deleted_before: int, dry_run: bool = True) -> PurgeReport:
        before = int(deleted_before)
        p = self.reads.param
        candidates = {str(r[0]): int(r[1]) for r in await self._read(
            f"SELECT id, deleted_at FROM objects WHERE deleted_at IS NOT NULL AND deleted_at < {p(1)} ORDER BY id",
            (before,))}
        kept: dict[str, str] = {}
        if candidates:
            dependents = await self._dependents(sorted(candidates))
            _keep_depended_on(candidates, dependents, kept)
        purged = sorted(oid for oid in candidates if oid not in kept)
        if purged and not dry_run:
            purged = await self._destroy(purged, before)
        return PurgeReport(deleted_before=before, dry_run=dry_run, purged=tuple(purged),
                           kept=tuple(Kept(oid, candidates[oid], kept[oid]) for oid in sorted(kept)))

    async def _dependents(self, ids: list[str]) -> list[_Dependent]:
        """Every object that names one of ``ids``."""
        out: dict[str, _Dependent] = {}
        for start in range(0, len(ids), _CHUNK):
            chunk = ids[start:start + _CHUNK]
            args: list[Any] = []
            tests = [self.reads.one_of(column, chunk, _binder(args, self.reads.param))
                     for column in ("parent", "root", "forked_from")]
            query = f"SELECT id, parent, root, forked_from, deleted_at FROM objects WHERE {' OR '.join(tests)}"
            for r in await self._read(query, args):
                out[str(r[0])] = _Dependent(str(r[0]), r[1], r[2], r[3], r[4] is not None)
        return list(out.values())

    async def _destroy(self, ids: list[str], before: int) -> list[str]:
        """Delete every row of ``ids`` that the guard still allows, in one transaction; the
        ids whose head was deleted."""
        steps: list[tuple[str, Sequence[Any]]] = []
        for start in range(0, len(ids), _CHUNK):
            args: list[Any] = []
            arg = _binder(args, self.reads.param)
            at = arg(before)
            mine = self.reads.one_of("o.id", ids[start:start + _CHUNK], arg)
            # Still deleted before the time, and no object that names it stays (the plan
            # purges none that a kept one names: this guards against what changed since).
            goes = (f"{mine} AND o.deleted_at IS NOT NULL AND o.deleted_at < {at} AND NOT EXISTS (SELECT 1"
                    " FROM objects d WHERE (d.parent = o.id OR d.root = o.id OR d.forked_from = o.id)"
                    f" AND (d.deleted_at IS NULL OR d.deleted_at >= {at}))")
            steps += [(f"DELETE FROM {table} WHERE object_id IN (SELECT o.id FROM objects o WHERE {goes})", args)
                      for table in DATA_TABLES]
            steps.append((f"DELETE FROM objects AS o WHERE {goes} RETURNING id", args))
        results = await self._write_steps(steps, lock=ids)
        return sorted(str(r[0]) for rows in results[len(DATA_TABLES)::len(DATA_TABLES) + 1] for r in rows)


def _binder(args: list[Any], param: Callable[[int], str]) -> Callable[[Any], str]:
    """``arg(value)``: append ``value`` to ``args`` and return its placeholder."""

    def arg(value: Any) -> str:
        args.append(value)
        return param(len(args))

    return arg


@attrs.frozen
class _Dependent:
    """An object that names a candidate: its id, what it names, whether it is deleted."""

    id: str
    parent: str | None
    root: str | None
    forked_from: str | None
    deleted: bool


def _keep_depended_on(candidates: dict[str, int], dependents: list[_Dependent], kept: dict[str, str]) -> None:
    """Fill ``kept`` with each candidate some object that stays names, and why: until
    nothing changes, since a candidate kept keeps what it names in turn."""
    changed = True
    while changed:
        changed = False
        for d in dependents:
            if d.id in candidates and d.id not in kept:
                continue  # it goes too
            stays = "deleted later" if d.deleted and d.id not in candidates else "kept" if d.deleted else "live"
            for target, relation in ((d.parent, "parent"), (d.forked_from, "fork origin"), (d.root, "root")):
                if target is not None and target in candidates and target not in kept:
                    kept[target] = f"the {relation} of {d.id} ({stays})"
                    changed = True
