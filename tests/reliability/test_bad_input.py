"""Bad input: every entry point that takes untrusted bytes or text gets a typed error.

Entry points: ``codec.unpackb`` (all bytes read back from a store or a file),
``memory.verify_chain`` (rows from a store or an export), ``Client.import_`` (export
files), the CLI (arguments, JSON goals and payloads, object ids), and records an attacker
or a bug left in the store (entry bodies, inbox payloads, cached results).

The contract (invariant 6): a clear error from the PeoError tree, never another exception;
the node keeps running; nothing is written half-way. Size and nesting bombs must also be
refused without large memory: peak allocation is measured with tracemalloc and held to a
generous bound (64 MB) instead of timing anything.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import sqlite3
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import peo
from peo import config
from peo.core.codec import Limits, check_value, packb, unpackb
from peo.core.memory import verify_chain
from peo.core.model import Step
from peo.errors import CodecError, IntegrityError, PolicyError, UsageError
from peo.keys import keyring_for

APP = peo.App()


@APP.handler("count")
def count(step: Step) -> peo.Proposal:
    n = step.state.get("n", 0)
    if any(s.name == "go" for s in step.signals):
        return peo.Done({"n": n, "payloads": [s.payload for s in step.signals]})
    if n < step.goal.get("steps", 1):
        return peo.Continue(state={"n": n + 1})
    return peo.WaitSignal("go")


MB = 1 << 20
MEMORY_BOUND = 64 * MB
FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as r:
        yield r


def count_rows(url: str, table: str = "objects") -> int:
    path = url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as con:
        return int(con.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def peak_of(fn: Callable[[], object]) -> tuple[BaseException | None, int]:
    """Run ``fn``; return the exception it raised (or None) and its peak traced allocation."""
    tracemalloc.start()
    try:
        fn()
    except BaseException as exc:  # the caller asserts on the type
        return exc, tracemalloc.get_traced_memory()[1]
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return None, peak


# -- codec.unpackb ---------------------------------------------------------------------------

plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text() | st.binary(),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=20,
)


@FUZZ
@given(st.binary(max_size=600))
def test_unpackb_random_bytes_decode_or_raise_codec_error(data: bytes) -> None:
    try:
        value = unpackb(data)
    except CodecError:
        return
    check_value(value)  # whatever decodes is plain data within the limits


@FUZZ
@given(plain, st.data())
def test_unpackb_mutated_records_decode_or_raise_codec_error(value: Any, data: st.DataObject) -> None:
    raw = bytearray(packb(value))
    assert packb(unpackb(bytes(raw))) == bytes(raw)  # a round trip is byte-exact (NaN included)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        at = data.draw(st.integers(0, max(len(raw) - 1, 0)))
        if op == "flip" and raw:
            raw[at] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del raw[at:]
        else:
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=9))
    try:
        unpackb(bytes(raw))
    except CodecError:
        pass


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xdd\x80\x00\x00\x00" + b"\x00" * 8, id="array-header-2**31"),
        pytest.param(b"\xdf\xff\xff\xff\xff" + b"\x00" * 8, id="map-header-2**32-1"),
        pytest.param(b"\xdb\x7f\xff\xff\xff" + b"a" * 8, id="str-header-2GB"),
        pytest.param(b"\xc6\x7f\xff\xff\xff" + b"a" * 8, id="bin-header-2GB"),
        pytest.param(b"\x91" * 100_000 + b"\xc0", id="100k-nested-arrays"),
        pytest.param(b"\x81\xa1k" * 100_000 + b"\xc0", id="100k-nested-maps"),
        pytest.param(b"\xdf\x00\x0f\x42\x40" + b"\xa1k\xc0" * 1000, id="map-header-10**6"),
        pytest.param(b"\xdd\x00\x0f\x42\x40" + b"\xc0" * 100_001, id="array-10**6-nils"),
        pytest.param(b"\xc4\x00" * 3, id="trailing-data"),
        pytest.param(b"\xd4\x01\x00", id="ext-type"),
        pytest.param(b"\xc1", id="reserved-byte"),
        pytest.param(b"\x81\x01\x02", id="int-map-key"),
        pytest.param(b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff" * 1, id="uint64-max-is-fine"),
    ],
)
def test_unpackb_bombs_are_refused_without_memory(data: bytes) -> None:
    exc, peak = peak_of(lambda: unpackb(data))
    if data.startswith(b"\xcf"):
        assert exc is None
    else:
        assert isinstance(exc, CodecError), exc
    assert peak < MEMORY_BOUND


def test_unpackb_refuses_a_50_mb_record_by_its_length() -> None:
    big = b"\xc6" + (50 * MB).to_bytes(4, "big") + bytes(50 * MB)
    exc, peak = peak_of(lambda: unpackb(big))
    assert isinstance(exc, CodecError) and "exceeds the limit" in str(exc)
    assert peak < MB


def test_check_value_counts_a_container_before_walking_it() -> None:
    wide = dict.fromkeys((f"k{i}" for i in range(10**6)), 0)
    exc, peak = peak_of(lambda: check_value(wide))
    assert isinstance(exc, CodecError) and "more than 100000 elements" in str(exc)
    assert peak < MB  # nothing was copied onto the work stack
    exc, _ = peak_of(lambda: check_value({"x": "a" * 2000}, Limits(max_bytes=1000)))
    assert isinstance(exc, CodecError) and "1000 bytes" in str(exc)


# -- memory.verify_chain -----------------------------------------------------------------------

rows_strategy = st.lists(st.tuples(st.binary(max_size=300), st.binary(max_size=80)), max_size=4)


@FUZZ
@given(rows_strategy, st.text(max_size=40))
def test_verify_chain_on_random_rows_raises_only_integrity_error(rows: list[tuple[bytes, bytes]], oid: str) -> None:
    ring = peo.Keyring()
    try:
        head, entries = verify_chain(oid, rows, ring)
    except IntegrityError as exc:
        assert exc.seq is not None and 0 <= exc.seq <= len(rows)
        return
    assert rows == [] and head is None and entries == []  # nothing random verifies


def _world(runner: asyncio.Runner, url: str, n: int = 2, steps: int = 2) -> list[str]:
    async def go() -> list[str]:
        async with peo.Client(url) as client:
            ids = await client.submit_many("count", [{"steps": steps}] * n)
        await peo.Node(url, APP, idle_horizon=0).run_until_idle()
        return ids

    return runner.run(go())


def test_verify_chain_on_mutated_real_rows(sqlite_url: str, runner: asyncio.Runner) -> None:
    oid = _world(runner, sqlite_url, n=1)[0]
    rows = runner.run(_entries(sqlite_url, oid))
    ring = keyring_for(config.default_policy())
    assert verify_chain(oid, rows, ring)[0] is not None

    @FUZZ
    @given(st.integers(0, len(rows) - 1), st.booleans(), st.binary(max_size=64), st.integers(0, 400))
    def check(at: int, in_body: bool, junk: bytes, where: int) -> None:
        body, sig = rows[at]
        target = bytearray(body if in_body else sig)
        where = min(where, len(target))
        target[where : where + len(junk)] = junk
        edited = list(rows)
        edited[at] = (bytes(target), sig) if in_body else (body, bytes(target))
        if edited[at] == rows[at]:
            return
        with pytest.raises(IntegrityError) as info:
            verify_chain(oid, edited, ring)
        assert info.value.seq == at

    check()


async def _entries(url: str, oid: str) -> list[tuple[bytes, bytes]]:
    async with peo.Client(url) as client:
        return await client.store.entries(oid)


# -- Client.import_ ----------------------------------------------------------------------------


def test_import_random_and_mutated_export_files(tmp_path: Path, runner: asyncio.Runner) -> None:
    source = f"sqlite:///{tmp_path / 'source.db'}"
    target = f"sqlite:///{tmp_path / 'target.db'}"
    oid = _world(runner, source, n=1)[0]

    async def export() -> bytes:
        async with peo.Client(source) as client:
            return await client.export(oid)

    good = runner.run(export())
    client = peo.Client(target)
    runner.run(client.open())
    try:

        @FUZZ
        @given(st.one_of(st.binary(max_size=400), st.builds(lambda v: packb(v), plain)))
        def random_files(data: bytes) -> None:
            with pytest.raises((CodecError, IntegrityError)):
                runner.run(client.import_(data))

        @FUZZ
        @given(st.data())
        def mutated_files(data: st.DataObject) -> None:
            raw = bytearray(good)
            for _ in range(data.draw(st.integers(1, 3))):
                at = data.draw(st.integers(0, len(raw) - 1))
                if data.draw(st.booleans()):
                    raw[at] ^= 1 << data.draw(st.integers(0, 7))
                else:
                    raw[at : at + data.draw(st.integers(1, 40))] = data.draw(st.binary(max_size=8))
            if bytes(raw) == good:
                return
            with pytest.raises((CodecError, IntegrityError)):
                runner.run(client.import_(bytes(raw)))

        random_files()
        mutated_files()
        assert count_rows(target) == 0 and count_rows(target, "entries") == 0  # nothing written
        assert runner.run(client.import_(good)) == oid  # the intact file still imports
        assert runner.run(client.verify(oid)) == 4
    finally:
        runner.run(client.aclose())


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"\xdd\x80\x00\x00\x00", id="array-header-2**31"),
        pytest.param(b"\x84\xa6format\xaapeo-export\xa1v\x01\xa2id\xa1x\xa7entries\xdd\x80\x00\x00\x00",
                     id="entries-header-2**31"),
        pytest.param(b"\x91" * 100_000 + b"\xc0", id="100k-nested-arrays"),
        pytest.param(b"\xdf\x00\x0f\x42\x40" + b"\xa1k\xc0" * 10, id="map-header-10**6"),
        pytest.param(packb({"format": "peo-export", "v": 1, "id": "x", "entries": [[b"\x91" * 5000 + b"\xc0", b""]]}),
                     id="nested-entry-body"),
    ],
)
def test_import_bombs_are_refused_without_memory(sqlite_url: str, runner: asyncio.Runner, data: bytes) -> None:
    client = peo.Client(sqlite_url)
    runner.run(client.open())
    try:
        exc, peak = peak_of(lambda: runner.run(client.import_(data)))
        assert isinstance(exc, CodecError | IntegrityError), exc
        assert peak < MEMORY_BOUND
        assert count_rows(sqlite_url) == 0
    finally:
        runner.run(client.aclose())


# -- the client's own input checks: bombs and all-or-nothing -------------------------------------


def _nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


BOMBS = {
    "50MB-string": lambda: {"x": "a" * (50 * MB)},
    "50MB-bytes": lambda: {"x": bytes(50 * MB)},
    "100k-nested": lambda: {"x": _nested(100_000)},
    "10**6-keys": lambda: {f"k{i}": 0 for i in range(10**6)},
    "10**6-items": lambda: {"x": [0] * 10**6},
}


@pytest.mark.parametrize("kind", sorted(BOMBS))
def test_submit_and_signal_bombs_are_refused_and_nothing_is_written(
    sqlite_url: str, runner: asyncio.Runner, kind: str
) -> None:
    bomb = BOMBS[kind]()
    client = peo.Client(sqlite_url)
    runner.run(client.open())
    try:
        oid = runner.run(client.submit("count", {"steps": 1}))
        objects, inbox = count_rows(sqlite_url), count_rows(sqlite_url, "inbox")

        def attempt(coro_fn: Callable[[], Awaitable[object]]) -> None:
            exc, peak = peak_of(lambda: runner.run(coro_fn()))  # type: ignore[arg-type, return-value]
            assert isinstance(exc, UsageError | PolicyError | CodecError), exc
            assert peak < MEMORY_BOUND, f"{kind}: {peak / MB:.0f} MB"

        attempt(lambda: client.submit("count", bomb))
        # One bad goal among good ones: the whole batch is refused before anything is written.
        attempt(lambda: client.submit_many("count", [{"steps": 1}, bomb, {"steps": 2}]))
        attempt(lambda: client.signal(oid, "go", bomb))
        assert count_rows(sqlite_url) == objects
        assert count_rows(sqlite_url, "entries") == objects
        assert count_rows(sqlite_url, "inbox") == inbox
    finally:
        runner.run(client.aclose())


@FUZZ
@given(goal=st.dictionaries(st.text(max_size=5), plain, max_size=4), priority=st.integers(), scope=st.text(max_size=5),
       handler=st.text(max_size=8))
def test_submit_with_arbitrary_arguments_succeeds_or_raises_usage_error(
    goal: dict[str, Any], priority: int, scope: str, handler: str
) -> None:
    client = peo.Client("sqlite:///fuzz.db")
    try:
        client._prepare(handler, goal, priority=priority, scope=scope, deadline=None, labels=None,
                        max_failures=None, max_steps=None, now=1)
    except (UsageError, PolicyError):
        pass


# -- records read from the store ---------------------------------------------------------------


def test_garbage_entry_bodies_are_quarantined_and_the_node_keeps_going(
    sqlite_url: str, runner: asyncio.Runner
) -> None:
    garbage = [
        b"",
        b"\xc1",
        b"\x91" * 100_000 + b"\xc0",
        b"\xdd\x80\x00\x00\x00",
        b"\xdf\x00\x0f\x42\x40",
        bytes(2 * MB),
        packb({"v": 1}),
        packb([1, 2, 3]),
        packb({"v": 99, "seq": 1}),
    ]
    ids = _world(runner, sqlite_url, n=len(garbage) + 1, steps=1)
    victims, bystander = ids[:-1], ids[-1]
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as con:
        for oid, body in zip(victims, garbage, strict=True):
            con.execute("UPDATE entries SET body = ? WHERE object_id = ? AND seq = 1", (body, oid))

    async def go() -> None:
        async with peo.Client(sqlite_url) as client:
            for oid in victims:
                info = await client.get(oid)  # never crashes; shows what decodes
                assert len(info.memory) == 1
                with pytest.raises(IntegrityError) as exc:
                    await client.verify(oid)
                assert exc.value.seq == 1
            assert await client.verify(bystander) == 3
            for oid in ids:
                await client.signal(oid, "go", {"i": 1})
        node = peo.Node(sqlite_url, APP, idle_horizon=0)
        await node.run_until_idle()
        assert node.stats["quarantined"] == len(victims)
        async with peo.Client(sqlite_url) as client:
            for oid in victims:
                info = await client.get(oid)
                assert info.status is peo.Status.QUARANTINED and "seq 1" in (info.reason or "")
            assert (await client.wait(bystander, timeout=5))["n"] == 1

    runner.run(go())
    with sqlite3.connect(path) as con:  # nothing appended to any victim
        for oid in victims:
            assert con.execute("SELECT max(seq) FROM entries WHERE object_id = ?", (oid,)).fetchone()[0] == 2


def test_garbage_inbox_payloads_and_results_are_coped_with(sqlite_url: str, runner: asyncio.Runner) -> None:
    waiter, done = _world(runner, sqlite_url, n=2, steps=1)
    path = sqlite_url.removeprefix("sqlite:///")

    async def finish_done() -> None:
        async with peo.Client(sqlite_url) as client:
            await client.signal(done, "go")
        await peo.Node(sqlite_url, APP, idle_horizon=0).run_until_idle()

    runner.run(finish_done())
    with sqlite3.connect(path) as con:
        for payload in (b"\xc1", b"\x91" * 100_000, b"\xdd\x80\x00\x00\x00", b""):
            con.execute("INSERT INTO inbox (object_id, name, payload, created_at) VALUES (?, 'go', ?, 0)",
                        (waiter, payload))
        con.execute("UPDATE objects SET inbox = inbox + 4, due_at = 0 WHERE id = ?", (waiter,))
        con.execute("UPDATE objects SET result = ? WHERE id = ?", (b"\xdd\x80\x00\x00\x00", done))

    async def go() -> None:
        await peo.Node(sqlite_url, APP, idle_horizon=0).run_until_idle()
        async with peo.Client(sqlite_url) as client:
            # Rows written behind peo's back carry no seal: each is refused (once, visibly),
            # whatever its bytes, and the object keeps waiting; a signed signal still ends it.
            refused = await client.store.refused(waiter)
            assert len(refused) == 4 and all(r.reason.startswith("unsigned") for r in refused)
            assert (await client.get(waiter, memory=False)).status is peo.Status.DORMANT
            await client.signal(waiter, "go", "signed")
            await peo.Node(sqlite_url, APP, idle_horizon=0).run_until_idle()
            assert await client.wait(waiter, timeout=5) == {"n": 1, "payloads": ["signed"]}
            assert await client.verify(waiter) == 5
            # A corrupt cached result is never read: the reader flags the object, and
            # peo resume rebuilds the row from the chain.
            with pytest.raises(IntegrityError, match="cached result"):
                await client.get(done)
            assert (await client.get(done, memory=False)).status is peo.Status.QUARANTINED
            await client.resume(done)
            assert await client.wait(done, timeout=5) == {"n": 1, "payloads": [None]}
            assert await client.verify(done) == 5

    runner.run(go())


def test_text_where_the_store_expects_blobs_reads_as_corrupt_not_a_crash(
    sqlite_url: str, runner: asyncio.Runner
) -> None:
    oid = _world(runner, sqlite_url, n=1, steps=1)[0]
    with sqlite3.connect(sqlite_url.removeprefix("sqlite:///")) as con:
        con.execute("UPDATE objects SET result = 'not a blob' WHERE id = ?", (oid,))

    async def go() -> None:
        async with peo.Client(sqlite_url) as client:
            # Not a crash, and never read as a result: the reader refuses and flags the object.
            with pytest.raises(IntegrityError):
                await client.get(oid)
            info = await client.get(oid)
            assert info.status is peo.Status.QUARANTINED and info.result is None
            with pytest.raises(IntegrityError):
                await client.verify(oid)

    runner.run(go())


# -- the CLI --------------------------------------------------------------------------------------

NASTY = [
    "\x00", "a\x00b", "\udcff", "\u202e", "", " ", "-", "--", "-h", "../../etc/passwd", "'; DROP TABLE objects; --",
    "%s%n", "\n", "x" * 10_000, "☃", "\ufeff",
]
odd_text = st.one_of(st.sampled_from(NASTY), st.text(max_size=40),
                     st.text(st.characters(codec="utf-8", categories=None, exclude_categories=()), max_size=10))


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    cli = pytest.importorskip("peo.cli")
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert isinstance(code, int)
    assert "Traceback" not in err and "this is a bug" not in err, err
    return code, out, err


def test_cli_submit_and_signal_with_arbitrary_json(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(["--store", sqlite_url, "submit", "count", "--goal", '{"steps": 1}'], capsys)
    assert code == 0
    oid = out.strip()

    json_ish = st.one_of(
        odd_text,
        st.builds(lambda v: json.dumps(v), st.recursive(st.none() | st.integers() | st.text(max_size=5),
                                                        lambda i: st.lists(i) | st.dictionaries(st.text(), i))),
        st.sampled_from(["[" * 100_000, "{}" * 3, "1e999", "NaN", '{"a": 1e400}', "9" * 5000, '{"\\ud800": 1}']),
    )

    @FUZZ
    @given(json_ish)
    def check(text: str) -> None:
        code, _, _ = _cli(["--store", sqlite_url, "submit", "count", "--goal", text], capsys)
        assert code in (0, 2)
        code, _, _ = _cli(["--store", sqlite_url, "signal", oid, "go", "--payload", text], capsys)
        assert code in (0, 2)

    check()


def test_cli_object_ids_with_odd_characters(sqlite_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert _cli(["--store", sqlite_url, "init"], capsys)[0] == 0

    @FUZZ
    @given(odd_text)
    def check(oid: str) -> None:
        # After "--" the id is always data, never an option (option confusion is fuzzed below).
        for argv in (["show", "--", oid], ["show", "--json", "--", oid], ["verify", "--", oid],
                     ["signal", "--", oid, "go"], ["cancel", "--", oid], ["export", "--", oid]):
            code, _, _ = _cli(["--store", sqlite_url, *argv], capsys)
            assert code in (1, 2), argv

    check()


def test_cli_import_of_bad_files(sqlite_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    files = {
        "empty": b"",
        "random": bytes(range(256)),
        "json": b'{"format": "peo-export"}',
        "bomb": b"\xdd\x80\x00\x00\x00",
        "nested": b"\x91" * 100_000,
    }
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
        assert _cli(["--store", sqlite_url, "import", str(tmp_path / name)], capsys)[0] in (1, 2)
    assert _cli(["--store", sqlite_url, "import", str(tmp_path / "missing")], capsys)[0] in (1, 2)
    assert _cli(["--store", sqlite_url, "import", str(tmp_path)], capsys)[0] in (1, 2)
    assert count_rows(sqlite_url) == 0


@FUZZ
@given(st.lists(odd_text, max_size=5))
def test_cli_arbitrary_argument_vectors(argv: list[str]) -> None:
    cli = pytest.importorskip("peo.cli")
    assume(not argv or argv[0] not in ("node", "demo"))  # long-running verbs
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        # Every verb that could touch a store is pointed at a fresh file in the test's directory.
        code = cli.main(["--store", "sqlite:///argv.db", *argv])
    assert isinstance(code, int) and code in (0, 1, 2)
    assert "Traceback" not in err.getvalue() and "this is a bug" not in err.getvalue()
