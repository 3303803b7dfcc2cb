"""Configuration auto-repair: a node runs on the last profile and policy that loaded.

A file that loads is kept, signed; a later bad version (unparsable, invalid, missing) is
replaced by that copy with a repair saying what was wrong and the diff; without a copy, or
with a copy whose signature does not verify, the error stands.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from peo import keys
from peo.errors import PolicyError, UsageError
from peo.healing.config import KnownGood, load_policy_repaired, load_profile_repaired

GOOD_PROFILE = 'node_id = "edge-1"\nconcurrency = 8\n'
GOOD_POLICY = '[thresholds]\nmax_failures = 4\n'


@pytest.fixture
def known(tmp_path: Path) -> KnownGood:
    return KnownGood(tmp_path / "known-good", keys.generate())


def test_a_profile_that_loads_is_kept_and_a_broken_one_runs_on_the_copy(tmp_path: Path, known: KnownGood) -> None:
    profile = tmp_path / "node.toml"
    profile.write_text(GOOD_PROFILE)
    settings, repair = load_profile_repaired(str(profile), known)
    assert (settings.node_id, settings.concurrency, repair) == ("edge-1", 8, None)

    profile.write_text('node_id = "edge-1"\nconcurrency = "eight"\n')  # a bad edit
    settings, repair = load_profile_repaired(str(profile), known, lease_ttl=3.0)
    assert (settings.node_id, settings.concurrency, settings.lease_ttl) == ("edge-1", 8, 3.0)  # flags still apply
    assert repair is not None and repair.kind == "profile"
    assert "concurrency must be an integer" in repair.problem
    assert '-concurrency = 8' in repair.diff and '+concurrency = "eight"' in repair.diff
    assert "running on its last known-good copy" in repair.line()


def test_a_missing_profile_runs_on_the_copy(tmp_path: Path, known: KnownGood) -> None:
    profile = tmp_path / "node.toml"
    profile.write_text(GOOD_PROFILE)
    load_profile_repaired(str(profile), known)
    profile.unlink()
    settings, repair = load_profile_repaired(str(profile), known)
    assert settings.node_id == "edge-1"
    assert repair is not None and "does not exist" in repair.problem and "cannot be read" in repair.diff


def test_without_a_copy_the_error_stands(tmp_path: Path, known: KnownGood) -> None:
    profile = tmp_path / "node.toml"
    profile.write_text("not toml = = =")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_profile_repaired(str(profile), known)


def test_a_copy_whose_signature_does_not_verify_is_never_used(tmp_path: Path, known: KnownGood) -> None:
    profile = tmp_path / "node.toml"
    profile.write_text(GOOD_PROFILE)
    load_profile_repaired(str(profile), known)
    [copy] = (tmp_path / "known-good").glob("profile-*.toml")
    copy.write_text('node_id = "forged"\n')  # someone edits the copy itself
    profile.write_text("broken = [")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_profile_repaired(str(profile), known)
    other_key = KnownGood(tmp_path / "known-good", keys.generate())  # another node key
    with pytest.raises(UsageError):
        load_profile_repaired(str(profile), other_key)


def test_a_broken_policy_runs_on_its_last_good_copy(tmp_path: Path, known: KnownGood) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(GOOD_POLICY)
    loaded, repair = load_policy_repaired(str(policy), known)
    assert (loaded.max_failures, repair) == (4, None)
    policy.write_text("[thresholds]\nmax_failures = -1\n")
    loaded, repair = load_policy_repaired(str(policy), known)
    assert loaded.max_failures == 4
    assert repair is not None and repair.kind == "policy" and "+max_failures = -1" in repair.diff
    policy.write_text(GOOD_POLICY.replace("4", "6"))  # fixed: loads, and becomes the new copy
    loaded, repair = load_policy_repaired(str(policy), known)
    assert (loaded.max_failures, repair) == (6, None)
    policy.unlink()
    loaded, _ = load_policy_repaired(str(policy), known)
    assert loaded.max_failures == 6


def test_without_a_keeper_nothing_is_kept_or_repaired(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(GOOD_POLICY)
    load_policy_repaired(str(policy), None)
    policy.write_text("[thresholds]\nmax_failures = -1\n")
    with pytest.raises(PolicyError):
        load_policy_repaired(str(policy), None)
