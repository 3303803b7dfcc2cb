"""A thin pynacl wrapper: Ed25519 keys, key ids and the verifier's keyring (bytes in, bytes out).

Sign bytes, verify the exact stored bytes. Key files, new keys (randomness) and key
directories live in the shell, :mod:`peo.keys`. A key id is derived from the public key, so an
entry names its signer without carrying the key; the *verifier* supplies the keys it
trusts (a :class:`Keyring`), and a key carried inside an object is never trusted.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping

import attrs
import nacl.exceptions
import nacl.signing

from ..errors import IntegrityError, UsageError

__all__ = ["PUBLIC_HEADER", "SECRET_HEADER", "Keyring", "SigningKey", "is_valid_public_key", "key_id_of"]

#: First line of a secret key file and of a public key file (see :mod:`peo.keys`).
SECRET_HEADER = "peo-ed25519-secret-v1"
PUBLIC_HEADER = "peo-ed25519-public-v1"

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

    def sign(self, message: bytes) -> bytes:
        """The 64-byte detached signature of ``message``."""
        return self._key.sign(message).signature

    def seed(self) -> bytes:
        return bytes(self._key)


@attrs.frozen
class _Trusted:
    verify_key: nacl.signing.VerifyKey
    scopes: frozenset[str]  # "*" means every trust scope


class Keyring:
    """The public keys a verifier trusts, and for which trust scopes."""

    def __init__(self) -> None:
        self._keys: dict[str, _Trusted] = {}
        # Called when an unknown key id shows up, to trust keys that appeared since (a node
        # started before a new client or node created its key in the local key directory).
        self._sources: list[Callable[[Keyring], None]] = []

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
        trusted = self._trusted(key_id, seq)
        if "*" not in trusted.scopes and scope not in trusted.scopes:
            raise IntegrityError(f"key {key_id} is not trusted for scope {scope!r}", seq=seq)
        _check_signature(trusted, message, signature, seq)

    def check(self, key_id: str, message: bytes, signature: bytes) -> frozenset[str]:
        """Check ``signature`` over ``message`` by the trusted key ``key_id`` and return the
        scopes that key is trusted for ("*": all): for a caller that decides by scope
        itself (a signal's sender, checked against the policy's rules)."""
        trusted = self._trusted(key_id, None)
        _check_signature(trusted, message, signature, None)
        return trusted.scopes

    def public_hex(self, key_id: str) -> str | None:
        """The hex public key of a trusted key id, or None."""
        trusted = self._keys.get(key_id)
        return bytes(trusted.verify_key).hex() if trusted is not None else None

    def _trusted(self, key_id: str, seq: int | None) -> _Trusted:
        """The trusted key ``key_id``, asking the sources once if it is unknown."""
        trusted = self._keys.get(key_id)
        if trusted is None and self._sources:
            for refresh in self._sources:
                refresh(self)
            trusted = self._keys.get(key_id)
        if trusted is None:
            raise IntegrityError(f"signed by untrusted key {key_id}", seq=seq)
        return trusted

    def add_source(self, refresh: Callable[[Keyring], None]) -> None:
        """Call ``refresh(self)`` now and whenever an unknown key id shows up; it may trust
        more keys (the shell reads a key directory this way)."""
        self._sources.append(refresh)
        refresh(self)

    def add_mapping(self, keys: Mapping[str, Iterable[str]]) -> None:
        """Trust hex-encoded public keys for the given scopes (as policies list them)."""
        for hex_key, scopes in keys.items():
            try:
                raw = bytes.fromhex(hex_key)
            except ValueError:
                raise UsageError(f"malformed public key {hex_key!r}") from None
            self.trust(raw, scopes)


def _check_signature(trusted: _Trusted, message: bytes, signature: bytes, seq: int | None) -> None:
    try:
        trusted.verify_key.verify(message, signature)
    except (nacl.exceptions.BadSignatureError, ValueError, TypeError):
        raise IntegrityError("bad signature", seq=seq) from None
