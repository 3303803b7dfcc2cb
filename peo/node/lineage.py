"""Lineage: a parent's children as its own signed chain names them, read from theirs.

Only the children a parent's verified delegate entries name count (``Fold.children``),
never whatever rows name the parent in their ``parent`` column: a row is a cache anyone
with store access can edit. Whether a child has ended, and its result, come from the
child's signed head (:func:`peo.verified.signed_head_of`, checked once per node and head,
then cached), and the child's own entry 0 must name this parent. The rows are used only to
skip work: a child whose row says it is still live is not read further (a forged "live"
only delays its parent; it cannot feed it anything).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..core.memory import Fold
from ..core.model import Status
from ..core.signed import SignedHead
from ..errors import IntegrityError, NotFoundError
from ..store import ObjectRow
from ..verified import signed_head_of

if TYPE_CHECKING:
    from .node import Node

__all__ = ["Lineage"]

log = logging.getLogger("peo.node")


class Lineage:
    """Reads the children of the objects a node holds from their signed heads."""

    def __init__(self, node: Node):
        self.node = node

    async def children_done(self, fold: Fold) -> bool:
        """Has every child ``fold``'s chain names ended (terminated, or quarantined)?"""
        rows = await self._rows(fold)
        if any(r is not None and not r.status.is_final for r in rows.values()):
            return False  # the cheap answer first: no signature is checked while one runs
        for cid, row in rows.items():
            ended, _ = await self._child(fold.object_id, cid, row)
            if not ended:
                return False
        return True

    async def results(self, fold: Fold) -> tuple[dict[str, Any], dict[str, str]]:
        """Each terminated child's id mapped to its result (None if it ended without one),
        and each that ended without success (not done: failed, cancelled, quarantined, missing)
        mapped to why (``Step.children`` and ``Step.failed_children``)."""
        out: dict[str, Any] = {}
        failed: dict[str, str] = {}
        for cid, row in (await self._rows(fold)).items():
            ended, head = await self._child(fold.object_id, cid, row)
            if not ended:
                continue
            if head is None:  # not in ``out``: it has no chain to read a result from
                if row is None:
                    failed[cid] = "missing"
                elif row.status is Status.QUARANTINED:
                    failed[cid] = f"quarantined: {row.reason or 'no reason recorded'}"
                else:  # quarantined just now, by this read
                    failed[cid] = "quarantined: its chain does not verify"
                continue
            out[cid] = head.result
            if head.reason != "done":
                failed[cid] = head.reason or "ended without a reason"
        return out, failed

    async def _rows(self, fold: Fold) -> dict[str, ObjectRow | None]:
        """The rows of the children ``fold`` names, in its order (None: no such row). One
        query for those whose row still names the parent, one each for any other."""
        listed = {r.id: r for r in await self.node.store.list(parent=fold.object_id)}
        out: dict[str, ObjectRow | None] = {}
        for cid in fold.children:
            row = listed.get(cid)
            if row is None:
                try:
                    row = await self.node.store.get(cid)
                except NotFoundError:
                    log.error("child_missing id=%s child=%s", fold.object_id, cid)
            out[cid] = row
        return out

    async def _child(self, parent: str, cid: str, row: ObjectRow | None) -> tuple[bool, SignedHead | None]:
        """(has the child ended, its signed head if it terminated). A child that is missing
        or whose chain does not verify, or does not name this parent, has ended with
        nothing to give: it is quarantined (if it exists) and the parent goes on without it."""
        if row is None or row.status is Status.QUARANTINED:
            return True, None
        if row.status is not Status.TERMINATED:
            return False, None
        try:
            head = await signed_head_of(self.node.store, row, self.node.keyring)
            if head.context.parent != parent:
                raise IntegrityError(f"its entry 0 names parent {head.context.parent!r}, not {parent}",
                                     object_id=cid, seq=0)
        except IntegrityError as exc:
            await self._quarantine(cid, exc)
            return True, None
        if head.status is not Status.TERMINATED:
            # The row says terminated; the chain does not: the row was edited. (The row's
            # cached result is never read: the result is the terminate entry's.)
            await self._quarantine(cid, IntegrityError(
                f"the row says terminated but the chain's head (seq {row.seq}) is a {head.last.action} entry",
                object_id=cid, seq=row.seq))
            return True, None
        return True, head

    async def _quarantine(self, cid: str, exc: IntegrityError) -> None:
        node = self.node
        log.error("object_quarantined id=%s reason=verification failed: %s", cid, exc)
        node.stats["quarantined"] += 1
        await node.store.quarantine(cid, f"verification failed: {exc}", now=node.clock())
