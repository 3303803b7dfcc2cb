"""Keys on disk: new keys, key files, the deployment's key directory and the default keyring.

The key directory (mode 0700) holds each node's and client's signing key (mode 0600) and
its ``.pub`` beside it (0644), written with exactly these modes whatever the umask, never
through a symlink. peo refuses to use a key directory or key file that another user owns
(root excepted) or that group or others can write, a key file that is not a regular file
(symlink, FIFO, device, directory), and a secret key file that group or others can read;
each refusal is a UsageError naming the path and saying how to fix it.

The key directory belongs to the deployment (the store), not to the working directory, so
a client, a node and the CLI started anywhere against one store resolve the same one
(:func:`key_dir`), in this order:

1. ``$PEO_KEYS``, for any store;
2. ``$PEO_HOME/keys`` (kept for compatibility);
3. for an SQLite store, ``.peo/keys`` beside the database file (``/srv/app/peo.db`` ->
   ``/srv/app/.peo/keys``: the store's default ``sqlite:///peo.db`` run from its own
   directory finds the keys exactly where earlier versions put them);
4. for a PostgreSQL store, ``./.peo/keys`` in the current directory, as before: there is
   no file to sit beside, so a deployment on PostgreSQL should set ``$PEO_KEYS``.

Trusting every ``.pub`` there is what makes ``peo verify`` work out of the box; policies
add keys from other machines. The core (:mod:`peo.core.crypto`) only signs and verifies
bytes: everything here that touches files or draws randomness is the shell's.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from .config import store_url
from .core.crypto import Keyring, SigningKey, key_id_of
from .core.policy import Policy
from .errors import UsageError
from .keyfiles import (
    _check_directory,
    _read_public,
    _read_secret,
    save,
)

if TYPE_CHECKING:
    from .store import Store

__all__ = [
    "KeyDir",
    "KeyFile",
    "add_directory",
    "generate",
    "guard_new_key",
    "home",
    "key_dir",
    "key_files",
    "key_path",
    "keyring_for",
    "keyring_from_directory",
    "load_key",
    "load_key_file",
    "load_or_create",
    "load_public_key",
    "locate",
    "save",
    "trusted_scopes",
]

log = logging.getLogger("peo.keys")


def home() -> Path:
    """``$PEO_HOME``, default ``./.peo`` (kept for compatibility: see :func:`key_dir`)."""
    return Path(os.environ.get("PEO_HOME") or ".peo")


@attrs.frozen
class KeyDir:
    """A deployment's key directory and why it is that one (for messages)."""

    path: Path
    source: str  # "PEO_KEYS", "PEO_HOME", "sqlite" or "cwd"
    why: str  # e.g. "beside the SQLite store /srv/app/peo.db"


def locate(store: str | None = None) -> KeyDir:
    """The key directory of the deployment whose store URL is ``store`` (default: the
    store the CLI would use: ``$PEO_STORE``, else ``sqlite:///peo.db``).

    Order: ``$PEO_KEYS``; ``$PEO_HOME/keys``; beside an SQLite database file
    (``<its directory>/.peo/keys``); for PostgreSQL, ``./.peo/keys``."""
    explicit = os.environ.get("PEO_KEYS")
    if explicit:
        return KeyDir(Path(explicit), "PEO_KEYS", "from $PEO_KEYS")
    peo_home = os.environ.get("PEO_HOME")
    if peo_home:
        return KeyDir(Path(peo_home) / "keys", "PEO_HOME", "from $PEO_HOME")
    url = store_url(store)
    if url.startswith("sqlite:"):
        from .store.sqlite.connection import parse_sqlite_url

        db = os.path.abspath(parse_sqlite_url(url)[0])
        return KeyDir(Path(db).parent / ".peo" / "keys", "sqlite", f"beside the SQLite store {db}")
    return KeyDir(Path(".peo") / "keys", "cwd",
                  "in the current directory (a PostgreSQL store without $PEO_KEYS or $PEO_HOME)")


def key_dir(store: str | None = None) -> Path:
    """The key directory of the deployment whose store URL is ``store`` (see :func:`locate`)."""
    return locate(store).path


def key_path(name: str, store: str | None = None) -> Path:
    """The key file ``name`` (e.g. "client", "node") in ``store``'s key directory."""
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return key_dir(store) / f"{safe}.key"


def generate() -> SigningKey:
    """A new signing key from the operating system's randomness."""
    return SigningKey(os.urandom(32))


# -- reading keys ------------------------------------------------------------------------------


def load_key_file(path: str | os.PathLike[str]) -> SigningKey:
    """The signing key in a key file. A UsageError naming the file (and how to fix it) if it
    is missing or malformed, is not a regular file (a symlink, a FIFO, a device...), is owned
    by another user, is writable or readable by group or others, or lies in a directory
    peo must not use (:func:`_check_directory`)."""
    path = Path(path)
    _check_directory(path.parent)
    return _read_secret(path)


def load_or_create(path: str | os.PathLike[str]) -> SigningKey:
    """Load the key at ``path``, creating it (0600) on first use."""
    path = Path(path)
    if os.path.lexists(path):  # a dangling symlink is there too: load_key_file refuses it
        return load_key_file(path)
    try:
        save(generate(), path, overwrite=False)
    except FileExistsError:  # another process created it at the same moment: use theirs
        return load_key_file(path)
    except OSError as exc:
        raise UsageError(f"cannot create key file {path}: {exc.strerror or exc}") from None
    return load_key_file(path)


def load_public_key(path: str | os.PathLike[str]) -> bytes:
    """The public key in a ``.pub`` file, refused like :func:`load_key_file` refuses a secret
    one (except that anyone may read it); a malformed, wrong-length or small-order key is a
    UsageError naming the file."""
    path = Path(path)
    _check_directory(path.parent)
    return _read_public(path)


@attrs.define
class _DirectorySource:
    """The keyring source that trusts the ``.pub`` files of a key directory.

    Mutable on purpose: it remembers whether it has run (the first read is strict) and which
    refusals it has logged (a node re-reads the directory for every unknown key id, and the
    same bad file must not flood its log)."""

    path: Path
    scopes: frozenset[str]
    started: bool = False
    reported: set[str] = attrs.field(factory=set)

    def __call__(self, ring: Keyring) -> None:
        # The first read (when the keyring is built: a node or client starting, peo verify)
        # raises, so the command stops with the file's name. A later read happens in the
        # middle of verifying an object: there a refused file is logged and skipped, which
        # leaves its key untrusted (what it signed fails verification) and the other keys usable.
        strict = not self.started
        self.started = True
        try:
            if not _check_directory(self.path):
                return
            pubs = sorted(self.path.glob("*.pub"))
        except UsageError as exc:
            if strict:
                raise
            self._report(exc)
            return
        for pub in pubs:
            try:
                public = _read_public(pub)
            except UsageError as exc:
                if strict:
                    raise
                self._report(exc)
                continue
            ring.trust(public, self.scopes)

    def _report(self, exc: UsageError) -> None:
        if str(exc) not in self.reported:
            self.reported.add(str(exc))
            log.warning("%s (its keys stay untrusted until this is fixed)", exc)


def add_directory(ring: Keyring, directory: str | os.PathLike[str], scopes: Iterable[str] = ("*",)) -> None:
    """Trust every ``*.pub`` in ``directory`` now, and any that appear there later.

    Now, a directory or ``.pub`` peo must not use is a UsageError naming it; later (when the
    keyring re-reads the directory for an unknown key id) it is logged and skipped."""
    ring.add_source(_DirectorySource(Path(directory), frozenset(scopes)))


def keyring_from_directory(directory: str | os.PathLike[str], scopes: Iterable[str] = ("*",)) -> Keyring:
    """A keyring trusting every ``*.pub`` file in ``directory`` (the local set-up's trust root)."""
    ring = Keyring()
    add_directory(ring, directory, scopes)
    return ring


def load_key(key: SigningKey | str | os.PathLike[str] | None, default_name: str,
             store: str | None = None) -> SigningKey:
    """A key object as given, a key file path (created on first use), or the default
    ``default_name`` key of ``store``'s key directory (created on first use)."""
    if isinstance(key, SigningKey):
        return key
    return load_or_create(key if key is not None else key_path(default_name, store))


def keyring_for(policy: Policy, *extra: SigningKey, store: str | None = None) -> Keyring:
    """The keys a verifier with ``policy`` trusts: the keys in ``store``'s key directory
    (if the policy trusts local keys), the policy's listed keys, and any keys passed in
    (the caller's own)."""
    ring = Keyring()
    if policy.trust_local_keys:
        add_directory(ring, key_dir(store))
    ring.add_mapping({k: v for k, v in policy.trusted_keys.items()})
    for key in extra:
        ring.trust(key.public_key)
    return ring


async def guard_new_key(store: Store, name: str = "client", *, new_key: bool = False) -> Path:
    """Refuse to mint the default key ``name`` for a store that already has objects.

    Returns the key's path. If no key file is there yet and ``store`` holds objects, those
    were signed by keys kept somewhere else: a new key would sign objects that the nodes
    and verifiers of this deployment do not trust (they are quarantined). That is a
    UsageError naming the path, unless ``new_key`` says a new key is meant. A store
    without objects gets its first key silently, as before."""
    path = key_path(name, store.url)
    if new_key or path.exists() or not await store.list(limit=1):
        return path
    where = locate(store.url)
    raise UsageError(
        f"no {name} key at {path} ({where.why}), but this store already has objects signed by keys kept "
        "elsewhere: a new key would sign objects its nodes do not trust. Point PEO_KEYS at the deployment's "
        "key directory, or pass --new-key (new_key=True) to create one and then trust its .pub"
    )


@attrs.frozen
class KeyFile:
    """One key in a key directory: its public key and the files that hold it."""

    key_id: str
    public_key: bytes
    public_file: Path | None  # the .pub (None: only the secret file is there)
    secret_file: Path | None  # the secret key file, if present


def key_files(directory: str | os.PathLike[str]) -> tuple[list[KeyFile], list[str]]:
    """The keys in ``directory`` (by file name) and one problem line per file peo refuses
    (the same refusals as :func:`load_key_file` and :func:`load_public_key`, naming the
    file). A directory peo must not use is one problem line and no keys: none of them
    would be trusted or used."""
    path = Path(directory)
    found: dict[str, KeyFile] = {}
    problems: list[str] = []
    try:
        if not _check_directory(path):
            return [], problems
    except UsageError as exc:
        return [], [str(exc)]
    for pub in sorted(path.glob("*.pub")):
        try:
            public = _read_public(pub)
        except UsageError as exc:
            problems.append(str(exc))
            continue
        secret = pub.with_name(pub.name[: -len(".pub")])
        found[secret.name] = KeyFile(key_id_of(public), public, pub, None)
    # A secret beside a .pub may have any name (a node profile's key_file); others end in .key.
    secrets_here = {*path.glob("*.key"), *(path / name for name in found if os.path.lexists(path / name))}
    for secret in sorted(secrets_here):
        try:
            key = _read_secret(secret)
        except UsageError as exc:
            problems.append(str(exc))
            continue
        known = found.get(secret.name)
        if known is None:
            found[secret.name] = KeyFile(key.key_id, key.public_key, None, secret)
        elif known.public_key != key.public_key:
            problems.append(f"key file {known.public_file}: holds key {known.key_id}, but the secret key file "
                            f"{secret} beside it is key {key.key_id}: what it signs is not trusted through this "
                            "file; remove the one that is wrong")
        else:
            found[secret.name] = attrs.evolve(known, secret_file=secret)
    return sorted(found.values(), key=lambda k: (k.secret_file or k.public_file or path).name), problems


def trusted_scopes(policy: Policy, public_key: bytes, *, local: bool) -> list[str]:
    """The trust scopes ``policy`` trusts ``public_key`` for; ``local``: the key is in the
    deployment's key directory (trusted for every scope if the policy trusts local keys)."""
    scopes: set[str] = set()
    if local and policy.trust_local_keys:
        scopes.add("*")
    for hex_key, listed in policy.trusted_keys.items():
        if hex_key.lower() == public_key.hex():
            scopes.update(listed)
    return sorted(scopes)
