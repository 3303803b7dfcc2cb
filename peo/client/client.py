"""The client: submit, signal, cancel; reads (:mod:`.reads`) and archive operations
(:mod:`.archive`) are delegated to their own modules.

A client signs each object's entry 0 with its own key (``.peo/keys/client.key`` unless
given), so the instantiation is as verifiable as every later step.
"""

from __future__ import annotations

import builtins
import datetime
import hashlib
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs

from ..config import resolve_policy, store_url
from ..core import signals
from ..core.codec import Limits, check_name, check_value, decode_body, packb, structure
from ..core.crypto import Keyring, SigningKey
from ..core.memory import genesis, instantiation_outcome, make_entry
from ..core.model import (
    CANCEL_SIGNAL,
    Action,
    Constraints,
    Context,
    Entry,
    Intent,
    ObjectInfo,
    ObjectSummary,
    Retry,
)
from ..core.policy import Policy
from ..core.signals import signal_limits
from ..errors import CodecError, ConflictError, ObjectExistsError, PolicyError, UsageError
from ..ids import new_id
from ..keys import guard_new_key, keyring_for, load_key
from ..store import NewObject, Store, open_store
from ..store.retention import PurgeReport
from ..verified import row_differences
from . import archive, operator, reads
from .forks import Verification
from .operator import CancelOutcome
from .versions import Version

__all__ = ["Client", "check_object_id", "intent_differences"]

#: The longest id a caller may choose (``submit(..., object_id=...)``).
MAX_ID_LENGTH = 128


def check_object_id(object_id: object) -> str:
    """A caller-chosen object id: a non-empty str of at most 128 printable characters and
    no whitespace (it is shown, typed and passed on command lines). UsageError if not."""
    if not isinstance(object_id, str) or not object_id:
        raise UsageError("an object id must be a non-empty string")
    if len(object_id) > MAX_ID_LENGTH:
        raise UsageError(f"an object id is at most {MAX_ID_LENGTH} characters (this one has {len(object_id)})")
    if not all(c.isprintable() and not c.isspace() for c in object_id):
        raise UsageError(f"an object id must be printable with no whitespace: {object_id!r}")
    return object_id


def intent_differences(recorded: Entry, submitted: Entry) -> tuple[str, ...]:
    """What differs between the intents two entries 0 record: ``handler``, ``goal``,
    ``constraints.NAME``, ``scope``, ``priority``, ``labels``, ``identity``. A deadline is
    compared relative to its entry's timestamp (it was given as seconds from submission).
    Raises CodecError if ``recorded`` does not hold an intent and a context."""
    sides = []
    for entry in (recorded, submitted):
        intent = structure(entry.outcome.get("intent"), Intent)
        context = structure(entry.outcome.get("context"), Context)
        c = intent.constraints
        if c.deadline is not None:
            c = attrs.evolve(c, deadline=c.deadline - entry.timestamp)
        sides.append((intent, c, context))
    (oi, oc, ox), (ni, nc, nx) = sides
    found = [name for name, a, b in (("handler", oi.handler, ni.handler), ("goal", oi.goal, ni.goal)) if a != b]
    found += [f"constraints.{f.name}" for f in attrs.fields(Constraints) if getattr(oc, f.name) != getattr(nc, f.name)]
    found += [name for name, a, b in (("scope", ox.trust_scope, nx.trust_scope), ("priority", ox.priority, nx.priority),
                                      ("labels", ox.labels, nx.labels), ("identity", ox.identity, nx.identity))
              if a != b]
    return tuple(found)


class Client:
    """``async with peo.Client("sqlite:///peo.db") as client: ...``"""

    def __init__(
        self,
        store: str | Store | None = None,
        *,
        key: SigningKey | str | os.PathLike[str] | None = None,
        identity: str = "anonymous",
        policy: Policy | str | os.PathLike[str] | None = None,
        keyring: Keyring | None = None,
        create: bool = True,
        new_key: bool = False,
    ):
        self.store = store if isinstance(store, Store) else open_store(store_url(store))
        self._owns_store = not isinstance(store, Store)
        self.identity = identity
        self.policy = resolve_policy(policy)
        self._key_arg = key
        self._key: SigningKey | None = key if isinstance(key, SigningKey) else None
        self._keyring = keyring
        # False: a store that does not exist yet is an error ("run peo init"), not created.
        self._create = create
        # True: a client key may be created for a store that already holds objects (they
        # were signed by keys kept elsewhere; see peo.keys.guard_new_key).
        self._new_key = new_key

    @property
    def key(self) -> SigningKey:
        if self._key is None:
            self._key = load_key(self._key_arg, "client", self.store.url)
        return self._key

    @property
    def keyring(self) -> Keyring:
        if self._keyring is None:
            # Reading and verifying must not create a key: trust this client's own key only
            # if it already exists (the local key directory holds its .pub anyway).
            own = [self._key] if self._key is not None else []
            self._keyring = keyring_for(self.policy, *own, store=self.store.url)
        return self._keyring

    async def __aenter__(self) -> Client:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        if self._owns_store:
            await self.store.open(create=self._create)

    async def aclose(self) -> None:
        if self._owns_store:
            await self.store.aclose()

    # -- submitting -----------------------------------------------------------------------

    def _prepare(
        self,
        handler: str,
        goal: Mapping[str, Any] | None,
        *,
        priority: int,
        scope: str,
        deadline: float | None,
        labels: Mapping[str, str] | None,
        max_failures: int | None,
        max_steps: int | None,
        now: int,
        retry: Retry | None = None,
        object_id: str | None = None,
        max_recoveries: int | None = None,
    ) -> NewObject:
        try:
            check_name(handler, "handler")
            check_name(scope, "trust scope")
        except CodecError as exc:
            raise UsageError(str(exc)) from None
        if object_id is not None:
            check_object_id(object_id)
        if retry is not None and not isinstance(retry, Retry):
            raise UsageError("retry must be a peo.Retry(base=, max=, max_attempts=, non_retryable=)")
        if goal is None:
            goal = {}
        if not isinstance(goal, Mapping):
            raise UsageError("goal must be a JSON object (a dict)")
        goal = dict(goal)
        try:
            check_value(goal, Limits(max_bytes=self.policy.max_payload_bytes), what="goal")
        except CodecError as exc:
            raise UsageError(str(exc)) from None
        size = len(packb(goal))
        if size > self.policy.max_payload_bytes:
            raise PolicyError(f"goal of {size} bytes exceeds the policy limit of {self.policy.max_payload_bytes}")
        if isinstance(priority, bool) or not isinstance(priority, int) or not -1_000_000 <= priority <= 1_000_000:
            raise UsageError("priority must be an integer between -1000000 and 1000000")
        for name, value in (("max_failures", max_failures), ("max_steps", max_steps),
                            ("max_recoveries", max_recoveries)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise UsageError(f"{name} must be a positive integer")
        deadline_ns = None
        if deadline is not None:
            if isinstance(deadline, bool) or not isinstance(deadline, int | float) or not 0 < deadline < 1e9:
                raise UsageError("deadline must be a positive number of seconds from now")
            deadline_ns = now + int(deadline * 1e9)
        try:
            lab = {check_name(k, "label"): check_name(v, "label value") for k, v in (labels or {}).items()}
        except CodecError as exc:
            raise UsageError(str(exc)) from None
        constraints = Constraints(deadline=deadline_ns, max_failures=max_failures, max_steps=max_steps,
                                  max_recoveries=max_recoveries)
        if retry is not None:
            if None not in (max_failures, retry.max_attempts) and max_failures != retry.max_attempts:
                raise UsageError(f"max_failures={max_failures} and Retry(max_attempts={retry.max_attempts}) "
                                 "disagree: give one of them")
            constraints = retry.constraints(constraints)
        # Limits are ceilings: a node would cap a larger one anyway, so say so now rather
        # than let the submitter believe it was granted.
        problem = self.policy.constraint_problem(constraints)
        if problem:
            raise UsageError(f"{problem}: ask for at most that, or run nodes (and this client: --policy) "
                             f"with a policy that allows more (policy {self.policy.name})")
        intent = Intent(handler, goal, constraints)
        context = Context(identity=self.identity, trust_scope=scope, priority=priority, labels=lab)
        oid = new_id() if object_id is None else object_id
        entry = make_entry(
            self.key, seq=0, prev=genesis(oid), timestamp=now, origin_node=f"client:{self.identity}",
            policy_ref=self.policy.ref, action=Action.INSTANTIATE,
            outcome=instantiation_outcome(oid, intent, context), trace_id=oid,
        )
        return NewObject(oid, handler, scope, self.identity, priority, None, entry, now, labels=lab)

    async def submit(
        self,
        handler: str,
        goal: Mapping[str, Any] | None = None,
        *,
        priority: int = 0,
        scope: str = "default",
        deadline: float | None = None,
        labels: Mapping[str, str] | None = None,
        max_failures: int | None = None,
        max_steps: int | None = None,
        retry: Retry | None = None,
        object_id: str | None = None,
        max_recoveries: int | None = None,
    ) -> str:
        """Create an object; returns its id. Input is checked before anything is written.

        ``retry`` (a :class:`~peo.Retry`) is recorded in the intent's constraints and
        overrides the handler's own for this object. ``max_recoveries`` (default: the
        node's setting) is how many claims without progress, or failed steps of one error
        class, in a row a node lets pass before it restores the object's known-good state
        and, if that does not help, quarantines it (docs/operations.md, "Self-healing").
        ``object_id`` chooses the id (printable,
        no whitespace, at most 128 characters; default: a new UUIDv7) and makes the submit
        idempotent: if an object with that id exists and entry 0 records the same intent
        (handler, goal, constraints with the deadline taken relative to submission, scope,
        priority, labels, identity), its id is returned and nothing is written; if the
        intent differs, :class:`~peo.errors.ObjectExistsError` says what differs. Two
        submits of one id at once create one object.
        """
        await self._guard_key()
        obj = self._prepare(handler, goal, priority=priority, scope=scope, deadline=deadline, labels=labels,
                            max_failures=max_failures, max_steps=max_steps, now=time.time_ns(), retry=retry,
                            object_id=object_id, max_recoveries=max_recoveries)
        try:
            await self.store.create([obj])
        except ConflictError:
            if object_id is None:
                raise
            await self._check_existing(obj)
        return obj.id

    async def _check_existing(self, obj: NewObject) -> None:
        """``obj``'s id is taken: return if the existing object's entry 0 records the same
        intent as ``obj``'s, else raise ObjectExistsError naming what differs."""
        rows = await self.store.entries(obj.id)
        if not rows:  # the conflict was not an existing object: nothing to compare with
            raise ConflictError(f"object {obj.id} could not be created")
        body, signature = rows[0]
        try:
            recorded = decode_body(body, signature, hashlib.sha256(body).digest())
            differences = intent_differences(recorded, obj.entry)
        except CodecError:
            differences = ("entry 0 (unreadable)",)
        if differences:
            raise ObjectExistsError(obj.id, differences)

    async def _guard_key(self) -> None:
        """Before this client's default key is created: refuse to mint one for a store that
        already holds objects, unless ``new_key=True`` (their signers' keys are elsewhere)."""
        if self._key is None and self._key_arg is None:
            await guard_new_key(self.store, "client", new_key=self._new_key)

    async def submit_many(self, handler: str, goals: Sequence[Mapping[str, Any]], **options: Any) -> list[str]:
        """Create many objects in one transaction (all or none); returns their ids. Takes
        the options of :meth:`submit` except ``object_id`` (each object gets a new id)."""
        if "object_id" in options:
            raise UsageError("submit_many gives each object a new id: submit one at a time to choose ids")
        await self._guard_key()
        now = time.time_ns()
        defaults = {"priority": 0, "scope": "default", "deadline": None, "labels": None, "max_failures": None,
                    "max_steps": None, "retry": None, "max_recoveries": None}
        objs = [self._prepare(handler, g, now=now, **{**defaults, **options}) for g in goals]
        if objs:
            await self.store.create(objs)
        return [o.id for o in objs]

    # -- signalling -----------------------------------------------------------------------

    async def signal(self, object_id: str, name: str, payload: Any = None) -> None:
        """Deliver a named signal (with a JSON-like payload) to an object's inbox, signed
        with this client's key (:mod:`peo.core.signals`): the node delivers it only if it
        trusts the key for the object's scope (or the policy's ``[signals]`` rules allow
        it), and the entry that consumes it records who sent it.

        Raises NotFoundError for an unknown id, ObjectTerminatedError if the object has
        terminated (no cycle would ever read the signal; nothing is written), UsageError for
        a payload larger or deeper than an entry can record, and InboxFullError when the
        object already holds the most signals the policy allows. A signal to a quarantined
        object is kept in its inbox: it is read if the object is resumed."""
        try:
            check_name(name, "signal name")
        except CodecError as exc:
            raise UsageError(str(exc)) from None
        if name == CANCEL_SIGNAL:
            raise UsageError(f"signal name {CANCEL_SIGNAL!r} is reserved: use Client.cancel() (peo cancel ID)")
        await self._guard_key()
        await self.send(object_id, name, payload)

    async def send(self, object_id: str, name: str, payload: Any = None) -> int:
        """Seal and put one signal (any name, ``peo.cancel`` included) in the inbox; the
        checks a node makes that can be made here are made here, so a signal the node
        would refuse is refused to its sender instead. Returns the inbox id."""
        check_object_id(object_id)
        try:
            check_value(payload, signal_limits(self.policy), what="payload")
        except CodecError as exc:
            raise UsageError(f"signal {name!r}: {exc} (a signal is recorded whole in the entry that "
                             "receives it)") from None
        now = time.time_ns()
        sealed = signals.seal(self.key, object_id, name, payload, nonce=os.urandom(16).hex(), sent_at=now)
        # A cancel gets through a full inbox: it is how an operator stops a flooded object.
        ceiling = None if name == CANCEL_SIGNAL else self.policy.max_inbox
        return await self.store.signal(object_id, name, payload, now=now, seal=sealed.encode(), max_inbox=ceiling)

    async def cancel(self, object_id: str, *, force: bool = False) -> CancelOutcome:
        """Cancel the object. If a node holds it, that node records the cancel on its next
        cycle (``REQUESTED``); if none does (no node serves its handler, or all are down),
        this client writes the terminate entry itself, signed with its key (``CANCELLED``).
        ``force`` also takes over a lease a node still holds (a node that died holding it).
        Raises ObjectTerminatedError if it has ended already."""
        if not force:
            await self._guard_key()
        return await operator.cancel(self, object_id, force=force)

    # -- reading (see .reads) ----------------------------------------------------------------

    async def served_handlers(self, *, within: float = 86_400.0) -> set[str]:
        """The handlers some node registered as serving in the last ``within`` seconds (a
        node registers when it starts and every minute while it runs)."""
        return await self.store.served_handlers(since=time.time_ns() - int(within * 1e9))

    async def get(self, object_id: str, *, memory: bool = True) -> ObjectInfo:
        """The object's head and (decoded, not verified: see verify()) memory. Its status,
        result and reason are held to its signed head entry with this client's keyring: a
        row that disagrees raises IntegrityError and the object is quarantined (``peo
        resume`` repairs the row from the memory), unless a signer is a key this keyring
        lacks altogether (then only the IntegrityError: the keyring may be what is wrong)."""
        return await reads.get(self.store, object_id, self.keyring, memory=memory)

    async def list(self, *, status: str | None = None, limit: int | None = None, parent: str | None = None,
                   handler: str | None = None, after: str | None = None,
                   labels: Mapping[str, str] | None = None, deleted: bool = False) -> list[ObjectSummary]:
        """Objects ordered by id (oldest first); ``status`` may be "running". ``labels`` keeps
        only the objects carrying every one of these labels (as submitted, or inherited by a
        child; an object created before its store's upgrade to label listing matches none).
        Page through many with ``limit`` and ``after`` (the last id of the previous page).
        Deleted objects (``rm``) are left out; ``deleted=True`` lists only them."""
        return await reads.list_objects(self.store, status=status, limit=limit, parent=parent, handler=handler,
                                        after=after, labels=labels, deleted=deleted)

    async def wait(self, object_id: str, timeout: float | None = None, *, poll: float | None = None) -> Any:
        """Wait until the object terminates; return its result. On PostgreSQL the object's end
        wakes the wait (LISTEN/NOTIFY; ``poll`` is a fallback, default 2 s); on SQLite it
        polls every ``poll`` seconds (default 0.05).

        The result is the one the object's signed terminate entry records, checked with this
        client's keyring; a store row that disagrees with it raises
        :class:`~peo.errors.IntegrityError` (and the object is quarantined, as by :meth:`get`).
        Raises :class:`~peo.errors.ObjectFailedError` if it ended without ``Done`` (failed,
        cancelled, cut off, quarantined) and :class:`~peo.errors.TimeoutError` on timeout.
        """
        return await reads.wait(self.store, object_id, self.keyring, timeout, poll=poll)

    # -- verifying, export and import (see .archive) ---------------------------------------

    async def verify(self, object_id: str) -> Verification:
        """Verify the object's whole chain with this client's keyring; returns the entry
        count. Raises IntegrityError naming the first bad seq. For a fork, its origin is
        checked against its parent too: the count's ``origin`` is ``Origin.OK``, or
        ``Origin.UNVERIFIABLE`` when the parent is not in this store (not a failure)."""
        return await archive.verify(self.store, self.keyring, object_id)

    async def export(self, object_id: str) -> bytes:
        """One self-contained file: the object id, its whole memory as signed, and a trailer
        naming its head, signed with this client's key (an import refuses a file cut short)."""
        return await archive.export(self.store, object_id, self.key)

    async def import_(self, data: bytes) -> str:
        """Verify an exported object against this client's keyring, then store it.
        A tampered or untrusted file is refused with IntegrityError; nothing is written."""
        return await archive.import_(self.store, self.keyring, data)

    async def fork(self, object_id: str, *, seq: int | None = None, goal: Mapping[str, Any] | None = None) -> str:
        """A new object that starts from ``object_id``'s state at ``seq`` (default: its head),
        with its intent as of that seq (``goal`` replaces the goal); returns the new id. Its
        entry 0, signed with this client's key, records the origin (parent id, seq, entry
        hash), which :meth:`verify` checks. The parent's chain must verify; see
        :func:`peo.client.forks.fork` for the errors."""
        from . import forks

        return await forks.fork(self, object_id, seq=seq, goal=goal)

    async def history(self, object_id: str) -> builtins.list[Version]:
        """The object's versions, one per entry, oldest first: seq, time, action, writer,
        signer and a digest of the working state after it. The whole chain is verified with
        this client's keyring first (IntegrityError naming the first bad seq if it fails);
        see :func:`peo.client.versions.history`."""
        from . import versions

        return await versions.history(self, object_id)

    async def restore(self, object_id: str, *, seq: int | None = None, at: int | datetime.datetime | None = None,
                      reason: str | None = None, force: bool = False, now: int | None = None) -> int:
        """Set the object's working state back to its state at ``seq`` or at time ``at``
        (ns since the epoch, or a datetime; naive means UTC) with an entry signed by this
        client's key; returns the seq restored to. The history before it is untouched (a
        restore is undone by restoring to the seq before it) and the object runs again,
        even if it had terminated or was quarantined. See
        :func:`peo.client.versions.restore` for the refusals (UsageError, nothing written)."""
        from . import versions

        return await versions.restore(self, object_id, seq=seq, at=at, reason=reason, force=force, now=now)

    async def rm(self, object_id: str, *, reason: str | None = None, force: bool = False) -> int:
        """Delete the object: an entry signed with this client's key (a tombstone) after
        which it is left out of listings, no node claims it and signals to it are refused;
        nothing else of it changes and no data is destroyed (see :meth:`undelete`,
        :meth:`purge`). Returns the entry's seq. UsageError if a node holds it (``force``
        takes over a lease a dead node left) or it is deleted already."""
        from . import deletion

        return await deletion.rm(self, object_id, reason=reason, force=force)

    async def undelete(self, object_id: str, *, force: bool = False) -> int:
        """Bring a deleted object back exactly as it was (status, wait, due time, result),
        by an entry signed with this client's key; returns its seq. UsageError if it is
        not deleted."""
        from . import deletion

        return await deletion.undelete_object(self, object_id, force=force)

    async def purge(self, *, deleted_before: int, dry_run: bool = True) -> PurgeReport:
        """Destroy every row of the objects deleted before ``deleted_before`` (ns since the
        epoch), except those a remaining object depends on (its parent, root or fork
        origin). With ``dry_run`` (the default) nothing is written; the report says what
        would be dropped and what kept, and why."""
        from . import deletion

        return await deletion.purge(self, deleted_before=deleted_before, dry_run=dry_run)

    async def resume(self, object_id: str) -> ObjectInfo:
        """Put a quarantined object back in play once its chain verifies with this client's
        keyring (after the trust set was fixed); returns its head (and no memory) afterwards.

        The whole chain is verified again; if it passes, the head its memory folds to
        (:func:`~peo.core.head.head_of`) is written back with ``Store.requalify``. No entry
        is appended: quarantine is a flag on the head, not an entry in the chain. Raises
        IntegrityError naming the first bad seq if it still fails (nothing changes),
        UsageError if the object is not quarantined, NotFoundError for an unknown id."""
        from ..core.head import head_of
        from ..core.memory import Fold, verify_chain
        from ..core.model import Status
        from ..errors import CodecError, IntegrityError

        row = await self.store.get(object_id)
        if row.status is not Status.QUARANTINED:
            raise UsageError(f"object {object_id} is {row.status}, not quarantined: nothing to resume")
        tip, entries = verify_chain(object_id, await self.store.entries(object_id), self.keyring)
        if tip is None or tip.seq != row.seq or tip.hash != row.head:
            last = -1 if tip is None else tip.seq
            raise IntegrityError(f"the head (seq {row.seq}) does not match the memory (which ends at seq {last})",
                                 object_id=object_id, seq=row.seq)
        try:
            fold = Fold.of(entries)
        except CodecError as exc:
            raise IntegrityError(f"entry 0 does not structure: {exc}", object_id=object_id, seq=0) from None
        # Requalifying rewrites the head (status, result, reason), not what entry 0 fixes:
        # a row that disagrees with entry 0 there would only be flagged again on the next read.
        problem = row_differences(row, fold.intent, fold.context)
        if problem is not None:
            raise IntegrityError(f"{problem}: resume rebuilds only the head, so this row stays quarantined",
                                 object_id=object_id)
        now = time.time_ns()
        head = head_of(fold, now=now)
        if not await self.store.requalify(object_id, head, now=now):
            raise UsageError(f"object {object_id} is no longer quarantined (resumed meanwhile?)")
        return await self.get(object_id, memory=False)
