"""Reliability fixtures: processes started by these tests run the working tree's peo."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def working_tree_env(monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The working tree first on PYTHONPATH, for every process a test starts (``python -m
    peo...``, chaos workers), so that a stale installed copy of peo is never tested by
    mistake. Returns the environment to pass to such a process."""
    existing = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", str(REPO) + (os.pathsep + existing if existing else ""))
    return dict(os.environ)
