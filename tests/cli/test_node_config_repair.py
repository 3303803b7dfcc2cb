"""A node whose profile or policy went bad starts on the last known-good copy, says what was
wrong with the diff, and `peo nodes` shows it; without a copy the error stands."""

from __future__ import annotations

from pathlib import Path

import pytest
from clirun import ok, run, submit

APP = '''
import peo

app = peo.App()


@app.handler("hello")
def hello(step: peo.Step) -> peo.Proposal:
    return peo.Done("hi")
'''


@pytest.fixture
def place(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "repairapp.py").write_text(APP)
    (tmp_path / "policy.toml").write_text("[thresholds]\nmax_failures = 4\n")
    (tmp_path / "node.toml").write_text('node_id = "edge-1"\napp = "repairapp:app"\npolicy = "policy.toml"\n')
    return tmp_path


def test_a_broken_profile_and_policy_run_on_their_known_good_copies(
        place: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{place / 'peo.db'}"
    first = submit(capsys, url, "hello")
    ok(capsys, "--store", url, "node", "--profile", "node.toml", "--until-idle")  # both load: copies kept
    assert "note:" not in ok(capsys, "--store", url, "nodes")

    (place / "node.toml").write_text('node_id = "edge-1"\napp = "repairapp:app"\npolicy = "policy.toml"\n'
                                     "concurrency = 0\n")  # a bad edit
    (place / "policy.toml").write_text("[thresholds]\nmax_failures = -1\n")
    second = submit(capsys, url, "hello")
    code, _, err = run(capsys, "--store", url, "node", "--profile", "node.toml", "--until-idle")
    assert code == 0, err
    assert "profile node.toml is unusable" in err and "concurrency must be at least 1" in err
    assert "+concurrency = 0" in err
    assert "policy policy.toml is unusable" in err and "+max_failures = -1" in err
    listed = ok(capsys, "--store", url, "nodes")
    assert "edge-1" in listed and "note: profile node.toml is unusable" in listed
    for oid in (first, second):
        assert '"hi"' in ok(capsys, "--store", url, "show", oid)


def test_without_a_known_good_copy_a_broken_profile_is_an_error(
        place: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (place / "node.toml").write_text("concurrency = = 1\n")
    code, _, err = run(capsys, "--store", f"sqlite:///{place / 'peo.db'}", "node", "--profile", "node.toml",
                       "--until-idle")
    assert code == 2 and "not valid TOML" in err
