"""Policy: a node's local rules, parsed from a TOML document's text, evaluated purely.

Reading a policy file is the shell's (:func:`peo.config.load_policy`,
:func:`peo.config.default_policy`).

The handler (or an LLM behind it) *proposes*; the policy *authorizes*. Every function here
returns a reason string when something is refused and ``None`` when it is allowed, so the
cycle can record refusals as data.
"""

from __future__ import annotations

import hashlib
import math
import tomllib
from typing import Any

import attrs

from ..errors import CodecError, PolicyError
from .codec import check_name
from .model import Context, Intent

__all__ = ["Policy"]

_MAX_NUMBER = 1e9  # no limit in a policy needs to be larger; bounds overflow in maths


def _names(value: Any, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"{where} must be a list of non-empty strings")
    return frozenset(value)


def _number(value: Any, where: str, *, integer: bool = False, minimum: float = 0) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        raise PolicyError(f"{where} must be {'an integer' if integer else 'a number'}")
    if not math.isfinite(value) or not minimum <= value <= _MAX_NUMBER:
        raise PolicyError(f"{where} must be between {minimum} and {_MAX_NUMBER:g}")
    return value


def _pacing(value: float | None, default: float) -> float:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return default
    return min(max(float(value), 0.0), _MAX_NUMBER)


#: The tables a policy document may have, and the keys each may hold.
_SECTIONS: dict[str, tuple[str, ...]] = {
    "accept": ("trust_scopes", "identities", "handlers"),
    "trust": ("local_keys", "keys"),
    "limits": ("max_payload_bytes", "max_children", "child_handlers", "max_sleep_seconds", "handler_timeout",
               "max_traceback_bytes"),
    "thresholds": ("max_failures", "max_steps", "max_cannot_do"),
    "retry": ("base_seconds", "max_seconds"),
    "refine": ("may_relax",),
}


def _sections(doc: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """Each known table of a parsed document (empty if absent); unknown tables or keys are errors."""
    unknown = set(doc) - {"name", *_SECTIONS}
    if unknown:
        raise PolicyError(f"{source}: unknown section(s): {', '.join(sorted(unknown))}")
    out = {}
    for name, keys in _SECTIONS.items():
        sec = doc.get(name, {})
        if not isinstance(sec, dict):
            raise PolicyError(f"{source}: [{name}] must be a table")
        extra = set(sec) - set(keys)
        if extra:
            raise PolicyError(f"{source}: unknown key(s) in [{name}]: {', '.join(sorted(extra))}")
        out[name] = sec
    return out


def _match(allowed: frozenset[str], name: str) -> bool:
    return "*" in allowed or name in allowed


@attrs.frozen
class Policy:
    name: str = "default"
    ref: str = "default@builtin"
    accept_scopes: frozenset[str] = frozenset({"*"})
    accept_identities: frozenset[str] = frozenset({"*"})
    accept_handlers: frozenset[str] = frozenset({"*"})
    trust_local_keys: bool = True
    trusted_keys: dict[str, tuple[str, ...]] = attrs.field(factory=dict)
    max_payload_bytes: int = 262_144
    max_children: int = 100
    child_handlers: frozenset[str] = frozenset({"*"})
    max_sleep_seconds: float = 2_592_000.0
    handler_timeout: float = 300.0
    max_traceback_bytes: int = 8192
    max_failures: int = 5
    max_steps: int = 100_000
    max_cannot_do: int = 32
    retry_base: float = 0.5
    retry_max: float = 300.0
    refine_may_relax: bool = False

    # -- loading ------------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str, *, source: str = "<policy>") -> Policy:
        """Parse a policy document; every problem becomes one clear PolicyError."""
        try:
            doc = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(f"{source}: not valid TOML: {exc}") from None
        sections = _sections(doc, source)
        accept, trust, limits = sections["accept"], sections["trust"], sections["limits"]
        thresholds, retry, refine = sections["thresholds"], sections["retry"], sections["refine"]
        name = doc.get("name", "default")
        try:
            check_name(name, "policy name")
        except CodecError as exc:
            raise PolicyError(f"{source}: {exc}") from None
        d = cls()

        def num(sec: dict[str, Any], sec_name: str, key: str, default: float, **kw: Any) -> Any:
            return _number(sec.get(key, default), f"{source}: [{sec_name}] {key}", **kw)

        keys = trust.get("keys", {})
        if not isinstance(keys, dict):
            raise PolicyError(f"{source}: [trust] keys must be a table of hex key = [scopes]")
        trusted = {str(k): tuple(sorted(_names(v, f"{source}: [trust] keys.{k}"))) for k, v in keys.items()}
        local = trust.get("local_keys", True)
        relax = refine.get("may_relax", False)
        if not isinstance(local, bool) or not isinstance(relax, bool):
            raise PolicyError(f"{source}: local_keys and may_relax must be true or false")
        policy = cls(
            name=name,
            ref=f"{name}@{hashlib.sha256(text.encode()).hexdigest()[:12]}",
            accept_scopes=_names(accept.get("trust_scopes", ["*"]), f"{source}: [accept] trust_scopes"),
            accept_identities=_names(accept.get("identities", ["*"]), f"{source}: [accept] identities"),
            accept_handlers=_names(accept.get("handlers", ["*"]), f"{source}: [accept] handlers"),
            trust_local_keys=local,
            trusted_keys=trusted,
            max_payload_bytes=num(limits, "limits", "max_payload_bytes", d.max_payload_bytes, integer=True, minimum=1),
            max_children=num(limits, "limits", "max_children", d.max_children, integer=True),
            child_handlers=_names(limits.get("child_handlers", ["*"]), f"{source}: [limits] child_handlers"),
            max_sleep_seconds=float(num(limits, "limits", "max_sleep_seconds", d.max_sleep_seconds)),
            handler_timeout=float(num(limits, "limits", "handler_timeout", d.handler_timeout, minimum=0.001)),
            max_traceback_bytes=num(limits, "limits", "max_traceback_bytes", d.max_traceback_bytes, integer=True),
            max_failures=num(thresholds, "thresholds", "max_failures", d.max_failures, integer=True, minimum=1),
            max_steps=num(thresholds, "thresholds", "max_steps", d.max_steps, integer=True, minimum=1),
            max_cannot_do=num(thresholds, "thresholds", "max_cannot_do", d.max_cannot_do, integer=True),
            retry_base=float(num(retry, "retry", "base_seconds", d.retry_base)),
            retry_max=float(num(retry, "retry", "max_seconds", d.retry_max)),
            refine_may_relax=relax,
        )
        return policy

    # -- evaluation (pure) ----------------------------------------------------------------

    def accepts(self, intent: Intent, context: Context) -> str | None:
        """Why this node must not run the object, or None if it may."""
        if not _match(self.accept_scopes, context.trust_scope):
            return f"trust scope {context.trust_scope!r} is not accepted"
        if not _match(self.accept_identities, context.identity):
            return f"identity {context.identity!r} is not accepted"
        if not _match(self.accept_handlers, intent.handler):
            return f"handler {intent.handler!r} is not accepted"
        return None

    def accepts_handler(self, handler: str) -> bool:
        return _match(self.accept_handlers, handler)

    def scope_filter(self) -> frozenset[str] | None:
        """Trust scopes to claim from, or None for any (used to filter claims in the store)."""
        return None if "*" in self.accept_scopes else self.accept_scopes

    def child_handler_allowed(self, handler: str) -> bool:
        return _match(self.child_handlers, handler)

    def backoff_ns(self, failures: int, error_class: str | None, latency_ns: int, base: float | None,
                   cap: float | None, jitter_seed: bytes) -> int:
        """Semantic backoff: the delay before retry number ``failures`` (1-based)."""
        # base and cap may come from an object's constraints, which no policy bounded: keep
        # them finite and within the policy's number range so the delay is a valid int64.
        base_s = _pacing(base, self.retry_base)
        cap_s = _pacing(cap, self.retry_max)
        delay = base_s * 2.0 ** min(max(failures - 1, 0), 40)
        if error_class == "rate_limit":
            delay *= 4
        elif error_class == "timeout":
            delay = max(delay, 2 * latency_ns / 1e9)
        delay = min(delay, cap_s)
        # Deterministic jitter in [0.75, 1.0] so many objects failing together spread out.
        fraction = 0.75 + 0.25 * (jitter_seed[0] / 255)
        return int(delay * fraction * 1e9)
