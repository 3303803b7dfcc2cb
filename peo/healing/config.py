"""Configuration auto-repair: a node runs on the last profile and policy that worked.

Each time a node's profile or policy file loads and validates, the node keeps a copy of its
text, signed with the local node key, in ``<key directory>/known-good/``. When the file is
later missing, unreadable, unparsable or invalid (a bad edit, a half-finished deploy), the
node starts on that copy instead of refusing to start, logs what was wrong and the diff from
the copy to the file as found, and reports the repair (``peo node`` prints it; the node's
registration carries it for ``peo nodes``). Without a copy, the error stands as before.

A copy whose signature does not verify with the node key is ignored (never trusted), as is
one that no longer loads itself.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import attrs

from ..config import NodeSettings, load_policy
from ..core.crypto import Keyring, SigningKey
from ..core.policy import Policy
from ..errors import IntegrityError, PolicyError, UsageError

__all__ = ["KnownGood", "Repair", "load_policy_repaired", "load_profile_repaired"]

T = TypeVar("T")

_DIFF_LINES = 40
_CONTEXT = b"peo-known-good-v1\x00"


@attrs.frozen
class Repair:
    """A configuration file the node could not use, and the known-good copy it used instead."""

    kind: str  # "profile" or "policy"
    path: str
    problem: str
    diff: str

    def line(self) -> str:
        return f"{self.kind} {self.path} is unusable ({self.problem}): running on its last known-good copy"


class KnownGood:
    """Signed copies of the configuration files that loaded, one per kind and path."""

    def __init__(self, directory: str | os.PathLike[str], key: SigningKey):
        self.directory = Path(directory)
        self.key = key

    def _file(self, kind: str, path: str) -> Path:
        digest = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:16]
        return self.directory / f"{kind}-{digest}.toml"

    def save(self, kind: str, path: str, text: str) -> None:
        """Keep ``text`` as the known-good copy of ``path`` (atomically, text then signature)."""
        target = self._file(kind, path)
        body = text.encode()
        signature = self.key.sign(_CONTEXT + kind.encode() + b"\x00" + body)
        try:
            if target.exists() and target.read_bytes() == body:
                return
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            for suffix, data in (("", body), (".sig", signature)):
                tmp = target.with_name(target.name + suffix + ".tmp")
                tmp.write_bytes(data)
                os.replace(tmp, target.with_name(target.name + suffix))
        except OSError:
            pass  # a copy not kept is a repair not possible later, never a node that does not start

    def load(self, kind: str, path: str) -> str | None:
        """The known-good text of ``path``, if one is kept and its signature verifies."""
        target = self._file(kind, path)
        try:
            body = target.read_bytes()
            signature = target.with_name(target.name + ".sig").read_bytes()
        except OSError:
            return None
        ring = Keyring()
        kid = ring.trust(self.key.public_key)
        try:
            ring.verify(kid, "known-good", _CONTEXT + kind.encode() + b"\x00" + body, signature)
        except IntegrityError:
            return None
        try:
            return body.decode()
        except UnicodeDecodeError:
            return None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except (OSError, UnicodeDecodeError):
        return None


def _diff(good: str, found: str | None, path: str) -> str:
    if found is None:
        return f"(the file {path} cannot be read)"
    lines = list(difflib.unified_diff(good.splitlines(), found.splitlines(), "known-good", path, lineterm=""))
    if len(lines) > _DIFF_LINES:
        lines = [*lines[:_DIFF_LINES], f"... ({len(lines) - _DIFF_LINES} more lines)"]
    return "\n".join(lines)


def _with_repair(kind: str, path: str, known: KnownGood | None, load: Callable[[str], T],
                 parse: Callable[[str], T], errors: tuple[type[Exception], ...]) -> tuple[T, Repair | None]:
    try:
        value = load(path)
    except errors as exc:
        good = known.load(kind, path) if known is not None else None
        if good is None:
            raise
        try:
            value = parse(good)
        except errors:
            raise exc from None  # the copy no longer loads either (peo changed): the first error stands
        return value, Repair(kind, path, str(exc), _diff(good, _read(path), path))
    if known is not None:
        text = _read(path)
        if text is not None:
            known.save(kind, path, text)
    return value, None


def load_profile_repaired(path: str, known: KnownGood | None, **overrides: Any) -> tuple[NodeSettings, Repair | None]:
    """:meth:`NodeSettings.from_profile`, falling back on the known-good copy of ``path``."""
    return _with_repair("profile", path, known,
                        lambda p: NodeSettings.from_profile(p, **overrides),
                        lambda text: NodeSettings.from_profile_text(text, f"{path} (known-good copy)", **overrides),
                        (UsageError,))


def load_policy_repaired(path: str, known: KnownGood | None) -> tuple[Policy, Repair | None]:
    """:func:`peo.config.load_policy`, falling back on the known-good copy of ``path``."""
    return _with_repair("policy", path, known, load_policy,
                        lambda text: Policy.parse(text, source=f"{path} (known-good copy)"), (PolicyError,))
