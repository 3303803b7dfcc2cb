"""`peo rm`, `peo undelete`, `peo purge`, `peo ls --deleted`, and `peo show` of a deleted object."""

from __future__ import annotations

import json
from typing import Any

import pytest
from clirun import ok, run, submit

from peo.cli.deletion import parse_time


def test_rm_hides_an_object_and_undelete_brings_it_back(capsys: Any, store_url: str) -> None:
    oid = submit(capsys, store_url, "work")
    other = submit(capsys, store_url, "work")
    out = ok(capsys, "--store", store_url, "rm", oid, "--reason", "a duplicate")
    assert out.startswith(f"deleted {oid}: a tombstone signed with your key") and "at seq 1" in out

    listed = ok(capsys, "--store", store_url, "ls")
    assert other in listed and oid not in listed
    listed = ok(capsys, "--store", store_url, "ls", "--deleted")
    assert oid in listed and other not in listed and "deleted 20" in listed
    shown = ok(capsys, "--store", store_url, "show", oid)
    assert shown.startswith("deleted   at 20") and f"peo undelete {oid}" in shown
    assert json.loads(ok(capsys, "--store", store_url, "show", oid, "--json"))["deleted_at"].startswith("20")

    code, _, err = run(capsys, "--store", store_url, "signal", oid, "approve")
    assert code == 1 and f"object {oid} is deleted (peo rm at 20" in err and f"peo undelete {oid}" in err
    code, _, err = run(capsys, "--store", store_url, "rm", oid)
    assert code == 2 and "already deleted" in err

    out = ok(capsys, "--store", store_url, "undelete", oid)
    assert out.startswith(f"undeleted {oid}: back as it was, runnable")
    assert oid in ok(capsys, "--store", store_url, "ls")
    assert ok(capsys, "--store", store_url, "ls", "--deleted").strip() == "no deleted objects"
    code, _, err = run(capsys, "--store", store_url, "undelete", oid)
    assert code == 2 and "not deleted" in err


def test_purge_is_a_dry_run_without_yes(capsys: Any, store_url: str) -> None:
    oid = submit(capsys, store_url, "work")
    ok(capsys, "--store", store_url, "rm", oid)
    out = ok(capsys, "--store", store_url, "purge", "--deleted-before", "-1d")
    assert "dry run: would drop 0 objects" in out
    out = ok(capsys, "--store", store_url, "purge", "--deleted-before", "2200-01-01")
    assert f"would drop {oid}" in out and "dry run: would drop 1 object deleted before" in out
    assert "nothing changed (pass --yes" in out
    assert oid in ok(capsys, "--store", store_url, "ls", "--deleted")

    out = ok(capsys, "--store", store_url, "purge", "--deleted-before", "2200-01-01T00:00:00+00:00", "--yes")
    assert f"dropped {oid}" in out and "dropped 1 object deleted before" in out
    code, _, err = run(capsys, "--store", store_url, "show", oid)
    assert code == 1 and "no object" in err


@pytest.mark.parametrize(("argv", "message"), [
    (("purge",), "purge needs --deleted-before TIME"),
    (("purge", "--deleted-before", "last tuesday"), "bad time 'last tuesday'"),
    (("purge", "--deleted-before", "-30x"), "bad time '-30x'"),
    (("purge", "--deleted-before", "2999-01-01"), "out of range"),
])
def test_bad_input_is_a_clear_error_and_changes_nothing(capsys: Any, sqlite_url: str, argv: tuple[str, ...],
                                                        message: str) -> None:
    oid = submit(capsys, sqlite_url, "work")
    ok(capsys, "--store", sqlite_url, "rm", oid)
    code, _, err = run(capsys, "--store", sqlite_url, *argv)
    assert code == 2 and message in err
    assert oid in ok(capsys, "--store", sqlite_url, "ls", "--deleted")


def test_rm_of_an_unknown_id_fails(capsys: Any, sqlite_url: str) -> None:
    submit(capsys, sqlite_url, "work")
    for verb in ("rm", "undelete"):
        code, _, err = run(capsys, "--store", sqlite_url, verb, "no-such-object")
        assert code == 1 and "no object no-such-object" in err


def test_times_are_iso_8601_in_utc_or_relative() -> None:
    assert parse_time("1970-01-02") == 86_400 * 10**9
    assert parse_time("1970-01-01T01:00:00+01:00") == 0
    assert parse_time("-2h", now=10 * 3600 * 10**9) == 8 * 3600 * 10**9
    assert parse_time("-1w", now=0) == -7 * 86_400 * 10**9


@pytest.mark.parametrize("verb", ["rm", "undelete", "purge"])
def test_every_verb_has_help_with_examples(capsys: Any, verb: str) -> None:
    code, out, _ = run(capsys, verb, "--help")
    assert code == 0 and "examples:" in out and f"peo {verb}" in out
