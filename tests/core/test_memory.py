"""The signed, hash-chained memory: making entries, verifying chains, folding them."""

from __future__ import annotations

import hashlib

import msgpack
import nacl.signing
import pytest

from peo.core.codec import Limits
from peo.core.memory import Fold, Verified, genesis, make_entry, verify_chain
from peo.core.model import Action, Constraints, Context, Intent, Signal, Status
from peo.errors import CodecError, IntegrityError

from ._helpers import KEY, OTHER_KEY, chain, follow, instantiate, keyring, rows

OUTCOMES = [
    (Action.EXECUTE, {"status": "ok", "state": {"a": 1, "b": [1, 2]}}),
    (Action.EXECUTE, {"status": "ok", "state": {"a": 2}}),
    (Action.DORMANCY, {"status": "ok", "wake": {"until": 99}}),
    (Action.REENTRY, {"trigger": "time"}),
    (Action.TERMINATE, {"reason": "done", "result": {"total": 3}}),
]


# -- making entries ------------------------------------------------------------------------


def test_the_genesis_hash_binds_a_chain_to_its_object_id() -> None:
    assert genesis("a") == hashlib.sha256(b"peo-object\x00a").digest()
    assert genesis("a") != genesis("b")
    assert instantiate("a").prev == genesis("a")


def test_an_entry_hash_is_the_sha256_of_its_signed_body() -> None:
    entry = instantiate()
    assert entry.hash == hashlib.sha256(entry.body).digest()
    nacl.signing.VerifyKey(KEY.public_key).verify(entry.body, entry.signature)
    assert entry.signer == KEY.key_id


def test_entry_identity_is_the_content_hash_not_the_signature() -> None:
    # Two signers of the same content produce different signatures but, had they the same
    # key id, the same hash: identity must not depend on signature bytes. Same key, same
    # content: same hash and (Ed25519 being deterministic) same signature.
    a, b = instantiate("x"), instantiate("x")
    assert a.hash == b.hash
    c = instantiate("x", key=OTHER_KEY)
    assert c.hash != a.hash  # the signer id is part of the signed content
    assert hashlib.sha256(c.body).digest() == c.hash


def test_a_made_entry_reads_back_exactly_as_a_later_reader_of_the_memory_sees_it() -> None:
    entry = follow(instantiate(), Action.EXECUTE, {"state": {"pos": (1, 2)}, "status": "ok"})
    assert entry.outcome == {"state": {"pos": [1, 2]}, "status": "ok"}
    _, read = verify_chain("obj-1", rows([instantiate(), entry]), keyring())
    assert read[1] == entry


def test_an_outcome_that_could_not_be_read_back_is_refused_before_it_is_written() -> None:
    with pytest.raises(CodecError):
        follow(instantiate(), Action.EXECUTE, {"state": {1: "non-string key"}})
    with pytest.raises(CodecError):
        follow(instantiate(), Action.EXECUTE, {"n": 2**64})


# -- verifying chains ------------------------------------------------------------------------


def test_a_whole_chain_verifies_and_ends_at_a_head() -> None:
    entries = chain("obj-1", OUTCOMES)
    head, read = verify_chain("obj-1", rows(entries), keyring())
    assert head == Verified("obj-1", 5, entries[-1].hash, "default")
    assert read == entries


def test_an_empty_chain_has_no_head() -> None:
    assert verify_chain("obj-1", [], keyring()) == (None, [])


@pytest.mark.parametrize("split", [1, 2, 3, 5, 6])
def test_a_chain_verifies_incrementally_from_an_already_verified_head(split: int) -> None:
    entries = chain("obj-1", OUTCOMES)
    head, first = verify_chain("obj-1", rows(entries[:split]), keyring())
    head2, rest = verify_chain("obj-1", rows(entries[split:]), keyring(), start=head)
    full_head, full = verify_chain("obj-1", rows(entries), keyring())
    assert first + rest == full
    assert head2 == full_head


def test_incremental_verification_refuses_entries_that_do_not_follow_the_head() -> None:
    entries = chain("obj-1", OUTCOMES)
    head, _ = verify_chain("obj-1", rows(entries[:3]), keyring())
    assert head is not None
    with pytest.raises(IntegrityError, match="expected seq 3, found seq 4") as info:
        verify_chain("obj-1", rows(entries[4:]), keyring(), start=head)
    assert info.value.seq == 3
    wrong = Verified("obj-1", head.seq, bytes(32), head.scope)
    with pytest.raises(IntegrityError, match="hash link broken") as info:
        verify_chain("obj-1", rows(entries[3:]), keyring(), start=wrong)
    assert info.value.seq == 3


def test_entry_zero_must_be_bound_to_the_object_being_verified() -> None:
    entries = chain("obj-1", OUTCOMES)
    with pytest.raises(IntegrityError, match="not bound to this object id") as info:
        verify_chain("obj-2", rows(entries), keyring())
    assert (info.value.seq, info.value.object_id) == (0, "obj-2")


def test_entry_zero_must_name_the_object_id_as_well_as_carry_its_genesis() -> None:
    entry = make_entry(KEY, seq=0, prev=genesis("obj-1"), timestamp=0, origin_node="n", policy_ref="p",
                       action=Action.INSTANTIATE, trace_id="obj-1",
                       outcome={"object_id": "obj-2", "intent": {"handler": "h"}, "context": {}})
    with pytest.raises(IntegrityError, match="not bound"):
        verify_chain("obj-1", rows([entry]), keyring())


def test_entry_zero_must_be_an_instantiation_with_a_valid_intent_and_context() -> None:
    not_inst = make_entry(KEY, seq=0, prev=genesis("o"), timestamp=0, origin_node="n", policy_ref="p",
                          action=Action.EXECUTE, outcome={"object_id": "o"}, trace_id="o")
    with pytest.raises(IntegrityError, match="not an instantiation"):
        verify_chain("o", rows([not_inst]), keyring())
    bad = make_entry(KEY, seq=0, prev=genesis("o"), timestamp=0, origin_node="n", policy_ref="p",
                     action=Action.INSTANTIATE, outcome={"object_id": "o", "intent": {"handler": 5}, "context": {}},
                     trace_id="o")
    with pytest.raises(IntegrityError, match="invalid intent or context") as info:
        verify_chain("o", rows([bad]), keyring())
    assert info.value.seq == 0


def test_an_instantiation_after_entry_zero_is_refused() -> None:
    entries = chain("obj-1", [(Action.INSTANTIATE, {"object_id": "obj-1"})])
    with pytest.raises(IntegrityError, match="instantiation after entry 0") as info:
        verify_chain("obj-1", rows(entries), keyring())
    assert info.value.seq == 1


def test_the_signer_must_be_trusted_by_the_verifier_for_the_objects_trust_scope() -> None:
    entries = chain("obj-1", OUTCOMES, context=Context(trust_scope="payments"))
    verify_chain("obj-1", rows(entries), keyring(scopes=["payments"]))
    with pytest.raises(IntegrityError, match="not trusted for scope 'payments'") as info:
        verify_chain("obj-1", rows(entries), keyring(scopes=["reports"]))
    assert info.value.seq == 0


def test_a_key_named_inside_the_object_is_never_trusted_on_its_own() -> None:
    # The object may carry a public key (here in its goal); only the verifier's keyring counts.
    intent = Intent("h", goal={"public_key": OTHER_KEY.public_key, "key_id": OTHER_KEY.key_id})
    entries = chain("obj-1", OUTCOMES, key=OTHER_KEY, intent=intent)
    with pytest.raises(IntegrityError, match=f"untrusted key {OTHER_KEY.key_id}") as info:
        verify_chain("obj-1", rows(entries), keyring(KEY))
    assert info.value.seq == 0


def test_an_entry_signed_by_another_trusted_key_mid_chain_verifies() -> None:
    # Many nodes append to one object; each signs with its own key.
    entries = chain("obj-1", OUTCOMES[:2])
    entries.append(follow(entries[-1], Action.EXECUTE, {"status": "ok"}, key=OTHER_KEY))
    verify_chain("obj-1", rows(entries), keyring(KEY, OTHER_KEY))
    with pytest.raises(IntegrityError, match="untrusted") as info:
        verify_chain("obj-1", rows(entries), keyring(KEY))
    assert info.value.seq == 3


def test_a_signature_that_is_not_64_bytes_is_refused() -> None:
    entries = chain("obj-1", OUTCOMES)
    damaged = rows(entries)
    damaged[2] = (damaged[2][0], damaged[2][1] + b"\x00")
    with pytest.raises(IntegrityError, match="not 64 bytes") as info:
        verify_chain("obj-1", damaged, keyring())
    assert info.value.seq == 2


def test_an_entry_beyond_the_verifiers_limits_does_not_verify() -> None:
    entries = chain("obj-1", [(Action.EXECUTE, {"status": "ok", "state": {"blob": "x" * 5000}})])
    with pytest.raises(IntegrityError, match="does not decode") as info:
        verify_chain("obj-1", rows(entries), keyring(), limits=Limits(max_bytes=4000))
    assert info.value.seq == 1


def test_a_chain_cut_at_its_end_verifies_as_a_prefix_so_callers_must_compare_the_head_seq() -> None:
    # A known limit: without an external witness of the head, a missing tail looks like an
    # older chain. The node compares the verified seq with the head the store claims.
    entries = chain("obj-1", OUTCOMES)
    head, _ = verify_chain("obj-1", rows(entries[:-1]), keyring())
    assert head is not None and head.seq == len(entries) - 2


def test_a_reencoded_body_does_not_verify_even_though_it_decodes_to_the_same_values() -> None:
    entries = chain("obj-1", OUTCOMES)
    raw = msgpack.unpackb(entries[1].body, raw=False)
    reordered = msgpack.packb(dict(reversed(list(raw.items()))), use_bin_type=True)
    assert msgpack.unpackb(reordered, raw=False) == raw and reordered != entries[1].body
    tampered = rows(entries)
    tampered[1] = (reordered, entries[1].signature)
    with pytest.raises(IntegrityError, match="bad signature") as info:
        verify_chain("obj-1", tampered, keyring())
    assert info.value.seq == 1


# -- the fold ------------------------------------------------------------------------------


def test_a_fold_starts_from_the_instantiation() -> None:
    intent = Intent("h", goal={"x": 1}, constraints=Constraints(max_steps=9))
    context = Context(identity="me", trust_scope="s")
    fold = Fold(instantiate("obj-9", intent, context))
    assert (fold.object_id, fold.intent, fold.context, fold.seq) == ("obj-9", intent, context, 0)
    assert (fold.status, fold.state, fold.steps, fold.wait) == (Status.RUNNABLE, {}, 0, None)


def test_state_updates_merge_key_by_key_and_later_values_win() -> None:
    fold = Fold.of(chain("obj-1", OUTCOMES[:2]))
    assert fold.state == {"a": 2, "b": [1, 2]}
    assert dict(fold.state_view()) == fold.state


def test_the_state_view_is_read_only() -> None:
    fold = Fold.of(chain("obj-1", OUTCOMES[:1]))
    with pytest.raises(TypeError):
        fold.state_view()["a"] = 5  # type: ignore[index]


def test_a_fold_is_updated_in_place_so_a_step_costs_only_its_own_update() -> None:
    entries = chain("obj-1", OUTCOMES[:2])
    fold = Fold.of(entries[:2])
    state = fold.state
    fold.apply(entries[2])
    assert fold.state is state and fold.seq == 2 and fold.hash == entries[2].hash


def test_folding_incrementally_equals_folding_the_whole_chain() -> None:
    entries = chain("obj-1", OUTCOMES)
    fold = Fold(entries[0])
    for entry in entries[1:]:
        fold.apply(entry)
        whole = Fold.of(entries[: entry.seq + 1])
        assert {s: getattr(fold, s) for s in Fold.__slots__} == {s: getattr(whole, s) for s in Fold.__slots__}


def test_dormancy_records_the_wake_triggers_and_reentry_clears_them() -> None:
    entries = chain("obj-1", OUTCOMES[:3])
    fold = Fold.of(entries)
    assert (fold.status, fold.wait) == (Status.DORMANT, {"until": 99})
    entries.append(follow(entries[-1], Action.REENTRY, {"trigger": "signal",
                                                          "signals": [{"id": 7, "name": "go", "payload": 1}]}))
    fold.apply(entries[-1])
    assert (fold.status, fold.wait, fold.pending_signals) == (Status.RUNNABLE, None, (Signal("go", 1, 7),))


def test_failures_are_counted_and_a_success_resets_the_consecutive_count() -> None:
    fail = (Action.DORMANCY, {"status": "failed", "error": {"class": "rate_limit"}, "wake": {"until": 5}})
    refused = (Action.EXECUTE, {"status": "refused"})
    fold = Fold.of(chain("obj-1", [fail, (Action.REENTRY, {"trigger": "time"}), refused]))
    assert (fold.consecutive_failures, fold.failures, fold.last_error_class) == (2, 2, "rate_limit")
    fold = Fold.of(chain("obj-1", [fail, (Action.REENTRY, {"trigger": "time"}), refused,
                                   (Action.EXECUTE, {"status": "ok"})]))
    assert (fold.consecutive_failures, fold.failures, fold.steps) == (0, 2, 3)


def test_cannot_do_constraints_accumulate() -> None:
    fold = Fold.of(chain("obj-1", [(Action.EXECUTE, {"status": "cannot_do", "capability": "ocr"}),
                                   (Action.EXECUTE, {"status": "cannot_do", "capability": "fax"})]))
    assert fold.cannot_do == {"ocr", "fax"}


def test_a_delegation_records_the_children_and_whether_the_parent_waits() -> None:
    kids = [{"id": "c1", "intent": {"handler": "h"}}, {"id": "c2", "intent": {"handler": "h"}}]
    fold = Fold.of(chain("obj-1", [(Action.DELEGATE, {"status": "ok", "wait": True, "children": kids})]))
    assert (fold.children, fold.status, fold.wait) == (["c1", "c2"], Status.DORMANT, {"children": True})
    fold = Fold.of(chain("obj-1", [(Action.DELEGATE, {"status": "ok", "wait": False, "children": kids})]))
    assert (fold.status, fold.wait) == (Status.RUNNABLE, None)


def test_a_mutation_changes_the_intent_the_fold_reports() -> None:
    new = {"goal": {"n": 9}, "constraints": {"deadline": 5, "max_failures": None, "max_steps": None,
                                              "retry_base": None, "retry_max": None}}
    fold = Fold.of(chain("obj-1", [(Action.MUTATE, {"status": "ok", "old": {}, "new": new})]))
    assert fold.intent == Intent("work", goal={"n": 9}, constraints=Constraints(deadline=5))


def test_termination_records_reason_and_result() -> None:
    fold = Fold.of(chain("obj-1", OUTCOMES))
    assert (fold.status, fold.reason, fold.result, fold.wait) == (Status.TERMINATED, "done", {"total": 3}, None)
