"""The hypothesis names the property-based helpers use, imported in one place so that a
missing development extra fails with one clear message (and only for the parts that need
it: :mod:`peo.testing.faults`, :mod:`peo.testing.chaos` and ``FakeClock`` do not)."""

from __future__ import annotations

try:
    from hypothesis import HealthCheck
    from hypothesis import settings as Settings
    from hypothesis import strategies as st
    from hypothesis.stateful import (
        RuleBasedStateMachine,
        invariant,
        precondition,
        rule,
        run_state_machine_as_test,
    )
except ImportError as exc:  # pragma: no cover - hypothesis is a development extra
    raise ImportError(
        "peo.testing needs hypothesis: pip install 'peo[dev]' (or pip install hypothesis)"
    ) from exc

__all__ = [
    "HealthCheck",
    "RuleBasedStateMachine",
    "Settings",
    "invariant",
    "precondition",
    "rule",
    "run_state_machine_as_test",
    "st",
]
