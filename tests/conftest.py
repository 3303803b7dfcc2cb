"""Shared fixtures: store URLs for both backends, an isolated working directory."""

from __future__ import annotations

import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parent.parent
PG_URL = os.environ.get("PEO_TEST_POSTGRES_URL")

# Every `python -m peo...` a test starts runs the peo of this working tree, never a stale
# installed copy: child processes inherit PYTHONPATH with the tree first.
os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])

settings.register_profile("ci", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(autouse=True)
def _isolated_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Every test runs in its own directory with its own key directory (PEO_HOME)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PEO_HOME", str(tmp_path / ".peo"))
    monkeypatch.delenv("PEO_STORE", raising=False)
    monkeypatch.delenv("PEO_KEYS", raising=False)  # a developer's own key directory is never touched
    monkeypatch.delenv("PEO_FAULTS", raising=False)
    yield tmp_path


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'peo.db'}"


def _pg_params() -> list[object]:
    mark = [pytest.mark.postgres]
    if not PG_URL:
        mark.append(pytest.mark.skip(reason="PostgreSQL not available: set PEO_TEST_POSTGRES_URL"))
    return [pytest.param("postgres", marks=mark)]


@pytest.fixture
async def postgres_url() -> AsyncIterator[str]:
    """A PostgreSQL URL with a fresh schema, dropped afterwards."""
    if not PG_URL:
        pytest.skip("PostgreSQL not available: set PEO_TEST_POSTGRES_URL")
    import asyncpg

    schema = f"t_{secrets.token_hex(6)}"
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}schema={schema}"
    conn = await asyncpg.connect(PG_URL.split("?")[0])
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", *_pg_params()])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs once per backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'peo.db'}"
    return str(request.getfixturevalue("postgres_url"))
