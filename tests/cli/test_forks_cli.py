"""``peo fork``, the lineage ``peo show`` prints, and how ``peo verify`` reports a fork's origin."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from clirun import ok, run, submit
from rawsql import raw


def sql(url: str, statement: str, *args: Any) -> list[tuple[Any, ...]]:
    """Edit the store behind peo's back (the CLI runs its own event loop: these tests are sync)."""
    return asyncio.run(raw(url, statement, *args))


def test_fork_prints_the_new_id_and_show_prints_the_lineage_both_ways(
        capsys: pytest.CaptureFixture[str], store_url: str) -> None:
    parent = submit(capsys, store_url, "nobody-serves-this", "--goal", '{"topic": "bees"}')
    code, out, err = run(capsys, "--store", store_url, "fork", parent, "--goal", '{"topic": "ants"}',
                         "--identity", "bob")
    fork = out.strip()
    assert code == 0 and len(out.splitlines()) == 1 and fork != parent
    assert f"forked {fork} from {parent} at seq 0 with a new goal (handler nobody-serves-this)" in err
    second = ok(capsys, "--store", store_url, "fork", parent, "--seq", "0").strip()

    shown = ok(capsys, "--store", store_url, "show", fork)
    assert f"forked    from {parent} at seq 0" in shown and "identity bob" in shown
    assert 'goal      {"topic":"ants"}' in shown
    shown = ok(capsys, "--store", store_url, "show", parent)
    assert f"forks     {fork}, {second}" in shown and "forked " not in shown
    doc = json.loads(ok(capsys, "--store", store_url, "show", parent, "--json"))
    assert doc["lineage"] == {"parent": None, "children": [], "forked_from": None, "forks": [fork, second]}
    doc = json.loads(ok(capsys, "--store", store_url, "show", fork, "--json"))
    assert doc["lineage"]["forked_from"]["object"] == parent and doc["lineage"]["forked_from"]["seq"] == 0
    assert doc["lineage"]["forks"] == [] and doc["context"]["parent"] is None


def test_verify_checks_a_fork_origin_and_reports_a_missing_parent_as_unverifiable(
        capsys: pytest.CaptureFixture[str], store_url: str) -> None:
    parent = submit(capsys, store_url, "nobody-serves-this")
    fork = ok(capsys, "--store", store_url, "fork", parent).strip()
    out = ok(capsys, "--store", store_url, "verify")
    assert f"OK    {fork}  1 entry; fork origin {parent} at seq 0: verified against the parent" in out
    assert "verified 2 object(s): 2 ok, 0 failed" in out

    [(body,)] = sql(store_url, "SELECT body FROM entries WHERE object_id = ? AND seq = 0", parent)
    sql(store_url, "UPDATE entries SET body = ? WHERE object_id = ?",
              bytes(body).replace(b"nobody-serves-this", b"nobody-serves-that"), parent)
    code, out, _ = run(capsys, "--store", store_url, "verify", fork)
    assert code == 1
    assert f"FAIL  {fork}  seq 0: fork origin {parent} at seq 0: the parent does not verify" in out

    sql(store_url, "DELETE FROM entries WHERE object_id = ?", parent)
    sql(store_url, "DELETE FROM objects WHERE id = ?", parent)
    code, out, _ = run(capsys, "--store", store_url, "verify")
    assert code == 0  # the fork's own chain is sound: not a failure
    assert f"OK    {fork}  1 entry; origin UNVERIFIABLE: fork origin {parent} at seq 0: the parent is not in " \
           "this store" in out
    assert "verified 1 object(s): 0 ok, 0 failed, 1 with an unverifiable fork origin" in out


def test_fork_errors_are_one_line_and_write_nothing(capsys: pytest.CaptureFixture[str], sqlite_url: str) -> None:
    parent = submit(capsys, sqlite_url, "nobody-serves-this")
    code, _, err = run(capsys, "--store", sqlite_url, "fork", "no-such-object")
    assert code == 1 and "peo: error: no object no-such-object" in err
    code, _, err = run(capsys, "--store", sqlite_url, "fork", parent, "--seq", "3")
    assert code == 2 and f"peo: error: object {parent} has seqs 0 to 0: cannot fork it at seq 3" in err
    code, _, err = run(capsys, "--store", sqlite_url, "fork", parent, "--seq", "-1")
    assert code == 2 and "must be 0 or more" in err
    code, _, err = run(capsys, "--store", sqlite_url, "fork", parent, "--goal", "[1, 2]")
    assert code == 2 and "--goal must be a JSON object" in err
    code, _, err = run(capsys, "--store", sqlite_url, "fork", parent, "--goal", "{nope")
    assert code == 2 and "--goal is not valid JSON" in err
    assert "forks " not in ok(capsys, "--store", sqlite_url, "show", parent)
    out = ok(capsys, "fork", "--help")
    assert "examples:" in out and "--seq N" in out and "UNVERIFIABLE" not in out


def test_fork_needs_an_existing_store(capsys: pytest.CaptureFixture[str], sqlite_url: str) -> None:
    code, _, err = run(capsys, "--store", sqlite_url, "fork", "01a250c5-bca2-7495-817f-4cc97f262c8b")
    assert code == 1 and "peo init" in err
