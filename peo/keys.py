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

import contextlib
import errno
import logging
import os
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from .config import store_url
from .core.crypto import PUBLIC_HEADER, SECRET_HEADER, Keyring, SigningKey, is_valid_public_key, key_id_of
from .core.policy import Policy
from .errors import UsageError

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


# -- what peo accepts on disk ------------------------------------------------------------------
#
# A key directory is the trust root (every .pub in it is trusted) and holds the secrets, so
# whoever can write to it or to a key file can make peo trust or sign with a key of their
# choosing. A key file is checked on the file actually opened (fstat of the open
# descriptor), not on a name that could be swapped between the check and the use.

#: Modes peo writes: the directory and the secret for the owner only, the .pub for all to read.
DIRECTORY_MODE, SECRET_MODE, PUBLIC_MODE = 0o700, 0o600, 0o644
#: Mode of parent directories peo creates on the way to a key directory (nobody else writes).
_PARENT_MODE = 0o755
#: A key file is two short lines; anything larger is not one (and is not read whole).
_MAX_KEY_FILE = 4096
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH
_READABLE_BY_OTHERS = stat.S_IRGRP | stat.S_IROTH


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "symlink"), (stat.S_ISDIR, "directory"), (stat.S_ISFIFO, "FIFO"),
                       (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "device"), (stat.S_ISBLK, "device")):
        if test(mode):
            return name
    return "special file"


def _owner_problem(st: os.stat_result) -> str | None:
    """Why the owner of ``st`` may not hold keys for us: anyone but us or root could rewrite them."""
    me = os.geteuid()
    if st.st_uid in (me, 0):
        return None
    return f"owned by uid {st.st_uid}, not by you (uid {me}) or root"


def _check_directory(path: Path) -> bool:
    """Whether the key directory ``path`` exists; a UsageError naming it if peo must not use it
    (not a directory, owned by another user, writable by group or others).

    A symlink to a directory is followed (``/srv/keys -> /data/keys`` is common): the
    directory it names is what is checked."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise UsageError(f"cannot use key directory {path}: {exc.strerror or exc}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise UsageError(f"key directory {path}: a {_kind(st.st_mode)}, not a directory; remove it, "
                         "or point $PEO_KEYS at the deployment's key directory")
    owner = _owner_problem(st)
    if owner is not None:
        raise UsageError(f"key directory {path}: {owner}, who could plant keys that peo trusts or uses; "
                         f"run chown {os.geteuid()} {path} (as root), or use a key directory of your own")
    if st.st_mode & _WRITABLE_BY_OTHERS:
        raise UsageError(f"key directory {path}: writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}), "
                         f"who could plant keys that peo trusts or uses; run chmod go-w {path} "
                         "(peo creates key directories 0700)")
    return True


def _check_file(path: Path, st: os.stat_result) -> None:
    """A UsageError naming ``path`` unless ``st`` is a regular file owned by us (or root) that
    nobody else can write."""
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"cannot read key file {path}: it is a symlink, and peo never follows a symlink to "
                         f"a key file (it could point anywhere); remove the symlink {path} and put the key "
                         "file itself there")
    if not stat.S_ISREG(st.st_mode):
        raise UsageError(f"cannot read key file {path}: it is a {_kind(st.st_mode)}, not a regular file; "
                         f"remove {path} (peo writes key files itself)")
    owner = _owner_problem(st)
    if owner is not None:
        raise UsageError(f"key file {path}: {owner}, who could replace the key; "
                         f"run chown {os.geteuid()} {path} (as root) after checking its content")
    if st.st_mode & _WRITABLE_BY_OTHERS:
        raise UsageError(f"key file {path}: writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}), "
                         f"who could replace the key; run chmod go-w {path}")


def _read_key_file(path: Path) -> tuple[str, os.stat_result]:
    """The text of the key file ``path`` and its status, once :func:`_check_file` accepts it.

    ``lstat`` first, so that a FIFO or a device is never opened (opening one can block or
    act); then ``O_NOFOLLOW | O_NONBLOCK`` and the checks again on the open descriptor, so
    a name swapped in between is caught too and still never blocks."""
    try:
        _check_file(path, os.lstat(path))
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # became a symlink since the lstat
            _check_file(path, os.lstat(path))
        raise UsageError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        _check_file(path, st)
        chunks: list[bytes] = []
        size = 0
        while size <= _MAX_KEY_FILE:
            chunk = os.read(fd, _MAX_KEY_FILE + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise UsageError(f"cannot read key file {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if size > _MAX_KEY_FILE:
        raise UsageError(f"key file {path}: not a peo key file (larger than {_MAX_KEY_FILE} bytes)")
    try:
        return b"".join(chunks).decode("utf-8"), st
    except UnicodeDecodeError:
        raise UsageError(f"key file {path}: not a peo key file (it is not text)") from None


def _read_secret(path: Path) -> SigningKey:
    text, st = _read_key_file(path)
    lines = text.split()
    if lines[:1] == [PUBLIC_HEADER]:
        raise UsageError(f"key file {path}: not a peo secret key file but a public one "
                         "(the secret key is the file of the same name without .pub)")
    if len(lines) != 2 or lines[0] != SECRET_HEADER:
        raise UsageError(f"key file {path}: not a peo secret key file "
                         f"(expected two lines: {SECRET_HEADER} and the seed in hex)")
    try:
        seed = bytes.fromhex(lines[1])
    except ValueError:
        raise UsageError(f"key file {path}: malformed key (the seed is not hex)") from None
    if len(seed) != 32:
        raise UsageError(f"key file {path}: malformed key (a {len(seed)}-byte seed; an Ed25519 seed is 32 bytes)")
    # Checked after the content, so that a file that is no key at all says so first. A
    # secret others can read is refused rather than warned about: a warning scrolls by in a
    # node's log while the node keeps signing with a key someone else may hold.
    if st.st_mode & _READABLE_BY_OTHERS:
        raise UsageError(f"key file {path}: readable by group or others (mode {stat.S_IMODE(st.st_mode):04o}), "
                         f"but it holds a secret signing key; run chmod 600 {path}, and if anyone else may "
                         "have read it, treat the key as compromised (make a new one and stop trusting its .pub)")
    return SigningKey(seed)


def _read_public(path: Path) -> bytes:
    text, _ = _read_key_file(path)
    lines = text.split()
    if lines[:1] == [SECRET_HEADER]:
        raise UsageError(f"key file {path}: holds a secret key, not a public key; a .pub file is meant to be "
                         "shared: remove it, and if anyone else may have read it, treat that key as compromised")
    if len(lines) != 2 or lines[0] != PUBLIC_HEADER:
        raise UsageError(f"key file {path}: not a peo public key file "
                         f"(expected two lines: {PUBLIC_HEADER} and the key in hex)")
    try:
        public = bytes.fromhex(lines[1])
    except ValueError:
        raise UsageError(f"key file {path}: malformed public key (not hex)") from None
    if len(public) != 32:
        raise UsageError(f"key file {path}: malformed public key ({len(public)} bytes; an Ed25519 key is 32)")
    if not is_valid_public_key(public):
        raise UsageError(f"key file {path}: malformed public key (a small-order point, under which "
                         "signatures can be forged)")
    return public


# -- writing keys ------------------------------------------------------------------------------


def _make_directory(directory: Path, mode: int = DIRECTORY_MODE) -> None:
    """Create ``directory`` (and missing parents, :data:`_PARENT_MODE`) with exactly ``mode``,
    whatever the umask: under ``umask 000`` a plain mkdir would make the trust root
    world-writable. An existing directory is left as it is (and checked by the caller)."""
    if directory.is_dir():
        return
    if directory.parent != directory:
        _make_directory(directory.parent, _PARENT_MODE)
    try:
        os.mkdir(directory, mode)
    except FileExistsError:
        return  # made by another process at the same moment (or not a directory: checked later)
    os.chmod(directory, mode)


def _refuse_symlink(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise UsageError(f"key file {path}: a symlink, and peo never writes a key through a symlink "
                         f"(it could point anywhere); remove the symlink {path} and run the command again")


def _write_new(path: Path, text: str, mode: int, *, overwrite: bool) -> None:
    """Make ``path`` hold ``text`` with ``mode`` in one atomic step.

    The content goes to a new file at a random name beside it, created with ``O_EXCL |
    O_NOFOLLOW`` (never an existing file or a symlink someone planted there), then
    replaces ``path`` (``overwrite``) or is linked there (fails with FileExistsError if
    anything, even a dangling symlink, is already there)."""
    tmp = path.with_name(f"{path.name}.tmp{secrets.token_hex(8)}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except FileExistsError:
        raise UsageError(f"cannot create key file {path}: something already exists at the new random name {tmp}; "
                         f"peo did not put it there: remove it and check who else can write to {path.parent}"
                         ) from None
    try:
        try:
            os.fchmod(fd, mode)  # exactly ``mode``: the umask may have removed bits of 0644
            data = text.encode()
            while data:
                data = data[os.write(fd, data):]
            os.fsync(fd)  # the key is complete on disk before its name points to it
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, path)  # replaces a symlink itself, never writes through it
        else:
            os.link(tmp, path)  # atomic, and refuses to replace anything already there
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def save(key: SigningKey, path: str | os.PathLike[str], *, overwrite: bool = True) -> None:
    """Write the secret key (mode 0600) and ``<path>.pub`` beside it (0644), creating the
    directory (0700) if needed; modes are exact, whatever the umask.

    The secret appears at ``path`` in one atomic step, complete. With ``overwrite=False``
    that step fails with FileExistsError if a key is already there: two processes creating
    the same key at once then agree on one key instead of the second silently replacing
    the first (whose signatures would no longer verify). A directory peo must not use
    (:func:`_check_directory`) or a symlink at ``path`` or its ``.pub`` is a UsageError
    naming it, and nothing is written.
    """
    path = Path(path)
    pub = path.with_name(path.name + ".pub")
    _make_directory(path.parent)
    _check_directory(path.parent)
    _refuse_symlink(path)
    _refuse_symlink(pub)
    _write_new(path, f"{SECRET_HEADER}\n{key.seed().hex()}\n", SECRET_MODE, overwrite=overwrite)
    _write_new(pub, f"{PUBLIC_HEADER}\n{key.public_key.hex()}\n", PUBLIC_MODE, overwrite=True)


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
