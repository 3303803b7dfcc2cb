"""Key files on disk, safely: what peo accepts as a key directory or key file, and how it
writes one (no symlink followed, exact modes whatever the umask, never half-written).

Used by :mod:`peo.keys`, which decides where keys live and what to trust; every refusal
here is a UsageError naming the path and saying how to fix it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from pathlib import Path

from .core.crypto import PUBLIC_HEADER, SECRET_HEADER, SigningKey, is_valid_public_key
from .errors import UsageError

__all__ = ["DIRECTORY_MODE", "PUBLIC_MODE", "SECRET_MODE", "save"]


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
