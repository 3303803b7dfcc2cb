"""``peo fleet``: run N ``peo node`` worker processes and restart a dead one (tier 1 of
self-healing, restart in place; :mod:`peo.healing.supervisor`).

The node options are ``peo node``'s own: they are copied from the parser that
:func:`peo.cli.node.register` builds, checked here the way ``peo node`` checks them, and
handed to every worker exactly as typed. A node option added to ``peo node`` is accepted
by ``peo fleet`` without a change here.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import re
import signal
import socket
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import PeoError
from .parser import Parser, add_verb, fail, positive_int, positive_seconds

if TYPE_CHECKING:
    from .parser import Subparsers

__all__ = ["cmd_fleet", "default_prefix", "node_argv", "register"]

#: Namespace attribute that lists the node options copied into ``peo fleet`` (dest, option, kind).
_FORWARD = "fleet_forward"
#: Node options that ``peo fleet`` does not pass through: the global ones (passed before the
#: verb instead), help, and the node id (one per worker, from --node-id-prefix).
_NOT_FORWARDED = {"help", "store", "verbose", "node_id"}
_MAX_WORKERS = 1024
_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


def default_prefix() -> str:
    """The host name (its first label, cleaned to letters, digits, ``.``, ``_`` and ``-``)."""
    host = socket.gethostname().split(".")[0]
    cleaned = re.sub(r"[^A-Za-z0-9_-]+", "-", host).strip("-_")[:80]
    return cleaned or "node"


def _node_actions() -> list[argparse.Action]:
    """The options of ``peo node``, as its own module defines them."""
    from . import node

    scratch: argparse.ArgumentParser = Parser(prog="peo")
    sub = scratch.add_subparsers(dest="verb")
    node.register(sub, "node")
    node_parser = sub.choices["node"]
    return [a for a in node_parser._actions if a.option_strings and a.dest not in _NOT_FORWARDED]


def _raw(convert: Callable[[str], Any] | None) -> Callable[[str], str]:
    """An argparse type that checks a value as ``convert`` does and keeps the text as typed."""

    def check(value: str) -> str:
        if convert is not None:
            try:
                convert(value)  # raises ArgumentTypeError (or ValueError) as in `peo node`
            except PeoError as exc:  # a check that says what is wrong its own way: still a usage error
                raise argparse.ArgumentTypeError(str(exc)) from None
        return value

    check.__name__ = getattr(convert, "__name__", "value")
    return check


def _add_node_options(sp: argparse.ArgumentParser) -> None:
    forward: list[tuple[str, str, bool]] = []  # (dest in the fleet's namespace, option, takes no value)
    group = sp.add_argument_group("node options (as in `peo node`; passed to every worker)")
    for action in _node_actions():
        mine = copy.copy(action)
        mine.dest = f"node_{action.dest}"
        flag = action.nargs == 0
        if not flag:
            mine.type = _raw(action.type if callable(action.type) else None)
        group._add_action(mine)
        forward.append((mine.dest, action.option_strings[-1], flag))
    sp.set_defaults(**{_FORWARD: forward})


def node_argv(args: argparse.Namespace, node_id: str) -> list[str]:
    """The command line of one worker: ``python -m peo [--store URL] [-v] node ... --node-id ID``."""
    argv = [sys.executable, "-m", "peo"]
    if getattr(args, "store", None) is not None:
        argv += ["--store", args.store]
    if getattr(args, "verbose", 0):
        argv.append("-" + "v" * min(int(args.verbose), 2))
    argv.append("node")
    for dest, option, flag in getattr(args, _FORWARD):
        value = getattr(args, dest, None)
        if flag:
            if value:
                argv.append(option)
        elif isinstance(value, list):  # an option given more than once (action="append")
            for item in value:
                argv += [option, item]
        elif value is not None:
            argv += [option, value]
    return [*argv, "--node-id", node_id]


async def cmd_fleet(args: argparse.Namespace) -> int:
    from ..healing.supervisor import Backoff, SubprocessSpawner, Supervisor

    prefix = args.node_id_prefix if args.node_id_prefix is not None else default_prefix()
    if not _PREFIX.match(prefix):
        fail(f"--node-id-prefix {prefix!r}: use letters, digits, '.', '_' and '-' (at most 100)")
    if args.workers > _MAX_WORKERS:
        fail(f"--workers {args.workers}: at most {_MAX_WORKERS} worker processes on one machine")
    if args.max_backoff < args.initial_backoff:
        fail(f"--max-backoff {args.max_backoff:g} is shorter than --initial-backoff {args.initial_backoff:g}")
    if not getattr(args, "node_app", None) and not getattr(args, "node_profile", None):
        fail("which handlers should the workers run? give --app MODULE:ATTR or --profile FILE")
    names = [f"{prefix}-{i}" for i in range(1, args.workers + 1)]
    backoff = Backoff(initial=args.initial_backoff, maximum=args.max_backoff, reset_after=args.reset_after)
    supervisor = Supervisor(names, SubprocessSpawner(lambda name: node_argv(args, name)),
                            backoff=backoff, grace=args.grace)
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, supervisor.stop)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            pass
    mode = " until idle" if getattr(args, "node_until_idle", False) else ""
    print(f"peo fleet: supervising {len(names)} worker(s) {names[0]}..{names[-1]}{mode}; "
          f"restart backoff {backoff.initial:g} s doubling to {backoff.maximum:g} s, reset after "
          f"{backoff.reset_after:g} s up; SIGTERM/SIGINT stops them (SIGKILL after {args.grace:g} s)",
          file=sys.stderr, flush=True)
    try:
        return await supervisor.run()
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def _fleet_parser(sub: Subparsers) -> None:
    sp = add_verb(
        sub, "fleet", "run and supervise N worker nodes",
        "Run N `peo node` worker processes on this machine and keep them running (self-healing, tier 1: "
        "restart in place). Every worker gets the node options given here and its own node id, PREFIX-1 .. "
        "PREFIX-N (PREFIX defaults to the host name; a restarted worker keeps its id, so it takes its own "
        "leases back at once). A worker that exits with a non-zero status or is killed (a crash, SIGKILL, "
        "an out-of-memory kill, a configuration that fails at start) is restarted after a delay that "
        "doubles from --initial-backoff to --max-backoff and starts over once the worker has stayed up "
        "--reset-after seconds; each restart is logged on stderr with the exit status and the delay. A "
        "worker that exits 0 (e.g. with --until-idle) is not restarted; the fleet exits 0 once all have. "
        "SIGTERM or SIGINT stops the workers gracefully (SIGTERM, then SIGKILL after --grace seconds) "
        "and exits 0; a second signal is passed on (the nodes then abandon the steps in flight). "
        "Run two fleets on one host with different prefixes.",
        ["peo fleet --workers 4 --app myagents:app",
         "peo --store postgresql://peo@db:5432/agents fleet --workers 8 --profile nodes/prod.toml "
         "--node-id-prefix web1",
         "peo fleet --workers 2 --app myagents:app --until-idle --concurrency 16"],
        cmd_fleet)
    sp.add_argument("--workers", type=positive_int, metavar="N", required=True, help="worker processes to run")
    sp.add_argument("--node-id-prefix", metavar="PREFIX",
                    help="worker node ids are PREFIX-1 .. PREFIX-N (default: the host name)")
    sp.add_argument("--initial-backoff", type=positive_seconds, default=0.5, metavar="SECONDS",
                    help="delay before the first restart of a crashed worker (default 0.5)")
    sp.add_argument("--max-backoff", type=positive_seconds, default=30.0, metavar="SECONDS",
                    help="longest delay between restarts in a crash loop (default 30)")
    sp.add_argument("--reset-after", type=positive_seconds, default=60.0, metavar="SECONDS",
                    help="a worker up this long is healthy: its next crash starts the backoff over (default 60)")
    sp.add_argument("--grace", type=positive_seconds, default=30.0, metavar="SECONDS",
                    help="after SIGTERM, how long the workers get to finish their steps before SIGKILL (default 30)")
    _add_node_options(sp)


_PARSERS = {"fleet": _fleet_parser}


def register(sub: Subparsers, verb: str) -> None:
    _PARSERS[verb](sub)
