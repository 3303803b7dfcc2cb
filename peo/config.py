"""Settings: how a node is configured, the same way from the library, the CLI and profiles.

:class:`NodeSettings` is built from keyword arguments (``peo.Node(url, app, concurrency=8)``),
from a node profile (a TOML file in ``nodes/``, :meth:`NodeSettings.from_profile`), or both
(command-line flags override a profile). Every value is checked when the settings are
built, so a bad profile or flag is one clear :class:`~peo.errors.UsageError`.

Policy files are read here too (the core's :class:`~peo.core.policy.Policy` only parses text).
"""

from __future__ import annotations

import math
import os
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import attrs

from .core.codec import check_name
from .core.policy import Policy
from .errors import CodecError, PolicyError, UsageError

__all__ = ["DEFAULT_STORE", "NodeSettings", "default_policy", "load_policy", "resolve_policy", "store_url"]

#: The store used when none is named: an SQLite file in the current directory.
DEFAULT_STORE = "sqlite:///peo.db"

_PROFILE_LIMIT = 1 << 20


def store_url(explicit: str | None = None) -> str:
    """The store to use: ``explicit``, else ``$PEO_STORE``, else :data:`DEFAULT_STORE`."""
    return explicit if explicit is not None else os.environ.get("PEO_STORE") or DEFAULT_STORE


def load_policy(path: str | os.PathLike[str]) -> Policy:
    """Read and parse a policy document; an unreadable file is a PolicyError."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise PolicyError(f"cannot read policy {path}: {exc}") from None
    return Policy.parse(text, source=str(path))


def default_policy() -> Policy:
    """The built-in copy of ``policies/default.toml``."""
    text = resources.files("peo").joinpath("default_policy.toml").read_text()
    return Policy.parse(text, source="default policy")


def resolve_policy(policy: Policy | str | os.PathLike[str] | None) -> Policy:
    """A Policy as given, read from a path, or the built-in default."""
    if policy is None:
        return default_policy()
    if isinstance(policy, Policy):
        return policy
    return load_policy(policy)


def _positive_int(name: str) -> Any:
    def check(_: Any, attribute: Any, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageError(f"{name} must be an integer")
        if value < 1:
            raise UsageError(f"{name} must be at least 1")

    return check


def _seconds(name: str, *, zero: bool = False) -> Any:
    def check(_: Any, attribute: Any, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UsageError(f"{name} must be a number")
        if not math.isfinite(value) or not (value >= 0 if zero else value > 0) or value > 1e9:
            raise UsageError(f"{name} must be a {'non-negative' if zero else 'positive'} number of seconds")

    return check


def _optional_name(what: str) -> Any:
    def check(_: Any, attribute: Any, value: Any) -> None:
        if value is None:
            return
        if not isinstance(value, str) or not value:
            raise UsageError(f"{what} must be a non-empty string")
        try:
            check_name(value, what)
        except CodecError as exc:
            raise UsageError(str(exc)) from None

    return check


def _optional_text(what: str) -> Any:
    def check(_: Any, attribute: Any, value: Any) -> None:
        if value is not None and (not isinstance(value, str) or not value):
            raise UsageError(f"{what} must be a non-empty string")

    return check


@attrs.frozen
class NodeSettings:
    """A node's settings. ``None`` means "the default": a node id of ``HOST-PID``, the
    built-in default policy, the local node key (``$PEO_HOME/keys/node.key``), the store
    from ``$PEO_STORE`` or :data:`DEFAULT_STORE`."""

    node_id: str | None = attrs.field(default=None, validator=_optional_name("node id"))
    concurrency: int = attrs.field(default=32, validator=_positive_int("concurrency"))
    lease_ttl: float = attrs.field(default=1.5, validator=_seconds("lease_ttl"))  # seconds
    poll_interval: float = attrs.field(default=0.05, validator=_seconds("poll_interval"))
    idle_horizon: float = attrs.field(default=5.0, validator=_seconds("idle_horizon", zero=True))
    store: str | None = attrs.field(default=None, validator=_optional_text("store"))
    policy: str | None = attrs.field(default=None, validator=_optional_text("policy"))  # policy file
    key_file: str | None = attrs.field(default=None, validator=_optional_text("key_file"))
    app: str | None = attrs.field(default=None, validator=_optional_text("app"))  # MODULE:ATTR
    # Self-healing and safe density (docs/operations.md): the memory budget ("400MiB",
    # "2GiB", "auto": the cgroup's memory.max; None: no budget), claims without progress
    # (or failed steps of one error class) before the next tier, and the alert sinks of a
    # quarantine (a command run with the alert as JSON on stdin; a URL POSTed to).
    memory_limit: str | None = attrs.field(default=None, validator=_optional_text("memory_limit"))
    max_recoveries: int = attrs.field(default=5, validator=_positive_int("max_recoveries"))
    alert_command: str | None = attrs.field(default=None, validator=_optional_text("alert_command"))
    alert_webhook: str | None = attrs.field(default=None, validator=_optional_text("alert_webhook"))

    #: The keys a profile may set (all of them).
    KEYS = ("node_id", "concurrency", "lease_ttl", "poll_interval", "idle_horizon", "store", "policy",
            "key_file", "app", "memory_limit", "max_recoveries", "alert_command", "alert_webhook")

    def with_options(self, **options: Any) -> NodeSettings:
        """These settings with ``options`` replaced (``None`` values are ignored)."""
        unknown = sorted(set(options) - set(self.KEYS))
        if unknown:
            raise UsageError(f"unknown node setting(s): {', '.join(unknown)} (known: {', '.join(self.KEYS)})")
        return attrs.evolve(self, **{k: v for k, v in options.items() if v is not None})

    @classmethod
    def from_profile(cls, path: str | os.PathLike[str], **overrides: Any) -> NodeSettings:
        """Settings from a node profile (TOML), with ``overrides`` (flags) on top."""
        try:
            with open(path, "rb") as fh:
                raw = fh.read(_PROFILE_LIMIT + 1)
        except FileNotFoundError:
            raise UsageError(f"profile {path} does not exist") from None
        except IsADirectoryError:
            raise UsageError(f"profile {path} is a directory") from None
        except OSError as exc:
            raise UsageError(f"cannot read profile {path}: {exc.strerror or exc}") from None
        if len(raw) > _PROFILE_LIMIT:
            raise UsageError(f"profile {path} is larger than {_PROFILE_LIMIT} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"profile {path} is not UTF-8 text") from None
        return cls.from_profile_text(text, str(path), **overrides)

    @classmethod
    def from_profile_text(cls, text: str, path: str, **overrides: Any) -> NodeSettings:
        """Settings from the text of a node profile read from ``path`` (named in errors)."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"profile {path} is not valid TOML: {exc}") from None
        unknown = sorted(set(doc) - set(cls.KEYS))
        if unknown:
            known = ", ".join(sorted(cls.KEYS))
            raise UsageError(f"profile {path}: unknown key(s) {', '.join(unknown)} (known: {known})")
        try:
            return cls().with_options(**doc).with_options(**overrides)
        except UsageError as exc:
            raise UsageError(f"profile {path}: {exc}") from None
