"""The codec: plain data in, checked plain data out; untrusted bytes raise only CodecError."""

from __future__ import annotations

import datetime
import hashlib
import math
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from peo.core import codec
from peo.core.codec import (
    FORMAT_VERSION,
    UPCASTERS,
    Limits,
    check_name,
    check_value,
    decode_body,
    encode_body,
    packb,
    structure,
    unpackb,
    unstructure,
)
from peo.core.memory import verify_chain
from peo.core.model import Action, Constraints, Context, Intent
from peo.errors import CodecError

from ._helpers import KEY, instantiate, keyring

# -- strategies ---------------------------------------------------------------------------

ints64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
names = st.text(st.characters(min_codepoint=32, blacklist_categories=("Cs",)), min_size=1, max_size=20).filter(
    lambda s: "\x7f" not in s
)
plain = st.recursive(
    st.none() | st.booleans() | ints64 | st.floats(allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
goals = st.dictionaries(st.text(max_size=8), plain, max_size=4)
constraints = st.builds(
    Constraints,
    deadline=st.none() | ints64,
    max_failures=st.none() | st.integers(0, 100),
    max_steps=st.none() | st.integers(0, 10**6),
    retry_base=st.none() | st.floats(0, 1e6),
    retry_max=st.none() | st.floats(0, 1e6),
)
intents = st.builds(Intent, handler=names, goal=goals, constraints=constraints)
contexts = st.builds(
    Context,
    identity=names,
    trust_scope=names,
    priority=st.integers(-1000, 1000),
    parent=st.none() | names,
    labels=st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3),
    resources=goals,
)


def body_fields(**over: Any) -> dict[str, Any]:
    fields: dict[str, Any] = dict(
        seq=3, trace_id="obj-1", timestamp=123, origin_node="node-a", policy_ref="default@abc",
        action=Action.EXECUTE, outcome={"status": "ok"}, prev=bytes(32), signer="0123456789abcdef",
    )
    fields.update(over)
    return fields


def raw_body(**over: Any) -> dict[str, Any]:
    """A body map as the wire carries it, with ``over`` replacing (or, with None, removing) keys."""
    raw = msgpack.unpackb(encode_body(**body_fields()), raw=False)
    for k, v in over.items():
        if v is None:
            raw.pop(k)
        else:
            raw[k] = v
    return dict(raw)


def decode(raw: dict[str, Any]) -> Any:
    body = msgpack.packb(raw, use_bin_type=True)
    return decode_body(body, b"s" * 64, hashlib.sha256(body).digest())


# -- framing limits -------------------------------------------------------------------------


def test_plain_data_round_trips_through_packb_and_unpackb() -> None:
    value = {"a": [1, -2, 2**64 - 1, -(2**63)], "b": {"c": None, "d": True}, "e": 1.5, "f": b"\x00", "g": "é"}
    assert unpackb(packb(value)) == value


def test_a_record_larger_than_max_bytes_is_refused_before_it_is_decoded() -> None:
    data = packb("x" * 100)
    with pytest.raises(CodecError, match="exceeds the limit of 50"):
        unpackb(data, Limits(max_bytes=50))


def test_empty_input_and_non_bytes_are_refused() -> None:
    with pytest.raises(CodecError, match="empty"):
        unpackb(b"")
    with pytest.raises(CodecError, match="expected bytes"):
        unpackb("text")  # type: ignore[arg-type]


def _nested(levels: int) -> Any:
    value: Any = 1
    for _ in range(levels):
        value = [value]
    return value


def test_nesting_up_to_the_depth_limit_is_accepted_and_one_level_more_is_refused() -> None:
    assert unpackb(packb(_nested(32))) == _nested(32)
    with pytest.raises(CodecError, match="nested deeper than 32"):
        unpackb(packb(_nested(33)))
    with pytest.raises(CodecError, match="nested deeper than 3"):
        unpackb(packb({"a": {"b": {"c": {"d": 1}}}}), Limits(depth=3))


def test_a_container_longer_than_the_items_limit_is_refused() -> None:
    assert unpackb(packb(list(range(9))), Limits(items=10)) == list(range(9))
    with pytest.raises(CodecError, match="max_array_len"):
        unpackb(packb(list(range(11))), Limits(items=10))
    with pytest.raises(CodecError, match="more than 10 elements"):
        check_value([[1, 2, 3]] * 4, Limits(items=10))


@pytest.mark.parametrize("key", [1, b"k", 1.5, None, True])
def test_map_keys_must_be_strings(key: Any) -> None:
    data = msgpack.packb({key: 1}, use_bin_type=True)
    with pytest.raises(CodecError, match="map key"):
        unpackb(data)


@pytest.mark.parametrize(
    "data",
    [
        msgpack.packb(msgpack.ExtType(5, b"payload")),
        b"\xd4\x80\x00",  # fixext 1 of type -128
        b"\xc7\x00\x05",  # an empty ext 8 of type 5
        msgpack.packb(msgpack.Timestamp(1, 0)),  # the timestamp extension, type -1
        msgpack.packb(datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC), datetime=True),
        msgpack.packb({"when": msgpack.Timestamp(2**40, 5)}),
    ],
    ids=["ext5", "ext-128", "ext5-empty", "timestamp32", "datetime", "nested-timestamp96"],
)
def test_extension_types_are_refused_including_the_timestamp_extension(data: bytes) -> None:
    with pytest.raises(CodecError):
        unpackb(data)


@pytest.mark.parametrize(
    "data",
    [b"\xc1", b"\x92\x01", b"\x01\x02", b"\xdb\xff\xff\xff\xff", b"\x81\xa1a"],
    ids=["never-used-byte", "short-array", "trailing-bytes", "huge-str-header", "map-without-value"],
)
def test_malformed_msgpack_is_a_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError, match="malformed msgpack"):
        unpackb(data)


def test_integers_must_fit_in_64_bits() -> None:
    check_value([2**64 - 1, -(2**63)])
    for bad in (2**64, -(2**63) - 1, 10**30):
        with pytest.raises(CodecError, match="64-bit range"):
            check_value({"n": bad})
        with pytest.raises(CodecError, match="cannot encode"):
            packb(bad)


@pytest.mark.parametrize("bad", [{1, 2}, object(), Constraints(), bytearray(b"x"), {"k": complex(1, 2)}])
def test_only_plain_data_can_be_stored(bad: Any) -> None:
    with pytest.raises(CodecError, match="cannot be stored"):
        check_value(bad)


def test_non_finite_floats_are_plain_data() -> None:
    value = unpackb(packb([math.inf, -math.inf]))
    assert value == [math.inf, -math.inf]


@pytest.mark.parametrize("bad", ["", "a\nb", "x" * 201, "tab\there", 7, None])
def test_names_are_short_printable_non_empty_strings(bad: Any) -> None:
    with pytest.raises(CodecError):
        check_name(bad, "handler")
    assert check_name("reports.daily-v2", "handler") == "reports.daily-v2"


# -- structure / unstructure ---------------------------------------------------------------------


def test_records_unstructure_to_plain_data_and_back() -> None:
    intent = Intent("h", goal={"a": [1, 2]}, constraints=Constraints(deadline=5, retry_base=0.25))
    context = Context(identity="me", trust_scope="payments", priority=3, parent="p", labels={"k": "v"})
    assert structure(unpackb(packb(unstructure(intent))), Intent) == intent
    assert structure(unpackb(packb(unstructure(context))), Context) == context


def test_unknown_fields_in_a_record_are_refused() -> None:
    data = unstructure(Intent("h"))
    data["surprise"] = 1
    with pytest.raises(CodecError, match="Intent"):
        structure(data, Intent)
    data = unstructure(Constraints())
    data["budget"] = 5
    with pytest.raises(CodecError):
        structure(data, Constraints)


@pytest.mark.parametrize(
    ("data", "cls"),
    [
        ({"handler": 5}, Intent),
        ({}, Intent),  # handler is required
        ({"handler": "h", "goal": "not a map"}, Intent),
        ({"priority": True}, Context),  # a bool is not an int
        ({"priority": 1.5}, Context),
        ({"deadline": 1.5}, Constraints),
        ({"max_steps": "10"}, Constraints),
        ("not a map", Context),
    ],
)
def test_wrong_types_in_a_record_are_one_codec_error(data: Any, cls: type) -> None:
    with pytest.raises(CodecError, match=f"invalid {cls.__name__}|expected"):
        structure(data, cls)


def test_an_integer_is_accepted_where_a_float_is_expected() -> None:
    assert structure({"retry_base": 1}, Constraints).retry_base == 1.0


# -- entry bodies ------------------------------------------------------------------------------


def test_an_entry_body_decodes_to_the_fields_it_was_encoded_from() -> None:
    fields = body_fields()
    body = encode_body(**fields)
    entry = decode_body(body, b"s" * 64, b"h" * 32)
    assert (entry.seq, entry.trace_id, entry.timestamp, entry.origin_node) == (3, "obj-1", 123, "node-a")
    assert (entry.policy_ref, entry.action, entry.outcome) == ("default@abc", Action.EXECUTE, {"status": "ok"})
    assert (entry.prev, entry.signer) == (bytes(32), fields["signer"])
    assert (entry.signature, entry.hash) == (b"s" * 64, b"h" * 32)
    assert entry.body == body  # the exact signed bytes are kept, never a re-encoding


def test_every_body_carries_the_current_format_version() -> None:
    assert msgpack.unpackb(encode_body(**body_fields()))["v"] == FORMAT_VERSION == 1


def test_unknown_fields_in_an_entry_body_are_refused() -> None:
    with pytest.raises(CodecError, match="unexpected or missing fields: extra"):
        decode(raw_body(extra="field"))


@pytest.mark.parametrize("field", ["seq", "ts", "prev", "signer", "outcome", "action", "node", "trace", "policy"])
def test_missing_fields_in_an_entry_body_are_refused(field: str) -> None:
    with pytest.raises(CodecError, match=f"missing fields: {field}"):
        decode(raw_body(**{field: None}))


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"seq": -1}, "seq must be a non-negative integer"),
        ({"seq": True}, "seq must be a non-negative integer"),
        ({"ts": 1.5}, "timestamp must be an integer"),
        ({"trace": 5}, "'trace' must be a string"),
        ({"signer": b"k"}, "'signer' must be a string"),
        ({"outcome": [1]}, "outcome must be a map"),
        ({"prev": b"short"}, "prev must be 32 bytes"),
        ({"prev": "0" * 32}, "prev must be 32 bytes"),
        ({"action": "explode"}, "unknown action 'explode'"),
        ({"v": "1"}, "no format version"),
    ],
)
def test_entry_fields_of_the_wrong_type_are_refused(over: dict[str, Any], message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode(raw_body(**over))


def test_a_body_that_is_not_a_map_is_refused() -> None:
    with pytest.raises(CodecError, match="not a map"):
        decode_body(packb([1, 2]), b"", b"")


def test_a_body_from_a_newer_format_version_is_refused() -> None:
    with pytest.raises(CodecError, match="version 2 is newer than this peo"):
        decode(raw_body(v=FORMAT_VERSION + 1))


def test_an_older_body_without_an_upcaster_is_refused() -> None:
    with pytest.raises(CodecError, match="no upcaster from entry format version 0"):
        decode(raw_body(v=0))


def _v0_body() -> dict[str, Any]:
    """An imaginary format 0: the timestamp was called "time" and was in microseconds."""
    raw = raw_body(v=0, ts=None)
    raw["time"] = 123_456
    return raw


def _upcast_v0(raw: dict[str, Any]) -> dict[str, Any]:
    out = dict(raw)
    out["ts"] = out.pop("time") * 1000
    return out


def test_an_upcaster_lets_a_body_written_by_an_older_version_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(UPCASTERS, 0, _upcast_v0)
    body = msgpack.packb(_v0_body(), use_bin_type=True)
    entry = decode_body(body, b"s" * 64, b"h" * 32)
    assert entry.timestamp == 123_456_000
    assert entry.body == body  # upcasting changes what is read, never the stored bytes


def test_an_upcasted_entry_still_verifies_against_its_original_signature(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(UPCASTERS, 0, _upcast_v0)
    entry0 = instantiate("obj-1")
    raw = msgpack.unpackb(entry0.body, raw=False)
    raw["v"] = 0
    raw["time"] = raw.pop("ts") // 1000
    old_body = msgpack.packb(raw, use_bin_type=True)
    head, entries = verify_chain("obj-1", [(old_body, KEY.sign(old_body))], keyring())
    assert head is not None and head.hash == hashlib.sha256(old_body).digest()
    assert entries[0].timestamp == entry0.timestamp


def test_upcasters_chain_from_any_older_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec, "FORMAT_VERSION", 3)
    monkeypatch.setitem(UPCASTERS, 1, lambda raw: {**raw, "seq": raw["seq"] + 10})
    monkeypatch.setitem(UPCASTERS, 2, lambda raw: {**raw, "seq": raw["seq"] * 2})
    assert decode(raw_body(v=1, seq=1)).seq == 22
    assert decode(raw_body(v=2, seq=1)).seq == 2


# -- properties --------------------------------------------------------------------------------


@given(intents)
def test_property_every_intent_round_trips_through_the_codec(intent: Intent) -> None:
    assert structure(unpackb(packb(unstructure(intent))), Intent) == intent


@given(contexts)
def test_property_every_context_round_trips_through_the_codec(context: Context) -> None:
    assert structure(unpackb(packb(unstructure(context))), Context) == context


@given(constraints)
def test_property_every_constraints_value_round_trips_through_the_codec(value: Constraints) -> None:
    assert structure(unpackb(packb(unstructure(value))), Constraints) == value


@given(
    seq=st.integers(0, 2**63 - 1),
    trace_id=st.text(max_size=30),
    timestamp=st.integers(-(2**63), 2**63 - 1),
    origin_node=st.text(max_size=30),
    policy_ref=st.text(max_size=30),
    action=st.sampled_from(list(Action)),
    outcome=goals,
    prev=st.binary(min_size=32, max_size=32),
    signer=st.text(max_size=16),
)
def test_property_every_entry_body_round_trips_and_keeps_its_exact_bytes(**fields: Any) -> None:
    body = encode_body(**fields)
    entry = decode_body(body, b"s" * 64, b"h" * 32)
    assert entry.body == body
    assert (entry.seq, entry.trace_id, entry.timestamp, entry.origin_node, entry.policy_ref) == (
        fields["seq"], fields["trace_id"], fields["timestamp"], fields["origin_node"], fields["policy_ref"]
    )
    assert (entry.action, entry.outcome, entry.prev, entry.signer) == (
        fields["action"], fields["outcome"], fields["prev"], fields["signer"]
    )


@given(st.binary(max_size=200))
def test_property_decoding_arbitrary_bytes_raises_only_codec_error(data: bytes) -> None:
    try:
        unpackb(data)
    except CodecError:
        pass
    try:
        decode_body(data, b"", b"")
    except CodecError:
        pass


@given(st.dictionaries(st.sampled_from([*raw_body(), "x"]), plain | ints64, max_size=12), st.data())
def test_property_decoding_arbitrary_maps_as_entry_bodies_raises_only_codec_error(
    fields: dict[str, Any], data: st.DataObject
) -> None:
    raw = {**raw_body(), **fields} if data.draw(st.booleans()) else fields
    try:
        decode(raw)
    except CodecError:
        pass


@given(st.binary(min_size=1, max_size=120), st.integers(0, 119), st.integers(0, 255))
def test_property_corrupting_a_valid_body_raises_only_codec_error_or_decodes(
    prefix: bytes, where: int, byte: int
) -> None:
    body = bytearray(encode_body(**body_fields(outcome={"blob": prefix})))
    body[where % len(body)] = byte
    try:
        decode_body(bytes(body), b"", b"")
    except CodecError:
        pass
