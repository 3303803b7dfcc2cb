"""Local set-up: where keys live and which keys a verifier trusts by default.

``PEO_HOME`` (default ``./.peo``) holds ``keys/``: each node's and client's signing key
(mode 0600) and its ``.pub`` beside it. On one machine, trusting every ``.pub`` there is
what makes ``peo verify`` work out of the box; policies add keys from other machines.
"""

from __future__ import annotations

import os
from pathlib import Path

from .core.crypto import Keyring, SigningKey
from .core.policy import Policy

__all__ = ["home", "key_path", "keyring_for", "load_key"]


def home() -> Path:
    return Path(os.environ.get("PEO_HOME") or ".peo")


def key_path(name: str) -> Path:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return home() / "keys" / f"{safe}.key"


def load_key(key: SigningKey | str | os.PathLike[str] | None, default_name: str) -> SigningKey:
    """A key object as given, a key file path (created on first use), or the default."""
    if isinstance(key, SigningKey):
        return key
    return SigningKey.load_or_create(key if key is not None else key_path(default_name))


def keyring_for(policy: Policy, *extra: SigningKey) -> Keyring:
    """The keys a verifier with ``policy`` trusts: local keys (if the policy says so),
    the policy's listed keys, and any keys passed in (the caller's own)."""
    ring = Keyring()
    if policy.trust_local_keys:
        ring.add_directory(home() / "keys")
    ring.add_mapping({k: v for k, v in policy.trusted_keys.items()})
    for key in extra:
        ring.trust(key.public_key)
    return ring
