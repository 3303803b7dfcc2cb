"""``peo demo``: the fleet demo (:mod:`peo.demo`), with the options after ``demo``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .parser import add_verb, positive_seconds

if TYPE_CHECKING:
    from .parser import Subparsers

__all__ = ["cmd_demo", "register"]


def cmd_demo(args: argparse.Namespace) -> int:
    """Synchronous on purpose: the demo runs its own event loop and node processes."""
    try:
        from .. import demo
    except ImportError as exc:
        print(f"peo: error: the demo is not available in this installation ({exc})", file=sys.stderr)
        return 1
    argv = [*(["--store", args.store] if args.store is not None else []),
            *(["--no-kill"] if args.no_kill else []),
            *(["--timeout", f"{args.timeout:g}"] if args.timeout is not None else []),
            *args.demo_args]
    try:
        return int(demo.main(argv) or 0)
    except SystemExit as exc:  # the demo's own argparse (--help, bad option)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)


def _demo_parser(sub: Subparsers) -> None:
    sp = add_verb(sub, "demo", "run the demo: a fleet survives a node killed with SIGKILL",
                  "Run a fleet of sample agents on two node processes on the store, kill one with SIGKILL mid-run, "
                  "watch the other take over; ends by verifying every chain. The demo's handlers (research, "
                  "approval, planner, subtask, ...) are in peo.demo:app.",
                  ["peo demo", "peo demo --store sqlite:///demo.db --no-kill", "peo demo --timeout 120"], cmd_demo)
    sp.add_argument("--no-kill", action="store_true", help="do not kill a node (for comparison)")
    sp.add_argument("--timeout", type=positive_seconds, metavar="SECONDS",
                    help="give up after this many seconds (default 55)")
    sp.set_defaults(demo_args=[])


_PARSERS = {"demo": _demo_parser}


def register(sub: Subparsers, verb: str) -> None:
    _PARSERS[verb](sub)
