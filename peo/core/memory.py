"""The memory chain: building signed entries, verifying chains, folding them into a head.

Each entry's hash is the SHA-256 of its signed body; entry N+1 carries entry N's hash in
``prev``; entry 0 carries :func:`genesis` of the object id and records the object id,
the initial intent and the initial context, so a chain cannot be moved to another object.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import attrs

from ..errors import CodecError, IntegrityError
from .codec import DEFAULT_LIMITS, Limits, decode_body, encode_body, packb, read_back, structure, unstructure
from .crypto import Keyring, SigningKey
from .model import Action, Constraints, Context, Entry, Intent, Signal, Status
from .wake import Wake

__all__ = ["Fold", "Verified", "genesis", "instantiation_outcome", "make_entry", "state_at", "verify_chain"]


def genesis(object_id: str) -> bytes:
    """The ``prev`` of entry 0: binds the chain to its object id."""
    return hashlib.sha256(b"peo-object\x00" + object_id.encode()).digest()


def make_entry(
    key: SigningKey,
    *,
    seq: int,
    prev: bytes,
    timestamp: int,
    origin_node: str,
    policy_ref: str,
    action: Action,
    outcome: dict[str, Any],
    trace_id: str,
) -> Entry:
    """Encode, sign and hash one entry.

    The returned entry is decoded from the signed bytes, so its ``outcome`` is exactly what
    any later reader of the stored memory sees (tuples become lists, nothing aliases the
    caller's objects), and an outcome that could not be read back is refused here with
    CodecError instead of being written.
    """
    body = encode_body(
        seq=seq,
        trace_id=trace_id,
        timestamp=timestamp,
        origin_node=origin_node,
        policy_ref=policy_ref,
        action=action,
        outcome=outcome,
        prev=prev,
        signer=key.key_id,
    )
    return Entry(
        seq=seq,
        trace_id=trace_id,
        timestamp=timestamp,
        origin_node=origin_node,
        policy_ref=policy_ref,
        action=action,
        outcome=read_back(body),
        prev=prev,
        signer=key.key_id,
        signature=key.sign(body),
        body=body,
        hash=hashlib.sha256(body).digest(),
    )


def instantiation_outcome(object_id: str, intent: Intent, context: Context, *, state: dict[str, Any] | None = None,
                          fork: dict[str, Any] | None = None) -> dict[str, Any]:
    """Entry 0's outcome. A fork's also records its origin (``fork``: the parent's ``object``
    id, the ``seq`` it was forked at and that entry's ``hash``, hex) and the ``state`` it
    starts from (the parent's at that seq); both are left out of any other entry 0."""
    out = {"object_id": object_id, "intent": unstructure(intent), "context": unstructure(context)}
    if fork is not None:
        out["fork"] = fork
    if state:
        out["state"] = state
    return out


@attrs.frozen
class Verified:
    """A verified position in a chain: the last seq and its hash, and the trust scope."""

    object_id: str
    seq: int
    hash: bytes
    scope: str


def verify_chain(
    object_id: str,
    rows: Iterable[tuple[bytes, bytes]],
    keyring: Keyring,
    *,
    start: Verified | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> tuple[Verified | None, list[Entry]]:
    """Verify ``(body, signature)`` rows continuing from ``start`` (or from entry 0).

    Checks, per entry: it decodes within limits, its seq is the next one, its ``prev`` is
    the previous hash (or the genesis of ``object_id``), its signer is trusted by the
    *verifier's* keyring for the object's trust scope, and its signature covers the exact
    stored bytes. Raises :class:`IntegrityError` naming the first bad seq.
    """
    head = start
    out: list[Entry] = []
    for body, signature in rows:
        expect = 0 if head is None else head.seq + 1
        digest = hashlib.sha256(body).digest()
        try:
            entry = decode_body(body, signature, digest, limits)
        except CodecError as exc:
            raise IntegrityError(f"entry does not decode: {exc}", object_id=object_id, seq=expect) from None
        if entry.seq != expect:
            raise IntegrityError(f"expected seq {expect}, found seq {entry.seq}", object_id=object_id, seq=expect)
        if head is None:
            if entry.action is not Action.INSTANTIATE:
                raise IntegrityError("entry 0 is not an instantiation", object_id=object_id, seq=0)
            if entry.prev != genesis(object_id) or entry.outcome.get("object_id") != object_id:
                raise IntegrityError("entry 0 is not bound to this object id", object_id=object_id, seq=0)
            scope = _scope_of(entry, object_id)
        else:
            if entry.action is Action.INSTANTIATE:
                raise IntegrityError("instantiation after entry 0", object_id=object_id, seq=entry.seq)
            if entry.prev != head.hash:
                raise IntegrityError("hash link broken", object_id=object_id, seq=entry.seq)
            scope = head.scope
        if len(signature) != 64:
            raise IntegrityError("signature is not 64 bytes", object_id=object_id, seq=entry.seq)
        try:
            keyring.verify(entry.signer, scope, body, signature, seq=entry.seq)
        except IntegrityError as exc:
            raise IntegrityError(exc.reason, object_id=object_id, seq=entry.seq) from None
        head = Verified(object_id, entry.seq, digest, scope)
        out.append(entry)
    return head, out


def _scope_of(entry: Entry, object_id: str) -> str:
    try:
        context = structure(entry.outcome.get("context"), Context)
        structure(entry.outcome.get("intent"), Intent)
    except CodecError as exc:
        raise IntegrityError(f"entry 0 has an invalid intent or context: {exc}", object_id=object_id, seq=0) from None
    return context.trust_scope


def _state_size(key: str, value: Any) -> int:
    """What one key of an object's state counts toward its size."""
    return len(key) + len(packb(value))


def state_at(entries: Sequence[Entry], seq: int) -> dict[str, Any]:
    """The working state after entry ``seq`` of a verified memory (``entries`` from seq 0):
    what a restore to ``seq`` sets the state back to."""
    state: dict[str, Any] = {}
    for entry in entries:
        if entry.seq > seq:
            break
        out = entry.outcome
        reset = out.get("reset")
        if reset is not None:
            state = dict(reset)
        update = out.get("state")
        if update:
            state.update(update)
    return state


class Fold:
    """The running summary of a verified chain: what the cycle and the handler read.

    It is updated in place, one entry at a time (:meth:`apply`), so the cost of a step is
    proportional to its own state update, never to the length of the history.

    :attr:`state_bytes` is the size of the folded state (about its packed size: each
    value's packed size plus its key's length), kept per key and measured only for the keys
    a state update touched, so its cost never grows with the history or the whole state.
    It is measured lazily: :meth:`apply` only notes the keys an update touched and adds the
    entry's size to :attr:`state_bound`, an upper bound of the state's size (an update is
    part of its entry), so that a step far below the policy's ceiling measures nothing.
    ``signal_nonces`` are the nonces of every signal the memory records, so that a
    replayed signal can be refused.
    """

    __slots__ = (
        "_state_bound",
        "_state_sizes",
        "_state_total",
        "_unmeasured",
        "attempt_seq",
        "cannot_do",
        "checkpoint_seq",
        "children",
        "class_streak",
        "consecutive_failures",
        "context",
        "deleted",
        "failures",
        "fork",
        "hash",
        "intent",
        "known_good_seq",
        "last_error_class",
        "last_latency",
        "object_id",
        "pending_signals",
        "reason",
        "restore_target",
        "restored_seq",
        "result",
        "seq",
        "shed",
        "signal_nonces",
        "state",
        "status",
        "steps",
        "wait",
    )

    def __init__(self, first: Entry):
        outcome = first.outcome
        self.object_id: str = outcome["object_id"]
        self.intent: Intent = structure(outcome["intent"], Intent)
        self.context: Context = structure(outcome["context"], Context)
        self.seq = first.seq
        self.hash = first.hash
        self.status = Status.RUNNABLE
        self.state: dict[str, Any] = dict(outcome.get("state") or {})  # a fork starts from its parent's
        # Where a fork came from ({object, seq, hash}), and whether an operator deleted the
        # object (a tombstone entry; an undelete entry clears it, the rest of the head unchanged).
        self.fork: dict[str, Any] | None = outcome.get("fork")
        self.deleted = False
        # The state's size: measured per key (_state_sizes, summed in _state_total) except
        # for the keys updated since the last measurement (_unmeasured); _state_bound is at
        # least the size, unmeasured keys included.
        self._state_sizes: dict[str, int] = {}
        self._state_total = 0
        self._unmeasured: set[str] = set(self.state)
        self._state_bound = len(first.body) if self.state else 0
        self.signal_nonces: set[str] = set()
        self.result: Any = None
        self.reason: str | None = None
        self.consecutive_failures = 0
        self.failures = 0
        self.steps = 0
        self.wait: dict[str, Any] | None = None
        self.pending_signals: tuple[Signal, ...] = ()
        self.children: list[str] = []
        self.cannot_do: set[str] = set()
        self.last_latency = 0
        self.last_error_class: str | None = None
        # Failed steps in a row of the error class last_error_class (self-healing tier 3).
        self.class_streak = 0
        # Why the node shed the object (``memory``) while it sleeps from a shed; else None.
        self.shed: str | None = None
        # The seq of the first attempt of the step in progress, once an attempt has failed:
        # every attempt of one step shares its idempotency key ("object id:attempt_seq")
        # until the step succeeds. None: the next step starts afresh at seq + 1.
        self.attempt_seq: int | None = None
        # Self-healing (peo.healing): the seq of the last step that succeeded, of the last
        # one a handler marked as a checkpoint, of the last restore entry, and the seq that
        # restore went back to.
        self.known_good_seq = first.seq
        self.checkpoint_seq: int | None = None
        self.restored_seq: int | None = None
        self.restore_target: int | None = None

    @property
    def known_good(self) -> int:
        """The seq whose state a self-healing restore goes back to: the last checkpoint a
        handler marked, else the last step that succeeded."""
        return self.checkpoint_seq if self.checkpoint_seq is not None else self.known_good_seq

    def _failed(self, error_class: str | None) -> None:
        """Count a failed step of ``error_class`` in :attr:`class_streak` (before
        :attr:`consecutive_failures` counts it)."""
        same = self.consecutive_failures > 0 and error_class == self.last_error_class
        self.class_streak = self.class_streak + 1 if same else 1
        self.last_error_class = error_class

    @classmethod
    def of(cls, entries: Sequence[Entry]) -> Fold:
        fold = cls(entries[0])
        for entry in entries[1:]:
            fold.apply(entry)
        return fold

    @property
    def wake(self) -> Wake:
        """What a dormant object waits for (empty for any other status)."""
        return Wake.from_outcome(self.wait)

    def state_view(self) -> MappingProxyType[str, Any]:
        return MappingProxyType(self.state)

    @property
    def state_bytes(self) -> int:
        """The size of the folded state (measuring the keys updated since it was last asked)."""
        pending = self._unmeasured
        if pending:
            sizes, state, total = self._state_sizes, self.state, self._state_total
            for key in pending:
                size = _state_size(key, state[key])
                total += size - sizes.get(key, 0)
                sizes[key] = size
            pending.clear()
            self._state_total = self._state_bound = total
        return self._state_total

    @property
    def state_bound(self) -> int:
        """At least :attr:`state_bytes`, known without measuring anything."""
        return self._state_bound

    def state_bytes_after(self, update: Mapping[str, Any]) -> int:
        """What :attr:`state_bytes` would be after ``update`` (plain data, with str keys)."""
        total = self.state_bytes
        sizes = self._state_sizes
        for key, value in update.items():
            total += _state_size(key, value) - sizes.get(key, 0)
        return total

    def apply(self, entry: Entry) -> None:
        """Advance the summary past ``entry`` (which must be the next verified entry)."""
        out = entry.outcome
        self.seq = entry.seq
        self.hash = entry.hash
        if "tombstone" in out or "undelete" in out:  # an operator's delete or undelete: nothing else changes
            self.deleted = "tombstone" in out
            return
        reset = out.get("reset")
        if reset is not None:  # a restore: the whole state as it was at an earlier seq
            self.result = self.reason = None  # a terminated object restored runs again
            self.state = dict(reset)
            self._state_sizes, self._state_total = {}, 0
            self._unmeasured = set(self.state)
            self._state_bound = len(entry.body)
            self.restored_seq = entry.seq
            self.restore_target = out.get("restore", {}).get("seq")
        update = out.get("state")
        if update:
            self.state.update(update)
            self._unmeasured.update(update)
            self._state_bound += len(entry.body)
        recorded = out.get("signals")
        if recorded:
            for signal in recorded:
                nonce = signal.get("nonce") if isinstance(signal, dict) else None
                if isinstance(nonce, str):
                    self.signal_nonces.add(nonce)
        action = entry.action
        if "latency" in out:
            self.last_latency = out["latency"]
        if action is Action.EXECUTE or action is Action.DELEGATE or action is Action.MUTATE:
            self.steps += 1
            self.pending_signals = ()
            kind = out.get("status", "ok")
            if kind == "ok":
                self.consecutive_failures = 0
                self.class_streak = 0
                self.attempt_seq = None
                if reset is None:
                    self.known_good_seq = entry.seq
                    if out.get("checkpoint") is True:
                        self.checkpoint_seq = entry.seq
            elif kind in ("refused", "invalid"):
                self.class_streak = 0  # the policy's answer to a proposal, not a fault to heal
                self.consecutive_failures += 1
                self.failures += 1
                if self.attempt_seq is None:
                    self.attempt_seq = entry.seq
            elif kind == "cannot_do":
                self.cannot_do.add(out["capability"])
                self.attempt_seq = None
            if action is Action.MUTATE:
                new = out["new"]
                if "goal" in new:
                    self.intent = attrs.evolve(self.intent, goal=new["goal"])
                if "constraints" in new:
                    self.intent = attrs.evolve(self.intent, constraints=structure(new["constraints"], Constraints))
            elif action is Action.DELEGATE:
                self.children.extend(c["id"] for c in out["children"])
                self.wait = {"children": True} if out.get("wait") else None
                self.status = Status.DORMANT if self.wait else Status.RUNNABLE
                return
            self.status = Status.RUNNABLE
            self.wait = None
            self.shed = None
        elif action is Action.DORMANCY:
            self.steps += 1
            self.pending_signals = ()
            kind = out.get("status")
            self.shed = None
            if kind == "failed":
                self._failed(out.get("error", {}).get("class"))
                self.consecutive_failures += 1
                self.failures += 1
                if self.attempt_seq is None:
                    self.attempt_seq = entry.seq
            elif kind == "shed":  # a node shedding load is neither a success nor a failure
                self.shed = str(out.get("shed"))
            else:
                self.consecutive_failures = 0
                self.class_streak = 0
                self.attempt_seq = None
                self.known_good_seq = entry.seq
            self.status = Status.DORMANT
            self.wait = out["wake"]
        elif action is Action.REENTRY:
            self.status = Status.RUNNABLE
            self.wait = None
            self.shed = None
            self.pending_signals = tuple(
                Signal(s["name"], s.get("payload"), s.get("id", 0), sender=s.get("sender"))
                for s in out.get("signals", ())
            )
        elif action is Action.TERMINATE:
            self.status = Status.TERMINATED
            self.attempt_seq = None
            self.reason = out.get("reason")
            self.result = out.get("result")
            if out.get("status") in ("failed", "refused", "invalid"):
                self.failures += 1
            self.wait = None
        elif action is Action.INSTANTIATE:  # pragma: no cover - verify_chain refuses it
            raise IntegrityError("instantiation after entry 0", object_id=self.object_id, seq=entry.seq)
