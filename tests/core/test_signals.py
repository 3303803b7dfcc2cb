"""Signed signals, checked purely: a seal binds a signal to one object, name, payload, nonce
and time; a node delivers only what a trusted, allowed key sealed, once, and what an entry
can hold; an auditor re-checks the seals a memory records."""

from __future__ import annotations

from typing import Any

import attrs
import pytest

from peo.core import signals
from peo.core.codec import Limits
from peo.core.crypto import Keyring
from peo.core.model import Action, Signal
from peo.core.signals import Seal

from ._helpers import KEY, OTHER_KEY, chain, keyring

OID = "obj-1"
LIMITS = Limits(max_bytes=262_144, depth=28)


def sealed(name: str = "approve", payload: Any = None, *, oid: str = OID, key: Any = KEY, nonce: str = "n1",
           sid: int = 1, sent_at: int = 5) -> Signal:
    s = signals.seal(key, oid, name, payload, nonce=nonce, sent_at=sent_at)
    return Signal(name, payload, sid, seal=s.encode())


def screen(batch: list[Signal], *, ring: Keyring | None = None, seen: frozenset[str] = frozenset(),
           rules: Any = None, scope: str = "default", unsigned: bool = False,
           budget: int = 1 << 20) -> tuple[list[Signal], list[signals.Refusal]]:
    return signals.screen(batch, object_id=OID, scope=scope, keyring=ring or keyring(), seen=seen,
                          rules=rules or (lambda name, scope: None), accept_unsigned=unsigned, limits=LIMITS,
                          budget=budget)


def test_a_seal_round_trips_through_the_inbox_column() -> None:
    s = signals.seal(KEY, OID, "approve", {"ok": True}, nonce="abc", sent_at=7)
    assert Seal.decode(s.encode()) == s
    assert s.signer == KEY.key_id and len(s.signature) == 64


@pytest.mark.parametrize("junk", [b"", b"\x91\x01", b"\x95\x02\xa1a\xa1b\x01\xc4\x01x", b"\xc1"])
def test_anything_else_in_the_seal_column_is_refused_as_malformed(junk: bytes) -> None:
    good, refused = screen([Signal("approve", None, 1, seal=junk)])
    assert good == [] and "malformed seal" in refused[0].reason


def test_a_sealed_signal_from_a_trusted_key_is_delivered_with_its_sender() -> None:
    good, refused = screen([sealed(payload={"amount": 10})])
    assert refused == [] and [(s.name, s.payload, s.sender) for s in good] == [("approve", {"amount": 10}, KEY.key_id)]


def test_an_unsigned_signal_is_refused_unless_the_policy_accepts_unsigned_ones() -> None:
    plain = Signal("approve", {"ok": True}, 3)
    good, refused = screen([plain])
    assert good == [] and refused[0].id == 3 and refused[0].reason.startswith("unsigned")
    assert screen([plain], unsigned=True)[0] == [plain]


@pytest.mark.parametrize("change", ["name", "payload", "object"])
def test_a_seal_does_not_cover_another_name_payload_or_object(change: str) -> None:
    s = sealed(payload={"amount": 10})
    forged = {"name": attrs.evolve(s, name="release"), "payload": attrs.evolve(s, payload={"amount": 10**6}),
              "object": sealed(payload={"amount": 10}, oid="other-object")}[change]
    good, refused = screen([forged])
    assert good == [] and refused[0].reason == "bad signature"


def test_a_key_the_node_does_not_trust_is_refused() -> None:
    good, refused = screen([sealed(key=OTHER_KEY)])
    assert good == [] and refused[0].reason == f"signed by untrusted key {OTHER_KEY.key_id}"
    assert refused[0].sender == OTHER_KEY.key_id


def test_a_replayed_nonce_is_refused_whether_recorded_before_or_copied_twice_into_the_inbox() -> None:
    good, refused = screen([sealed(nonce="n1", sid=1)], seen=frozenset({"n1"}))
    assert good == [] and refused[0].reason.startswith("replayed")
    good, refused = screen([sealed(nonce="n2", sid=1), sealed(nonce="n2", sid=2)])
    assert [s.id for s in good] == [1] and [r.id for r in refused] == [2]


def test_without_a_rule_the_sender_must_be_trusted_for_the_objects_scope() -> None:
    ring = keyring(KEY, scopes=("partner",))
    good, refused = screen([sealed()], ring=ring, scope="payments")
    assert good == [] and refused[0].reason == f"key {KEY.key_id} is not trusted for scope 'payments'"
    assert screen([sealed()], ring=ring, scope="partner")[0] != []


def test_a_rule_names_who_may_send_a_signal_to_objects_of_a_scope() -> None:
    ring = keyring(KEY, scopes=("ops",))
    ring.trust(OTHER_KEY.public_key, ["payments"])

    def rules(name: str, scope: str) -> frozenset[str] | None:
        return frozenset({"ops"}) if (name, scope) == ("approve", "payments") else None

    approve_by_ops = sealed(key=KEY, nonce="a")
    approve_by_payments = sealed(key=OTHER_KEY, nonce="b", sid=2)
    good, refused = screen([approve_by_ops, approve_by_payments], ring=ring, rules=rules, scope="payments")
    assert [s.sender for s in good] == [KEY.key_id]
    assert refused[0].reason.startswith(f"the policy does not allow key {OTHER_KEY.key_id} to send 'approve'")
    by_hex = screen([approve_by_payments], ring=ring, scope="payments",
                    rules=lambda n, s: frozenset({OTHER_KEY.public_key.hex()}))[0]
    assert [s.sender for s in by_hex] == [OTHER_KEY.key_id]


def test_a_payload_deeper_than_an_entry_can_record_is_refused() -> None:
    deep: Any = []
    for _ in range(29):
        deep = [deep]
    good, refused = screen([sealed(payload=deep)])
    assert good == [] and refused[0].reason.startswith("cannot be recorded")


def test_a_batch_stops_at_its_byte_budget_and_the_rest_waits() -> None:
    batch = [sealed("note", "x" * 1000, nonce=f"n{i}", sid=i) for i in range(10)]
    good, refused = screen(batch, budget=3500)
    assert [s.id for s in good] == [0, 1, 2] and refused == []
    one, _ = screen(batch[:1], budget=10)
    assert len(one) == 1  # the first always fits: nothing waits forever


def test_an_auditor_re_checks_every_recorded_seal() -> None:
    ok = signals.recorded(sealed(payload={"amount": 10}))
    forged = {**ok, "payload": {"amount": 10**6}}
    memory = chain(OID, [(Action.REENTRY, {"trigger": "signal", "signals": [ok]}),
                         (Action.EXECUTE, {"status": "ok", "signals": [forged, {"id": 9, "name": "x"}]})])
    assert signals.verify_recorded(OID, memory, keyring()) == [(2, "signal 'approve' from "
                                                                   f"{KEY.key_id}: bad signature")]
    assert signals.unsigned_count(memory) == 1
    assert signals.verify_recorded(OID, memory[:2], Keyring()) == [(1, f"signal 'approve' from {KEY.key_id}: "
                                                                       f"signed by untrusted key {KEY.key_id}")]
