"""The traps of issue 12 that the CLI, the client and the stores close: signals to finished
objects, a node that waits for its store, read verbs that never create a store, exports
that carry a signed trailer, and the smaller things found on the way. Each test failed on
the code before the fix."""

from __future__ import annotations

import contextlib
import hashlib
import json
import sqlite3
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clirun import ok, run, submit

APP_SOURCE = '''
import peo

app = peo.App()


@app.handler("count")
async def count(step):
    n = step.state.get("n", 0)
    if n >= step.goal["steps"]:
        return peo.Done({"n": n})
    return peo.Continue(state={"n": n + 1})


@app.handler("approval")
def approval(step):
    if not step.state.get("asked"):
        return peo.WaitSignal("approve", state={"asked": True})
    return peo.Done({"payloads": [s.payload for s in step.signals if s.name == "approve"]})


@app.handler("boom")
def boom(step):
    raise ValueError("boom")


@app.handler("delegate")
def delegate(step):
    if not step.state.get("sent"):
        return peo.Delegate([peo.Intent("approval", {})], wait=True, state={"sent": True})
    return peo.Done()
'''


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "trapapp.py").write_text(APP_SOURCE)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield "trapapp:app"
    sys.modules.pop("trapapp", None)


def run_node(capsys: pytest.CaptureFixture[str], url: str, app: str = "trapapp:app") -> None:
    code, _, err = run(capsys, "--store", url, "node", "--app", app, "--until-idle")
    assert code == 0, err


def status(capsys: pytest.CaptureFixture[str], url: str, oid: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(ok(capsys, "--store", url, "show", oid, "--json"))
    return doc


# -- trap 6: signalling a finished object ---------------------------------------------------


def test_a_signal_to_a_terminated_object_fails_and_writes_nothing(capsys, store_url, app_module) -> None:
    oid = submit(capsys, store_url, "count", "--goal", '{"steps": 0}')
    run_node(capsys, store_url)
    before = status(capsys, store_url, oid)
    assert before["status"] == "terminated"
    code, out, err = run(capsys, "--store", store_url, "signal", oid, "approve")
    assert (code, out) == (1, "")
    assert err == f"peo: error: object {oid} has terminated (done): a signal would never be read\n"
    assert status(capsys, store_url, oid) == before


def test_a_signal_to_a_quarantined_object_is_kept_and_the_cli_says_so(capsys, store_url, app_module) -> None:
    import asyncio

    from peo.store import open_store

    oid = submit(capsys, store_url, "approval")

    async def quarantine() -> None:
        async with open_store(store_url) as store:
            await store.quarantine(oid, "signed by untrusted key", now=time.time_ns())

    asyncio.run(quarantine())
    out = ok(capsys, "--store", store_url, "signal", oid, "approve")
    assert out == (f"signal approve kept for {oid}: the object is quarantined and reads it only if it is "
                   "resumed\n")


def test_signal_peo_cancel_points_to_peo_cancel_and_a_second_cancel_records_nothing(
    capsys, store_url, app_module
) -> None:
    oid = submit(capsys, store_url, "approval")
    code, _, err = run(capsys, "--store", store_url, "signal", oid, "peo.cancel")
    assert code == 2 and f"use `peo cancel {oid}`" in err and "cancel()" not in err
    # No node holds it: the operator's cancel is written at once, and a second one finds it ended.
    assert ok(capsys, "--store", store_url, "cancel", oid).startswith(f"cancelled {oid} (no node held it")
    code, _, err = run(capsys, "--store", store_url, "cancel", oid)
    assert code == 1 and "already terminated" in err
    run_node(capsys, store_url)
    doc = status(capsys, store_url, oid)
    assert doc["status"] == "terminated"
    signals = [e["outcome"].get("signals") for e in doc["memory"] if e["outcome"].get("signals")]
    assert all(len(s) == 1 for s in signals) and signals  # one cancel, never "peo.cancel,peo.cancel"


# -- trap 7: the CLI node waits for its store -------------------------------------------------


def test_the_node_waits_for_an_unreachable_postgres_with_backoff_up_to_its_bound(capsys) -> None:
    pytest.importorskip("asyncpg")
    started = time.monotonic()
    code, _, err = run(capsys, "--store", "postgresql://postgres@127.0.0.1:1/test", "node", "--app",
                       "peo.demo:app", "--wait-for-store", "0.6")
    elapsed = time.monotonic() - started
    assert code == 1 and elapsed >= 0.6
    retries = [line for line in err.splitlines() if "store_open_failed" in line]
    assert len(retries) >= 3 and "retry_in=0.05s" in retries[0] and "retry_in=0.10s" in retries[1]
    assert err.splitlines()[-1].startswith(
        "peo: error: gave up waiting for the store after --wait-for-store 0.6 s: cannot reach PostgreSQL at "
        "127.0.0.1:1")


def test_a_store_that_cannot_open_as_configured_still_fails_the_node_at_once(capsys) -> None:
    started = time.monotonic()
    code, _, err = run(capsys, "--store", "sqlite:///no/such/dir/peo.db", "node", "--app", "peo.demo:app")
    assert code == 1 and "does not exist" in err and "store_open_failed" not in err
    assert time.monotonic() - started < 5


# -- trap 8: read verbs never create or change a database -------------------------------------

READ_VERBS = [["ls"], ["show", "some-id"], ["verify"], ["signal", "some-id", "go"], ["cancel", "some-id"],
              ["export", "some-id"]]


@pytest.mark.parametrize("argv", READ_VERBS, ids=[a[0] for a in READ_VERBS])
def test_read_verbs_never_create_a_store(capsys, tmp_path, argv) -> None:
    url = f"sqlite:///{tmp_path / 'typo.db'}"
    code, out, err = run(capsys, "--store", url, *argv)
    assert (code, out) == (1, "")
    assert err == f"peo: error: no peo store at {url}; run peo init\n"
    assert list(tmp_path.glob("typo.db*")) == []


@pytest.mark.postgres
def test_read_verbs_never_create_a_postgres_schema(capsys, postgres_url) -> None:
    code, _, err = run(capsys, "--store", postgres_url, "ls")
    assert code == 1 and "no peo store at postgresql://" in err and "; run peo init" in err
    ok(capsys, "--store", postgres_url, "init")
    assert ok(capsys, "--store", postgres_url, "ls") == "no objects\n"


def test_no_verb_adds_tables_to_an_unrelated_sqlite_file_without_init_force(capsys, tmp_path) -> None:
    path = tmp_path / "app.db"
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
    url = f"sqlite:///{path}"
    code, _, err = run(capsys, "--store", url, "ls")
    assert code == 1 and "no peo store at" in err
    for argv in (["submit", "count"], ["init"]):
        code, _, err = run(capsys, "--store", url, *argv)
        assert code == 1 and "holds tables that are not peo's (customers)" in err and "peo init --force" in err
    with contextlib.closing(sqlite3.connect(path)) as db:
        assert [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")] == ["customers"]
    assert "schema ready" in ok(capsys, "--store", url, "init", "--force")
    assert ok(capsys, "--store", url, "ls") == "no objects\n"


def test_the_client_creates_by_default_and_not_with_create_false(tmp_path) -> None:
    import asyncio

    import peo
    from peo.errors import StoreError

    async def go() -> None:
        with pytest.raises(StoreError, match="no peo store"):
            async with peo.Client(f"sqlite:///{tmp_path / 'a.db'}", create=False):
                pass
        assert not (tmp_path / "a.db").exists()
        async with peo.Client(f"sqlite:///{tmp_path / 'a.db'}") as client:
            assert await client.list() == []

    asyncio.run(go())


# -- trap 9: an export carries a signed trailer ------------------------------------------------


def exported(capsys: pytest.CaptureFixture[str], url: str, app_module: str, tmp_path: Path) -> tuple[str, dict]:
    import msgpack

    oid = submit(capsys, url, "count", "--goal", '{"steps": 2}')
    run_node(capsys, url, app_module)
    ok(capsys, "--store", url, "export", oid, "-o", "full.peo")
    return oid, msgpack.unpackb((tmp_path / "full.peo").read_bytes(), raw=False)


def write(path: Path, doc: dict) -> str:
    import msgpack

    path.write_bytes(msgpack.packb(doc, use_bin_type=True))
    return path.name


def test_an_export_cut_short_is_refused_and_nothing_is_written(capsys, store_url, tmp_path, app_module) -> None:
    oid, doc = exported(capsys, store_url, app_module, tmp_path)
    assert doc["v"] == 2 and doc["trailer"]["entries"] == len(doc["entries"]) == 4
    assert doc["trailer"]["seq"] == 3
    cut = write(tmp_path / "cut.peo", {**doc, "entries": doc["entries"][:-1]})
    bare = write(tmp_path / "bare.peo", {k: v for k, v in doc.items() if k != "trailer"})
    forged = write(tmp_path / "forged.peo", {**doc, "entries": doc["entries"][:-1],
                                             "trailer": {**doc["trailer"], "entries": 3, "seq": 2,
                                                         "hash": hashlib.sha256(doc["entries"][-2][0]).digest()}})
    other = f"sqlite:///{tmp_path / 'other.db'}"
    for name, why in ((cut, "the export is cut short: its trailer names 4 entries up to seq 3, "
                            "the file holds 3 up to seq 2"),
                      (bare, "no valid signed trailer"), (forged, "the export's trailer: bad signature")):
        code, out, err = run(capsys, "--store", other, "import", name)
        assert (code, out) == (1, ""), err
        assert "import refused" in err and why in err
    assert ok(capsys, "--store", other, "ls") == "no objects\n"
    code, out, err = run(capsys, "--store", other, "import", "full.peo")
    assert code == 0 and out == oid + "\n"
    assert err == f"imported {oid} (terminated, seq 3, 4 entries) from full.peo\n"


def test_an_export_of_the_previous_format_imports_with_a_warning(capsys, sqlite_url, tmp_path, app_module) -> None:
    oid, doc = exported(capsys, sqlite_url, app_module, tmp_path)
    old = write(tmp_path / "v1.peo", {"format": "peo-export", "v": 1, "id": oid, "entries": doc["entries"]})
    code, out, err = run(capsys, "--store", f"sqlite:///{tmp_path / 'other.db'}", "import", old)
    assert code == 0 and out == oid + "\n"
    assert "previous format (v1, without a signed trailer)" in err and "(terminated, seq 3, 4 entries)" in err


def test_a_json_file_is_not_a_peo_export_file(capsys, sqlite_url, tmp_path) -> None:
    (tmp_path / "doc.json").write_text('{"id": "x", "entries": []}\n')
    code, _, err = run(capsys, "--store", sqlite_url, "import", "doc.json")
    assert code == 1 and "not a peo export file" in err and "ExtraData" not in err


# -- smaller things -----------------------------------------------------------------------------


def test_global_options_are_accepted_after_the_verb_too(capsys, sqlite_url) -> None:
    ok(capsys, "init", "--store", sqlite_url)
    oid = ok(capsys, "submit", "research", "--store", sqlite_url).strip()
    assert oid in ok(capsys, "ls", "--store", sqlite_url, "-v")
    assert oid in ok(capsys, "--store", sqlite_url, "ls")  # before the verb, as before
    assert oid in ok(capsys, "--store", "sqlite:///elsewhere.db", "-v", "show", oid, "--store", sqlite_url)


def test_usage_errors_have_the_one_error_format_and_exit_2(capsys) -> None:
    for argv, what in ((["submit"], "the following arguments are required: HANDLER"),
                       (["ls", "--limit", "0"], "must be at least 1"), (["frobnicate"], "invalid choice"),
                       (["ls", "--bogus"], "unrecognized arguments: --bogus")):
        code, out, err = run(capsys, *argv)
        assert (code, out) == (2, "")
        assert err.startswith("peo: error: ") and what in err and err[-1] == "\n" and err.count("\n") == 1


def test_demo_help_lists_the_demos_own_options(capsys) -> None:
    options = ok(capsys, "demo", "--help").partition("options:")[2].partition("examples:")[0]
    assert "--no-kill" in options and "--timeout SECONDS" in options


def test_help_examples_use_the_demos_handlers_and_peos_id_format(capsys) -> None:
    import re

    from peo.demo import app

    texts = [ok(capsys, "--help")] + [ok(capsys, verb, "--help") for verb in
                                      ("submit", "ls", "show", "signal", "cancel", "verify", "export", "import")]
    examples = "\n".join(t.partition("examples:")[2] for t in texts)
    submitted = re.findall(r"peo submit (\S+)", examples)
    assert submitted and set(submitted) <= set(app.handlers)
    assert "01J0" not in examples and "..." not in examples
    assert re.search(r"[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", examples)


def test_the_demo_quotes_the_store_url_in_its_try_next_lines(capsys) -> None:
    import asyncio

    from peo import demo

    url = "sqlite:///my dir/peo.db?durability=normal"
    asyncio.run(demo._report(None, url, [f"id-{n}" for n in range(11)], set(), False, 1.0))  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "  peo --store 'sqlite:///my dir/peo.db?durability=normal' ls" in out


def test_counts_are_in_the_singular_for_one(capsys, sqlite_url, app_module) -> None:
    oid = submit(capsys, sqlite_url, "count", "--goal", '{"steps": 0}')
    other = submit(capsys, sqlite_url, "approval")
    code, _, err = run(capsys, "--store", sqlite_url, "node", "--app", app_module, "--until-idle")
    assert code == 0 and "2 steps, 2 claims" in err
    assert other  # waits for a signal: not due, so the next run does not touch it
    submit(capsys, sqlite_url, "count", "--goal", '{"steps": 0}')
    code, _, err = run(capsys, "--store", sqlite_url, "node", "--app", app_module, "--until-idle")
    assert "1 step, 1 claim," in err
    fresh = submit(capsys, sqlite_url, "count")
    out = ok(capsys, "--store", sqlite_url, "verify", oid, fresh)
    assert f"OK    {oid}  2 entries" in out and f"OK    {fresh}  1 entry\n" in out


def test_ls_filters_by_handler_and_parent_and_says_what_a_dormant_object_waits_for(
    capsys, store_url, app_module
) -> None:
    parent = submit(capsys, store_url, "delegate")
    lone = submit(capsys, store_url, "approval")
    run_node(capsys, store_url)
    [child] = [o["id"] for o in json.loads(ok(capsys, "--store", store_url, "ls", "--json", "--parent", parent))]
    rows = {line.split()[0]: line for line in ok(capsys, "--store", store_url, "ls").splitlines()[1:]}
    assert set(rows) == {parent, lone, child}
    assert rows[parent].endswith("waits for children")
    assert rows[lone].endswith("waits for signal approve") and rows[child].endswith("waits for signal approve")
    approvals = ok(capsys, "--store", store_url, "ls", "--handler", "approval").splitlines()[1:]
    assert sorted(line.split()[0] for line in approvals) == sorted([lone, child])
    assert ok(capsys, "--store", store_url, "ls", "--handler", "nope") == "no objects with handler nope\n"


def test_show_prints_the_last_error_with_its_traceback(capsys, store_url, app_module) -> None:
    oid = submit(capsys, store_url, "boom", "--max-failures", "1")
    run_node(capsys, store_url)
    doc = status(capsys, store_url, oid)
    err = doc["last_error"]
    assert (err["class"], err["message"]) == ("ValueError", "boom")
    out = ok(capsys, "--store", store_url, "show", oid)
    blocks = out.split("\n\n")
    assert blocks[1].startswith(f"error     ValueError: boom at seq {err['seq']}")
    if err["traceback"]:  # recorded by the node (issue 12, trap 4)
        assert "Traceback (most recent call last):" in blocks[1] and 'raise ValueError("boom")' in blocks[1]
    quiet = submit(capsys, store_url, "count", "--goal", '{"steps": 0}')
    run_node(capsys, store_url)
    assert status(capsys, store_url, quiet)["last_error"] is None
    assert "\nerror " not in ok(capsys, "--store", store_url, "show", quiet)
