"""A failure's traceback as it is recorded in memory: without the frames of the code that
called the user's (they say nothing about the user's bug)."""

from __future__ import annotations

import traceback
from collections.abc import Sequence

__all__ = ["traceback_without"]


def traceback_without(exc: BaseException, directories: Sequence[str]) -> str:
    """The traceback of ``exc``, leaving out frames whose file is under one of ``directories``
    (each ending with a path separator, or a prefix that cannot match a sibling)."""
    prefixes = tuple(directories)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(prefixes)]
    return "".join(["Traceback (most recent call last):\n", *traceback.format_list(frames),
                    *traceback.format_exception_only(exc)])
