"""Alert deliveries (self-healing's last tier): one row per object, incident and sink, so
that an incident is alerted once per sink however many nodes notice it, and a delivery is
neither lost nor repeated when a node restarts.

The same SQL in both dialects (placeholders from the dialect's :class:`~peo.store.sqlreads.Reads`);
each dialect supplies ``_write_rows``, one statement in one write transaction, and
``skip_locked``, how its locking read passes over rows another transaction holds.

Delivering is a lease, like a claim: :meth:`AlertQueries.due_alerts` moves the next_at of
the rows it returns to the end of a lease (:data:`~peo.store.base.ALERT_LEASE_NS`) in the
same transaction, so that another node's ``due_alerts`` does not return them until then;
:meth:`AlertQueries.alert_attempted` then records the outcome. A node that dies delivering
leaves the row to be retried when the lease ends; a delivery that outlasts the lease may
be repeated (sinks should treat the incident id as an idempotency key).
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar

from .base import ALERT_LEASE_NS, AlertRow
from .sql import REASON_LIMIT, blob
from .sqlreads import Reads

__all__ = ["AlertQueries"]

#: An alert row's columns in the order :func:`_alert_rows` reads them.
_COLUMNS = "object_id, incident, sink, payload, created_at, attempts, next_at, delivered_at, last_error"


def _alert_rows(rows: Iterable[Sequence[Any]]) -> list[AlertRow]:
    """Rows of :data:`_COLUMNS` as alert rows, oldest first (then incident, sink, object)."""
    out = [AlertRow(object_id=str(r[0]), incident=str(r[1]), sink=str(r[2]), payload=blob(r[3]) or b"",
                    created_at=int(r[4]), attempts=int(r[5]), next_at=int(r[6]),
                    delivered_at=None if r[7] is None else int(r[7]), last_error=r[8]) for r in rows]
    out.sort(key=lambda a: (a.created_at, a.object_id, a.incident, a.sink))
    return out


class AlertQueries:
    """Mixed into each dialect's store (after :class:`~peo.store.sqlreads.SQLStore`)."""

    reads: ClassVar[Reads]
    #: Appended to the locking read of :meth:`due_alerts`: PostgreSQL's ``FOR UPDATE SKIP
    #: LOCKED`` (two nodes never get the same row); SQLite serializes writers instead.
    skip_locked: ClassVar[str] = ""

    @abc.abstractmethod
    async def _read(self, query: str, args: Sequence[Any] = ()) -> list[Any]: ...

    @abc.abstractmethod
    async def _write_rows(self, statement: str, args: Sequence[Any]) -> list[Any]:
        """Run one statement in a write transaction of its own; its returned rows."""

    async def add_alert(self, object_id: str, incident: str, sinks: Sequence[str], payload: bytes, *,
                        now: int) -> int:
        unique = list(dict.fromkeys(sinks))
        if not unique:
            return 0
        p = self.reads.param
        rows = ", ".join(f"({p(1)}, {p(2)}, {p(i + 5)}, {p(3)}, {p(4)}, 0, {p(4)})" for i in range(len(unique)))
        new = await self._write_rows(
            "INSERT INTO alerts (object_id, incident, sink, payload, created_at, attempts, next_at)"
            f" VALUES {rows} ON CONFLICT (object_id, incident, sink) DO NOTHING RETURNING sink",
            (object_id, incident, bytes(payload), now, *unique),
        )
        return len(new)

    async def due_alerts(self, *, now: int, limit: int = 50, lease_ns: int = ALERT_LEASE_NS) -> list[AlertRow]:
        if limit <= 0:
            return []
        p = self.reads.param
        # The due rows (the partial index alerts_due holds only undelivered ones), locked,
        # then leased by the same statement; the outer WHERE checks again what a row that
        # changed meanwhile is now (PostgreSQL re-reads a row it had to wait for).
        cols = ", ".join(f"alerts.{c.strip()}" for c in _COLUMNS.split(","))
        rows = await self._write_rows(
            f"WITH due AS MATERIALIZED (SELECT object_id, incident, sink FROM alerts"
            f" WHERE delivered_at IS NULL AND next_at <= {p(1)}"
            f" ORDER BY created_at, object_id, incident, sink LIMIT {p(2)}{self.skip_locked})"
            f" UPDATE alerts SET next_at = {p(3)} FROM due"
            " WHERE alerts.object_id = due.object_id AND alerts.incident = due.incident AND alerts.sink = due.sink"
            f" AND alerts.delivered_at IS NULL AND alerts.next_at <= {p(1)}"
            f" RETURNING {cols}",
            (now, int(limit), now + lease_ns),
        )
        return _alert_rows(rows)

    async def alert_attempted(self, object_id: str, incident: str, sink: str, *, now: int, delivered: bool,
                              error: str | None = None, next_at: int | None = None) -> None:
        p = self.reads.param
        key = f"object_id = {p(1)} AND incident = {p(2)} AND sink = {p(3)}"
        if delivered:
            await self._write_rows(
                f"UPDATE alerts SET attempts = attempts + 1, delivered_at = coalesce(delivered_at, {p(4)})"
                f" WHERE {key}",
                (object_id, incident, sink, now),
            )
            return
        await self._write_rows(
            f"UPDATE alerts SET attempts = attempts + 1, last_error = {p(4)}, next_at = coalesce({p(5)}, next_at)"
            f" WHERE {key}",
            (object_id, incident, sink, None if error is None else str(error)[:REASON_LIMIT], next_at),
        )

    async def alerts(self, object_id: str) -> list[AlertRow]:
        return _alert_rows(await self._read(
            f"SELECT {_COLUMNS} FROM alerts WHERE object_id = {self.reads.param(1)}", (object_id,)))
