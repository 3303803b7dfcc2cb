"""The client: submit, signal, get, wait, cancel, list, verify, export and import.

A client signs each object's entry 0 with its own key (``.peo/keys/client.key`` unless
given), so the instantiation is as verifiable as every later step.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ._local import keyring_for, load_key
from .core.codec import Limits, check_name, check_value, packb, structure, unpackb
from .core.crypto import Keyring, SigningKey
from .core.memory import Fold, genesis, instantiation_outcome, make_entry, verify_chain
from .core.model import CANCEL_SIGNAL, Action, Constraints, Context, Entry, Intent, ObjectInfo, Status
from .core.policy import Policy
from .errors import CodecError, IntegrityError, ObjectFailedError, PolicyError, TimeoutError, UsageError
from .ids import new_id
from .store import NewObject, ObjectRow, Store, make_store

__all__ = ["EXPORT_FORMAT", "Client"]

EXPORT_FORMAT = "peo-export"
# An export holds [body, signature] pairs: 3 items per entry, so a million entries fit.
_EXPORT_LIMITS = Limits(max_bytes=256 << 20, depth=4, items=3_000_000)


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
    ):
        url = store if store is not None else os.environ.get("PEO_STORE") or "sqlite:///peo.db"
        self.store = make_store(url) if isinstance(url, str) else url
        self._owns_store = not isinstance(store, Store)
        self.identity = identity
        if policy is None:
            self.policy = Policy.default()
        elif isinstance(policy, Policy):
            self.policy = policy
        else:
            self.policy = Policy.load(policy)
        self._key_arg = key
        self._key: SigningKey | None = key if isinstance(key, SigningKey) else None
        self._keyring = keyring

    @property
    def key(self) -> SigningKey:
        if self._key is None:
            self._key = load_key(self._key_arg, "client")
        return self._key

    @property
    def keyring(self) -> Keyring:
        if self._keyring is None:
            # Reading and verifying must not create a key: trust this client's own key only
            # if it already exists (the local key directory holds its .pub anyway).
            own = [self._key] if self._key is not None else []
            self._keyring = keyring_for(self.policy, *own)
        return self._keyring

    async def __aenter__(self) -> Client:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def open(self) -> None:
        if self._owns_store:
            await self.store.open()

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
    ) -> NewObject:
        try:
            check_name(handler, "handler")
            check_name(scope, "trust scope")
        except CodecError as exc:
            raise UsageError(str(exc)) from None
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
        for name, value in (("max_failures", max_failures), ("max_steps", max_steps)):
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
        constraints = Constraints(deadline=deadline_ns, max_failures=max_failures, max_steps=max_steps)
        intent = Intent(handler, goal, constraints)
        context = Context(identity=self.identity, trust_scope=scope, priority=priority, labels=lab)
        oid = new_id()
        entry = make_entry(
            self.key, seq=0, prev=genesis(oid), timestamp=now, origin_node=f"client:{self.identity}",
            policy_ref=self.policy.ref, action=Action.INSTANTIATE,
            outcome=instantiation_outcome(oid, intent, context), trace_id=oid,
        )
        return NewObject(oid, handler, scope, self.identity, priority, None, entry, now)

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
    ) -> str:
        """Create an object; returns its id. Input is checked before anything is written."""
        obj = self._prepare(handler, goal, priority=priority, scope=scope, deadline=deadline, labels=labels,
                            max_failures=max_failures, max_steps=max_steps, now=time.time_ns())
        await self.store.create([obj])
        return obj.id

    async def submit_many(self, handler: str, goals: Sequence[Mapping[str, Any]], **options: Any) -> list[str]:
        """Create many objects in one transaction (all or none); returns their ids."""
        now = time.time_ns()
        objs = [self._prepare(handler, g, now=now, **{"priority": 0, "scope": "default", "deadline": None,
                                                       "labels": None, "max_failures": None, "max_steps": None,
                                                       **options}) for g in goals]
        if objs:
            await self.store.create(objs)
        return [o.id for o in objs]

    # -- signalling -----------------------------------------------------------------------

    async def signal(self, object_id: str, name: str, payload: Any = None) -> None:
        """Deliver a named signal (with a JSON-like payload) to an object's inbox."""
        try:
            check_name(name, "signal name")
            check_value(payload, Limits(max_bytes=self.policy.max_payload_bytes), what="payload")
        except CodecError as exc:
            raise UsageError(str(exc)) from None
        if name == CANCEL_SIGNAL:
            raise UsageError(f"{CANCEL_SIGNAL!r} is reserved: use cancel()")
        await self.store.signal(object_id, name, payload, now=time.time_ns())

    async def cancel(self, object_id: str) -> None:
        """Ask for cancellation: the next cycle terminates the object as cancelled."""
        await self.store.signal(object_id, CANCEL_SIGNAL, None, now=time.time_ns())

    # -- reading --------------------------------------------------------------------------

    async def get(self, object_id: str, *, memory: bool = True) -> ObjectInfo:
        """The object's head and (decoded, not verified: see verify()) memory."""
        row = await self.store.get(object_id)
        entries: list[Entry] = []
        if memory:
            rows = await self.store.entries(object_id)
            entries = _decode_all(rows)
        return _info(row, entries)

    async def list(self, *, status: str | None = None, limit: int | None = None) -> list[ObjectRow]:
        if status is not None and status not in {s.value for s in Status}:
            raise UsageError(f"unknown status {status!r}: use one of {', '.join(s.value for s in Status)}")
        return await self.store.list(status=status, limit=limit)

    async def wait(self, object_id: str, timeout: float | None = None, *, poll: float = 0.05) -> Any:
        """Wait until the object terminates; return its result.

        Raises :class:`~peo.errors.ObjectFailedError` if it ended without ``Done`` (failed,
        cancelled, cut off, quarantined) and :class:`~peo.errors.TimeoutError` on timeout.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            row = await self.store.get(object_id)
            if row.status == "terminated":
                if row.reason == "done":
                    return unpackb(row.result) if row.result is not None else None
                raise ObjectFailedError(object_id, "terminated", row.reason)
            if row.status == "quarantined":
                raise ObjectFailedError(object_id, "quarantined", row.reason)
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"object {object_id} is still {row.status} after {timeout} s")
            await asyncio.sleep(poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic())))

    async def verify(self, object_id: str) -> int:
        """Verify the object's whole chain with this client's keyring; returns the entry
        count. Raises IntegrityError naming the first bad seq."""
        rows = await self.store.entries(object_id)
        row = await self.store.get(object_id)
        head, entries = verify_chain(object_id, rows, self.keyring)
        if head is None:
            raise IntegrityError("the object has no entries", object_id=object_id)
        if head.seq != row.seq or head.hash != row.head:
            raise IntegrityError(
                f"the stored head (seq {row.seq}) does not match the memory (seq {head.seq})", object_id=object_id
            )
        # The head caches what the memory says; a cache that disagrees was edited.
        fold = Fold.of(entries)
        if row.status in ("terminated", "runnable", "dormant") and row.status != str(fold.status):
            raise IntegrityError(f"the head says {row.status} but the memory says {fold.status}",
                                 object_id=object_id, seq=head.seq)
        expected = packb(fold.result) if fold.status is Status.TERMINATED else None
        if row.result != expected or (fold.status is Status.TERMINATED and row.reason != fold.reason):
            raise IntegrityError("the head's cached result or reason differs from the memory",
                                 object_id=object_id, seq=head.seq)
        return len(entries)

    # -- export and import ------------------------------------------------------------------

    async def export(self, object_id: str) -> bytes:
        """One self-contained file: the object id and its whole memory, as signed."""
        await self.store.get(object_id)  # NotFoundError for an unknown id
        rows = await self.store.entries(object_id)
        return packb({"format": EXPORT_FORMAT, "v": 1, "id": object_id, "entries": [[b, s] for b, s in rows]})

    async def import_(self, data: bytes) -> str:
        """Verify an exported object against this client's keyring, then store it.
        A tampered or untrusted file is refused with IntegrityError; nothing is written."""
        doc = unpackb(data, _EXPORT_LIMITS)
        if not isinstance(doc, dict) or doc.get("format") != EXPORT_FORMAT:
            raise CodecError("not a peo export file")
        if doc.get("v") != 1:
            raise CodecError(f"unsupported export version {doc.get('v')!r}")
        oid, raw = doc.get("id"), doc.get("entries")
        if not isinstance(oid, str) or not isinstance(raw, list) or not raw:
            raise CodecError("export file has no id or no entries")
        rows = []
        for pair in raw:
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, bytes) for x in pair)):
                raise CodecError("export file entries must be [body, signature] pairs")
            rows.append((pair[0], pair[1]))
        _, entries = verify_chain(oid, rows, self.keyring)
        fold = Fold.of(entries)
        now = time.time_ns()
        first = entries[0]
        ctx = fold.context
        status, due, wait_signal, wait_children = str(fold.status), None, None, False
        if fold.status is Status.RUNNABLE:
            due = now
        elif fold.status is Status.DORMANT:
            wait = fold.wait or {}
            due, wait_signal, wait_children = wait.get("until"), wait.get("signal"), bool(wait.get("children"))
        result = packb(fold.result) if fold.status is Status.TERMINATED else None
        await self.store.import_object(
            NewObject(oid, fold.intent.handler, ctx.trust_scope, ctx.identity, ctx.priority, ctx.parent, first, now),
            entries[1:], status=status, due_at=due, wait_signal=wait_signal, wait_children=wait_children,
            result=result, reason=fold.reason, now=now,
        )
        return oid


def _decode_all(rows: Sequence[tuple[bytes, bytes]]) -> list[Entry]:
    import hashlib

    from .core.codec import decode_body

    out = []
    for body, sig in rows:
        try:
            out.append(decode_body(body, sig, hashlib.sha256(body).digest()))
        except CodecError:
            break  # show what decodes; verify() says what is wrong
    return out


def _info(row: ObjectRow, entries: list[Entry]) -> ObjectInfo:
    intent, context, state = Intent(row.handler), Context(identity=row.identity, trust_scope=row.scope), {}
    if entries and entries[0].action is Action.INSTANTIATE:
        try:
            fold = Fold.of(entries)
            intent, context, state = fold.intent, fold.context, dict(fold.state)
        except (CodecError, KeyError, TypeError, ValueError, IntegrityError):
            try:
                intent = structure(entries[0].outcome.get("intent"), Intent)
                context = structure(entries[0].outcome.get("context"), Context)
            except CodecError:
                pass
    result = None
    if row.result is not None:
        try:
            result = unpackb(row.result)
        except CodecError:
            result = None
    return ObjectInfo(
        id=row.id, status=Status(row.status_at(time.time_ns())), intent=intent, context=context, seq=row.seq,
        result=result, reason=row.reason, memory=tuple(entries), state=state,
    )

