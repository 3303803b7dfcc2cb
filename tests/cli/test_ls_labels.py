"""Listing by label: ``peo ls --label KEY=VALUE`` (repeatable: every one must match) and
``Client.list(labels=...)``. A child carries its parent's labels and an imported object
its own; a label is matched exactly (case, "=", wildcards and all)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import peo
from peo import cli

app = peo.App()


@app.handler("parent")
def parent(step: peo.Step) -> peo.Proposal:
    if step.state.get("sent"):
        return peo.Done("ok")
    return peo.Delegate([peo.Intent("child", {"i": i}) for i in range(2)], state={"sent": True})


@app.handler("child")
def child(step: peo.Step) -> peo.Proposal:
    return peo.Done(step.goal["i"])


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def submit(capsys: pytest.CaptureFixture[str], url: str, *labels: str) -> str:
    argv = [arg for label in labels for arg in ("--label", label)]
    code, out, err = run(capsys, "--store", url, "submit", "work", *argv)
    assert code == 0, err
    return out.strip()


def ls(capsys: pytest.CaptureFixture[str], url: str, *labels: str) -> list[str]:
    argv = [arg for label in labels for arg in ("--label", label)]
    code, out, err = run(capsys, "--store", url, "ls", "--json", *argv)
    assert code == 0, err
    return [o["id"] for o in json.loads(out)]


def test_ls_label_lists_only_objects_with_every_label(capsys: pytest.CaptureFixture[str], sqlite_url: str) -> None:
    both = submit(capsys, sqlite_url, "team=ops", "env=prod")
    ops = submit(capsys, sqlite_url, "team=ops")
    dev = submit(capsys, sqlite_url, "team=ops", "env=dev")
    other = submit(capsys, sqlite_url, "team=OPS", "note=a=b")
    bare = submit(capsys, sqlite_url)

    assert ls(capsys, sqlite_url) == sorted([both, ops, dev, other, bare])
    assert ls(capsys, sqlite_url, "team=ops") == sorted([both, ops, dev])
    assert ls(capsys, sqlite_url, "team=ops", "env=prod") == [both]
    assert ls(capsys, sqlite_url, "env=prod", "team=ops", "env=prod") == [both]  # the same label twice: fine
    assert ls(capsys, sqlite_url, "team=OPS") == [other]
    assert ls(capsys, sqlite_url, "note=a=b") == [other]  # the value is everything after the first "="
    assert ls(capsys, sqlite_url, "team=op") == [] and ls(capsys, sqlite_url, "team=o%") == []

    code, out, _ = run(capsys, "--store", sqlite_url, "ls", "--label", "team=ops", "--label", "env=prod")
    assert code == 0 and both in out and ops not in out
    code, out, _ = run(capsys, "--store", sqlite_url, "ls", "--label", "team=nobody", "--status", "runnable")
    assert code == 0 and out.strip() == "no objects with status runnable and label team=nobody"


def test_ls_label_refuses_a_bad_label(capsys: pytest.CaptureFixture[str], sqlite_url: str) -> None:
    submit(capsys, sqlite_url, "team=ops")
    for bad in (["team"], ["=ops"], ["team="], ["team=ops", "team=web"], ["team=a\tb"]):
        argv = [arg for label in bad for arg in ("--label", label)]
        code, out, err = run(capsys, "--store", sqlite_url, "ls", *argv)
        assert code == 2 and out == "", (bad, err)
        assert "label" in err


async def test_children_and_imported_objects_carry_their_labels(store_url: str, tmp_path: Path) -> None:
    async with peo.Client(store_url) as client:
        root = await client.submit("parent", labels={"team": "ops"})
        alone = await client.submit("child", {"i": 9}, labels={"team": "web"})
    await peo.Node(store_url, app, node_id="n").run_until_idle()
    async with peo.Client(store_url) as client:
        kids = [o.id for o in await client.list(parent=root)]
        assert len(kids) == 2
        assert [o.id for o in await client.list(labels={"team": "ops"})] == sorted([root, *kids])
        assert [o.id for o in await client.list(labels={"team": "ops"}, handler="child")] == sorted(kids)
        assert [o.id for o in await client.list(labels={"team": "web"})] == [alone]
        with pytest.raises(peo.UsageError):
            await client.list(labels={"team": "a\nb"})
        exported = await client.export(alone)
    async with peo.Client(f"sqlite:///{tmp_path / 'other.db'}") as other:
        await other.import_(exported)
        assert [o.id for o in await other.list(labels={"team": "web"})] == [alone]
        assert await other.list(labels={"team": "ops"}) == []
