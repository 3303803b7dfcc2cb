"""Signed signals: the seal a sender puts on a signal, and the node's check before delivery.

A signal is often an authorization (approve a payment, release a deploy), so it must say
who sent it, and the inbox, like everything in the store, is not trusted. The sender signs
one message binding the object id, the signal's name and payload, a nonce and the time
(:func:`message`); the inbox row carries that :class:`Seal`. Before a node hands a signal to
a cycle it checks it (:func:`screen`): sealed, signed by a key the node trusts, allowed to
send this name to an object of this trust scope (the policy's ``[signals]`` rules), not a
copy of one delivered before (its nonce), and small enough to be recorded. The entry that
consumes a signal records it as received (:func:`recorded`), seal included, so a verifier
re-checks who sent each signal long after (:func:`verify_recorded`).

Pure: the nonce and the time are passed in; signing takes the key as a value.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence, Set
from typing import Any

import attrs

from ..errors import CodecError, IntegrityError
from .codec import DEFAULT_LIMITS, Limits, check_value, packb, unpackb
from .crypto import Keyring, SigningKey
from .model import Entry, Signal
from .policy import Policy

__all__ = [
    "DOMAIN",
    "Refusal",
    "Seal",
    "allowed_sender",
    "check",
    "message",
    "recorded",
    "screen",
    "seal",
    "signal_limits",
    "unsigned_count",
    "verify_recorded",
]

#: Domain separation: a signal signature can never pass for an entry's, or the reverse.
DOMAIN = "peo-signal-v1"

# A seal is tiny; anything larger in the inbox's seal column was not written by peo.
_SEAL_LIMITS = Limits(max_bytes=512, depth=2, items=8)


@attrs.frozen
class Seal:
    """Who signed a signal (key id), its nonce (hex, unique per signal), when it was sent
    (ns) and the Ed25519 signature over :func:`message`."""

    signer: str
    nonce: str
    sent_at: int
    signature: bytes

    def encode(self) -> bytes:
        """The bytes the inbox's seal column holds."""
        return packb([1, self.signer, self.nonce, self.sent_at, self.signature])

    @classmethod
    def decode(cls, data: bytes) -> Seal:
        """A seal from the inbox; CodecError if it is not one."""
        raw = unpackb(data, _SEAL_LIMITS)
        if not (isinstance(raw, list) and len(raw) == 5 and raw[0] == 1):
            raise CodecError("not a version-1 signal seal")
        _, signer, nonce, sent_at, signature = raw
        if not (isinstance(signer, str) and isinstance(nonce, str) and 0 < len(nonce) <= 64
                and isinstance(sent_at, int) and not isinstance(sent_at, bool)
                and isinstance(signature, bytes) and len(signature) == 64):
            raise CodecError("malformed signal seal")
        return cls(signer, nonce, sent_at, signature)


def signal_limits(policy: Policy) -> Limits:
    """What one signal's payload may be: what the policy allows a payload, nested as deep as
    an entry records a signal (body, outcome, signals, signal: four levels), so that the
    entry that receives it can always be written."""
    return Limits(max_bytes=policy.max_payload_bytes, depth=DEFAULT_LIMITS.depth - 4)


def message(object_id: str, name: str, payload: Any, *, nonce: str, sent_at: int, signer: str) -> bytes:
    """The exact bytes a sender signs: the signal bound to one object, one nonce, one time."""
    return packb([DOMAIN, object_id, name, payload, nonce, sent_at, signer])


def seal(key: SigningKey, object_id: str, name: str, payload: Any, *, nonce: str, sent_at: int) -> Seal:
    """Sign a signal to ``object_id`` with ``key``."""
    body = message(object_id, name, payload, nonce=nonce, sent_at=sent_at, signer=key.key_id)
    return Seal(key.key_id, nonce, sent_at, key.sign(body))


@attrs.frozen
class Refusal:
    """A signal the node will not deliver, and why (recorded beside the inbox, never in it)."""

    id: int
    name: str
    reason: str
    sender: str | None = None


def allowed_sender(keyring: Keyring, signer: str, scopes: frozenset[str], name: str, object_scope: str,
                   rules: frozenset[str] | None) -> str | None:
    """Why ``signer`` (trusted for ``scopes``) may not send ``name`` to an object in
    ``object_scope``, or None. ``rules`` are the senders the policy names for this signal
    and scope (trust scopes the sender's key must hold, or hex public keys; "*": any trusted
    key); None: no rule, so the key must be trusted for the object's own scope."""
    if rules is None:
        if "*" in scopes or object_scope in scopes:
            return None
        return f"key {signer} is not trusted for scope {object_scope!r}"
    if "*" in rules or scopes & rules or keyring.public_hex(signer) in rules:
        return None
    return f"the policy does not allow key {signer} to send {name!r} to objects in scope {object_scope!r}"


def check(signal: Signal, *, object_id: str, scope: str, keyring: Keyring, seen: Set[str],
          senders: frozenset[str] | None, accept_unsigned: bool,
          limits: Limits) -> tuple[Signal | None, str, Seal | None]:
    """(the signal as delivered, with its sender, or None; why it is refused, if it is;
    its seal, if it has a readable one)."""
    if signal.seal is None:
        if accept_unsigned:
            return signal, "", None
        return None, "unsigned (not sent through peo, or by a peo older than signed signals)", None
    try:
        s = Seal.decode(signal.seal)
    except CodecError as exc:
        return None, f"malformed seal: {exc}", None
    if s.nonce in seen:
        return None, f"replayed: nonce {s.nonce} was delivered before", s
    body = message(object_id, signal.name, signal.payload, nonce=s.nonce, sent_at=s.sent_at, signer=s.signer)
    try:
        scopes = keyring.check(s.signer, body, s.signature)
    except IntegrityError as exc:
        return None, exc.reason, s
    why = allowed_sender(keyring, s.signer, scopes, signal.name, scope, senders)
    if why:
        return None, why, s
    try:
        check_value(signal.payload, limits, what="payload")
    except CodecError as exc:
        return None, f"cannot be recorded: {exc}", s
    return attrs.evolve(signal, sender=s.signer), "", s


def screen(signals: Iterable[Signal], *, object_id: str, scope: str, keyring: Keyring, seen: Set[str],
           rules: Any, accept_unsigned: bool, limits: Limits,
           budget: int) -> tuple[list[Signal], list[Refusal]]:
    """Split ``signals`` (oldest first) into those to deliver and those to refuse.

    ``rules(name, scope)`` gives the policy's senders for a signal name and object scope
    (:meth:`~peo.core.policy.Policy.signal_senders`); ``seen`` holds the nonces the object
    has already recorded; ``budget`` bounds the packed size of the payloads delivered in one
    batch (the first signal always fits, if it passes the checks): the rest stays in the
    inbox for the next step, so one entry never has to hold more than it can.
    """
    out: list[Signal] = []
    refused: list[Refusal] = []
    batch_nonces: set[str] = set()
    used = 0
    for sig in signals:
        ok, why, s = check(sig, object_id=object_id, scope=scope, keyring=keyring, seen=seen,
                           senders=rules(sig.name, scope), accept_unsigned=accept_unsigned, limits=limits)
        sender = s.signer if s is not None else None
        if ok is None:
            refused.append(Refusal(sig.id, sig.name, why, sender))
            continue
        if s is not None:
            if s.nonce in batch_nonces:  # the same sealed signal copied twice into the inbox
                refused.append(Refusal(sig.id, sig.name, f"replayed: nonce {s.nonce} appears twice", sender))
                continue
            batch_nonces.add(s.nonce)
        size = len(packb(ok.payload))
        if out and used + size > budget:
            break
        used += size
        out.append(ok)
    return out, refused


def recorded(signal: Signal) -> dict[str, Any]:
    """A signal as an entry records it: as received, with its seal (if it had one)."""
    out: dict[str, Any] = {"id": signal.id, "name": signal.name, "payload": signal.payload}
    if signal.seal is not None:
        s = Seal.decode(signal.seal)
        out.update(sender=s.signer, nonce=s.nonce, sent_at=s.sent_at, sig=s.signature)
    return out


def verify_recorded(object_id: str, memory: Sequence[Entry], keyring: Keyring) -> list[tuple[int, str]]:
    """Re-check every sealed signal the memory records: (seq, problem) for each that does
    not verify with ``keyring`` (an auditor's check of who sent what). Signals recorded
    without a seal (before signals were signed, or by a node whose policy accepted unsigned
    ones) are not errors here: they are counted by :func:`unsigned_count`."""
    problems: list[tuple[int, str]] = []
    for entry in memory:
        for s in entry.outcome.get("signals", ()) or ():
            if not isinstance(s, dict) or "sig" not in s:
                continue
            try:
                body = message(object_id, s["name"], s.get("payload"), nonce=s["nonce"], sent_at=s["sent_at"],
                               signer=s["sender"])
                keyring.check(s["sender"], body, s["sig"])
            except (KeyError, TypeError, CodecError) as exc:
                problems.append((entry.seq, f"signal {s.get('name')!r}: malformed record: {exc}"))
            except IntegrityError as exc:
                problems.append((entry.seq, f"signal {s.get('name')!r} from {s.get('sender')}: {exc.reason}"))
    return problems


def unsigned_count(memory: Sequence[Entry]) -> int:
    """How many signals the memory records without a seal."""
    return sum(1 for e in memory for s in (e.outcome.get("signals", ()) or ())
               if isinstance(s, dict) and "sig" not in s)
