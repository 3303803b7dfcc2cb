"""Short chaos runs: node processes killed with SIGKILL and paused with SIGSTOP past their
lease at seeded random moments; afterwards nothing is lost, forked or recorded twice.

The long form is one command (see docs/reliability.md):
``python -m peo.testing.chaos --nodes 3 --objects 60 --steps 20 --duration 30``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from peo.testing.chaos import ChaosConfig, ChaosReport, run_chaos

SHORT = {"nodes": 2, "objects": 20, "steps": 5, "duration": 8.0, "lease_ttl": 0.5, "step_ms": 30.0,
         "settle_timeout": 60.0}


def assert_safe_and_live(report: ChaosReport) -> None:
    print(report.summary())
    assert report.violations == []
    assert report.kills + report.pauses + report.crashes > 0, "no fault was injected"
    assert report.objects_lost == 0
    assert report.forks == 0
    assert report.unverified == 0
    assert report.node_bugs == 0
    assert report.steps == report.objects * (report.steps_per_object + 1)  # each step recorded once
    assert report.duplicates <= report.duplicate_bound
    assert report.settle_seconds is not None  # everything finished after the faults stopped


async def test_kills_and_pauses_on_sqlite_lose_nothing(tmp_path: Path) -> None:
    report = await run_chaos(ChaosConfig(seed=7, workdir=str(tmp_path / "chaos"), **SHORT))  # type: ignore[arg-type]
    assert report.store.startswith("sqlite:")
    assert_safe_and_live(report)


@pytest.mark.postgres
async def test_kills_and_pauses_on_postgresql_lose_nothing(postgres_url: str, tmp_path: Path) -> None:
    report = await run_chaos(
        ChaosConfig(store=postgres_url, seed=11, workdir=str(tmp_path / "chaos"), **SHORT)  # type: ignore[arg-type]
    )
    assert_safe_and_live(report)


def test_the_command_with_fault_points_reports_figures_as_json(
    tmp_path: Path, working_tree_env: dict[str, str]
) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "peo.testing.chaos", "--json", "--seed", "3", "--nodes", "2", "--objects", "10",
         "--steps", "5", "--duration", "5", "--lease-ttl", "0.5", "--step-ms", "20",
         "--faults", "node.after_handler=crash@0.05,store.after_commit=raise@0.02",
         "--workdir", str(tmp_path / "chaos")],
        capture_output=True, text=True, timeout=120, env=working_tree_env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report["ok"] is True and report["violations"] == []
    assert report["seed"] == 3 and report["faults_spec"].startswith("node.after_handler=crash")
    assert report["crashes"] > 0  # the armed point fired, and the crashed nodes were restarted
    assert report["objects_lost"] == 0 and report["forks"] == 0 and report["unverified"] == 0


def test_a_bad_fault_spec_is_a_usage_error(working_tree_env: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "peo.testing.chaos", "--faults", "node.nowhere=crash"],
                          capture_output=True, text=True, timeout=60, env=working_tree_env)
    assert proc.returncode == 2
    assert "unknown fault point" in proc.stderr
