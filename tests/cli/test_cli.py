"""The ``peo`` command line, specified through what an operator types and sees.

Every test calls ``peo.cli.main([...])`` in-process (the autouse fixture in conftest.py
gives each test its own working directory and ``PEO_HOME``); two tests run the real
console script in a subprocess.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from clirun import ok, run, submit

import peo
from peo import cli, config, keys
from peo.cli import archive

REPO = Path(__file__).resolve().parents[2]


def working_tree_env() -> dict[str, str]:
    """The environment for a subprocess: this working tree first on PYTHONPATH, so that a
    stale installed copy of peo is never the one tested."""
    path = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), path]) if path else str(REPO)}


APP_SOURCE = '''
import peo

app = peo.App()
not_an_app = {"handlers": []}


@app.handler("count")
async def count(step):
    n = step.state.get("n", 0)
    if n >= step.goal["steps"]:
        return peo.Done({"n": n, "blob": b"\\x00\\xff"})
    return peo.Continue(state={"n": n + 1})


@app.handler("approval")
def approval(step):
    if not step.state.get("asked"):
        return peo.WaitSignal("approve", state={"asked": True})
    return peo.Done({"payloads": [s.payload for s in step.signals if s.name == "approve"]})
'''


@pytest.fixture
def app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """``myapp.py`` in the working directory (tmp_path); forgotten by the import system afterwards."""
    (tmp_path / "myapp.py").write_text(APP_SOURCE)
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield "myapp:app"
    for name in ("myapp", "broken"):
        sys.modules.pop(name, None)


def listing(capsys: pytest.CaptureFixture[str], url: str) -> dict[str, dict[str, Any]]:
    return {o["id"]: o for o in json.loads(ok(capsys, "--store", url, "ls", "--json"))}


def run_node(capsys: pytest.CaptureFixture[str], url: str, app: str = "myapp:app", *extra: str) -> str:
    code, _, err = run(capsys, "--store", url, "node", "--app", app, "--until-idle", *extra)
    assert code == 0, err
    return err


def db_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


# -- init --------------------------------------------------------------------------------


def test_init_creates_the_schema_and_both_keys_and_is_idempotent(capsys, sqlite_url, tmp_path) -> None:
    first = ok(capsys, "--store", sqlite_url, "init")
    assert "created" in first
    keys = tmp_path / ".peo" / "keys"
    assert (keys / "client.key").exists() and (keys / "node.key").exists()
    assert (keys / "client.key").stat().st_mode & 0o777 == 0o600
    before = (keys / "node.key").read_bytes()
    second = ok(capsys, "--store", sqlite_url, "init")
    assert "created" not in second and second.count("existing") == 3
    assert (keys / "node.key").read_bytes() == before  # the node's identity is kept


def test_the_store_defaults_to_PEO_STORE_then_peo_db_in_the_current_directory(
    capsys, tmp_path, monkeypatch
) -> None:
    ok(capsys, "init")
    assert (tmp_path / "peo.db").exists()
    monkeypatch.setenv("PEO_STORE", f"sqlite:///{tmp_path / 'env.db'}")
    ok(capsys, "init")
    assert (tmp_path / "env.db").exists()


# -- submit, ls, show --------------------------------------------------------------------


def test_submit_prints_only_the_id_and_ls_json_lists_it(capsys, sqlite_url) -> None:
    code, out, _ = run(capsys, "--store", sqlite_url, "submit", "count", "--goal", '{"steps": 2}',
                       "--priority", "7", "--label", "team=search", "--scope", "default")
    assert code == 0
    oid = out.strip()
    assert out == oid + "\n" and " " not in oid
    objects = json.loads(ok(capsys, "--store", sqlite_url, "ls", "--json"))
    assert objects == [{"id": oid, "status": "runnable", "handler": "count", "seq": 0, "priority": 7,
                        "parent": None, "reason": None}]


def test_ls_prints_an_aligned_table_and_filters_by_status(capsys, sqlite_url) -> None:
    a = submit(capsys, sqlite_url, "count", "--goal", '{"steps": 1}')
    table = ok(capsys, "--store", sqlite_url, "ls").splitlines()
    assert table[0].split() == ["ID", "STATUS", "HANDLER", "SEQ", "PRIORITY", "REASON"]
    # No node has run on this store yet: nothing serves "count", and ls says so.
    assert table[1].split() == [a, "runnable", "count", "0", "0", *["no", "node", "serves", "this", "handler"]]
    assert table[1].index("runnable") == table[0].index("STATUS")
    none = ok(capsys, "--store", sqlite_url, "ls", "--status", "terminated")
    assert none == "no objects with status terminated\n"
    assert json.loads(ok(capsys, "--store", sqlite_url, "ls", "--json", "--status", "dormant")) == []


def test_show_json_has_the_documented_shape_with_bytes_as_hex(capsys, sqlite_url, app_module) -> None:
    oid = submit(capsys, sqlite_url, "count", "--goal", '{"steps": 1}', "--label", "k=v")
    run_node(capsys, sqlite_url)
    doc = json.loads(ok(capsys, "--store", sqlite_url, "show", oid, "--json"))
    assert {"id", "status", "intent", "context", "result", "reason", "state", "memory"} <= set(doc)
    assert doc["id"] == oid and doc["status"] == "terminated" and doc["reason"] == "done"
    assert doc["intent"]["handler"] == "count" and doc["intent"]["goal"] == {"steps": 1}
    assert doc["context"]["labels"] == {"k": "v"}
    assert doc["result"] == {"n": 1, "blob": "00ff"}  # bytes become hex strings
    assert doc["state"] == {"n": 1}
    assert [m["seq"] for m in doc["memory"]] == [0, 1, 2]
    assert [m["action"] for m in doc["memory"]] == ["instantiate", "execute", "terminate"]
    for m in doc["memory"]:
        assert {"seq", "action", "timestamp", "origin_node", "policy_ref", "signer", "outcome"} <= set(m)
        assert m["timestamp"].endswith("Z")
    assert doc["memory"][0]["origin_node"] == "client:anonymous"


def test_show_prints_a_head_and_one_line_per_entry(capsys, sqlite_url, app_module) -> None:
    oid = submit(capsys, sqlite_url, "count", "--goal", '{"steps": 2}')
    run_node(capsys, sqlite_url, "myapp:app", "--node-id", "node-a")
    out = ok(capsys, "--store", sqlite_url, "show", oid)
    head, _, memory = out.partition("\n\n")
    assert f"id        {oid}" in head and "terminated (done)" in head and 'goal      {"steps":2}' in head
    lines = memory.splitlines()
    assert lines[0].split()[:3] == ["SEQ", "ACTION", "TIME"]
    assert [line.split()[:2] for line in lines[1:]] == [
        ["0", "instantiate"], ["1", "execute"], ["2", "execute"], ["3", "terminate"]]
    assert all("node-a" in line for line in lines[2:])


# -- node --------------------------------------------------------------------------------


def test_node_until_idle_runs_every_object_to_completion(capsys, sqlite_url, app_module) -> None:
    ids = [submit(capsys, sqlite_url, "count", "--goal", f'{{"steps": {n}}}') for n in (1, 3, 5)]
    err = run_node(capsys, sqlite_url, "myapp:app", "--node-id", "worker-1", "--concurrency", "2")
    assert "peo node worker-1: serving approval, count" in err
    assert "stopped after" in err and "12 steps" in err and "0 quarantined" in err
    objects = listing(capsys, sqlite_url)
    assert [(objects[i]["status"], objects[i]["seq"]) for i in ids] == [("terminated", 2), ("terminated", 4),
                                                                        ("terminated", 6)]


def test_a_profile_configures_the_node_and_flags_override_it(
    capsys, sqlite_url, tmp_path, app_module, monkeypatch
) -> None:
    (tmp_path / "p.toml").write_text(
        f'node_id = "from-profile"\nstore = "{sqlite_url}"\napp = "myapp:app"\nconcurrency = 4\nlease_ttl = 2\n'
        f'key_file = "keys/profile.key"\npolicy = "{REPO / "policies" / "strict.toml"}"\n'
    )
    a = submit(capsys, sqlite_url, "count", "--goal", '{"steps": 1}')
    monkeypatch.setenv("PEO_STORE", "sqlite:///no/such/dir/peo.db")  # the profile's store wins over the env
    code, _, err = run(capsys, "node", "--profile", "p.toml", "--until-idle")
    assert code == 0, err
    assert "peo node from-profile:" in err and "policy strict@" in err and "concurrency 4" in err
    assert (tmp_path / "keys" / "profile.key").exists()  # a profile's key is created on first use
    b = submit(capsys, sqlite_url, "count", "--goal", '{"steps": 1}')
    code, _, err = run(capsys, "node", "--profile", "p.toml", "--node-id", "from-flag", "--until-idle")
    assert code == 0, err
    # Readers check the signed head, so they must trust the profile's key: share its .pub
    # with the deployment's key directory (as docs/security.md says to).
    shutil.copy(tmp_path / "keys" / "profile.key.pub", tmp_path / ".peo" / "keys" / "profile.key.pub")
    nodes = {oid: {m["origin_node"] for m in json.loads(ok(capsys, "--store", sqlite_url, "show", oid, "--json"))[
        "memory"][1:]} for oid in (a, b)}
    assert nodes == {a: {"from-profile"}, b: {"from-flag"}}
    code, _, err = run(capsys, "--store", "sqlite:///no/such/dir/peo.db", "node", "--profile", "p.toml", "--until-idle")
    assert code == 1 and "does not exist" in err  # and --store wins over the profile
    # The signer of a's steps is the profile key.
    signer = json.loads(ok(capsys, "--store", sqlite_url, "show", a, "--json"))["memory"][1]["signer"]
    assert signer == keys.load_key_file(tmp_path / "keys" / "profile.key").key_id


def test_the_example_profiles_and_policies_load(tmp_path) -> None:
    profiles = sorted((REPO / "nodes").glob("*.toml"))
    assert {p.name for p in profiles} >= {"local.toml", "worker-b.toml"}
    for path in profiles:
        profile = config.NodeSettings.from_profile(path)
        assert profile.node_id and profile.app and ":" in profile.app and profile.policy
        config.load_policy(REPO / profile.policy)
    default, strict = config.default_policy(), config.load_policy(REPO / "policies" / "strict.toml")
    assert strict.name == "strict"
    assert strict.max_payload_bytes < default.max_payload_bytes
    assert strict.max_failures < default.max_failures
    assert strict.accept_scopes != default.accept_scopes
    assert config.load_policy(REPO / "policies" / "default.toml") == default


def test_sigterm_stops_a_running_node_gracefully_with_exit_0(sqlite_url, tmp_path, app_module) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "peo", "--store", sqlite_url, "node", "--app", "myapp:app", "--node-id", "n1"],
        cwd=tmp_path, env=working_tree_env(), stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # the start line: the node is serving
        assert "peo node n1: serving" in first
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
        rest = proc.stderr.read()
        assert "stopped after" in rest and "Traceback" not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def test_a_second_sigterm_abandons_a_step_that_does_not_finish(capsys, sqlite_url, tmp_path) -> None:
    (tmp_path / "blocking.py").write_text(
        "import time, peo\napp = peo.App()\n\n@app.handler('block')\ndef block(step):\n"
        "    print('step started', flush=True)\n    time.sleep(600)\n    return peo.Done()\n"
    )
    oid = submit(capsys, sqlite_url, "block")
    proc = subprocess.Popen(
        [sys.executable, "-m", "peo", "--store", sqlite_url, "node", "--app", "blocking:app"],
        cwd=tmp_path, env=working_tree_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == "step started\n"
        proc.send_signal(signal.SIGTERM)
        while "stopping" not in (line := proc.stderr.readline()):
            assert line, "the node exited before acknowledging the first signal"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 1  # far sooner than the handler's 600 s
        assert "abandoned the steps in flight" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()
    assert listing(capsys, sqlite_url)[oid]["seq"] == 0  # nothing was recorded for the abandoned step


# -- signal and cancel -------------------------------------------------------------------


def test_a_signal_with_a_payload_wakes_a_waiting_object(capsys, sqlite_url, app_module) -> None:
    oid = submit(capsys, sqlite_url, "approval")
    run_node(capsys, sqlite_url)
    assert listing(capsys, sqlite_url)[oid]["status"] == "dormant"
    out = ok(capsys, "--store", sqlite_url, "signal", oid, "approve", "--payload", '{"approved": true}')
    assert "approve" in out
    run_node(capsys, sqlite_url)
    doc = json.loads(ok(capsys, "--store", sqlite_url, "show", oid, "--json"))
    assert doc["status"] == "terminated" and doc["result"] == {"payloads": [{"approved": True}]}


def test_cancel_terminates_the_object_and_a_second_cancel_fails(capsys, sqlite_url, app_module) -> None:
    oid = submit(capsys, sqlite_url, "approval")
    run_node(capsys, sqlite_url)
    ok(capsys, "--store", sqlite_url, "cancel", oid)
    run_node(capsys, sqlite_url)
    obj = listing(capsys, sqlite_url)[oid]
    assert obj["status"] == "terminated" and "cancel" in obj["reason"]
    code, _, err = run(capsys, "--store", sqlite_url, "cancel", oid)
    assert code == 1 and "already terminated" in err


# -- verify ------------------------------------------------------------------------------


def tamper_entry(url: str, oid: str, seq: int) -> None:
    """Flip one byte in a stored entry body, as a disk error or an attacker might."""
    with contextlib.closing(sqlite3.connect(db_path(url))) as db, db:
        (body,) = db.execute("SELECT body FROM entries WHERE object_id = ? AND seq = ?", (oid, seq)).fetchone()
        flipped = body[:-1] + bytes([body[-1] ^ 0x01])
        db.execute("UPDATE entries SET body = ? WHERE object_id = ? AND seq = ?", (flipped, oid, seq))


def test_verify_passes_then_names_the_seq_of_a_tampered_entry(capsys, sqlite_url, app_module) -> None:
    good = submit(capsys, sqlite_url, "count", "--goal", '{"steps": 3}')
    bad = submit(capsys, sqlite_url, "count", "--goal", '{"steps": 3}')
    run_node(capsys, sqlite_url)
    out = ok(capsys, "--store", sqlite_url, "verify")
    assert f"OK    {good}  5 entries" in out and "2 ok, 0 failed" in out
    tamper_entry(sqlite_url, bad, 2)
    code, out, _ = run(capsys, "--store", sqlite_url, "verify")
    assert code == 1
    assert f"OK    {good}" in out
    assert f"FAIL  {bad}  seq 2:" in out and "1 ok, 1 failed" in out
    code, out, _ = run(capsys, "--store", sqlite_url, "verify", good)
    assert code == 0 and "1 ok, 0 failed" in out
    code, out, _ = run(capsys, "--store", sqlite_url, "verify", "no-such-id")
    assert code == 1 and "FAIL  no-such-id  no object no-such-id" in out


def test_verify_reports_progress_on_stderr(capsys, sqlite_url, monkeypatch) -> None:
    monkeypatch.setattr(archive, "PROGRESS_EVERY", 2)
    for _ in range(5):
        submit(capsys, sqlite_url, "count")
    code, _, err = run(capsys, "--store", sqlite_url, "verify")
    assert code == 0
    assert "2/5 objects checked" in err and "4/5 objects checked" in err


# -- export and import -------------------------------------------------------------------


def test_export_then_import_into_another_store_where_a_node_finishes_it(
    capsys, sqlite_url, tmp_path, app_module
) -> None:
    oid = submit(capsys, sqlite_url, "approval")
    run_node(capsys, sqlite_url)  # dormant, waiting for "approve"
    out = ok(capsys, "--store", sqlite_url, "export", oid)
    assert (tmp_path / f"{oid}.peo").exists() and f"{oid}.peo" in out
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert ok(capsys, "--store", other, "import", f"{oid}.peo").strip() == oid
    assert listing(capsys, other)[oid]["status"] == "dormant"
    ok(capsys, "--store", other, "signal", oid, "approve", "--payload", "1")
    run_node(capsys, other)
    assert listing(capsys, other)[oid]["status"] == "terminated"
    assert "1 ok, 0 failed" in ok(capsys, "--store", other, "verify")
    code, _, err = run(capsys, "--store", other, "import", f"{oid}.peo")
    assert code == 1 and "already exists" in err


def test_export_to_standard_output_writes_the_same_bytes(capsysbinary, sqlite_url, tmp_path) -> None:
    oid = cli.main(["--store", sqlite_url, "submit", "count"]) == 0 and capsysbinary.readouterr().out.decode().strip()
    assert oid
    assert cli.main(["--store", sqlite_url, "export", oid, "-o", "-"]) == 0
    streamed = capsysbinary.readouterr().out
    assert cli.main(["--store", sqlite_url, "export", oid, "-o", "copy.peo"]) == 0
    assert streamed == (tmp_path / "copy.peo").read_bytes()


def test_import_refuses_a_tampered_or_untrusted_file_and_writes_nothing(
    capsys, sqlite_url, tmp_path, monkeypatch
) -> None:
    oid = submit(capsys, sqlite_url, "count")
    ok(capsys, "--store", sqlite_url, "export", oid, "-o", "good.peo")
    data = (tmp_path / "good.peo").read_bytes()
    (tmp_path / "tampered.peo").write_bytes(data[:-1] + bytes([data[-1] ^ 0x01]))  # inside the last signature
    (tmp_path / "junk.peo").write_bytes(b"not an export")
    other = f"sqlite:///{tmp_path / 'other.db'}"
    for name in ("tampered.peo", "junk.peo"):
        code, out, err = run(capsys, "--store", other, "import", name)
        assert (code, out) == (1, "") and "import refused" in err
    # On another machine (its own key directory), this machine's keys are not trusted.
    monkeypatch.setenv("PEO_HOME", str(tmp_path / "machine-b"))
    code, _, err = run(capsys, "--store", other, "import", "good.peo")
    assert code == 1 and "untrusted key" in err
    assert listing(capsys, other) == {}


# -- demo --------------------------------------------------------------------------------


def test_demo_without_the_demo_module_says_so_clearly(capsys, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "peo.demo", None)  # makes `from peo import demo` fail
    monkeypatch.delattr(peo, "demo", raising=False)
    code, _, err = run(capsys, "demo")
    assert code == 1 and "the demo is not available" in err


def test_demo_options_are_passed_to_the_demo(capsys, monkeypatch) -> None:
    import types

    seen: list[list[str]] = []
    fake = types.ModuleType("peo.demo")
    fake.main = lambda argv: seen.append(argv) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "peo.demo", fake)
    monkeypatch.setattr(peo, "demo", fake, raising=False)
    assert cli.main(["--store", "sqlite:///d.db", "demo", "--no-kill", "--timeout", "9"]) == 0
    assert seen == [["--store", "sqlite:///d.db", "--no-kill", "--timeout", "9"]]
    assert run(capsys, "ls", "--no-kill")[0] == 2  # only the demo takes extra options


# -- bad input ---------------------------------------------------------------------------

BAD_INPUT = [
    # (argv after --store URL, exit code, what stderr says)
    (["submit", "count", "--goal", '{"steps": '], 2, "line 1, column 11"),
    (["submit", "count", "--goal", '{"a": 1,\n "b": }'], 2, "line 2, column 7"),
    (["submit", "count", "--goal", "[1, 2]"], 2, "must be a JSON object"),
    (["submit", "count", "--goal", '{"x": NaN}'], 2, "NaN is not allowed"),
    (["submit", "count", "--goal", "@missing.json"], 2, "does not exist"),
    (["submit", "count", "--goal", '{"x": "' + "a" * (1 << 20) + '"}'], 2, "larger than"),
    (["submit", "count", "--goal", "[" * 100_000], 2, "nested too deeply"),
    (["submit", "count", "--label", "no-equals-sign"], 2, "use KEY=VALUE"),
    (["submit", "count", "--priority", "high"], 2, "invalid int value"),
    (["submit", "count", "--deadline", "-5"], 2, "positive number of seconds"),
    (["submit", "bad\x00handler"], 2, "NUL"),
    (["submit", "bad\nhandler"], 2, "control characters"),
    (["signal", "some-id", "go", "--payload", "{oops"], 2, "--payload is not valid JSON"),
    (["ls", "--status", "sleeping"], 2, "invalid choice"),
    (["ls", "--limit", "0"], 2, "must be at least 1"),
    (["frobnicate"], 2, "invalid choice"),
    (["node"], 2, "--app MODULE:ATTR"),
    (["node", "--app", "no_colon"], 2, "MODULE:ATTR"),
    (["node", "--app", "no_such_module_xyz:app"], 2, "cannot import module 'no_such_module_xyz'"),
    (["node", "--app", "broken:app"], 2, "RuntimeError: boom at import"),
    (["node", "--app", "myapp:missing"], 2, "has no attribute 'missing'"),
    (["node", "--app", "myapp:not_an_app"], 2, "not a peo.App"),
    (["node", "--app", "myapp:app", "--profile", "missing.toml"], 2, "profile missing.toml does not exist"),
    (["node", "--app", "myapp:app", "--profile", "bad.toml"], 2, "not valid TOML"),
    (["node", "--app", "myapp:app", "--profile", "typo.toml"], 2, "unknown key(s) concurency"),
    (["node", "--app", "myapp:app", "--profile", "wrongtype.toml"], 2, "concurrency must be an integer"),
    (["node", "--app", "myapp:app", "--key", "missing.key"], 2, "key file missing.key does not exist"),
    (["node", "--app", "myapp:app", "--key", "garbage.key"], 2, "not a peo secret key file"),
    (["node", "--app", "myapp:app", "--policy", "missing-policy.toml"], 2, "cannot read policy"),
    (["node", "--app", "myapp:app", "--policy", "bad.toml"], 2, "not valid TOML"),
    (["node", "--app", "myapp:app", "--lease-ttl", "inf"], 2, "positive number of seconds"),
    (["import", "missing.peo"], 2, "does not exist"),
    (["import", "."], 2, "is a directory"),
    (["show", "no-such-id"], 1, "no object no-such-id"),
    (["show", "no-such-id", "--json"], 1, "no object no-such-id"),
    (["signal", "no-such-id", "go"], 1, "no object no-such-id"),
    (["signal", "no-such-id", "peo.cancel"], 2, "reserved"),
    (["cancel", "no-such-id"], 1, "no object no-such-id"),
    (["export", "no-such-id"], 1, "no object no-such-id"),
]


@pytest.mark.parametrize(("argv", "code", "message"), BAD_INPUT, ids=[" ".join(a)[:40] for a, _, _ in BAD_INPUT])
def test_bad_input_gets_a_clear_error_and_the_documented_exit_code(
    capsys, sqlite_url, tmp_path, app_module, argv, code, message
) -> None:
    (tmp_path / "bad.toml").write_text("this is = = not toml")
    (tmp_path / "typo.toml").write_text("concurency = 4\n")
    (tmp_path / "wrongtype.toml").write_text('concurrency = "four"\n')
    (tmp_path / "garbage.key").write_text("hello\n")
    ok(capsys, "--store", sqlite_url, "init")  # read verbs need a store (see test_read_verbs_never_create...)
    got, out, err = run(capsys, "--store", sqlite_url, *argv)
    assert got == code, err
    assert message in err
    assert out == ""


@pytest.mark.parametrize(
    ("url", "code", "message"),
    [
        ("mysql://localhost/db", 2, "unknown store URL"),
        ("", 2, "store URL is required"),
        ("sqlite:///no/such/directory/peo.db", 1, "does not exist"),
        ("sqlite:///peo.db?durability=sometimes", 2, "durability"),
    ],
)
def test_a_bad_or_unreachable_store_is_reported_without_a_traceback(capsys, url, code, message) -> None:
    got, _, err = run(capsys, "--store", url, "ls")
    assert got == code
    assert err.startswith("peo: error:") and message in err


def test_every_verb_has_help_with_examples(capsys) -> None:
    verbs = ["init", "submit", "node", "ls", "show", "verify", "signal", "cancel", "export", "import", "demo"]
    code, out, _ = run(capsys, "--help")
    assert code == 0 and all(v in out for v in verbs)
    for verb in verbs:
        code, out, _ = run(capsys, verb, "--help")
        assert code == 0
        assert out.startswith(f"usage: peo {verb}") and "examples:" in out and "exit codes:" in out


def test_the_console_script_runs(tmp_path) -> None:
    exe = Path(sys.executable).parent / "peo"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "peo"]
    env = working_tree_env()
    proc = subprocess.run([*cmd, "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0
    assert proc.stdout.startswith("usage: peo") and "submit" in proc.stdout
    assert subprocess.run([*cmd, "init"], cwd=tmp_path, env=env, capture_output=True, timeout=60,
                          check=False).returncode == 0
    proc = subprocess.run([*cmd, "show", "nope"], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 1 and proc.stderr == "peo: error: no object nope\n"
