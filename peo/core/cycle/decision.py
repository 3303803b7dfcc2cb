"""What a cycle decides: one entry to append, as a :class:`Decision` with its effects.

A Decision is a value. The node carries out its effects in one place (``peo.node.worker``):
it signs and appends the entry; :class:`Consume` deletes the inbox rows the entry records;
:class:`Spawn` creates the children the entry names, in the same transaction. The status
and wake-up after the entry are the entry's own (see :func:`peo.core.head.head_of`), and
are kept here too so that a reader of a Decision need not fold it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import attrs

from ...errors import InternalError
from ..model import Action, Context, Intent, Signal, Status
from ..signals import recorded
from ..wake import Wake

__all__ = [
    "ALLOWED",
    "RUN_HANDLER",
    "Child",
    "Consume",
    "Decision",
    "Effect",
    "Release",
    "Spawn",
    "check_allowed",
    "signals_out",
]

#: The transition table: which actions may follow which status. :func:`check_allowed`
#: applies it to every Decision that :func:`~peo.core.cycle.plan` and
#: :func:`~peo.core.cycle.conclude` return, so a new proposal kind cannot slip past it.
ALLOWED: Final[Mapping[Status, frozenset[Action]]] = {
    Status.RUNNABLE: frozenset(
        {Action.EXECUTE, Action.MUTATE, Action.DELEGATE, Action.DORMANCY, Action.TERMINATE}
    ),
    Status.DORMANT: frozenset({Action.REENTRY, Action.TERMINATE}),
    Status.TERMINATED: frozenset(),
    Status.QUARANTINED: frozenset(),
}


@attrs.frozen
class Child:
    """A child object a Delegate creates: its fresh id, intent and (inherited) context."""

    id: str
    intent: Intent
    context: Context


@attrs.frozen
class Consume:
    """Delete these inbox rows: the entry records the signals, so they are delivered once."""

    ids: tuple[int, ...]


@attrs.frozen
class Spawn:
    """Create these children (with their signed entry 0) together with the entry."""

    children: tuple[Child, ...]


Effect = Consume | Spawn


@attrs.frozen
class Decision:
    """One entry to append (``action``, ``outcome``), the status after it, and its effects."""

    action: Action
    outcome: dict[str, Any]
    status: Status  # status after this entry
    wake: Wake | None = None  # what a dormant object waits for after this entry
    effects: tuple[Effect, ...] = ()

    @property
    def due_at(self) -> int | None:
        """0 (due at once) if runnable, the time trigger if dormant, else None (never)."""
        if self.status is Status.RUNNABLE:
            return 0
        if self.status is Status.DORMANT and self.wake is not None:
            return self.wake.until
        return None

    @property
    def wait_signal(self) -> str | None:
        return self.wake.signal if self.wake is not None else None

    @property
    def wait_children(self) -> bool:
        return self.wake is not None and self.wake.children

    @property
    def consumed(self) -> tuple[int, ...]:
        """Inbox ids this entry consumes."""
        return next((e.ids for e in self.effects if isinstance(e, Consume)), ())

    @property
    def children(self) -> tuple[Child, ...]:
        return next((e.children for e in self.effects if isinstance(e, Spawn)), ())

    def consuming(self, ids: Sequence[int]) -> Decision:
        """This decision, consuming exactly ``ids`` (replacing any earlier Consume)."""
        kept = tuple(e for e in self.effects if not isinstance(e, Consume))
        return attrs.evolve(self, effects=(Consume(tuple(ids)), *kept) if ids else kept)


@attrs.frozen
class Release:
    """Triggers do not hold yet: go back to dormancy without writing an entry."""

    due_at: int | None


class _RunHandler:
    def __repr__(self) -> str:
        return "RUN_HANDLER"


#: :func:`~peo.core.cycle.plan`'s answer when the handler must run one step.
RUN_HANDLER: Final = _RunHandler()


def signals_out(signals: Sequence[Signal]) -> list[dict[str, Any]]:
    """Signals as an entry records them: as received, with the seal of a signed one, so a
    verifier re-checks who sent it (:func:`peo.core.signals.recorded`)."""
    return [recorded(s) if s.seal is not None else {"id": s.id, "name": s.name, "payload": s.payload}
            for s in signals]


def check_allowed(before: Status, decision: Decision) -> Decision:
    """``decision`` if the transition table allows it after ``before``; else a bug."""
    if decision.action not in ALLOWED[before]:
        raise InternalError(f"the cycle chose {decision.action} for a {before} object, which the table forbids")
    return decision
