"""Keys belong to the deployment, not to the working directory (issue 12, trap 3).

- The key directory is ``$PEO_KEYS``, else ``$PEO_HOME/keys``, else ``.peo/keys`` beside an
  SQLite store's file, else (PostgreSQL) ``./.peo/keys``; the client, the node and the CLI
  all resolve it from the store URL.
- A command that would mint a new signing key for a store that already has objects
  refuses unless ``--new-key``.
- ``peo keys`` lists the keys and the scopes the policy trusts them for.
- ``peo resume ID`` / ``Client.resume`` put a quarantined object back in play once its
  chain verifies with the keys trusted now.

The autouse fixture in tests/conftest.py sets ``PEO_HOME``; tests of the other sources
remove it.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest
from clirun import ok, run

import peo
from peo import keys
from peo.config import default_policy
from peo.core.crypto import PUBLIC_HEADER
from peo.core.policy import Policy
from peo.errors import IntegrityError, UsageError
from peo.store import open_store

app = peo.App()


@app.handler("echo")
def echo(step: peo.Step) -> peo.Done:
    return peo.Done(step.goal)


async def run_node(url: str) -> None:
    node = peo.Node(url, app, idle_horizon=0, lease_ttl=2)
    await node.run_until_idle()


@pytest.fixture(autouse=True)
def _no_outside_key_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    """A $PEO_KEYS from the developer's shell would win over the test's PEO_HOME."""
    monkeypatch.delenv("PEO_KEYS", raising=False)


@pytest.fixture
def no_key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PEO_HOME", raising=False)
    monkeypatch.delenv("PEO_KEYS", raising=False)


# -- where the keys are ----------------------------------------------------------------------


def test_the_key_directory_is_PEO_KEYS_then_PEO_HOME_then_beside_the_sqlite_file_then_the_cwd(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_key_env: None) -> None:
    db = tmp_path / "srv" / "peo.db"
    assert keys.key_dir(f"sqlite:///{db}") == tmp_path / "srv" / ".peo" / "keys"
    assert keys.key_path("client", f"sqlite:///{db}") == tmp_path / "srv" / ".peo" / "keys" / "client.key"
    assert keys.locate(f"sqlite:///{db}").source == "sqlite"
    # A relative SQLite URL is relative to the working directory, and so are its keys.
    assert keys.key_dir("sqlite:///srv/peo.db") == tmp_path / "srv" / ".peo" / "keys"
    # The default store (sqlite:///peo.db here) keeps its keys where they always were: ./.peo/keys.
    assert keys.key_dir() == tmp_path / ".peo" / "keys"
    # PostgreSQL has no file to sit beside: ./.peo/keys, as before.
    pg = "postgresql://peo@db/agents"
    assert (keys.key_dir(pg), keys.locate(pg).source) == (Path(".peo") / "keys", "cwd")

    monkeypatch.setenv("PEO_HOME", str(tmp_path / "home"))
    assert keys.key_dir(f"sqlite:///{db}") == keys.key_dir(pg) == tmp_path / "home" / "keys"
    monkeypatch.setenv("PEO_KEYS", str(tmp_path / "fleet-keys"))
    assert keys.key_dir(f"sqlite:///{db}") == keys.key_dir(pg) == tmp_path / "fleet-keys"
    assert keys.locate(pg).source == "PEO_KEYS"


def test_the_cli_finds_an_sqlite_deployments_keys_from_any_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], no_key_env: None) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(project)
    ok(capsys, "init")
    ok(capsys, "submit", "echo")
    before = sorted(p.name for p in (project / ".peo" / "keys").iterdir())

    monkeypatch.chdir(elsewhere)
    url = f"sqlite:///{project / 'peo.db'}"
    oid = ok(capsys, "--store", url, "submit", "echo").strip()
    ok(capsys, "--store", "sqlite:///../project/peo.db", "submit", "echo")
    assert not (elsewhere / ".peo").exists()  # no new key minted here
    assert sorted(p.name for p in (project / ".peo" / "keys").iterdir()) == before
    assert "3 ok, 0 failed" in ok(capsys, "--store", url, "verify")
    assert ok(capsys, "--store", url, "show", oid)  # readable too


async def test_client_and_node_in_different_directories_share_the_deployments_keys(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_key_env: None) -> None:
    url = f"sqlite:///{tmp_path / 'data' / 'peo.db'}"
    (tmp_path / "data").mkdir()
    (tmp_path / "client").mkdir()
    (tmp_path / "node").mkdir()
    monkeypatch.chdir(tmp_path / "client")
    async with peo.Client(url) as client:
        oid = await client.submit("echo", {"x": 1})
    monkeypatch.chdir(tmp_path / "node")
    await run_node(url)
    async with peo.Client(url) as client:
        assert await client.wait(oid, timeout=5) == {"x": 1}  # not quarantined: the node trusts the client
        assert await client.verify(oid) >= 2
    assert sorted(p.name for p in (tmp_path / "data" / ".peo" / "keys").glob("*.key")) == ["client.key", "node.key"]
    assert not (tmp_path / "client" / ".peo").exists() and not (tmp_path / "node" / ".peo").exists()


async def test_keyring_for_and_load_key_take_the_store(tmp_path: Path, no_key_env: None) -> None:
    url = f"sqlite:///{tmp_path / 'a' / 'peo.db'}"
    key = keys.load_key(None, "client", url)
    assert (tmp_path / "a" / ".peo" / "keys" / "client.key.pub").exists()
    assert key.key_id in keys.keyring_for(default_policy(), store=url)
    assert key.key_id not in keys.keyring_for(default_policy(), store=f"sqlite:///{tmp_path / 'b' / 'peo.db'}")


# -- no silent new key for a store that has objects ------------------------------------------


def test_submit_refuses_to_mint_a_key_for_a_store_with_objects_unless_new_key(
        store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("PEO_KEYS", str(tmp_path / "first"))
    ok(capsys, "--store", store_url, "submit", "echo")  # a store without objects: its first key, silently
    assert (tmp_path / "first" / "client.key").exists()

    monkeypatch.setenv("PEO_KEYS", str(tmp_path / "second"))
    code, out, err = run(capsys, "--store", store_url, "submit", "echo")
    assert (code, out) == (2, "")
    assert str(tmp_path / "second" / "client.key") in err and "--new-key" in err and "already has objects" in err
    assert not (tmp_path / "second").exists()
    assert len(json.loads(ok(capsys, "--store", store_url, "ls", "--json"))) == 1

    ok(capsys, "--store", store_url, "submit", "echo", "--new-key")
    assert (tmp_path / "second" / "client.key").exists()
    ok(capsys, "--store", store_url, "submit", "echo")  # the key exists now: no question asked
    assert len(json.loads(ok(capsys, "--store", store_url, "ls", "--json"))) == 3


async def test_guard_new_key_lets_a_new_store_have_its_first_key(store_url: str, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEO_KEYS", str(tmp_path / "k"))
    async with open_store(store_url) as store:
        assert await keys.guard_new_key(store) == tmp_path / "k" / "client.key"
        async with peo.Client(store) as client:
            await client.submit("echo")
        assert await keys.guard_new_key(store) == tmp_path / "k" / "client.key"  # it exists now
        monkeypatch.setenv("PEO_KEYS", str(tmp_path / "other"))
        with pytest.raises(UsageError, match=r"no client key at .*other/client\.key"):
            await keys.guard_new_key(store)
        assert await keys.guard_new_key(store, new_key=True) == tmp_path / "other" / "client.key"
        assert not (tmp_path / "other").exists()  # the guard itself never creates a key


# -- peo keys ----------------------------------------------------------------------------------


def test_peo_keys_lists_the_keys_their_trust_scopes_and_secrets(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ok(capsys, "init")
    directory = tmp_path / ".peo" / "keys"  # PEO_HOME from conftest
    visitor = keys.generate()
    (directory / "visitor.key.pub").write_text(f"{PUBLIC_HEADER}\n{visitor.public_key.hex()}\n")
    client = keys.load_key_file(directory / "client.key")
    node = keys.load_key_file(directory / "node.key")

    out = ok(capsys, "keys")
    assert f"key directory {directory} (from $PEO_HOME)" in out
    lines = {line.split()[0]: line.split() for line in out.splitlines()[2:]}
    assert lines[client.key_id] == [client.key_id, str(directory / "client.key"), "*", "yes"]
    assert lines[node.key_id][-2:] == ["*", "yes"]
    assert lines[visitor.key_id] == [visitor.key_id, str(directory / "visitor.key.pub"), "*", "no"]

    outsider = keys.generate()
    policy = tmp_path / "strict.toml"
    policy.write_text(f'name = "strict"\n[trust]\nlocal_keys = false\n'
                      f'keys = {{ "{client.public_key.hex()}" = ["payments"], '
                      f'"{outsider.public_key.hex()}" = ["payments", "search"] }}\n')
    doc = json.loads(ok(capsys, "keys", "--json", "--policy", str(policy)))
    assert (doc["directory"], doc["source"], doc["trust_local_keys"]) == (str(directory), "PEO_HOME", False)
    by_id = {k["key_id"]: k for k in doc["keys"]}
    assert by_id[client.key_id]["scopes"] == ["payments"] and by_id[client.key_id]["secret"] is True
    assert by_id[node.key_id]["scopes"] == []
    assert by_id[outsider.key_id] == {"key_id": outsider.key_id, "file": None, "public_key": outsider.public_key.hex(),
                                      "scopes": ["payments", "search"], "secret": False, "source": "policy"}
    assert "not trusted" in ok(capsys, "keys", "--policy", str(policy))


def test_keys_trusted_scopes_follow_the_policy() -> None:
    key = keys.generate()
    listed = Policy.parse(f'[trust]\nlocal_keys = false\nkeys = {{ "{key.public_key.hex().upper()}" = ["a"] }}\n')
    assert keys.trusted_scopes(listed, key.public_key, local=True) == ["a"]
    assert keys.trusted_scopes(default_policy(), key.public_key, local=True) == ["*"]
    assert keys.trusted_scopes(default_policy(), key.public_key, local=False) == []


# -- resume: a quarantined object back in play ----------------------------------------------


async def quarantine_by_an_untrusted_key(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """An object submitted with a key outside the deployment's key directory, which a node
    then quarantines (the trap: a client run with another key directory)."""
    monkeypatch.setenv("PEO_KEYS", str(tmp_path / "deployment"))
    stray = tmp_path / "stray" / "client.key"
    async with peo.Client(url, key=stray) as client:
        oid = await client.submit("echo", {"x": 1})
    await run_node(url)
    async with peo.Client(url) as client:
        info = await client.get(oid, memory=False)
    assert info.status == "quarantined" and "untrusted key" in (info.reason or "")
    return oid


def trust_the_stray_key(tmp_path: Path) -> None:
    shutil.copy(tmp_path / "stray" / "client.key.pub", tmp_path / "deployment" / "stray.key.pub")


async def test_client_resume_puts_a_quarantined_object_back_once_its_chain_verifies(
        store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    oid = await quarantine_by_an_untrusted_key(store_url, tmp_path, monkeypatch)
    async with peo.Client(store_url) as client:
        with pytest.raises(IntegrityError, match="untrusted key") as failed:
            await client.resume(oid)
        assert failed.value.seq == 0
        assert (await client.get(oid, memory=False)).status == "quarantined"
        seq = (await client.get(oid, memory=False)).seq
    trust_the_stray_key(tmp_path)
    async with peo.Client(store_url) as client:
        assert await client.verify(oid) == 1  # verify passes, but the object is still quarantined...
        assert (await client.get(oid, memory=False)).status == "quarantined"
        info = await client.resume(oid)  # ...until it is resumed
        assert (info.status, info.seq, info.reason) == ("runnable", seq, None)
        assert len(await client.store.entries(oid)) == 1  # resuming writes no entry
        with pytest.raises(UsageError, match="not quarantined"):
            await client.resume(oid)
    await run_node(store_url)
    async with peo.Client(store_url) as client:
        assert await client.wait(oid, timeout=5) == {"x": 1}
        assert await client.verify(oid) == 2


def test_peo_resume_reports_the_first_bad_seq_then_resumes(
        store_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    oid = asyncio.run(quarantine_by_an_untrusted_key(store_url, tmp_path, monkeypatch))
    code, out, err = run(capsys, "--store", store_url, "resume", oid)
    assert (code, out) == (1, "")
    assert f"object {oid} still fails verification at seq 0: signed by untrusted key" in err
    assert "stays quarantined" in err

    trust_the_stray_key(tmp_path)
    assert ok(capsys, "--store", store_url, "resume", oid) == (
        f"resumed {oid}: quarantined -> runnable (seq 0; no entry written)\n")
    code, _, err = run(capsys, "--store", store_url, "resume", oid)
    assert code == 1 and f"object {oid} is runnable, not quarantined: nothing to resume" in err
    code, _, err = run(capsys, "--store", store_url, "resume", "no-such-id")
    assert code == 1 and "no object no-such-id" in err
