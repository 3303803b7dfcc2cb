"""A thin pynacl wrapper: Ed25519 keys, key files, key ids and the verifier's keyring.

Sign bytes, verify the exact stored bytes. A key id is derived from the public key, so an
entry names its signer without carrying the key; the *verifier* supplies the keys it
trusts (a :class:`Keyring`), and a key carried inside an object is never trusted.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs
import nacl.exceptions
import nacl.signing

from ..errors import IntegrityError, UsageError

__all__ = ["Keyring", "SigningKey", "is_valid_public_key", "key_id_of"]

_SECRET_HEADER = "peo-ed25519-secret-v1"
_PUBLIC_HEADER = "peo-ed25519-public-v1"

# Encodings of the eight small-order points of Curve25519 (plus non-canonical variants
# of some of them). A signature under such a key can be forged for many messages, so a
# keyring refuses them outright; libsodium also refuses them when verifying.
_SMALL_ORDER = {
    bytes.fromhex(h)
    for h in (
        "0100000000000000000000000000000000000000000000000000000000000000",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0000000000000000000000000000000000000000000000000000000000000000",
        "0000000000000000000000000000000000000000000000000000000000000080",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
        "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
        "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff",
        "eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
        "0100000000000000000000000000000000000000000000000000000000000080",
    )
}


def key_id_of(public_key: bytes) -> str:
    """The id of a public key: 16 hex digits of its SHA-256."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def is_valid_public_key(public_key: bytes) -> bool:
    return len(public_key) == 32 and public_key not in _SMALL_ORDER


class SigningKey:
    """A node's (or client's) Ed25519 signing key."""

    __slots__ = ("_key", "key_id", "public_key")

    def __init__(self, seed: bytes):
        if len(seed) != 32:
            raise UsageError("an Ed25519 seed is 32 bytes")
        self._key = nacl.signing.SigningKey(seed)
        self.public_key: bytes = bytes(self._key.verify_key)
        self.key_id: str = key_id_of(self.public_key)

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(os.urandom(32))

    def sign(self, message: bytes) -> bytes:
        """The 64-byte detached signature of ``message``."""
        return self._key.sign(message).signature

    def seed(self) -> bytes:
        return bytes(self._key)

    # -- key files ----------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str], *, overwrite: bool = True) -> None:
        """Write the secret key (mode 0600) and ``<path>.pub`` beside it.

        The secret appears at ``path`` in one atomic step, complete. With
        ``overwrite=False`` that step fails with FileExistsError if a key is already there:
        two processes creating the same key at once then agree on one key instead of the
        second silently replacing the first (whose signatures would no longer verify).
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{_SECRET_HEADER}\n{self.seed().hex()}\n")
        try:
            if overwrite:
                os.replace(tmp, path)
            else:
                os.link(tmp, path)  # atomic, and refuses to replace an existing file
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        pub = path.with_name(path.name + ".pub")
        pub_tmp = pub.with_name(pub.name + f".tmp{os.getpid()}")
        pub_tmp.write_text(f"{_PUBLIC_HEADER}\n{self.public_key.hex()}\n")
        os.replace(pub_tmp, pub)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> SigningKey:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise UsageError(f"cannot read key file {path}: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise UsageError(f"key file {path} is not a peo key file") from None
        lines = text.split()
        if len(lines) != 2 or lines[0] != _SECRET_HEADER:
            raise UsageError(f"key file {path} is not a peo secret key file")
        try:
            return cls(bytes.fromhex(lines[1]))
        except ValueError:
            raise UsageError(f"key file {path} holds a malformed key") from None

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str]) -> SigningKey:
        """Load the key at ``path``, creating it (0600) on first use."""
        if Path(path).exists():
            return cls.load(path)
        key = cls.generate()
        try:
            key.save(path, overwrite=False)
        except FileExistsError:  # another process created it at the same moment: use theirs
            return cls.load(path)
        except OSError as exc:
            raise UsageError(f"cannot create key file {path}: {exc.strerror or exc}") from None
        return cls.load(path)


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    try:
        lines = Path(path).read_text().split()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read public key file {path}: {exc}") from None
    if len(lines) != 2 or lines[0] != _PUBLIC_HEADER:
        raise UsageError(f"{path} is not a peo public key file")
    try:
        return bytes.fromhex(lines[1])
    except ValueError:
        raise UsageError(f"{path} holds a malformed public key") from None


@attrs.frozen
class _Trusted:
    verify_key: nacl.signing.VerifyKey
    scopes: frozenset[str]  # "*" means every trust scope


class Keyring:
    """The public keys a verifier trusts, and for which trust scopes."""

    def __init__(self) -> None:
        self._keys: dict[str, _Trusted] = {}
        # Directories re-read when an unknown key id shows up (a node started before a
        # new client or node created its key in the local key directory).
        self._directories: list[tuple[Path, frozenset[str]]] = []

    def trust(self, public_key: bytes, scopes: Iterable[str] = ("*",)) -> str:
        """Trust ``public_key`` for ``scopes``; returns its key id."""
        if not is_valid_public_key(public_key):
            raise UsageError("refusing to trust a malformed or small-order Ed25519 key")
        kid = key_id_of(public_key)
        old = self._keys.get(kid)
        merged = frozenset(scopes) | (old.scopes if old else frozenset())
        self._keys[kid] = _Trusted(nacl.signing.VerifyKey(public_key), merged)
        return kid

    def __contains__(self, key_id: object) -> bool:
        return key_id in self._keys

    def __len__(self) -> int:
        return len(self._keys)

    def key_ids(self) -> list[str]:
        return sorted(self._keys)

    def verify(self, key_id: str, scope: str, message: bytes, signature: bytes, *, seq: int | None = None) -> None:
        """Check ``signature`` over ``message`` by the key ``key_id``, trusted for ``scope``."""
        trusted = self._keys.get(key_id)
        if trusted is None and self._directories:
            for directory, scopes in self._directories:
                self._load_directory(directory, scopes)
            trusted = self._keys.get(key_id)
        if trusted is None:
            raise IntegrityError(f"signed by untrusted key {key_id}", seq=seq)
        if "*" not in trusted.scopes and scope not in trusted.scopes:
            raise IntegrityError(f"key {key_id} is not trusted for scope {scope!r}", seq=seq)
        try:
            trusted.verify_key.verify(message, signature)
        except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
            raise IntegrityError("bad signature", seq=seq) from None

    @classmethod
    def from_directory(cls, directory: str | os.PathLike[str], scopes: Iterable[str] = ("*",)) -> Keyring:
        """Trust every ``*.pub`` file in ``directory`` (the local set-up's trust root)."""
        ring = cls()
        ring.add_directory(directory, scopes)
        return ring

    def add_directory(self, directory: str | os.PathLike[str], scopes: Iterable[str] = ("*",)) -> None:
        """Trust every ``*.pub`` in ``directory`` now, and any that appear there later."""
        path, frozen = Path(directory), frozenset(scopes)
        self._directories.append((path, frozen))
        self._load_directory(path, frozen)

    def _load_directory(self, path: Path, scopes: frozenset[str]) -> None:
        if not path.is_dir():
            return
        for pub in sorted(path.glob("*.pub")):
            self.trust(load_public_key(pub), scopes)

    def add_mapping(self, keys: Mapping[str, Iterable[str]]) -> None:
        """Trust hex-encoded public keys for the given scopes (as policies list them)."""
        for hex_key, scopes in keys.items():
            try:
                raw = bytes.fromhex(hex_key)
            except ValueError:
                raise UsageError(f"malformed public key {hex_key!r}") from None
            self.trust(raw, scopes)
