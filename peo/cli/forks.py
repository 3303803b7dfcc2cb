"""``peo fork``: a new object that starts from another one's state at one version."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .parser import EXAMPLE_ID, add_verb, fail, open_client, parse_json, seq_arg, text_arg
from .render import clean

if TYPE_CHECKING:
    from .parser import Subparsers

__all__ = ["cmd_fork", "register"]


async def cmd_fork(args: argparse.Namespace) -> int:
    goal = parse_json(args.goal, "--goal") if args.goal is not None else None
    if goal is not None and not isinstance(goal, dict):
        fail("--goal must be a JSON object, e.g. '{\"steps\": 3}'")
    async with open_client(args, create=False, identity=args.identity) as client:
        # Unknown id: NotFoundError (exit 1); a parent that does not verify: IntegrityError
        # (exit 1, nothing written); seq past the head, a deleted parent: UsageError (exit 2).
        oid = await client.fork(args.id, seq=args.seq, goal=goal)
        info = await client.get(oid)
    origin = info.memory[0].outcome["fork"]
    with_goal = " with a new goal" if goal is not None else ""
    # The id alone on stdout (it composes, like submit's); where it came from on stderr.
    print(f"forked {clean(oid)} from {clean(args.id)} at seq {origin['seq']}{with_goal} "
          f"(handler {clean(info.intent.handler)})", file=sys.stderr)
    print(oid)
    return 0


def register(sub: Subparsers, verb: str) -> None:
    sp = add_verb(sub, "fork", "start a new object from another one's state at one version",
                  "Create a new object that starts from object ID's working state as of seq N (default: its "
                  "latest entry), with its intent as of then (handler, constraints, goal) unless --goal replaces "
                  "the goal. Its entry 0, signed with this client's key, records the origin (ID, N and that "
                  "entry's hash): `peo verify` checks it against ID, and `peo show` prints the lineage both ways. "
                  "ID is not changed, and its chain must verify first (a fork of tampered history is refused). "
                  "A durable function's fork replays what ID recorded up to N, then runs on from there. "
                  "Prints the new object's id.",
                  [f"peo fork {EXAMPLE_ID}", f"peo fork {EXAMPLE_ID} --seq 12",
                   f"peo fork {EXAMPLE_ID} --seq 12 --goal '{{\"topic\": \"tides\"}}'",
                   f"peo show $(peo fork {EXAMPLE_ID} --seq 3)"],
                  cmd_fork)
    sp.add_argument("id", metavar="ID", type=text_arg("object id"), help="the object to fork")
    sp.add_argument("--seq", type=seq_arg, metavar="N", help="the version to fork at (default: the latest)")
    sp.add_argument("--goal", metavar="JSON",
                    help="the fork's goal, a JSON object or @FILE (default: ID's goal as of seq N)")
    sp.add_argument("--identity", default="anonymous", type=text_arg("identity"),
                    help="who forks it (recorded in its context, as for submit)")
    sp.add_argument("--policy", metavar="FILE", help="policy whose trusted keys to use")
