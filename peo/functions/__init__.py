"""Durable functions: an agent written as ordinary async code on top of the handler cycle.

``@app.function("name")`` registers ``async def f(run: peo.Run, **goal)``; each operation it
awaits (``run.step``, ``run.sleep``, ``run.wait_until``, ``run.wait_signal``, ``run.gather``,
``run.refine``) is one cycle and one signed entry, and its result is recorded in the object's
working state, so any node can resume it. ``run.progress(value)`` is recorded with whatever
entry ends the cycle; :func:`progress_of` reads it back. See docs/concepts.md, "Durable
functions".
"""

from __future__ import annotations

from .children import ChildCall
from .handler import FunctionFn, function_handler
from .records import MAX_PROGRESS_BYTES, PROGRESS_KEY, progress_of
from .run import Run

__all__ = ["MAX_PROGRESS_BYTES", "PROGRESS_KEY", "ChildCall", "FunctionFn", "Run", "function_handler", "progress_of"]
