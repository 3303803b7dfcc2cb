"""Hypothesis strategies for peo values: plain values, intents and proposals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..core.model import (
    CannotDo,
    Constraints,
    Continue,
    Done,
    Fail,
    Intent,
    Proposal,
    Refine,
    Sleep,
    WaitSignal,
)
from ._hypothesis import st

__all__ = ["intents", "plain_values", "proposals"]


def plain_values(*, max_leaves: int = 8) -> st.SearchStrategy[Any]:
    """Values a goal, a state update, a signal payload or a result may hold, chosen so
    that they come back equal after a round trip through the store (no NaN, lists not
    tuples, string keys)."""
    scalars: st.SearchStrategy[Any] = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(allow_nan=False),
        st.text(max_size=16),
        st.binary(max_size=16),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4),
            st.dictionaries(st.text(max_size=8), inner, max_size=4),
        ),
        max_leaves=max_leaves,
    )


def _names() -> st.SearchStrategy[str]:
    return st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.-0123456789", min_size=1, max_size=12).filter(
        lambda s: s[0].isalpha()
    )


def intents(
    handlers: Sequence[str] | st.SearchStrategy[str] | None = None,
    goals: st.SearchStrategy[dict[str, Any]] | None = None,
) -> st.SearchStrategy[Intent]:
    """``peo.Intent`` values: a handler from ``handlers`` (names or a strategy), a goal
    (default: a small dict of plain values) and sometimes constraints."""
    if handlers is None:
        handler_st: st.SearchStrategy[str] = _names()
    elif isinstance(handlers, st.SearchStrategy):
        handler_st = handlers
    else:
        handler_st = st.sampled_from(list(handlers))
    goal_st = goals if goals is not None else st.dictionaries(st.text(max_size=8), plain_values(), max_size=3)
    constraints = st.builds(
        Constraints,
        max_failures=st.none() | st.integers(1, 10),
        max_steps=st.none() | st.integers(1, 1000),
    )
    return st.builds(Intent, handler_st, goal_st, constraints)


def proposals(
    *,
    signal_names: Sequence[str] = ("go", "approve"),
    children: st.SearchStrategy[Intent] | None = None,
    max_sleep: float = 3600.0,
) -> st.SearchStrategy[Proposal]:
    """What a handler may return. ``Delegate`` is drawn only when ``children`` (a
    strategy of intents, e.g. :func:`intents`) is given."""
    from ..core.model import Delegate

    state = st.none() | st.dictionaries(st.text(max_size=8), plain_values(max_leaves=4), max_size=3)
    options: list[st.SearchStrategy[Proposal]] = [
        st.builds(Continue, state=state),
        st.builds(Done, plain_values(), state=state),
        st.builds(Sleep, seconds=st.floats(0, max_sleep), state=state),
        st.builds(WaitSignal, st.sampled_from(list(signal_names)),
                  timeout=st.none() | st.floats(0, max_sleep), state=state),
        st.builds(Fail, st.text(max_size=20), retryable=st.booleans(), state=state),
        st.builds(CannotDo, _names(), st.text(max_size=20), state=state),
        st.builds(Refine, goal=st.dictionaries(st.text(max_size=8), plain_values(max_leaves=4), max_size=3),
                  state=state),
    ]
    if children is not None:
        options.append(st.builds(Delegate, st.lists(children, min_size=1, max_size=3), wait=st.booleans(),
                                 state=state))
    return st.one_of(options)
