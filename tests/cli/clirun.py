"""Running the CLI in-process from a test: exit code, stdout and stderr (never a traceback)."""

from __future__ import annotations

import pytest

from peo import cli


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return code, out, err


def ok(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    return out


def submit(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> str:
    return ok(capsys, "--store", url, "submit", *argv).strip()
