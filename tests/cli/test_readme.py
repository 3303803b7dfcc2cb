"""Every command in the README works exactly as written (run in a fresh directory)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

README = (REPO / "README.md").read_text()
SH_BLOCKS = re.findall(r"```sh\n(.*?)```", README, re.S)
PY_BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)


def working_tree_env() -> dict[str, str]:
    """The environment for a subprocess: this working tree first on PYTHONPATH, so that a
    stale installed copy of peo is never the one tested; no store or fault points from outside."""
    env = {k: v for k, v in os.environ.items() if k not in ("PEO_STORE", "PEO_FAULTS")}
    path = env.get("PYTHONPATH")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), path]) if path else str(REPO)
    return env


def run_sh(script: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    if shutil.which("peo") is None:
        pytest.fail("the peo console script is not on PATH: pip install -e '.[dev]' first")
    return subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], cwd=cwd, env=working_tree_env(),
                          capture_output=True, text=True, timeout=timeout)


def test_the_readme_opens_with_install_and_test_then_the_demo() -> None:
    assert SH_BLOCKS[0].split("\n")[:2] == ["pip install -e '.[dev]'", "pytest -q"]
    assert SH_BLOCKS[1].strip() == "peo demo"


def test_the_demo_command_runs_the_main_job(tmp_path: Path) -> None:
    result = run_sh(SH_BLOCKS[1], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SIGKILL" in result.stdout and "every chain verified" in result.stdout
    assert "Traceback" not in result.stderr
    # The durable function ran beside the handlers, and its chain is among those verified.
    result_text = "{'topic': 'durability', 'sources': 2, 'words': 17}"
    assert f"the durable function brief returned {result_text}" in result.stdout
    assert re.search(r"the durable function brief \(\S+\): execute x2, delegate x1, dormancy x1, reentry x2, "
                     r"terminate x1; chain verified; result " + re.escape(result_text), result.stdout)


def test_the_cli_tour_runs_as_written(tmp_path: Path) -> None:
    result = run_sh(SH_BLOCKS[2], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "verified 2 object(s): 2 ok, 0 failed" in result.stdout
    assert (tmp_path / "research.peo").exists() and (tmp_path / "copy.db").exists()


def test_the_healing_tour_runs_as_written(tmp_path: Path) -> None:
    result = run_sh(SH_BLOCKS[3], tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every worker exited 0" in result.stderr and "post-mortem of" in result.stdout


@pytest.mark.timeout(240)
def test_the_agents_tour_runs_as_written(tmp_path: Path) -> None:
    result = run_sh(SH_BLOCKS[4], tmp_path, timeout=200)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "every chain verified" in result.stdout and "approve" in result.stdout
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("block", "printed"), [
    (0, "{'pages': ['bees/a', 'bees/b'], 'approved': True}"),  # the function form, first
    (1, "{'n': 10}"),  # the handler form
])
def test_the_library_examples_run_as_written(tmp_path: Path, block: int, printed: str) -> None:
    (tmp_path / "example.py").write_text(PY_BLOCKS[block])
    result = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=working_tree_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == printed


def test_the_background_node_example_in_the_operations_guide_runs_as_written(tmp_path: Path) -> None:
    guide = (REPO / "docs" / "operations.md").read_text()
    [example] = [b for b in re.findall(r"```python\n(.*?)```", guide, re.S) if "async with peo.Client" in b]
    (tmp_path / "example.py").write_text(example)
    result = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=working_tree_env(),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello, world"
