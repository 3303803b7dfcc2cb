"""What agents wait for from people, and the answers: approvals, questions, unknown outcomes.

An agent waiting for a person is dormant on a signal (:data:`~.loop.APPROVE_SIGNAL`,
:data:`~.loop.HUMAN_SIGNAL` or :data:`~.loop.RESOLVE_SIGNAL`), and its wait's record in
the working state carries a note saying what it waits for: the tool, the exact arguments,
the call's digest and its reference. :func:`pending` reads them; :func:`answer_approval`
sends the signed ``approve`` signal naming that digest and reference, which the agent
checks before it carries the call out (a mismatched, stale or replayed one is refused).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import attrs

from ..core.model import Status
from ..errors import UsageError
from ..functions.records import is_record_key
from .loop import APPROVE_SIGNAL, HUMAN_SIGNAL, RESOLVE_SIGNAL

if TYPE_CHECKING:
    from ..client import Client

__all__ = ["Pending", "answer_approval", "pending", "pending_of"]

KINDS = {APPROVE_SIGNAL: "approval", HUMAN_SIGNAL: "question", RESOLVE_SIGNAL: "outcome_unknown"}


@attrs.frozen
class Pending:
    """One thing an agent waits for a person to answer."""

    object_id: str
    handler: str
    kind: str  # approval, question, outcome_unknown
    signal: str  # the signal that answers it
    since: int  # ns: the wait's entry
    tool: str | None = None
    arguments: dict[str, Any] | None = None
    digest: str | None = None
    call: str | None = None
    question: str | None = None

    def as_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


def pending_of(object_id: str, handler: str, signal: str, state: dict[str, Any], since: int) -> Pending | None:
    """The note of the last wait for ``signal`` recorded in ``state`` (None: no agent note)."""
    best: tuple[int, dict[str, Any]] | None = None
    for key, record in state.items():
        if not is_record_key(key) or not isinstance(record, dict):
            continue
        if record.get("op") != "signal" or record.get("name") != signal or "note" not in record:
            continue
        position = int(key.rsplit(".", 1)[1])
        if best is None or position > best[0]:
            best = (position, record)
    if best is None:
        return None
    note = best[1]["note"]
    kind = KINDS[signal]
    detail = note.get("approval") or note.get("unknown") or {}
    return Pending(object_id, handler, kind, signal, since, tool=detail.get("tool"),
                   arguments=detail.get("arguments"), digest=detail.get("digest"), call=detail.get("call"),
                   question=note.get("question"))


async def pending(client: Client, *, object_id: str | None = None) -> list[Pending]:
    """Every dormant agent waiting for a person (or only ``object_id``), oldest first."""
    if object_id is not None:
        rows = [r for r in await client.list(status="dormant") if r.id == object_id]
    else:
        rows = await client.list(status="dormant")
    out = []
    for row in rows:
        if row.waiting_for not in KINDS:
            continue
        info = await client.get(row.id)
        if info.status is not Status.DORMANT:
            continue
        since = info.memory[-1].timestamp if info.memory else 0
        found = pending_of(row.id, info.intent.handler, str(row.waiting_for), dict(info.state), since)
        if found is not None:
            out.append(found)
    return out


async def answer_approval(client: Client, object_id: str, digest: str, *, approve: bool,
                          reason: str | None = None) -> Pending:
    """Approve (or deny) the call ``object_id`` waits for, named by its ``digest``: a signed
    ``approve`` signal carrying the digest and the call's reference. Refuses (UsageError)
    when the object waits for no approval, or for another call's."""
    waiting = [p for p in await pending(client, object_id=object_id) if p.kind == "approval"]
    if not waiting:
        raise UsageError(f"object {object_id} waits for no approval (peo pending lists what does)")
    current = waiting[0]
    if current.digest != digest:
        raise UsageError(f"object {object_id} waits for the approval of {current.tool} with digest {current.digest}, "
                         f"not {digest}: approve what you read in peo pending")
    payload = {"digest": digest, "call": current.call, "approve": approve}
    if reason:
        payload["reason"] = reason
    await client.signal(object_id, APPROVE_SIGNAL, payload)
    return current
