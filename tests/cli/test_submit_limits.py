"""`peo submit` refuses limits above the policy's ceilings (a node would cap them anyway)."""

from __future__ import annotations

from typing import Any

from clirun import run


def test_peo_submit_says_which_constraint_is_above_the_ceiling(capsys: Any, sqlite_url: str) -> None:
    code, out, err = run(capsys, "--store", sqlite_url, "submit", "job", "--max-steps", "1000000000")
    assert code == 2 and out == ""
    assert "max_steps 1000000000 is above the policy's ceiling of 100000" in err
