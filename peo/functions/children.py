"""Children of a durable function: ``run.child(handler, **goal)`` and ``run.gather(...)``.

``run.gather`` is one operation: it ends the cycle with ``Delegate(children, wait=True)``
(a delegate entry naming the new children's ids, in order); the object sleeps until every
child has ended, and re-runs then return each child's result, in the order given, from the
finished children the node hands the step (``step.children``).
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from ..core.model import Action, Intent, Step
from ..errors import InternalError

if TYPE_CHECKING:
    from .run import Run

__all__ = ["ChildCall", "child_results"]


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


def child_results(step: Step, seq: int, count: int) -> list[Any]:
    """The results of the ``count`` children the delegate entry at ``seq`` started, in order
    (None for a child that ended without a result: failed or cancelled)."""
    memory: Sequence[Any] = step.memory
    entry = memory[seq] if len(memory) > seq else None
    if entry is None or entry.seq != seq or entry.action is not Action.DELEGATE:
        raise InternalError(f"object {step.object_id}: no delegate entry at seq {seq} for a recorded gather")
    ids = [c["id"] for c in entry.outcome["children"]]
    if len(ids) != count:
        raise InternalError(f"object {step.object_id}: the gather at seq {seq} started {len(ids)} children, "
                            f"its record says {count}")
    return [step.children.get(cid) for cid in ids]
