"""The object's head: what a store keeps beside the chain, derived from the memory alone.

Status, due time, what a dormant object waits for, and how a terminated one ended are all
facts of its memory: :class:`~peo.core.memory.Fold` reads them entry by entry and
:func:`head_of` is the one function that turns a fold into the head a store writes. The
node (after each entry), the client (import, verify) and the test rigs all call it, so
restore, forks and quarantine have one definition to rebuild a head from.
"""

from __future__ import annotations

from typing import Any

import attrs

from .codec import packb
from .memory import Fold
from .model import Status
from .wake import Wake

__all__ = ["Head", "head_of"]


@attrs.frozen
class Head:
    """An object's head as its memory implies it (lease fields are the store's own)."""

    status: Status
    due_at: int | None  # when a node should next look at it: now (runnable), its time trigger, or never
    waiting_for: Wake | None = None  # dormant objects only
    result: Any = None  # terminated objects only
    reason: str | None = None  # why it terminated; why a node shed it (``shed: memory``)
    deleted: bool = False  # an operator's tombstone is its last word (peo rm); the rest is as before it

    @property
    def wait_signal(self) -> str | None:
        return self.waiting_for.signal if self.waiting_for is not None else None

    @property
    def wait_children(self) -> bool:
        return self.waiting_for is not None and self.waiting_for.children

    def result_bytes(self) -> bytes | None:
        """The result as the store keeps it: msgpack for a terminated object, else None."""
        return packb(self.result) if self.status is Status.TERMINATED else None


def head_of(fold: Fold, *, now: int) -> Head:
    """The head after the last entry folded into ``fold``; a runnable object is due ``now``."""
    head = _head(fold, now)
    return attrs.evolve(head, deleted=True) if fold.deleted else head


def _head(fold: Fold, now: int) -> Head:
    status = fold.status
    if status is Status.RUNNABLE:
        return Head(status, now)
    if status is Status.DORMANT:
        wake = fold.wake
        return Head(status, wake.until, wake, reason=None if fold.shed is None else f"shed: {fold.shed}")
    return Head(status, None, result=fold.result, reason=fold.reason)
