"""Tamper detection: edit an SQLite store behind peo's back, then ask every verifier.

Each test builds a small store with a real node: three objects that count to 3 and then
wait for a signal "go" (five entries each: instantiate, three executes, dormancy). One of
them (the victim) is edited with plain ``sqlite3``; one (the bystander) is never touched;
one (the donor) supplies entries to splice. Then:

- ``Client.verify`` must raise IntegrityError, naming the first bad seq where there is one;
- ``peo verify`` must exit 1 and print the seq;
- a node, once the victim is runnable again, must quarantine it (status and reason
  recorded) and append nothing to it, while the bystander on the same store finishes.

Truncating the tail (with the head rewritten to match), rolling a whole object back to an
older copy, and deleting a whole object leave a chain that verifies: only an external
witness of the head detects them (see docs/security.md). Those tests show both halves:
the verifier accepts, and a recorded witness catches it.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest

import peo
from peo import config, keys
from peo.core.codec import decode_body
from peo.core.memory import make_entry, verify_chain
from peo.core.model import Action, Step
from peo.errors import IntegrityError, NotFoundError
from peo.keys import keyring_for

APP = peo.App()


@APP.handler("count")
def count(step: Step) -> peo.Proposal:
    n = step.state.get("n", 0)
    if any(s.name == "go" for s in step.signals):
        return peo.Done({"n": n})
    if n < step.goal["steps"]:
        return peo.Continue(state={"n": n + 1})
    return peo.WaitSignal("go")


K = 2  # the entry most cases edit: an execute step in the middle of the chain
LAST = 4  # the dormancy entry: the last one after the first run


@dataclass(frozen=True)
class World:
    url: str
    path: Path
    victim: str
    bystander: str
    donor: str


def build_world(tmp_path: Path) -> World:
    path = tmp_path / "peo.db"
    url = f"sqlite:///{path}"

    async def go() -> list[str]:
        async with peo.Client(url) as client:
            ids = await client.submit_many("count", [{"steps": 3}] * 3)
        await peo.Node(url, APP, idle_horizon=0).run_until_idle()
        return ids

    victim, bystander, donor = asyncio.run(go())
    world = World(url, path, victim, bystander, donor)
    for oid in (victim, bystander, donor):
        assert [seq for seq, *_ in entry_rows(world, oid)] == list(range(LAST + 1))
    return world


# -- raw store access ----------------------------------------------------------------------

Row = tuple[int, bytes, bytes, bytes]  # seq, body, sig, hash


def entry_rows(w: World, oid: str) -> list[Row]:
    with sqlite3.connect(w.path) as con:
        return [
            (seq, bytes(b), bytes(s), bytes(h))
            for seq, b, s, h in con.execute(
                "SELECT seq, body, sig, hash FROM entries WHERE object_id = ? ORDER BY seq", (oid,)
            )
        ]


def object_row(w: World, oid: str) -> dict[str, Any]:
    with sqlite3.connect(w.path) as con:
        con.row_factory = sqlite3.Row
        row = con.execute("SELECT * FROM objects WHERE id = ?", (oid,)).fetchone()
        return dict(row) if row is not None else {}


def put(con: sqlite3.Connection, oid: str, seq: int, body: bytes, sig: bytes) -> None:
    """Overwrite (or insert) one entry, keeping the stored hash column consistent with it,
    as a careful attacker would."""
    con.execute(
        "INSERT OR REPLACE INTO entries (object_id, seq, body, sig, hash) VALUES (?, ?, ?, ?, ?)",
        (oid, seq, body, sig, hashlib.sha256(body).digest()),
    )


def get(con: sqlite3.Connection, oid: str, seq: int) -> tuple[bytes, bytes]:
    b, s = con.execute("SELECT body, sig FROM entries WHERE object_id = ? AND seq = ?", (oid, seq)).fetchone()
    return bytes(b), bytes(s)


def sync_head(con: sqlite3.Connection, oid: str) -> None:
    """Make the object row's head cache agree with whatever the entries table now holds."""
    seq, h = con.execute(
        "SELECT seq, hash FROM entries WHERE object_id = ? ORDER BY seq DESC LIMIT 1", (oid,)
    ).fetchone()
    con.execute("UPDATE objects SET seq = ?, head = ? WHERE id = ?", (seq, h, oid))


def sync_whole_head(con: sqlite3.Connection, oid: str) -> None:
    """Also make the cached status agree (what a careful attacker would do): the memory
    that is left ends runnable, so the head says runnable and due."""
    sync_head(con, oid)
    con.execute("UPDATE objects SET status = 'runnable', due_at = 0, wait_signal = NULL WHERE id = ?", (oid,))


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


def field_spans(body: bytes) -> dict[str, tuple[int, int]]:
    """Byte range of each field's *value* inside a signed body (a msgpack map)."""
    fields = msgpack.unpackb(body, raw=False)
    pos = len(msgpack.Packer().pack_map_header(len(fields)))
    spans = {}
    for key, value in fields.items():
        kb, vb = msgpack.packb(key), msgpack.packb(value, use_bin_type=True)
        assert body[pos : pos + len(kb)] == kb
        pos += len(kb)
        assert body[pos : pos + len(vb)] == vb
        spans[key] = (pos, pos + len(vb))
        pos += len(vb)
    assert pos == len(body)
    return spans


# -- the tamper cases ------------------------------------------------------------------------

# A case edits the store and returns the seq a verifier must name (None: the memory itself
# is consistent but disagrees with the object's head).
Case = Callable[[sqlite3.Connection, World], "int | None"]
CASES: dict[str, Case] = {}

BODY_FIELDS = ("v", "seq", "trace", "ts", "node", "policy", "action", "outcome", "prev", "signer")


def _flip_field(field: str) -> Case:
    def case(con: sqlite3.Connection, w: World) -> int:
        body, sig = get(con, w.victim, K)
        _, end = field_spans(body)[field]
        # The last byte of the value: for a fixint that is the value itself (seq 2 -> 3),
        # for strings and bytes a payload byte, so the body usually still decodes and the
        # signature, link or seq check has to catch it.
        put(con, w.victim, K, flip(body, end - 1), sig)
        return K

    return case


for _field in BODY_FIELDS:
    CASES[f"flip-{_field}"] = _flip_field(_field)


def _flip_sig(offset: int, mask: int) -> Case:
    def case(con: sqlite3.Connection, w: World) -> int:
        body, sig = get(con, w.victim, K)
        put(con, w.victim, K, body, flip(sig, offset, mask))
        return K

    return case


CASES["flip-signature-R"] = _flip_sig(5, 0x01)
CASES["flip-signature-S"] = _flip_sig(40, 0x01)
CASES["flip-signature-S-top-bit"] = _flip_sig(63, 0x80)  # makes S >= L: non-canonical


def _delete(con: sqlite3.Connection, w: World) -> int:
    con.execute("DELETE FROM entries WHERE object_id = ? AND seq = ?", (w.victim, K))
    return K


def _truncate_tail_only(con: sqlite3.Connection, w: World) -> None:
    con.execute("DELETE FROM entries WHERE object_id = ? AND seq = ?", (w.victim, LAST))
    return None  # the chain 0..3 is sound; the head (seq 4) no longer matches it


def _reorder(con: sqlite3.Connection, w: World) -> int:
    a, b = get(con, w.victim, K), get(con, w.victim, K + 1)
    put(con, w.victim, K, *b)
    put(con, w.victim, K + 1, *a)
    return K


def _duplicate_over_next(con: sqlite3.Connection, w: World) -> int:
    put(con, w.victim, K + 1, *get(con, w.victim, K))
    return K + 1


def _duplicate_at_end(con: sqlite3.Connection, w: World) -> int:
    put(con, w.victim, LAST + 1, *get(con, w.victim, LAST))
    sync_head(con, w.victim)
    return LAST + 1


def _splice_same_seq(con: sqlite3.Connection, w: World) -> int:
    # Signed by a trusted node key, at the right seq, with the same meaning: only the hash
    # link (prev) ties it to the donor's chain.
    put(con, w.victim, K, *get(con, w.donor, K))
    return K


def _splice_entry0(con: sqlite3.Connection, w: World) -> int:
    put(con, w.victim, 0, *get(con, w.donor, 0))
    return 0


def _splice_whole_chain(con: sqlite3.Connection, w: World) -> int:
    for seq in range(LAST + 1):
        put(con, w.victim, seq, *get(con, w.donor, seq))
    sync_head(con, w.victim)
    return 0  # a perfectly valid chain, but bound to another object id


def _reencode(repack: Callable[[dict[str, Any]], bytes]) -> Case:
    def case(con: sqlite3.Connection, w: World) -> int:
        body, sig = get(con, w.victim, K)
        fields = msgpack.unpackb(body, raw=False)
        new = repack(fields)
        assert new != body
        # Same meaning: peo decodes both to the same entry...
        old_e, new_e = decode_body(body, sig, b""), decode_body(new, sig, b"")
        for attr in ("seq", "trace_id", "timestamp", "origin_node", "policy_ref", "action", "outcome", "prev",
                     "signer"):
            assert getattr(old_e, attr) == getattr(new_e, attr)
        put(con, w.victim, K, new, sig)  # ...but the signature covers the exact bytes
        return K

    return case


def _wide_ints(fields: dict[str, Any]) -> bytes:
    # map16 header instead of fixmap, and seq as a uint64 (0xcf) instead of a fixint
    out = bytearray(b"\xde" + len(fields).to_bytes(2, "big"))
    for key, value in fields.items():
        out += msgpack.packb(key)
        out += b"\xcf" + value.to_bytes(8, "big") if key == "seq" else msgpack.packb(value, use_bin_type=True)
    return bytes(out)


def _reversed_keys(fields: dict[str, Any]) -> bytes:
    return msgpack.packb(dict(reversed(list(fields.items()))), use_bin_type=True)  # type: ignore[no-any-return]


def _append_untrusted(con: sqlite3.Connection, w: World) -> int:
    last_body, _ = get(con, w.victim, LAST)
    forged = make_entry(
        keys.generate(), seq=LAST + 1, prev=hashlib.sha256(last_body).digest(), timestamp=1,
        origin_node="mallory", policy_ref="default@0", action=Action.TERMINATE,
        outcome={"status": "done", "reason": "done", "result": {"n": 999}}, trace_id=w.victim,
    )
    put(con, w.victim, forged.seq, forged.body, forged.signature)
    sync_head(con, w.victim)
    return LAST + 1


def _resign_all(con: sqlite3.Connection, w: World) -> int:
    """Replace the object's signer: every entry rebuilt and re-signed by a fresh key, hash
    links recomputed, head updated. Internally perfect; the key is just not trusted."""
    mallory = keys.generate()
    prev = None
    for seq in range(LAST + 1):
        body, sig = get(con, w.victim, seq)
        e = decode_body(body, sig, b"")
        new = make_entry(
            mallory, seq=seq, prev=e.prev if prev is None else prev, timestamp=e.timestamp,
            origin_node=e.origin_node, policy_ref=e.policy_ref, action=e.action, outcome=dict(e.outcome),
            trace_id=e.trace_id,
        )
        put(con, w.victim, seq, new.body, new.signature)
        prev = new.hash
    sync_head(con, w.victim)
    return 0


def _head_seq(con: sqlite3.Connection, w: World) -> None:
    con.execute("UPDATE objects SET seq = seq - 1 WHERE id = ?", (w.victim,))
    return None


CASES.update(
    {
        "delete-entry": _delete,
        "truncate-tail-keep-head": _truncate_tail_only,
        "reorder": _reorder,
        "duplicate-over-next": _duplicate_over_next,
        "duplicate-at-end": _duplicate_at_end,
        "splice-same-seq": _splice_same_seq,
        "splice-entry0": _splice_entry0,
        "splice-whole-chain": _splice_whole_chain,
        "reencode-wide-ints": _reencode(_wide_ints),
        "reencode-key-order": _reencode(_reversed_keys),
        "append-untrusted-signer": _append_untrusted,
        "resign-all-untrusted": _resign_all,
        "head-seq": _head_seq,
    }
)


def tamper(w: World, case: Case) -> int | None:
    with sqlite3.connect(w.path) as con:
        expect = case(con, w)
    return expect


async def signal_and_run(w: World) -> peo.Node:
    """Make the victim (and the bystander) runnable again, then run a node until idle."""
    async with peo.Client(w.url) as client:
        for oid in (w.victim, w.bystander):
            await client.signal(oid, "go")
    node = peo.Node(w.url, APP, idle_horizon=0)
    await node.run_until_idle()
    return node


# -- detection by the client and by a node -----------------------------------------------------


@pytest.mark.parametrize("name", sorted(CASES))
def test_tampering_is_detected_by_verify_and_quarantined_by_a_node(tmp_path: Path, name: str) -> None:
    w = build_world(tmp_path)
    expect = tamper(w, CASES[name])
    before = entry_rows(w, w.victim)

    async def check_client() -> None:
        async with peo.Client(w.url) as client:
            with pytest.raises(IntegrityError) as info:
                await client.verify(w.victim)
            assert info.value.seq == expect
            assert info.value.object_id == w.victim
            assert await client.verify(w.bystander) == LAST + 1

    asyncio.run(check_client())

    node = asyncio.run(signal_and_run(w))
    victim = object_row(w, w.victim)
    assert victim["status"] == "quarantined"
    assert victim["reason"].startswith("verification failed")
    if expect is not None:
        assert f"seq {expect}" in victim["reason"]
    assert entry_rows(w, w.victim) == before  # nothing appended on top of it
    assert node.stats["quarantined"] == 1

    async def bystander_finished() -> None:
        async with peo.Client(w.url) as client:
            assert await client.wait(w.bystander, timeout=5) == {"n": 3}
            assert await client.verify(w.bystander) == LAST + 3  # reentry + terminate
            with pytest.raises(peo.ObjectFailedError, match="quarantined"):
                await client.wait(w.victim, timeout=5)
            # Reading a quarantined object still works: it reads as quarantined (its memory
            # decoded, not verified). Before the node got to it, a read held the row to the
            # signed head (tests/reliability/test_signed_reads.py).
            assert (await client.get(w.victim)).status is peo.Status.QUARANTINED

    asyncio.run(bystander_finished())


@pytest.mark.parametrize("name", sorted(CASES))
def test_tampering_is_detected_by_the_cli(tmp_path: Path, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    cli = pytest.importorskip("peo.cli")
    w = build_world(tmp_path)
    expect = tamper(w, CASES[name])
    capsys.readouterr()
    code = cli.main(["--store", w.url, "verify", w.victim, w.bystander])
    out, err = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in err
    fail = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert len(fail) == 1 and w.victim in fail[0]
    if expect is not None:
        assert f"seq {expect}:" in fail[0]
    assert any(line.startswith("OK") and w.bystander in line for line in out.splitlines())


def test_every_single_bit_flip_of_an_entry_is_detected_at_its_seq(tmp_path: Path) -> None:
    """Exhaustive, on the verifier alone: each bit of one middle entry's body and
    signature, and of the last entry's, flipped in turn."""
    w = build_world(tmp_path)
    keyring = keyring_for(config.default_policy())
    rows = [(b, s) for _, b, s, _ in entry_rows(w, w.victim)]
    verify_chain(w.victim, rows, keyring)  # the untouched chain verifies
    flips = 0
    for at in (K, LAST):
        body, sig = rows[at]
        for which in ("body", "sig"):
            data = body if which == "body" else sig
            for bit in range(len(data) * 8):
                bad = flip(data, bit // 8, 1 << (bit % 8))
                edited = list(rows)
                edited[at] = (bad, sig) if which == "body" else (body, bad)
                with pytest.raises(IntegrityError) as info:
                    verify_chain(w.victim, edited, keyring)
                assert info.value.seq == at, (which, bit)
                flips += 1
    assert flips > 3000


def test_a_forged_head_hash_is_caught_by_verify(tmp_path: Path) -> None:
    w = build_world(tmp_path)
    with sqlite3.connect(w.path) as con:
        con.execute("UPDATE objects SET head = ? WHERE id = ?", (bytes(32), w.victim))

    async def go() -> None:
        async with peo.Client(w.url) as client:
            with pytest.raises(IntegrityError, match="stored head"):
                await client.verify(w.victim)

    asyncio.run(go())


def test_a_node_quarantines_an_object_whose_head_hash_was_forged(tmp_path: Path) -> None:
    w = build_world(tmp_path)
    with sqlite3.connect(w.path) as con:
        con.execute("UPDATE objects SET head = ? WHERE id = ?", (bytes(32), w.victim))
    asyncio.run(signal_and_run(w))
    assert object_row(w, w.victim)["status"] == "quarantined"


def test_verify_catches_a_forged_result_in_the_object_row(tmp_path: Path) -> None:
    w = build_world(tmp_path)
    asyncio.run(signal_and_run(w))
    with sqlite3.connect(w.path) as con:
        con.execute("UPDATE objects SET result = ? WHERE id = ?", (msgpack.packb({"n": 999}), w.bystander))

    async def go() -> None:
        async with peo.Client(w.url) as client:
            # verify() sees the forgery; so does wait(), which takes the result from the
            # signed terminate entry and never returns the row's
            with pytest.raises(IntegrityError, match="cached result"):
                await client.verify(w.bystander)
            with pytest.raises(IntegrityError, match="cached result"):
                await client.wait(w.bystander, timeout=5)

    asyncio.run(go())


# -- what needs an external witness -----------------------------------------------------------


async def record_witness(client: peo.Client, oid: str) -> tuple[int, bytes]:
    """What an operator would copy somewhere the store's attacker cannot write: the verified
    head (seq and entry hash) of an object."""
    n = await client.verify(oid)
    info = await client.get(oid)
    return n - 1, info.memory[-1].hash


async def satisfies_witness(client: peo.Client, oid: str, witness: tuple[int, bytes]) -> bool:
    """The chain verifies and still contains the witnessed entry: chains only grow, so a
    later head must extend the witnessed one."""
    await client.verify(oid)
    info = await client.get(oid)
    seq, digest = witness
    return len(info.memory) > seq and info.memory[seq].hash == digest


def test_truncating_the_tail_and_the_head_together_needs_a_witness(tmp_path: Path) -> None:
    w = build_world(tmp_path)

    async def before() -> tuple[tuple[int, bytes], tuple[int, bytes]]:
        async with peo.Client(w.url) as client:
            return await record_witness(client, w.victim), await record_witness(client, w.bystander)

    victim_witness, bystander_witness = asyncio.run(before())
    with sqlite3.connect(w.path) as con:
        con.execute("DELETE FROM entries WHERE object_id = ? AND seq >= ?", (w.victim, K + 1))
        sync_whole_head(con, w.victim)

    async def prefix_verifies() -> None:
        async with peo.Client(w.url) as client:
            # The remaining prefix is a valid chain: no verifier can tell from the store alone.
            assert await client.verify(w.victim) == K + 1

    asyncio.run(prefix_verifies())
    asyncio.run(signal_and_run(w))

    async def after() -> None:
        async with peo.Client(w.url) as client:
            # A node resumes from the prefix: the history is rewritten (the object stops at
            # n=2 instead of 3), and still verifies. Only the witness tells.
            assert await client.wait(w.victim, timeout=5) == {"n": 2}
            assert not await satisfies_witness(client, w.victim, victim_witness)
            # The bystander moved on legitimately: its chain extends its witness.
            assert await satisfies_witness(client, w.bystander, bystander_witness)

    asyncio.run(after())


def test_rolling_back_a_whole_object_needs_a_witness(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = build_world(tmp_path)
    old_entries = entry_rows(w, w.victim)
    old_row = object_row(w, w.victim)
    asyncio.run(signal_and_run(w))  # the victim finishes: reentry and terminate appended

    async def witness() -> tuple[int, bytes]:
        async with peo.Client(w.url) as client:
            assert await client.wait(w.victim, timeout=5) == {"n": 3}
            return await record_witness(client, w.victim)

    finished = asyncio.run(witness())
    with sqlite3.connect(w.path) as con:  # restore the older copy, row and entries
        con.execute("DELETE FROM entries WHERE object_id = ?", (w.victim,))
        for seq, body, sig, _ in old_entries:
            put(con, w.victim, seq, body, sig)
        cols = ", ".join(f"{k} = ?" for k in old_row)
        con.execute(f"UPDATE objects SET {cols} WHERE id = ?", (*old_row.values(), w.victim))

    async def after() -> None:
        async with peo.Client(w.url) as client:
            assert await client.verify(w.victim) == LAST + 1  # the old copy verifies
            assert (await client.get(w.victim)).status is peo.Status.DORMANT
            assert not await satisfies_witness(client, w.victim, finished)

    asyncio.run(after())
    cli = pytest.importorskip("peo.cli")
    assert cli.main(["--store", w.url, "verify", w.victim]) == 0  # the limitation, as the CLI sees it
    capsys.readouterr()


def test_deleting_a_whole_object_needs_a_witness(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    w = build_world(tmp_path)
    with sqlite3.connect(w.path) as con:
        con.execute("DELETE FROM entries WHERE object_id = ?", (w.victim,))
        con.execute("DELETE FROM objects WHERE id = ?", (w.victim,))

    async def after() -> None:
        async with peo.Client(w.url) as client:
            # Asked by id (the witness: a list of ids that must exist), it is reported...
            with pytest.raises(NotFoundError):
                await client.verify(w.victim)
            # ...but a store-wide check has nothing left to look at.
            assert w.victim not in {r.id for r in await client.list()}
            for r in await client.list():
                await client.verify(r.id)

    asyncio.run(after())
    cli = pytest.importorskip("peo.cli")
    capsys.readouterr()
    assert cli.main(["--store", w.url, "verify", w.victim]) == 1
    assert cli.main(["--store", w.url, "verify"]) == 0
    assert "Traceback" not in capsys.readouterr().err
