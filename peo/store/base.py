"""The store contract: what every backend promises, method by method.

A store keeps objects durable and shares them among nodes. Memory entries are rows that
are only ever inserted; the object *head* (seq, head hash, status, due time, lease) is a
cache of what the entries say and could be rebuilt from them. Every method that writes is
one transaction: it happens completely or not at all.

Times are integer nanoseconds since the epoch and always passed in by the caller: a store
never reads the clock. The head a write sets is the core's :class:`~peo.core.head.Head`
(see :func:`~peo.core.head.head_of`), and the wake rules a store applies inside its
transactions are rendered from :mod:`peo.core.wake`.
"""

from __future__ import annotations

import abc
import builtins
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from ..core.head import Head
from ..core.model import Entry, Signal, Status
from .facts import Fact
from .retention import PurgeReport
from .rows import (
    ALERT_LEASE_NS,
    REFUSALS_KEPT,
    STORED_STATUSES,
    AlertRow,
    AppendItem,
    Claim,
    NewObject,
    NodeRow,
    ObjectRow,
    RefusedSignal,
    SignalRefusal,
    SignalRefusalLike,
)

__all__ = [
    "ALERT_LEASE_NS",
    "REFUSALS_KEPT",
    "STORED_STATUSES",
    "AlertRow",
    "AppendItem",
    "Claim",
    "NewObject",
    "NodeRow",
    "ObjectRow",
    "RefusedSignal",
    "SignalRefusal",
    "SignalRefusalLike",
    "Store",
]

class Store(abc.ABC):
    """The contract both backends implement. See each method for its atomicity."""

    url: str

    async def __aenter__(self) -> Store:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @abc.abstractmethod
    async def open(self, *, create: bool = True, force: bool = False) -> None:
        """Connect and bring the schema to the current version (idempotent, migrations
        numbered and recorded in a version table).

        With ``create=False`` a store that does not exist yet (no SQLite file, no peo
        schema in the database) is not created: StoreError "no peo store at URL; run peo
        init", and nothing is written. Tables are never added to a database (an SQLite
        file, a PostgreSQL schema) that already holds tables other than peo's, unless
        ``force``: StoreError naming them. Neither error is retryable."""

    @abc.abstractmethod
    async def aclose(self) -> None: ...

    @abc.abstractmethod
    async def create(self, objects: Sequence[NewObject]) -> None:
        """Insert objects with their entry 0, all in one transaction (all or none).
        Raises ConflictError if an id exists."""

    @abc.abstractmethod
    async def claim(
        self,
        owner: str,
        *,
        now: int,
        lease_ns: int,
        limit: int,
        handlers: Collection[str],
        scopes: Collection[str] | None,
        exclude: Collection[str] = (),
        avoid_stalled: bool = False,
    ) -> list[Claim]:
        """Lease up to ``limit`` due objects (due_at <= now, no live lease) whose handler
        is in ``handlers`` (and scope in ``scopes`` unless None), highest priority first.
        Each claim is atomic: no two live leases on one object, ever.

        Claims without progress ("stalls"), counted across nodes and restarts: each claim
        (and :meth:`seize`) records the object's seq as it takes it. Taking an object whose
        previous lease lapsed while still owned (its node died or hung holding it), the claim
        judges that previous claim: if the seq has not moved since it began, it made no
        progress, so ``stalls`` grows by one and its owner goes first in ``stalled_on``
        (at most 8 ids, newest first, each once: an id already there moves to the front);
        if the seq moved, both are reset. A released lease is not judged (its node let go),
        and any append resets both (:meth:`append`). The returned claims carry the counts
        after this judgement (``Claim.stalls``, ``Claim.stalled_on``).

        With ``avoid_stalled`` an object whose latest stall (the one this claim would
        record included) was on ``owner`` is left for another node: pass it only when other
        live nodes exist. The condition filters the due rows the claim reads anyway: an
        idle poll reads no more rows with it. Owners hold no newline (node ids are checked
        names)."""

    @abc.abstractmethod
    async def drop_leases(self, owner: str) -> int:
        """Drop every lease held by ``owner`` (a node restarting under its own id takes
        back its objects at once instead of waiting for the TTL). Returns how many.

        Each dropped lease is judged as a lapsed one is by :meth:`claim`: its claim ended
        without progress if the seq has not moved since it began (a stall on ``owner``),
        else the object's stalls are reset."""

    @abc.abstractmethod
    async def renew(self, owner: str, leases: dict[str, int], *, until: int) -> set[str]:
        """Extend our leases to ``until``; return the ids whose lease we no longer hold."""

    @abc.abstractmethod
    async def entries(self, object_id: str, after: int = -1) -> list[tuple[bytes, bytes]]:
        """The (body, signature) rows with seq > ``after``, in seq order."""

    async def entries_of(self, object_ids: Sequence[str]) -> dict[str, list[tuple[bytes, bytes]]]:
        """Every (body, signature) row of each object, in seq order: the memories of a
        batch of claims read in one round trip (backends override this default)."""
        return {oid: await self.entries(oid) for oid in object_ids}

    async def head_entries(self, object_id: str, seq: int) -> dict[int, tuple[bytes, bytes]]:
        """Entry 0 and entry ``seq`` of an object as {seq: (body, signature)}: what a reader
        needs to check the signed head without reading the whole memory (backends override
        this default, which reads everything)."""
        rows = await self.entries(object_id)
        return {s: rows[s] for s in (0, seq) if 0 <= s < len(rows)}

    @abc.abstractmethod
    async def entry_hash(self, object_id: str, seq: int) -> bytes | None:
        """The stored hash of entry ``seq`` (to recognise our own write after an unknown
        commit outcome), or None."""

    @abc.abstractmethod
    async def append(self, items: Sequence[AppendItem], *, now: int) -> list[int | None]:
        """Group commit: append every item in ONE transaction. Each item is its own
        compare-and-swap; an item that loses its CAS is skipped (its result is None) and
        the others still commit. For the others the result is the count of signals left
        in the object's inbox. Within the transaction: the entry row is inserted, the
        head updated, consumed inbox rows deleted, children created with their entry 0,
        and a terminated child's waiting parent made due. An append is progress: the
        object's stalls are reset (in the same head update; see :meth:`claim`)."""

    @abc.abstractmethod
    async def release(self, object_id: str, token: int, *, due_at: int | None, now: int) -> None:
        """Drop our lease without appending; a runnable object becomes due at ``due_at``
        (None keeps its due time). A dormant object waiting for a signal that
        is already in its inbox, or for children that have all finished, is made due now
        instead (no wake-up is lost). A release is not a stall (see :meth:`claim`): the
        object's stall count is left as it is."""

    @abc.abstractmethod
    async def quarantine(self, object_id: str, reason: str, *, now: int) -> None:
        """Mark an object quarantined (it never runs again) and record why. A quarantined
        child counts as finished: its parent, if dormant waiting for children, is made due."""

    @abc.abstractmethod
    async def signal(self, object_id: str, name: str, payload: Any, *, now: int, seal: bytes | None = None,
                     max_inbox: int | None = None) -> int:
        """Put a signal in the object's inbox and wake the object if it waits for it.
        Raises NotFoundError for an unknown id and ObjectTerminatedError for a terminated
        object (checked in the same transaction: nothing is written). A quarantined
        object's signals are kept. An unsealed cancel (``peo.cancel``) while an earlier
        one is still in the inbox adds nothing and returns the earlier one's id; a sealed
        one is always added (the earlier one may be a forgery the node will refuse, and a
        real cancel must not be lost behind it). Returns the signal id.

        ``seal`` is the signed envelope the sender made (:mod:`peo.core.signals`), kept as
        an opaque blob and returned in :attr:`Signal.seal` by :meth:`inbox`; the store never
        reads it. With ``max_inbox``, a signal to an object that already has that many
        signals waiting (its head's inbox count) raises InboxFullError, checked in the same
        transaction: nothing is written. The cancel de-duplication comes first; a caller
        that wants a cancel to get through a full inbox passes no ``max_inbox`` for it."""

    @abc.abstractmethod
    async def inbox(self, object_id: str, *, limit: int | None = None,
                    names: Collection[str] | None = None, max_bytes: int | None = None) -> list[Signal]:
        """Signals waiting in the inbox, oldest first: at most ``limit`` of them, and only
        those called one of ``names`` if given (an empty ``names`` reads nothing). A node
        waiting for ``approve`` reads ``names={"approve", "peo.cancel"}``, so however many
        other signals are waiting, they never hide the awaited one. With ``max_bytes``, the
        signals stop before their stored payloads would add up to more (the first is
        always read): large payloads are not read to be left waiting. Served by an index on
        (object_id, name, id) (with ``names``) or (object_id, id): the cost follows what
        is read, not what is waiting."""

    @abc.abstractmethod
    async def refuse_signals(self, object_id: str, refusals: Sequence[SignalRefusalLike], *, now: int) -> int:
        """Move the given signals out of the object's inbox into its refused signals, in one
        transaction, and return how many were moved (a signal no longer in the inbox, e.g.
        consumed or refused already, is skipped; an id given twice counts once). Each
        refusal is a :class:`SignalRefusal` (id, reason, sender), or a tuple (id, reason) or
        (id, reason, sender). Reasons are cut to 2,000 characters, senders to 200. The head's inbox count
        drops by the number moved. A refused signal no longer counts for the wake rules
        (they read the inbox): a dormant object waiting for ``approve`` is not made due by
        a refused ``approve`` at its next release or append. (An object the signal already
        made due stays due until its node releases it: a store never makes an object less
        due on its own.) Only the newest :data:`REFUSALS_KEPT` refusals of each object are
        kept: older ones are deleted in the same transaction."""

    @abc.abstractmethod
    async def refused(self, object_id: str, *, limit: int = 20) -> list[RefusedSignal]:
        """The object's refused signals, newest refusal first, at most ``limit``."""

    @abc.abstractmethod
    async def count_descendants(self, root: str) -> int:
        """How many objects have ``root`` as their top-level ancestor (the root itself not
        included): one indexed count. Objects created before stores recorded roots have
        none (they count as top-level), so their descendants are not counted."""

    @abc.abstractmethod
    async def forks(self, object_id: str) -> builtins.list[str]:
        """The ids of the objects forked from ``object_id`` (their ``forked_from``), oldest
        first (by creation time, then id): one indexed read."""

    @abc.abstractmethod
    async def get(self, object_id: str) -> ObjectRow:
        """The head of one object; NotFoundError if there is none."""

    @abc.abstractmethod
    async def list(self, *, status: Status | str | None = None, limit: int | None = None,
                   parent: str | None = None, now: int | None = None,
                   handler: str | None = None, after: str | None = None,
                   labels: Mapping[str, str] | None = None, deleted: bool = False) -> list[ObjectRow]:
        """Heads ordered by id, of one ``status``, one ``parent`` and/or one ``handler`` if given,
        carrying every one of ``labels`` (key and value exactly; objects created before the store
        recorded labels in the head match none), with ids after ``after`` (paging: pass the
        last id of the previous page). A label key or value that is empty, longer than 200
        characters or holds control characters is a UsageError.

        ``status`` may be "running" (runnable with a lease live at ``now``): it needs
        ``now``, else UsageError (a store never reads the clock). Deleted objects (an
        operator's tombstone, ``deleted_at``) are left out; with ``deleted``, only they are listed."""

    @abc.abstractmethod
    async def busy(self, *, now: int, handlers: Collection[str] | None = None,
                   scopes: Collection[str] | None = None) -> bool:
        """Is any object runnable, leased, or due at ``now``? Only objects whose handler is in
        ``handlers`` and whose trust scope is in ``scopes`` count (None: any): an idle node
        waits for what it can serve, never for what it cannot."""

    @abc.abstractmethod
    async def next_due(self) -> int | None:
        """The earliest due time of any claimable object (for sleeping until then)."""

    @abc.abstractmethod
    async def import_object(self, obj: NewObject, rest: Sequence[Entry], head: Head, *, now: int) -> None:
        """Insert an object, its entry 0 (``obj.entry``) and the ``rest`` of its already
        verified entries in one transaction, with ``head``, the head they fold to (its
        status, due time, wait and outcome are written as they are).
        Raises ConflictError if the id exists."""

    # -- the fleet ----------------------------------------------------------------------------

    @abc.abstractmethod
    async def register_node(self, node_id: str, handlers: Collection[str], *, now: int,
                            notes: str | None = None) -> None:
        """Record that node ``node_id`` serves ``handlers`` as of ``now`` (replacing what it
        said before): how a submit learns that no node serves a handler. ``notes``: what
        the node says about itself (a configuration repair), shown by ``peo nodes``."""

    @abc.abstractmethod
    async def nodes(self, *, since: int = 0) -> builtins.list[NodeRow]:
        """The nodes that registered at or after ``since``, the most recently seen first."""

    @abc.abstractmethod
    async def served_handlers(self, *, since: int) -> set[str]:
        """The handlers served by any node that registered at or after ``since``."""

    @abc.abstractmethod
    async def due_counts(self, *, now: int) -> dict[tuple[str, str], int]:
        """How many live objects are due at ``now``, by (handler, trust scope): what an idle
        node that cannot serve some of them leaves behind."""

    @abc.abstractmethod
    async def leased_kinds(self, *, now: int) -> set[tuple[str, str]]:
        """The (handler, trust scope) of the objects leased right now."""

    @abc.abstractmethod
    async def seize(self, object_id: str, owner: str, *, now: int, lease_ns: int,
                    force: bool = False, final: bool = False) -> Claim | None:
        """Lease one live object for ``owner`` whether or not it is due (an operator writing
        an entry no node will write, e.g. a cancel; with ``final``, also a terminated or
        quarantined one, e.g. to restore it). None if it is final (and not ``final``), or leased by
        someone else and not ``force`` (a lease a dead node left behind). Atomic like a claim,
        and it records and judges claims without progress as a claim does (a live lease
        taken with ``force`` is not judged: it had not lapsed)."""

    #: Does :meth:`wait_for_work` return early when work becomes due or an object ends?
    notifies: bool = False

    async def wait_for_work(self, timeout: float) -> None:
        """Sleep until work may be available or an object ended, or ``timeout`` seconds pass
        (backends with a notification channel, ``notifies``, wake early)."""
        import asyncio

        await asyncio.sleep(timeout)

    @abc.abstractmethod
    async def requalify(self, object_id: str, head: Head, *, now: int) -> bool:
        """Put a quarantined object back in play with ``head``, the head its memory folds
        to (:func:`~peo.core.head.head_of`), in one transaction: its status, due time, wait
        and outcome are written as they are (the quarantine reason is replaced by the
        head's), except that a dormant head is made due at once if a wake rule already
        holds (a signal kept while it was quarantined, children that have all ended), as
        an append does. Seq and head hash are unchanged: quarantine is a flag on the head,
        not an entry, so requalifying appends none. The object's stalls are reset (see
        :meth:`claim`): an operator resuming it after a fix starts the count again, else its
        first claim would find it past the node's ``max_recoveries`` once more. Returns
        False, changing nothing, if the object is not quarantined (another operator resumed
        it first); NotFoundError for an unknown id."""

    # -- retention (peo.store.retention) -------------------------------------------------------

    @abc.abstractmethod
    async def purge(self, *, deleted_before: int, dry_run: bool = True) -> PurgeReport:
        """Destroy the objects deleted (``deleted_at``) before ``deleted_before`` (ns): their
        rows in every table that holds an object's data (head, entries, inbox, refused
        signals, alerts), in one transaction. An object another object still depends on
        (its ``parent``, its ``root``, the ``forked_from`` of a fork) is kept unless that
        object goes too, and the report says why. Nothing of an object that is not deleted
        is ever destroyed. With ``dry_run`` nothing is written: the report says what would go."""

    # -- alert deliveries ---------------------------------------------------------------------

    @abc.abstractmethod
    async def add_alert(self, object_id: str, incident: str, sinks: Sequence[str], payload: bytes, *,
                        now: int) -> int:
        """Record one alert of ``incident`` to each of ``sinks``, due at ``now``, in one
        transaction. An incident is alerted once per sink: a row that exists already (two
        nodes raced, a node restarted) is left as it is. Returns how many rows were new."""

    @abc.abstractmethod
    async def due_alerts(self, *, now: int, limit: int = 50, lease_ns: int = ALERT_LEASE_NS) -> builtins.list[AlertRow]:
        """At most ``limit`` undelivered alerts due at ``now`` (next_at <= now), oldest
        first (by created_at), each leased for delivery in the same transaction: its
        next_at becomes ``now + lease_ns`` (as returned), so no other caller gets it until
        that passes, unless :meth:`alert_attempted` says otherwise first. Concurrent callers
        get disjoint rows. A delivery that outlasts the lease may be repeated by another
        node; one whose node dies is retried when the lease ends."""

    @abc.abstractmethod
    async def alert_attempted(self, object_id: str, incident: str, sink: str, *, now: int, delivered: bool,
                              error: str | None = None, next_at: int | None = None) -> None:
        """Record a delivery attempt: attempts grows by one; delivered: delivered_at = now
        (the first delivery's time is kept) and it is never due again; else last_error =
        ``error`` (cut to 2,000 characters) and, if given, next_at (when to retry; None
        leaves the lease's end as the retry time). Unknown rows are ignored."""

    @abc.abstractmethod
    async def alerts(self, object_id: str) -> builtins.list[AlertRow]:
        """Every alert row of an object, oldest first (then by incident and sink)."""

    # -- agents' long-term facts (peo.store.facts) ------------------------------------------

    @abc.abstractmethod
    async def put_fact(self, identity: str, key: str, value: str, *, object_id: str | None = None,
                       seq: int | None = None, now: int) -> int:
        """Make ``value`` the latest version of fact ``key`` of ``identity`` and return its
        version: a new version (one transaction) unless the latest already holds ``value``,
        so writing the same fact again (a retried step) changes nothing."""

    @abc.abstractmethod
    async def forget_fact(self, identity: str, key: str, *, object_id: str | None = None,
                          seq: int | None = None, now: int) -> int | None:
        """Write a tombstone as the next version of ``key`` and return it; None (nothing
        written) if the key has no live version."""

    @abc.abstractmethod
    async def facts(self, identity: str) -> builtins.list[Fact]:
        """The latest version of each live fact of ``identity`` (tombstoned keys left out), by key."""

    @abc.abstractmethod
    async def fact_history(self, identity: str, key: str) -> builtins.list[Fact]:
        """Every version of one key, tombstones included, oldest first."""

    @abc.abstractmethod
    async def recall(self, identity: str, query: str, *, limit: int = 5) -> builtins.list[Fact]:
        """At most ``limit`` live facts of ``identity`` matching any plain word of ``query``
        (full-text search, best first): never a syntax error, whatever the query holds."""
