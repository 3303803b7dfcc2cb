"""Keys, key files, key ids and the verifier's keyring."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from peo import keys
from peo.core.crypto import _SMALL_ORDER, Keyring, SigningKey, is_valid_public_key, key_id_of
from peo.errors import IntegrityError, UsageError
from peo.keys import load_public_key

from ._helpers import KEY, OTHER_KEY, SEED


@pytest.fixture
def open_umask() -> Iterator[None]:
    """A umask that would leave new files world-readable, to show the key file does not rely on it."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_saved_key_file_is_readable_by_its_owner_only(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "keys" / "node.key"
    keys.save(KEY, path)
    assert _mode(path) == 0o600
    assert (tmp_path / "keys" / "node.key.pub").read_text().split()[1] == KEY.public_key.hex()


def test_a_key_created_on_first_use_is_readable_by_its_owner_only(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "fresh.key"
    key = keys.load_or_create(path)
    assert _mode(path) == 0o600
    assert keys.load_or_create(path).key_id == key.key_id  # the second call loads it


def test_a_saved_key_loads_back_to_the_same_key(tmp_path: Path) -> None:
    keys.save(KEY, tmp_path / "k")
    loaded = keys.load_key_file(tmp_path / "k")
    assert (loaded.seed(), loaded.public_key, loaded.key_id) == (SEED, KEY.public_key, KEY.key_id)
    assert loaded.sign(b"m") == KEY.sign(b"m")  # Ed25519 signatures are deterministic


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read key file"),
        ("", "not a peo secret key file"),
        ("hello world and more", "not a peo secret key file"),
        (f"peo-ed25519-public-v1\n{KEY.public_key.hex()}\n", "not a peo secret key file"),
        ("peo-ed25519-secret-v1\nnot-hex\n", "malformed key"),
        ("peo-ed25519-secret-v1\nabcd\n", "malformed key"),  # hex, but not 32 bytes
        (b"\xff\xfe\x00binary", "not a peo key file"),
    ],
    ids=["missing", "empty", "garbage", "public-key-file", "not-hex", "short-seed", "binary"],
)
def test_a_key_file_that_cannot_be_loaded_is_a_usage_error(
    tmp_path: Path, content: str | bytes | None, message: str
) -> None:
    path = tmp_path / "k"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    with pytest.raises(UsageError, match=message):
        keys.load_key_file(path)


def test_a_directory_is_not_a_key_file(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read key file"):
        keys.load_key_file(tmp_path)


@pytest.mark.parametrize("seed", [b"", b"x" * 31, b"x" * 33])
def test_a_seed_is_exactly_32_bytes(seed: bytes) -> None:
    with pytest.raises(UsageError, match="32 bytes"):
        SigningKey(seed)


def test_a_key_id_is_derived_from_the_public_key_only() -> None:
    assert KEY.key_id == key_id_of(KEY.public_key) == hashlib.sha256(KEY.public_key).hexdigest()[:16]
    assert SigningKey(SEED).key_id == KEY.key_id
    assert OTHER_KEY.key_id != KEY.key_id
    assert len(KEY.key_id) == 16 and int(KEY.key_id, 16) >= 0


def test_a_keyring_verifies_a_signature_by_a_trusted_key() -> None:
    ring = Keyring()
    assert ring.trust(KEY.public_key) == KEY.key_id
    ring.verify(KEY.key_id, "any-scope", b"message", KEY.sign(b"message"))
    assert KEY.key_id in ring and len(ring) == 1 and ring.key_ids() == [KEY.key_id]


def test_a_key_the_verifier_does_not_trust_is_refused() -> None:
    ring = Keyring()
    ring.trust(KEY.public_key)
    with pytest.raises(IntegrityError, match=f"untrusted key {OTHER_KEY.key_id}") as info:
        ring.verify(OTHER_KEY.key_id, "default", b"m", OTHER_KEY.sign(b"m"), seq=4)
    assert info.value.seq == 4


def test_a_key_is_trusted_only_for_the_scopes_the_verifier_names() -> None:
    ring = Keyring()
    ring.trust(KEY.public_key, ["payments"])
    sig = KEY.sign(b"m")
    ring.verify(KEY.key_id, "payments", b"m", sig)
    with pytest.raises(IntegrityError, match="not trusted for scope 'default'"):
        ring.verify(KEY.key_id, "default", b"m", sig)


def test_trusting_a_key_again_adds_scopes_and_never_removes_them() -> None:
    ring = Keyring()
    ring.trust(KEY.public_key, ["a"])
    ring.trust(KEY.public_key, ["b"])
    sig = KEY.sign(b"m")
    ring.verify(KEY.key_id, "a", b"m", sig)
    ring.verify(KEY.key_id, "b", b"m", sig)
    with pytest.raises(IntegrityError):
        ring.verify(KEY.key_id, "c", b"m", sig)


@pytest.mark.parametrize(
    ("message", "signature"),
    [(b"other message", KEY.sign(b"m")), (b"m", bytes(64)), (b"m", KEY.sign(b"m")[:-1]), (b"m", OTHER_KEY.sign(b"m"))],
    ids=["other-message", "zero-signature", "short-signature", "other-signer"],
)
def test_a_signature_that_does_not_cover_the_message_is_refused(message: bytes, signature: bytes) -> None:
    ring = Keyring()
    ring.trust(KEY.public_key)
    with pytest.raises(IntegrityError, match="bad signature"):
        ring.verify(KEY.key_id, "default", message, signature)


@pytest.mark.parametrize("point", sorted(_SMALL_ORDER), ids=lambda b: b.hex()[:8])
def test_small_order_public_keys_are_never_trusted(point: bytes) -> None:
    assert not is_valid_public_key(point)
    with pytest.raises(UsageError, match="small-order"):
        Keyring().trust(point)


@pytest.mark.parametrize("raw", [b"", b"\x01" * 31, b"\x01" * 33])
def test_a_public_key_is_32_bytes(raw: bytes) -> None:
    assert not is_valid_public_key(raw)
    with pytest.raises(UsageError):
        Keyring().trust(raw)


def test_a_keyring_trusts_the_pub_files_of_a_directory_and_rereads_it_for_unknown_keys(tmp_path: Path) -> None:
    keys.save(KEY, tmp_path / "a.key")
    ring = keys.keyring_from_directory(tmp_path, ["payments"])
    assert ring.key_ids() == [KEY.key_id]
    keys.save(OTHER_KEY, tmp_path / "b.key")  # created after the keyring was built
    ring.verify(OTHER_KEY.key_id, "payments", b"m", OTHER_KEY.sign(b"m"))
    with pytest.raises(IntegrityError, match="not trusted for scope"):
        ring.verify(OTHER_KEY.key_id, "default", b"m", OTHER_KEY.sign(b"m"))


def test_a_malformed_pub_file_in_a_trusted_directory_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "bad.pub").write_text("peo-ed25519-public-v1\nzz\n")
    with pytest.raises(UsageError, match="malformed public key"):
        keys.keyring_from_directory(tmp_path)


def test_keys_listed_in_a_policy_are_trusted_for_their_scopes() -> None:
    ring = Keyring()
    ring.add_mapping({KEY.public_key.hex(): ["payments"]})
    ring.verify(KEY.key_id, "payments", b"m", KEY.sign(b"m"))
    with pytest.raises(UsageError, match="malformed public key"):
        ring.add_mapping({"not hex": ["x"]})


def test_processes_creating_the_same_key_at_once_all_end_up_with_one_key(tmp_path: Path) -> None:
    # Nodes started together on a fresh machine all create the default node key: none of
    # them may sign with a key whose file another one then replaced.
    import subprocess
    import sys

    code = "import sys; from peo import keys; print(keys.load_or_create(sys.argv[1]).key_id)"
    path = tmp_path / "keys" / "node.key"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
             for _ in range(8)]
    ids = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert ids == {keys.load_key_file(path).key_id}
    assert key_id_of(load_public_key(str(path) + ".pub")) in ids
