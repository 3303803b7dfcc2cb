"""Driving a node one cycle at a time, through its public API only (no hypothesis needed)."""

from __future__ import annotations

from collections.abc import Sequence

from ..node import Node
from ..store import Claim

__all__ = ["claim_one", "run_one_cycle"]


async def run_one_cycle(node: Node, claim: Claim) -> None:
    """Let ``node`` run exactly one cycle of an object it has just claimed, then release it.

    This is the node's own per-object code (``Node.run`` runs it for every claim), stopped
    after at most one appended entry: :meth:`peo.node.Node.step_once`.
    """
    await node.step_once(claim)


async def claim_one(node: Node, object_id: str, others: Sequence[str]) -> Claim | None:
    """Claim ``object_id`` for ``node`` (if it is due and unleased), as its claim loop would.

    ``others`` are the ids of every other object in the store: they are excluded, so that
    only ``object_id`` can be claimed.
    """
    handlers = sorted(h for h in node.app.handlers if node.policy.accepts_handler(h))
    claims = await node.store.claim(
        node.node_id, now=node.clock(), lease_ns=node.lease_ns, limit=1,
        handlers=handlers, scopes=node.policy.scope_filter(), exclude=[o for o in others if o != object_id],
    )
    return claims[0] if claims else None
