"""Properties of the chain: any edit to stored memory is caught at the seq where it happens."""

from __future__ import annotations

import struct
from typing import Any

import msgpack
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from peo.core.memory import verify_chain
from peo.core.model import Action, Entry
from peo.errors import IntegrityError

from ._helpers import chain, keyring, rows

leaf = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(max_size=10) | st.binary(max_size=10)
values = st.recursive(leaf, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                       max_size=3), max_leaves=6)
outcomes = st.tuples(
    st.sampled_from([Action.EXECUTE, Action.DORMANCY, Action.REENTRY, Action.MUTATE, Action.DELEGATE]),
    st.dictionaries(st.text(max_size=6), values, max_size=3),
)
chains = st.lists(outcomes, min_size=1, max_size=6).map(lambda outs: chain("obj-1", outs))


def assert_caught_at(object_id: str, stored: list[tuple[bytes, bytes]], seq: int) -> None:
    with pytest.raises(IntegrityError) as info:
        verify_chain(object_id, stored, keyring())
    assert info.value.seq == seq, f"caught at seq {info.value.seq}, the edit was at seq {seq}: {info.value}"
    assert info.value.object_id == object_id


@given(chains)
def test_property_an_untouched_chain_verifies(entries: list[Entry]) -> None:
    head, read = verify_chain("obj-1", rows(entries), keyring())
    assert read == entries and head is not None and head.hash == entries[-1].hash


@given(chains, st.data())
def test_property_any_single_bit_flip_in_a_body_or_signature_is_caught_at_its_seq(
    entries: list[Entry], data: st.DataObject
) -> None:
    stored = rows(entries)
    seq = data.draw(st.integers(0, len(entries) - 1), label="seq")
    part = data.draw(st.sampled_from([0, 1]), label="0=body 1=signature")
    blob = bytearray(stored[seq][part])
    bit = data.draw(st.integers(0, len(blob) * 8 - 1), label="bit")
    blob[bit // 8] ^= 1 << (bit % 8)
    stored[seq] = (bytes(blob), stored[seq][1]) if part == 0 else (stored[seq][0], bytes(blob))
    assert_caught_at("obj-1", stored, seq)


@given(chains.filter(lambda e: len(e) >= 2), st.data())
def test_property_deleting_any_entry_but_the_last_is_caught_at_its_seq(
    entries: list[Entry], data: st.DataObject
) -> None:
    seq = data.draw(st.integers(0, len(entries) - 2), label="seq")
    stored = rows(entries)
    del stored[seq]
    assert_caught_at("obj-1", stored, seq)


@given(chains.filter(lambda e: len(e) >= 3), st.data())
def test_property_cutting_a_run_out_of_the_middle_is_caught_where_it_starts(
    entries: list[Entry], data: st.DataObject
) -> None:
    start = data.draw(st.integers(1, len(entries) - 2), label="start")
    stop = data.draw(st.integers(start + 1, len(entries) - 1), label="stop")
    stored = rows(entries)
    del stored[start:stop]
    assert_caught_at("obj-1", stored, start)


@given(chains.filter(lambda e: len(e) >= 2), st.data())
def test_property_reordering_two_entries_is_caught_at_the_first_of_them(
    entries: list[Entry], data: st.DataObject
) -> None:
    i = data.draw(st.integers(0, len(entries) - 2), label="i")
    j = data.draw(st.integers(i + 1, len(entries) - 1), label="j")
    stored = rows(entries)
    stored[i], stored[j] = stored[j], stored[i]
    assert_caught_at("obj-1", stored, i)


@given(st.lists(outcomes, min_size=1, max_size=5), st.data())
def test_property_splicing_in_entries_of_another_object_is_caught_at_the_first_spliced_seq(
    outs: list[tuple[Action, dict[str, Any]]], data: st.DataObject
) -> None:
    # The worst case: the other object has the very same history, signed by the same key.
    mine, theirs = chain("obj-1", outs), chain("obj-2", outs)
    seq = data.draw(st.integers(0, len(mine) - 1), label="seq")
    whole_tail = data.draw(st.booleans(), label="splice the whole tail")
    stored = rows(mine)
    if whole_tail:
        stored[seq:] = rows(theirs[seq:])
    else:
        stored[seq] = (theirs[seq].body, theirs[seq].signature)
    assert_caught_at("obj-1", stored, seq)


# -- semantically equal re-encodings -----------------------------------------------------------


def reencode(value: Any, *, wide_ints: bool, wide_strs: bool, reverse_maps: bool) -> bytes:
    """A msgpack encoder that makes choices the canonical one does not (all valid msgpack)."""
    if value is None:
        return b"\xc0"
    if value is True or value is False:
        return b"\xc3" if value else b"\xc2"
    if isinstance(value, int):
        if wide_ints:
            return b"\xd3" + struct.pack(">q", value) if value < 2**63 else b"\xcf" + struct.pack(">Q", value)
        return msgpack.packb(value)
    if isinstance(value, float):
        return msgpack.packb(value)
    if isinstance(value, str):
        raw = value.encode()
        return (b"\xda" + struct.pack(">H", len(raw)) + raw) if wide_strs else msgpack.packb(value)
    if isinstance(value, bytes):
        return b"\xc5" + struct.pack(">H", len(value)) + value if wide_strs else msgpack.packb(value)
    opts = {"wide_ints": wide_ints, "wide_strs": wide_strs, "reverse_maps": reverse_maps}
    if isinstance(value, list):
        return b"\xdc" + struct.pack(">H", len(value)) + b"".join(reencode(v, **opts) for v in value)
    items = list(value.items())
    if reverse_maps:
        items.reverse()
    return b"\xde" + struct.pack(">H", len(items)) + b"".join(
        reencode(k, **opts) + reencode(v, **opts) for k, v in items
    )


@given(chains, st.data())
def test_property_a_semantically_equal_reencoding_of_an_entry_is_caught_at_its_seq(
    entries: list[Entry], data: st.DataObject
) -> None:
    seq = data.draw(st.integers(0, len(entries) - 1), label="seq")
    flags = data.draw(st.fixed_dictionaries({k: st.booleans() for k in ("wide_ints", "wide_strs", "reverse_maps")}))
    decoded = msgpack.unpackb(entries[seq].body, raw=False)
    body = reencode(decoded, **flags)
    assume(body != entries[seq].body)
    assert msgpack.unpackb(body, raw=False) == decoded  # the same values, other bytes
    stored = rows(entries)
    stored[seq] = (body, entries[seq].signature)
    assert_caught_at("obj-1", stored, seq)
