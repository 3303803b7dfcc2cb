"""Durable functions: an agent written as ordinary async code on top of the handler cycle.

``@app.function("name")`` registers ``async def f(run: peo.Run, **goal)``; each operation it
awaits (``run.step``, ``run.sleep``, ``run.wait_signal``) is one cycle and one signed entry,
and its result is recorded in the object's working state, so any node can resume it.
See docs/concepts.md, "Durable functions".
"""

from __future__ import annotations

from .children import ChildCall
from .handler import FunctionFn, function_handler
from .run import Run

__all__ = ["ChildCall", "FunctionFn", "Run", "function_handler"]
