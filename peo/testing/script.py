"""The built-in scripted handler, the goals it runs (:func:`scripts`) and the simple model
of what its memory must be (:func:`expected_actions`). Only :func:`scripts` needs hypothesis."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..app import App
from ..core.model import Action, Continue, Done, Entry, Fail, Proposal, Sleep, Step, WaitSignal

if TYPE_CHECKING:
    from hypothesis import strategies as st

__all__ = [
    "NOISE_SIGNAL",
    "SCRIPT_HANDLER",
    "ModelEntry",
    "ScriptError",
    "detail",
    "expected_actions",
    "scripted_app",
    "scripts",
]

#: The built-in scripted handler's name (see :func:`scripted_app`).
SCRIPT_HANDLER = "peo.testing.script"
#: A signal nobody waits for: it must never wake an object or change its history.
NOISE_SIGNAL = "peo.testing.noise"


class ScriptError(Exception):
    """Raised by the scripted handler's ``["raise"]`` instruction."""


def scripts(
    *, max_ops: int = 6, signal_names: Sequence[str] = ("go", "approve")
) -> st.SearchStrategy[dict[str, Any]]:
    """Goals for :data:`SCRIPT_HANDLER`: ``{"ops": [...]}``, one instruction per step.

    ``["continue"]``, ``["sleep", seconds]``, ``["wait", signal name]``, ``["fail"]`` (a
    retryable Fail, then the next instruction), ``["raise"]`` (an exception, and the same
    instruction again: it fails until the failure threshold ends the object) and
    ``["done", result]``. Past the last instruction the object is done with the number
    of instructions as its result.
    """
    from ._hypothesis import st
    from .strategies import plain_values

    op = st.one_of(
        st.just(["continue"]),
        st.tuples(st.just("sleep"), st.sampled_from([0.0, 0.5, 30.0, 3600.0])).map(list),
        st.tuples(st.just("wait"), st.sampled_from(list(signal_names))).map(list),
        st.just(["fail"]),
        st.just(["raise"]),
        st.tuples(st.just("done"), plain_values(max_leaves=4)).map(list),
    )
    return st.fixed_dictionaries({"ops": st.lists(op, max_size=max_ops)})


def scripted_app(app: App | None = None) -> App:
    """An App with the scripted handler (:data:`SCRIPT_HANDLER`), added to ``app`` if given.

    Its state holds only a program counter, advanced with each proposal, so a step that is
    retried after a crash sees the same counter and does the same thing again.
    """
    app = app if app is not None else App()

    @app.handler(SCRIPT_HANDLER)
    def script(step: Step) -> Proposal:
        ops = step.goal.get("ops", [])
        pc = int(step.state.get("pc", 0))
        if pc >= len(ops):
            return Done(len(ops), state={"pc": pc})
        kind, *args = ops[pc]
        after = {"pc": pc + 1}
        if kind == "continue":
            return Continue(state=after)
        if kind == "sleep":
            return Sleep(seconds=float(args[0]), state=after)
        if kind == "wait":
            return WaitSignal(str(args[0]), state=after)
        if kind == "fail":
            return Fail("scripted failure", state=after)
        if kind == "raise":
            raise ScriptError(f"scripted exception at instruction {pc}")
        if kind == "done":
            return Done(args[0], state=after)
        raise ScriptError(f"unknown instruction {kind!r}")

    return app


ModelEntry = tuple[Action, str | None]


def expected_actions(ops: Sequence[Sequence[Any]], *, max_failures: int) -> tuple[list[ModelEntry], Any]:
    """What a scripted object's memory after entry 0 must be, and its result if done.

    Each item is (action, detail): the detail is the execute/dormancy outcome status
    ("ok", "failed"), the reentry trigger ("time", "signal") or the terminate reason.
    This is the simple model the machine compares every chain with.
    """
    out: list[ModelEntry] = []
    consecutive = 0
    pc = 0
    while True:
        if pc >= len(ops):
            out.append((Action.TERMINATE, "done"))
            return out, len(ops)
        kind = ops[pc][0]
        if kind == "continue":
            out.append((Action.EXECUTE, "ok"))
            consecutive, pc = 0, pc + 1
        elif kind in ("sleep", "wait"):
            out += [(Action.DORMANCY, "ok"), (Action.REENTRY, "time" if kind == "sleep" else "signal")]
            consecutive, pc = 0, pc + 1
        elif kind == "done":
            out.append((Action.TERMINATE, "done"))
            return out, ops[pc][1]
        else:  # fail, raise: back off, unless this failure crosses the threshold
            consecutive += 1
            if consecutive >= max_failures:
                out.append((Action.TERMINATE, "failed: failure threshold exceeded"))
                return out, None
            out += [(Action.DORMANCY, "failed"), (Action.REENTRY, "time")]
            if kind == "fail":
                pc += 1


def detail(entry: Entry) -> str | None:
    """An entry as the model describes it (see :func:`expected_actions`)."""
    o = entry.outcome
    if entry.action is Action.EXECUTE or entry.action is Action.DORMANCY:
        return str(o.get("status", "ok"))
    if entry.action is Action.REENTRY:
        return str(o.get("trigger"))
    if entry.action is Action.TERMINATE:
        return str(o.get("reason"))
    return None
