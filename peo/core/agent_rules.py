"""What a node's policy lets an agent do (pure): tools, delegations, approvals, budgets.

The ``[agents]`` table of a policy document holds the rules of every trust scope, and
``[agents.scopes.NAME]`` the rules of one scope, key by key over them; ``[prices]`` gives
each model's price per million tokens, so that a budget can be set in a currency::

    [agents]
    tools = ["search", "write_report"]     # tools an agent may call ("*": any it declares)
    handlers = ["researcher"]              # handlers and agents it may delegate to
    approval = ["send_email"]              # tools that need a human's approval besides
                                           # those declared with needs_approval=True
    max_model_calls = 50
    max_tokens = 200000
    max_cost = 2.0                          # in the currency of [prices]
    max_seconds = 86400                     # wall time since the object was created
    max_children = 10

    [agents.scopes.untrusted]
    tools = ["search"]
    max_cost = 0.1

    [prices]
    "gpt-4o-mini" = { input = 0.15, output = 0.60 }

The agent's loop asks :meth:`ScopeRules.budget_problem` before each model call, with what
its memory records so far: a budget is enforced before the call, never after.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import attrs

from ..errors import PolicyError

__all__ = ["AgentRules", "ScopeRules", "Usage", "parse_agent_rules"]

_KEYS = ("tools", "handlers", "approval", "max_model_calls", "max_tokens", "max_cost", "max_seconds",
         "max_children")


def _match(patterns: frozenset[str], name: str) -> bool:
    return "*" in patterns or name in patterns


@attrs.frozen
class Usage:
    """What an agent has used so far, as its memory records it."""

    model_calls: int = 0
    tokens: int = 0
    cost: float = 0.0
    seconds: float = 0.0
    children: int = 0


@attrs.frozen
class ScopeRules:
    """The rules for the agents of one trust scope."""

    tools: frozenset[str] = frozenset({"*"})
    handlers: frozenset[str] = frozenset({"*"})
    approval: frozenset[str] = frozenset()
    max_model_calls: int | None = 100
    max_tokens: int | None = None
    max_cost: float | None = None
    max_seconds: float | None = None
    max_children: int | None = 20

    def tool_allowed(self, name: str) -> bool:
        return _match(self.tools, name)

    def handler_allowed(self, name: str) -> bool:
        return _match(self.handlers, name)

    def needs_approval(self, name: str) -> bool:
        return _match(self.approval, name)

    def budget_problem(self, used: Usage, *, children: int = 0) -> str | None:
        """Why one more model call (or ``children`` more children) would break a budget."""
        checks: tuple[tuple[str, float, float | None, str], ...] = (
            ("model calls", used.model_calls + (0 if children else 1), self.max_model_calls, "max_model_calls"),
            ("tokens", used.tokens, self.max_tokens, "max_tokens"),
            ("cost", used.cost, self.max_cost, "max_cost"),
            ("wall time (seconds)", used.seconds, self.max_seconds, "max_seconds"),
            ("children", used.children + children, self.max_children, "max_children"),
        )
        for what, value, limit, key in checks:
            if limit is not None and value > limit:
                shown = f"{value:.4g}" if isinstance(value, float) else str(value)
                return f"budget exhausted: {what} {shown} past the policy's {key} = {limit:g}"
        return None


@attrs.frozen
class AgentRules:
    """Every scope's rules and the price table."""

    default: ScopeRules = ScopeRules()
    scopes: Mapping[str, ScopeRules] = attrs.field(factory=dict)
    prices: Mapping[str, tuple[float, float]] = attrs.field(factory=dict)  # model -> per 1M tokens (in, out)

    def for_scope(self, scope: str) -> ScopeRules:
        return self.scopes.get(scope, self.default)

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """The price of one call (0 for a model the table does not list)."""
        price = self.prices.get(model)
        if price is None:
            return 0.0
        return (prompt_tokens * price[0] + completion_tokens * price[1]) / 1_000_000


def _names(value: object, where: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"{where} must be a list of names")
    return frozenset(value)


def _limit(value: object, where: str, *, integer: bool) -> Any:
    ok = not isinstance(value, bool) and (isinstance(value, int) if integer else isinstance(value, int | float))
    if not ok or not math.isfinite(float(value)) or float(value) < 0:  # type: ignore[arg-type]
        kind = "a non-negative integer" if integer else "a non-negative number"
        raise PolicyError(f"{where} must be {kind}")
    return value


def _scope(table: Mapping[str, Any], base: ScopeRules, where: str) -> ScopeRules:
    unknown = set(table) - set(_KEYS) - {"scopes"}
    if unknown:
        raise PolicyError(f"{where}: unknown key(s): {', '.join(sorted(unknown))} (known: {', '.join(_KEYS)})")
    changes: dict[str, Any] = {}
    for key in ("tools", "handlers", "approval"):
        if key in table:
            changes[key] = _names(table[key], f"{where} {key}")
    for key in ("max_model_calls", "max_tokens", "max_children"):
        if key in table:
            changes[key] = _limit(table[key], f"{where} {key}", integer=True)
    for key in ("max_cost", "max_seconds"):
        if key in table:
            changes[key] = float(_limit(table[key], f"{where} {key}", integer=False))
    return attrs.evolve(base, **changes)


def parse_agent_rules(agents: object, prices: object, source: str) -> AgentRules:
    """The ``[agents]`` and ``[prices]`` tables of a policy document (either may be absent)."""
    agents = {} if agents is None else agents
    prices = {} if prices is None else prices
    if not isinstance(agents, dict):
        raise PolicyError(f"{source}: [agents] must be a table")
    if not isinstance(prices, dict):
        raise PolicyError(f"{source}: [prices] must be a table of model = {{ input = N, output = N }}")
    default = _scope(agents, ScopeRules(), f"{source}: [agents]")
    scopes_table = agents.get("scopes", {})
    if not isinstance(scopes_table, dict):
        raise PolicyError(f"{source}: [agents.scopes] must be a table of scope = {{ ... }}")
    scopes = {}
    for name, table in scopes_table.items():
        if not isinstance(table, dict):
            raise PolicyError(f"{source}: [agents.scopes.{name}] must be a table")
        scopes[str(name)] = _scope(table, default, f"{source}: [agents.scopes.{name}]")
    priced: dict[str, tuple[float, float]] = {}
    for model, price in prices.items():
        where = f"{source}: [prices] {model!r}"
        if not isinstance(price, dict) or set(price) - {"input", "output"}:
            raise PolicyError(f"{where} must be {{ input = N, output = N }} (per million tokens)")
        priced[str(model)] = (float(_limit(price.get("input", 0), f"{where} input", integer=False)),
                             float(_limit(price.get("output", 0), f"{where} output", integer=False)))
    return AgentRules(default, scopes, priced)
