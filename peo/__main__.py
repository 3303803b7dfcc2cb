"""``python -m peo``: the same command line as the ``peo`` console script."""

from __future__ import annotations

from .cli import entry

if __name__ == "__main__":
    entry()
