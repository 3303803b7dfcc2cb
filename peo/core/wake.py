"""Wake rules: when a dormant object becomes due again, described once.

A dormant object waits for a :class:`Wake`: a time (``until``), a named signal, the end of
all its children, or a combination; a cancellation request wakes it whatever it waits for.
Two parties apply these rules and must never disagree:

* the core, when a node holds the object: :func:`trigger` names the trigger that holds
  (the cycle records it in the reentry entry), :func:`cancel_requested` and
  :func:`children_done` answer the two questions every reader asks;
* the store, inside the transaction that writes an object's head or delivers a signal:
  it makes the object due at once when a trigger already holds, so that a signal or a
  child's end committed a moment before a wait began is never slept through. Both SQL
  dialects render their expressions from :data:`STORE_RULES` and the helpers below, and a
  contract test checks each store against :func:`trigger` on random objects.

A time trigger needs no SQL: the object's due time *is* its ``until``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from typing import Any, Final

import attrs

from .model import CANCEL_SIGNAL, FINAL_STATUSES, LIVE_STATUSES, Status

__all__ = [
    "STORE_RULES",
    "SqlRule",
    "Trigger",
    "Wake",
    "cancel_requested",
    "child_end_wakes",
    "children_done",
    "due_case",
    "final_statuses_sql",
    "live_statuses_sql",
    "signal_wakes",
    "trigger",
]


class Trigger(enum.StrEnum):
    """What ended a wait (recorded as a reentry entry's ``trigger``)."""

    SIGNAL = "signal"
    CHILDREN = "children"
    TIME = "time"


@attrs.frozen
class Wake:
    """What a dormant object waits for. Any one that holds wakes it."""

    until: int | None = None  # ns since the epoch
    signal: str | None = None
    children: bool = False

    @classmethod
    def from_outcome(cls, wake: Mapping[str, Any] | None) -> Wake:
        """The wait recorded in an entry's outcome (``{"until": ..., "signal": ...}``)."""
        if not wake:
            return cls()
        return cls(wake.get("until"), wake.get("signal"), bool(wake.get("children")))

    def as_outcome(self) -> dict[str, Any]:
        """The form recorded in memory (only the parts that are set)."""
        out: dict[str, Any] = {}
        if self.signal is not None:
            out["signal"] = self.signal
        if self.until is not None:
            out["until"] = self.until
        if self.children:
            out["children"] = True
        return out


def cancel_requested(signal_names: Iterable[str]) -> bool:
    return any(name == CANCEL_SIGNAL for name in signal_names)


def children_done(statuses: Iterable[Status | str]) -> bool:
    """Have all these children finished? A quarantined child counts as finished: it never acts again."""
    return all(s in FINAL_STATUSES for s in statuses)


def trigger(wake: Wake, *, now: int, signal_names: Iterable[str], children_finished: bool) -> Trigger | None:
    """The trigger that wakes an object waiting for ``wake`` at ``now``, or None.

    Checked in this order, so that a reentry records the most specific reason: the awaited
    signal, then the children, then the time.
    """
    if wake.signal is not None and wake.signal in signal_names:
        return Trigger.SIGNAL
    if wake.children and children_finished:
        return Trigger.CHILDREN
    if wake.until is not None and now >= wake.until:
        return Trigger.TIME
    return None


# -- the same rules, as SQL ------------------------------------------------------------------


def _quoted(values: Iterable[str]) -> str:
    return ", ".join(f"'{v}'" for v in values)


def live_statuses_sql() -> str:
    """``'runnable', 'dormant'``: statuses whose objects may be claimed."""
    return _quoted(s for s in Status if s in LIVE_STATUSES)


def final_statuses_sql() -> str:
    """``'terminated', 'quarantined'``: statuses of objects that never act again."""
    return _quoted(s for s in Status if s in FINAL_STATUSES)


@attrs.frozen
class SqlRule:
    """One trigger the store checks when it writes a head, as an SQL condition.

    ``condition`` names the object's id, the signal it waits for and whether it waits for
    its children as ``{id}``, ``{signal}`` and ``{children}``; each store substitutes its
    own expressions (a column, a bound parameter).
    """

    trigger: Trigger
    condition: str


STORE_RULES: Final[tuple[SqlRule, ...]] = (
    # The awaited signal, or a cancellation, is already in the inbox.
    SqlRule(
        Trigger.SIGNAL,
        "EXISTS (SELECT 1 FROM inbox i WHERE i.object_id = {id}"
        f" AND (i.name = {{signal}} OR i.name = '{CANCEL_SIGNAL}'))",
    ),
    # It waits for its children and none of them is still live.
    SqlRule(
        Trigger.CHILDREN,
        "{children} AND NOT EXISTS (SELECT 1 FROM objects c WHERE c.parent = {id}"
        f" AND c.status NOT IN ({final_statuses_sql()}))",
    ),
)


def due_case(
    *, id: str, status: str, signal: str, children: str, now: str, due: str, runnable: str | None = None,
    final: str | None = None,
) -> str:
    """The due time to store for an object whose head is being written, as an SQL CASE.

    A dormant object is due ``now`` if one of :data:`STORE_RULES` holds, else at ``due``
    (its time trigger, or NULL). ``runnable`` and ``final`` are the due times for objects
    in those statuses (default: ``due``).
    """
    whens = []
    if runnable is not None:
        whens.append(f"WHEN {status} = '{Status.RUNNABLE}' THEN {runnable}")
    whens.append(f"WHEN {status} <> '{Status.DORMANT}' THEN {final if final is not None else due}")
    for rule in STORE_RULES:
        whens.append(f"WHEN {rule.condition.format(id=id, signal=signal, children=children)} THEN {now}")
    return "CASE " + " ".join(whens) + f" ELSE {due} END"


def signal_wakes(*, status: str, waiting_for: str, name: str) -> str:
    """SQL condition: a signal called ``name`` arriving now wakes the object (it waits for
    that signal, or the signal is a cancellation)."""
    return f"{status} = '{Status.DORMANT}' AND ({waiting_for} = {name} OR {name} = '{CANCEL_SIGNAL}')"


def child_end_wakes(*, status: str, children: str) -> str:
    """SQL condition: a child's end makes its parent due (the parent's node then checks
    whether all of them have ended, see :func:`children_done`)."""
    return f"{status} = '{Status.DORMANT}' AND {children}"
