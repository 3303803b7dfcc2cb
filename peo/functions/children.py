"""Children of a durable function: ``run.child(handler, **goal)`` and ``run.gather(...)``.

``run.gather`` is one operation: it ends the cycle with ``Delegate(children, wait=True)``
(a delegate entry naming the new children's ids, in order); the object sleeps until every
child has ended, and re-runs then return each child's result, in the order given, from the
finished children the node hands the step (``step.children``, ``step.failed_children``).
With ``attempts=``, the failed ones are started again in a later delegate entry, which adds
a round (its seq and the positions it re-started) to the gather's record.
"""

from __future__ import annotations

import inspect
from collections.abc import Generator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from ..core.model import Action, Intent, Step
from ..errors import ChildFailed, InternalError

if TYPE_CHECKING:
    from .run import Run

__all__ = ["ChildCall", "gather_outcome", "gather_problem"]


@attrs.frozen
class ChildCall:
    """A child to start, as ``run.child(handler, **goal)`` returns it. Give it to
    ``run.gather`` with others, or await it alone (a gather of one, returning its result)."""

    run: Run = attrs.field(repr=False, eq=False)
    handler: str
    goal: dict[str, Any]

    def intent(self) -> Intent:
        return Intent(self.handler, self.goal)

    def __await__(self) -> Generator[Any, None, Any]:
        results = yield from self.run.gather(self).__await__()
        return results[0]


def gather_problem(run: Run, children: Sequence[object], attempts: object) -> str | None:
    """What is wrong with a gather's arguments (None: nothing)."""
    bad = [c for c in children if not isinstance(c, ChildCall) or c.run is not run]
    if bad:
        for c in bad:
            if inspect.iscoroutine(c):
                c.close()  # it will never be awaited: spare the user Python's warning about it
        what = "a child of another run" if isinstance(bad[0], ChildCall) else type(bad[0]).__name__
        hint = " (await other operations one at a time)" if inspect.isawaitable(bad[0]) else ""
        return f"run.gather takes this run's run.child(...) values, got {what}{hint}"
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
        return f"run.gather's attempts= must be a positive integer, got {attempts!r}"
    return None


def gather_outcome(step: Step, record: Mapping[str, Any], handlers: Sequence[str]) -> list[Any]:
    """What the gather ``record`` describes gave, in the order its children were given: each
    child's result, or a :class:`~peo.ChildFailed` for one that ended without success. A
    position started again (a round of ``attempts``) counts its latest child."""
    ids = _started(step, int(record["seq"]), int(record["count"]))
    for again in record.get("rounds", ()):
        at = [int(i) for i in again["at"]]
        for position, cid in zip(at, _started(step, int(again["seq"]), len(at)), strict=True):
            ids[position] = cid
    out: list[Any] = []
    for position, cid in enumerate(ids):
        reason = step.failed_children.get(cid)
        if reason is None and cid not in step.children:
            reason = "it has not ended"  # cannot happen: the gather woke once every child had ended
        out.append(ChildFailed(handlers[position], cid, reason) if reason is not None else step.children[cid])
    return out


def _started(step: Step, seq: int, count: int) -> list[str]:
    """The ids of the ``count`` children the delegate entry at ``seq`` started, in order."""
    memory: Sequence[Any] = step.memory
    entry = memory[seq] if len(memory) > seq else None
    if entry is None or entry.seq != seq or entry.action is not Action.DELEGATE:
        raise InternalError(f"object {step.object_id}: no delegate entry at seq {seq} for a recorded gather")
    ids = [str(c["id"]) for c in entry.outcome["children"]]
    if len(ids) != count:
        raise InternalError(f"object {step.object_id}: the gather at seq {seq} started {len(ids)} children, "
                            f"its record says {count}")
    return ids
