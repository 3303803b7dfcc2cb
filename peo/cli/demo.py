"""``peo demo``: the fleet demo (:mod:`peo.demo`), with the options after ``demo``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .parser import add_verb

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
    argv = list(args.demo_args)
    if args.store is not None:
        argv = ["--store", args.store, *argv]
    try:
        return int(demo.main(argv) or 0)
    except SystemExit as exc:  # the demo's own argparse (--help, bad option)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)


def _demo_parser(sub: Subparsers) -> None:
    sp = add_verb(sub, "demo", "run the demo: a fleet survives a node killed with SIGKILL",
                  "Run a fleet of sample agents on two node processes on the store, kill one with SIGKILL mid-run, "
                  "watch the other take over; ends by verifying every chain. Options after `demo` go to the demo "
                  "(e.g. --no-kill, --timeout SECONDS).",
                  ["peo demo", "peo --store sqlite:///demo.db demo"], cmd_demo)
    sp.set_defaults(demo_args=[])


_PARSERS = {"demo": _demo_parser}


def register(sub: Subparsers, verb: str) -> None:
    _PARSERS[verb](sub)
