"""Keys on disk: new keys, key files, the local key directory and the default keyring.

``PEO_HOME`` (default ``./.peo``) holds ``keys/``: each node's and client's signing key
(mode 0600) and its ``.pub`` beside it. On one machine, trusting every ``.pub`` there is
what makes ``peo verify`` work out of the box; policies add keys from other machines.
The core (:mod:`peo.core.crypto`) only signs and verifies bytes: everything here that
touches files or draws randomness is the shell's.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

from .core.crypto import PUBLIC_HEADER, SECRET_HEADER, Keyring, SigningKey
from .core.policy import Policy
from .errors import UsageError

__all__ = [
    "add_directory",
    "generate",
    "home",
    "key_path",
    "keyring_for",
    "keyring_from_directory",
    "load_key",
    "load_key_file",
    "load_or_create",
    "load_public_key",
    "save",
]


def home() -> Path:
    return Path(os.environ.get("PEO_HOME") or ".peo")


def key_path(name: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return home() / "keys" / f"{safe}.key"


def generate() -> SigningKey:
    """A new signing key from the operating system's randomness."""
    return SigningKey(os.urandom(32))


def save(key: SigningKey, path: str | os.PathLike[str], *, overwrite: bool = True) -> None:
    """Write the secret key (mode 0600) and ``<path>.pub`` beside it.

    The secret appears at ``path`` in one atomic step, complete. With ``overwrite=False``
    that step fails with FileExistsError if a key is already there: two processes creating
    the same key at once then agree on one key instead of the second silently replacing
    the first (whose signatures would no longer verify).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(f"{SECRET_HEADER}\n{key.seed().hex()}\n")
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
    pub_tmp.write_text(f"{PUBLIC_HEADER}\n{key.public_key.hex()}\n")
    os.replace(pub_tmp, pub)


def load_key_file(path: str | os.PathLike[str]) -> SigningKey:
    """The signing key in a key file; a missing or malformed file is a UsageError."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UsageError(f"key file {path} is not a peo key file") from None
    lines = text.split()
    if len(lines) != 2 or lines[0] != SECRET_HEADER:
        raise UsageError(f"key file {path} is not a peo secret key file")
    try:
        return SigningKey(bytes.fromhex(lines[1]))
    except ValueError:
        raise UsageError(f"key file {path} holds a malformed key") from None


def load_or_create(path: str | os.PathLike[str]) -> SigningKey:
    """Load the key at ``path``, creating it (0600) on first use."""
    if Path(path).exists():
        return load_key_file(path)
    try:
        save(generate(), path, overwrite=False)
    except FileExistsError:  # another process created it at the same moment: use theirs
        return load_key_file(path)
    except OSError as exc:
        raise UsageError(f"cannot create key file {path}: {exc.strerror or exc}") from None
    return load_key_file(path)


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    try:
        lines = Path(path).read_text().split()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read public key file {path}: {exc}") from None
    if len(lines) != 2 or lines[0] != PUBLIC_HEADER:
        raise UsageError(f"{path} is not a peo public key file")
    try:
        return bytes.fromhex(lines[1])
    except ValueError:
        raise UsageError(f"{path} holds a malformed public key") from None


def add_directory(ring: Keyring, directory: str | os.PathLike[str], scopes: Iterable[str] = ("*",)) -> None:
    """Trust every ``*.pub`` in ``directory`` now, and any that appear there later."""
    path, frozen = Path(directory), frozenset(scopes)

    def refresh(target: Keyring) -> None:
        if path.is_dir():
            for pub in sorted(path.glob("*.pub")):
                target.trust(load_public_key(pub), frozen)

    ring.add_source(refresh)


def keyring_from_directory(directory: str | os.PathLike[str], scopes: Iterable[str] = ("*",)) -> Keyring:
    """A keyring trusting every ``*.pub`` file in ``directory`` (the local set-up's trust root)."""
    ring = Keyring()
    add_directory(ring, directory, scopes)
    return ring


def load_key(key: SigningKey | str | os.PathLike[str] | None, default_name: str) -> SigningKey:
    """A key object as given, a key file path (created on first use), or the default."""
    if isinstance(key, SigningKey):
        return key
    return load_or_create(key if key is not None else key_path(default_name))


def keyring_for(policy: Policy, *extra: SigningKey) -> Keyring:
    """The keys a verifier with ``policy`` trusts: local keys (if the policy says so),
    the policy's listed keys, and any keys passed in (the caller's own)."""
    ring = Keyring()
    if policy.trust_local_keys:
        add_directory(ring, home() / "keys")
    ring.add_mapping({k: v for k, v in policy.trusted_keys.items()})
    for key in extra:
        ring.trust(key.public_key)
    return ring
