"""The object model: frozen values that describe an object, its memory and its proposals.

Nothing here does I/O or reads a clock. Times are integer nanoseconds since the Unix
epoch, so that a record encodes, decodes and re-encodes to the same bytes.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from ..errors import UsageError

__all__ = [
    "Action",
    "CannotDo",
    "Constraints",
    "Context",
    "Continue",
    "Delegate",
    "Done",
    "Entry",
    "Fail",
    "Intent",
    "ObjectInfo",
    "ObjectSummary",
    "Proposal",
    "Refine",
    "Retry",
    "Signal",
    "Sleep",
    "Status",
    "Step",
    "WaitSignal",
]

#: Reserved signal name: a cancellation request delivered through the inbox.
CANCEL_SIGNAL = "peo.cancel"


class Action(enum.StrEnum):
    """What an entry records. Entry 0 is ``instantiate``; every later entry is one of six."""

    INSTANTIATE = "instantiate"
    EXECUTE = "execute"
    MUTATE = "mutate"
    DELEGATE = "delegate"
    DORMANCY = "dormancy"
    REENTRY = "reentry"
    TERMINATE = "terminate"


class Status(enum.StrEnum):
    """Where an object stands. Stored in the object's head; derived from its memory."""

    RUNNABLE = "runnable"
    RUNNING = "running"  # runnable and leased by a node right now (derived, never stored)
    DORMANT = "dormant"
    TERMINATED = "terminated"
    QUARANTINED = "quarantined"

    @property
    def is_final(self) -> bool:
        """Will an object with this status never act again?"""
        return self in FINAL_STATUSES


#: Objects with these statuses may be claimed and act again.
LIVE_STATUSES: frozenset[Status] = frozenset({Status.RUNNABLE, Status.DORMANT})
#: Objects with these statuses never act again (a quarantined one may only be inspected).
FINAL_STATUSES: frozenset[Status] = frozenset({Status.TERMINATED, Status.QUARANTINED})


def _frozen_dict(value: Mapping[str, Any] | None) -> dict[str, Any]:
    return dict(value) if value else {}


@attrs.frozen
class Constraints:
    """Limits on an intent. ``None`` means "use the node policy's default"."""

    deadline: int | None = None  # absolute, ns since the epoch
    max_failures: int | None = None  # consecutive failures before the object fails
    max_steps: int | None = None  # step budget: executed steps before a policy cut-off
    retry_base: float | None = None  # seconds: first retry delay
    retry_max: float | None = None  # seconds: longest retry delay
    # Exception class names (matched against the raised exception's whole MRO) that fail
    # the object at once instead of being retried. None: the handler's Retry decides.
    # Left out of the encoding while None, so intents written before it encode unchanged.
    non_retryable: tuple[str, ...] | None = None
    # Self-healing: claims without progress, or failed steps of one error class, in a row
    # before a node restores the known-good state (then quarantines). None: the node's
    # setting. Left out of the encoding while None, like non_retryable.
    max_recoveries: int | None = None


def _exception_names(value: object) -> tuple[str, ...] | None:
    """``non_retryable`` as class names: exception classes and names alike, one or many."""
    if value is None:
        return None
    items: Iterable[object] = (value,) if isinstance(value, str | type) else value  # type: ignore[assignment]
    try:
        items = tuple(items)
    except TypeError:
        raise UsageError("non_retryable must be exception classes or class names") from None
    names: list[str] = []
    for item in items:
        if isinstance(item, type) and issubclass(item, BaseException):
            name = item.__name__
        elif isinstance(item, str):
            name = item.strip()
        else:
            raise UsageError(f"non_retryable: {item!r} is neither an exception class nor a class name")
        if not name.isidentifier() or len(name) > 200:
            raise UsageError(f"non_retryable: {name!r} is not a class name")
        if name not in names:
            names.append(name)
    return tuple(names)


def _seconds(what: str) -> Any:
    def check(_: object, __: object, value: object) -> None:
        if value is None:
            return
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
                or not 0 < value <= 1e9:
            raise UsageError(f"Retry {what} must be a positive number of seconds")

    return check


def _attempts(_: Any, __: Any, value: Any) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise UsageError("Retry max_attempts must be a positive integer")


@attrs.frozen(kw_only=True)
class Retry:
    """How a failed step is retried: ``@app.handler("x", retry=peo.Retry(...))`` for every
    object of a handler, or ``client.submit(..., retry=peo.Retry(...))`` for one object
    (recorded in its intent's :class:`Constraints`).

    ``base`` is the first retry delay and ``max`` the longest (seconds; the delay doubles
    per failure), ``max_attempts`` bounds the attempts of one step (its last failure fails
    the object), and an exception whose class or any base class is named in
    ``non_retryable`` (classes or names; kept as names) fails the object at once. ``None``
    leaves a setting to the next source: the intent's constraints first, then the handler's
    Retry, then the node's policy.
    """

    base: float | None = attrs.field(default=None, validator=_seconds("base"))
    max: float | None = attrs.field(default=None, validator=_seconds("max"))
    max_attempts: int | None = attrs.field(default=None, validator=_attempts)
    non_retryable: tuple[str, ...] | None = attrs.field(default=None, converter=_exception_names)

    def constraints(self, base: Constraints | None = None) -> Constraints:
        """``base`` (default: none) with the settings this Retry gives written over it."""
        c = base or Constraints()
        return attrs.evolve(
            c,
            retry_base=c.retry_base if self.base is None else float(self.base),
            retry_max=c.retry_max if self.max is None else float(self.max),
            max_failures=c.max_failures if self.max_attempts is None else self.max_attempts,
            non_retryable=c.non_retryable if self.non_retryable is None else self.non_retryable,
        )


@attrs.frozen
class Intent:
    """What to do: the capability (``handler``), its arguments (``goal``) and limits."""

    handler: str
    goal: dict[str, Any] = attrs.field(factory=dict, converter=_frozen_dict)
    constraints: Constraints = attrs.field(factory=Constraints)


def _depth(_: Any, __: Any, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise UsageError("Context depth must be a non-negative integer")


@attrs.frozen
class Context:
    """Who and where: evaluated against each node's local policy.

    ``root`` and ``depth`` place an object in its tree of delegations: the id of its
    top-level ancestor and how many delegations below it the object is (None and 0 for a
    top-level object). A Delegate sets them for its children; the policy limits both.
    They are left out of the encoding while at their defaults, so a top-level object's
    entry 0 encodes as it did before they existed.
    """

    identity: str = "anonymous"
    trust_scope: str = "default"
    priority: int = 0
    parent: str | None = None
    labels: dict[str, str] = attrs.field(factory=dict, converter=_frozen_dict)
    resources: dict[str, Any] = attrs.field(factory=dict, converter=_frozen_dict)
    root: str | None = None
    depth: int = attrs.field(default=0, validator=_depth)


@attrs.frozen
class Entry:
    """One memory entry: the decoded fields plus the exact bytes that were signed.

    ``body`` is the signed msgpack; ``hash`` is its SHA-256 and the entry's identity
    (never the signature). Verification reads ``body``, never a re-encoding.
    """

    seq: int
    trace_id: str
    timestamp: int
    origin_node: str
    policy_ref: str
    action: Action
    outcome: dict[str, Any]
    prev: bytes
    signer: str
    signature: bytes
    body: bytes = attrs.field(repr=False)
    hash: bytes = attrs.field(repr=False)


@attrs.frozen
class Signal:
    """A named message to an object. ``sender`` is the key id that signed it (None for a
    signal recorded before signals were signed); ``seal`` is the signed envelope as the
    inbox holds it (see :mod:`peo.core.signals`): the node checks it before delivery."""

    name: str
    payload: Any = None
    id: int = 0
    sender: str | None = attrs.field(default=None, kw_only=True)
    seal: bytes | None = attrs.field(default=None, kw_only=True, repr=False, eq=False)


# -- proposals: what a handler may return; the cycle and the policy decide -------------


@attrs.frozen(kw_only=True)
class Continue:
    """Keep going: run another step soon. ``checkpoint=True`` marks the state after this
    step as known-good: a self-healing restore goes back to it (not merely to the last step
    that succeeded)."""

    state: dict[str, Any] | None = None
    checkpoint: bool = attrs.field(default=False, kw_only=True)


@attrs.frozen
class Done:
    """The objective is satisfied: terminate with ``result``."""

    result: Any = None
    state: dict[str, Any] | None = attrs.field(default=None, kw_only=True)


@attrs.frozen(kw_only=True)
class Sleep:
    """Go dormant until ``seconds`` from now, or until ``until`` (Unix seconds)."""

    seconds: float | None = None
    until: float | None = None
    state: dict[str, Any] | None = None


@attrs.frozen
class WaitSignal:
    """Go dormant until a signal called ``name`` arrives (or ``timeout`` seconds pass)."""

    name: str
    timeout: float | None = attrs.field(default=None, kw_only=True)
    state: dict[str, Any] | None = attrs.field(default=None, kw_only=True)


@attrs.frozen
class Delegate:
    """Create child objects; with ``wait`` the parent sleeps until all have terminated."""

    children: Sequence[Intent]
    wait: bool = attrs.field(default=True, kw_only=True)
    state: dict[str, Any] | None = attrs.field(default=None, kw_only=True)


@attrs.frozen(kw_only=True)
class Refine:
    """Change the goal and/or the constraints without re-instantiating."""

    goal: dict[str, Any] | None = None
    constraints: Constraints | None = None
    state: dict[str, Any] | None = None


@attrs.frozen
class Fail:
    """This step failed. Retryable failures back off; others terminate the object.

    ``retry`` gives this failure its own retry settings, over the intent's and the
    handler's (the policy's stay the ceiling): a durable function's ``run.step(retry=)``
    uses it. ``traceback`` is recorded with the error (cut to the policy's
    ``max_traceback_bytes``), as the node records a raised exception's.
    """

    reason: str
    retryable: bool = attrs.field(default=True, kw_only=True)
    error_class: str = attrs.field(default="error", kw_only=True)
    state: dict[str, Any] | None = attrs.field(default=None, kw_only=True)
    retry: Retry | None = attrs.field(default=None, kw_only=True)
    traceback: str | None = attrs.field(default=None, kw_only=True)


@attrs.frozen
class CannotDo:
    """Negative capability: this handler cannot do ``capability``; later cycles honour it."""

    capability: str
    reason: str = ""
    state: dict[str, Any] | None = attrs.field(default=None, kw_only=True)


Proposal = Continue | Done | Sleep | WaitSignal | Delegate | Refine | Fail | CannotDo


@attrs.frozen
class Step:
    """What a handler receives for one step.

    ``memory`` is the verified log (a read-only sequence shared with the node, not a copy);
    ``signals`` are the signals delivered to this step; ``children`` maps each finished
    child's id to its result, and ``failed_children`` each child that ended without success
    (failed, cancelled, quarantined, or missing) to why: the reason its chain records, if
    it has one (a failed or cancelled child is also in ``children``, with None).
    ``idempotency_key`` (``object id:seq`` of the step's first attempt) is the same every
    time this step is attempted, whether the earlier attempt crashed or failed, so tools can
    de-duplicate side effects with it; ``attempt`` counts the failed attempts before this
    one, plus one. A new key begins with the next step after a
    success (an execute, delegate, refine, sleep or signal wait).
    """

    object_id: str
    seq: int
    intent: Intent
    context: Context
    state: Mapping[str, Any]
    memory: Sequence[Entry]
    signals: tuple[Signal, ...] = ()
    children: Mapping[str, Any] = attrs.field(factory=dict)
    attempt: int = 1
    cannot_do: frozenset[str] = frozenset()
    first_seq: int | None = None  # the seq of this step's first attempt, if an earlier one failed
    failed_children: Mapping[str, str] = attrs.field(factory=dict)
    # The policy of the node running the step (a peo.Policy; None in rigs that give none):
    # what an agent's loop reads its tool allow-lists, approvals and budgets from.
    policy: Any = attrs.field(default=None, repr=False, eq=False)
    # The store of the node running the step (a peo.store.Store; None in rigs that give
    # none): where an agent's loop keeps and recalls its identity's long-term facts.
    store: Any = attrs.field(default=None, repr=False, eq=False)

    @property
    def goal(self) -> dict[str, Any]:
        return self.intent.goal

    @property
    def idempotency_key(self) -> str:
        """``object id:seq`` of this step's first attempt: the same for every attempt of the
        step (after a crash, a lost lease or a failure) until the step succeeds."""
        return f"{self.object_id}:{self.seq if self.first_seq is None else self.first_seq}"


@attrs.frozen
class ObjectSummary:
    """One object as ``Client.list`` returns it: its head, without the memory.

    ``status`` is as of the read: a runnable object leased by a node is ``running``.
    ``waiting_for`` names the signal a dormant object waits for, if any; ``unserved`` says
    that no node the store has seen in the last day serves its handler.
    """

    id: str
    status: Status
    handler: str
    seq: int
    priority: int = 0
    scope: str = "default"
    identity: str = "anonymous"
    parent: str | None = None
    reason: str | None = None
    waiting_for: str | None = None
    waits_for_children: bool = False
    due_at: int | None = None  # ns since the epoch; None: not due until woken
    lease_owner: str | None = None
    created_at: int = 0
    updated_at: int = 0
    unserved: bool = False  # live, and no node seen lately serves its handler: nothing will run it
    deleted_at: int | None = None  # ns since the epoch an operator deleted it (peo rm); None: not deleted


@attrs.frozen
class ObjectInfo:
    """A read-only view of one stored object, as ``Client.get`` returns it."""

    id: str
    status: Status
    intent: Intent
    context: Context
    seq: int
    result: Any = None
    reason: str | None = None
    memory: tuple[Entry, ...] = ()
    state: dict[str, Any] = attrs.field(factory=dict)
