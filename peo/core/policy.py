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
from .agent_rules import AgentRules, parse_agent_rules
from .codec import check_name
from .crypto import key_id_of
from .model import Constraints, Context, Intent

__all__ = ["Policy", "SignalRule"]

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


def _fmt(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _pacing(value: float | None, default: float) -> float:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return default
    return min(max(float(value), 0.0), _MAX_NUMBER)


#: The tables a policy document may have, and the keys each may hold.
_SECTIONS: dict[str, tuple[str, ...]] = {
    "accept": ("trust_scopes", "identities", "handlers", "signers"),
    "trust": ("local_keys", "keys"),
    "limits": ("max_payload_bytes", "max_children", "child_handlers", "max_sleep_seconds", "handler_timeout",
               "max_traceback_bytes", "max_depth", "max_descendants", "max_state_bytes"),
    "thresholds": ("max_failures", "max_steps", "max_cannot_do"),
    "retry": ("base_seconds", "max_seconds"),
    "refine": ("may_relax",),
    "signals": ("max_inbox", "batch", "unsigned", "rules"),
}

_RULE_KEYS = ("name", "objects", "senders")
_HEX = frozenset("0123456789abcdef")


def _sections(doc: dict[str, Any], source: str) -> dict[str, dict[str, Any]]:
    """Each known table of a parsed document (empty if absent); unknown tables or keys are errors."""
    unknown = set(doc) - {"name", "agents", "prices", *_SECTIONS}
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


def _is_hex(text: str, length: int) -> bool:
    return len(text) == length and set(text.lower()) <= _HEX


@attrs.frozen
class SignalRule:
    """Who may send the signal ``name`` ("*": any) to objects in the trust scopes ``objects``
    ("*": any): ``senders`` are trust scopes the sender's key must be trusted for ("*": any
    trusted key), or hex public keys (lower case) of senders allowed by key. The first rule
    that matches a signal decides; :meth:`Policy.signal_senders` finds it."""

    name: str
    objects: frozenset[str]
    senders: frozenset[str]

    @property
    def keys(self) -> frozenset[str]:
        """The senders named by hex public key."""
        return frozenset(s for s in self.senders if _is_hex(s, 64))

    @property
    def key_ids(self) -> frozenset[str]:
        """The key ids (as entries and signals record a signer) of :attr:`keys`."""
        return frozenset(key_id_of(bytes.fromhex(k)) for k in self.keys)

    @property
    def scopes(self) -> frozenset[str]:
        """The senders named by trust scope."""
        return self.senders - self.keys

    def matches(self, name: str, scope: str) -> bool:
        return (self.name == "*" or self.name == name) and _match(self.objects, scope)


def _signal_rules(value: Any, where: str) -> tuple[SignalRule, ...]:
    """``[signals] rules``: an array of tables ``{ name, objects, senders }``."""
    if not isinstance(value, list):
        raise PolicyError(f"{where} must be an array of tables {{ name, objects, senders }}")
    rules = []
    for i, raw in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(raw, dict):
            raise PolicyError(f"{at} must be a table {{ name, objects, senders }}")
        missing = [k for k in _RULE_KEYS if k not in raw]
        extra = sorted(set(raw) - set(_RULE_KEYS))
        if missing or extra:
            raise PolicyError(f"{at} must have exactly the keys name, objects and senders"
                              f" ({'missing ' + ', '.join(missing) if missing else 'unknown ' + ', '.join(extra)})")
        name = raw["name"]
        try:
            check_name(name, f"{at} name")
        except CodecError as exc:
            raise PolicyError(str(exc)) from None
        senders = _names(raw["senders"], f"{at} senders")
        # A 64-digit hex sender is a public key: kept in lower case so that it compares equal
        # however it was written.
        senders = frozenset(s.lower() if _is_hex(s, 64) else s for s in senders)
        rules.append(SignalRule(name, _names(raw["objects"], f"{at} objects"), senders))
    return tuple(rules)


def _signers(value: Any, where: str) -> frozenset[str]:
    """``[accept] signers``: "*", key ids (16 hex digits) or public keys (64), kept as key ids."""
    names = _names(value, where)
    out = set()
    for name in names:
        if name == "*" or _is_hex(name, 16):
            out.add(name.lower())
        elif _is_hex(name, 64):
            out.add(key_id_of(bytes.fromhex(name)))
        else:
            raise PolicyError(f"{where}: {name!r} is neither \"*\", a key id (16 hex digits) nor a public key (64)")
    return frozenset(out)


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise PolicyError(f"{where} must be true or false")
    return value


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
    # Totals: how deep a tree of delegations may grow and how many objects it may hold in
    # all, and how large one object's folded state may become.
    max_depth: int = 32
    max_descendants: int = 10_000
    max_state_bytes: int = 16 * 1024 * 1024
    accept_signers: frozenset[str] = frozenset({"*"})  # key ids that may sign an object's entry 0
    max_inbox: int = 1000  # signals waiting per object
    signal_batch: int = 64  # most signals delivered to one step
    accept_unsigned_signals: bool = False
    signal_rules: tuple[SignalRule, ...] = ()
    # What agents may do: tools, delegations, approvals, budgets, prices (peo.core.agent_rules).
    agents: AgentRules = attrs.field(factory=AgentRules)

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
        signals = sections["signals"]
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
            max_depth=num(limits, "limits", "max_depth", d.max_depth, integer=True),
            max_descendants=num(limits, "limits", "max_descendants", d.max_descendants, integer=True),
            max_state_bytes=num(limits, "limits", "max_state_bytes", d.max_state_bytes, integer=True, minimum=1),
            accept_signers=_signers(accept.get("signers", ["*"]), f"{source}: [accept] signers"),
            max_inbox=num(signals, "signals", "max_inbox", d.max_inbox, integer=True, minimum=1),
            signal_batch=num(signals, "signals", "batch", d.signal_batch, integer=True, minimum=1),
            accept_unsigned_signals=_flag(signals.get("unsigned", False), f"{source}: [signals] unsigned"),
            signal_rules=_signal_rules(signals.get("rules", []), f"{source}: [signals] rules"),
            agents=parse_agent_rules(doc.get("agents"), doc.get("prices"), source),
        )
        return policy

    # -- evaluation (pure) ----------------------------------------------------------------

    def accepts(self, intent: Intent, context: Context, signer: str | None = None) -> str | None:
        """Why this node must not run the object, or None if it may.

        ``signer`` is the key id that signed the object's entry 0: unlike the claimed
        ``identity``, it is bound to a key. Left out (None), only ``[accept] signers = ["*"]``
        accepts the object.
        """
        if not _match(self.accept_scopes, context.trust_scope):
            return f"trust scope {context.trust_scope!r} is not accepted"
        if not _match(self.accept_identities, context.identity):
            return f"identity {context.identity!r} is not accepted"
        if not _match(self.accept_handlers, intent.handler):
            return f"handler {intent.handler!r} is not accepted"
        if "*" not in self.accept_signers and signer not in self.accept_signers:
            return f"signer key {signer} is not accepted"
        return None

    def constraint_problem(self, constraints: Constraints) -> str | None:
        """Which of ``constraints`` is above this policy's ceiling, in one sentence, or None.

        The cycle holds every object to the smaller of its constraint and the policy's (a
        higher one is never used), so a submit that asks for more is refused up front
        instead of silently getting less. A retry delay longer than the policy's longest
        (``retry_base`` or ``retry_max``) is above the ceiling; a slower first retry than
        the policy's own ``base_seconds`` is not: waiting longer is not a looser limit.
        """
        checks = (
            ("max_steps", constraints.max_steps, self.max_steps, "[thresholds] max_steps"),
            ("max_failures", constraints.max_failures, self.max_failures, "[thresholds] max_failures"),
            ("retry_base", constraints.retry_base, self.retry_max, "[retry] max_seconds"),
            ("retry_max", constraints.retry_max, self.retry_max, "[retry] max_seconds"),
        )
        for name, value, ceiling, key in checks:
            if isinstance(value, int | float) and not isinstance(value, bool) and value > ceiling:
                return f"{name} {_fmt(value)} is above the policy's ceiling of {_fmt(ceiling)} " \
                       f"(policy {self.name}, {key})"
        return None

    def signal_rule(self, name: str, scope: str) -> SignalRule | None:
        """The first ``[signals] rules`` entry for the signal ``name`` sent to an object in
        trust scope ``scope``, or None."""
        return next((rule for rule in self.signal_rules if rule.matches(name, scope)), None)

    def signal_senders(self, name: str, scope: str) -> frozenset[str] | None:
        """Who may send the signal ``name`` to an object in trust scope ``scope``: the senders
        (trust scopes, hex public keys) of the first rule that matches, or None if none does;
        then the default applies: the sender's key must be trusted for the object's scope."""
        rule = self.signal_rule(name, scope)
        return rule.senders if rule is not None else None

    def accepts_handler(self, handler: str) -> bool:
        return _match(self.accept_handlers, handler)

    def scope_filter(self) -> frozenset[str] | None:
        """Trust scopes to claim from, or None for any (used to filter claims in the store)."""
        return None if "*" in self.accept_scopes else self.accept_scopes

    def child_handler_allowed(self, handler: str) -> bool:
        return _match(self.child_handlers, handler)

    def backoff_ns(self, failures: int, error_class: str | None, latency_ns: int, base: float | None,
                   cap: float | None, jitter_seed: bytes) -> int:
        """Semantic backoff: the delay before retry number ``failures`` (1-based), never
        longer than the policy's ``retry_max``."""
        # base and cap come from an object's constraints or its handler's Retry: keep them
        # finite, and no delay longer than the policy's own longest (its ceiling: an object
        # may ask for a shorter cap, never a longer one). A base above the cap is the cap.
        base_s = _pacing(base, self.retry_base)
        cap_s = min(_pacing(cap, self.retry_max), self.retry_max)
        delay = base_s * 2.0 ** min(max(failures - 1, 0), 40)
        if error_class == "rate_limit":
            delay *= 4
        elif error_class == "timeout":
            delay = max(delay, 2 * latency_ns / 1e9)
        delay = min(delay, cap_s)
        # Deterministic jitter in [0.75, 1.0] so many objects failing together spread out.
        fraction = 0.75 + 0.25 * (jitter_seed[0] / 255)
        return int(delay * fraction * 1e9)
