"""``peo nodes``: the nodes that serve this store, what they serve, and what they say."""

from __future__ import annotations

import argparse
import time
from typing import TYPE_CHECKING

from .parser import add_verb, open_client
from .render import clean, dumps

if TYPE_CHECKING:
    from .parser import Subparsers

__all__ = ["cmd_nodes", "register"]

#: A node registers every minute while it runs: one not seen for this long has stopped.
RECENT_S = 600


async def cmd_nodes(args: argparse.Namespace) -> int:
    now = time.time_ns()
    async with open_client(args, create=False) as client:
        rows = await client.store.nodes(since=0 if args.all else now - RECENT_S * 10**9)
    if args.json:
        print(dumps([{"id": n.id, "handlers": list(n.handlers), "seen_at": n.seen_at, "notes": n.notes}
                     for n in rows]))
        return 0
    if not rows:
        print(f"no node has registered in the last {RECENT_S // 60} minutes" + ("" if args.all else
              " (--all lists every node ever registered)"))
        return 0
    width = max(len(clean(n.id)) for n in rows)
    print(f"{'NODE':<{width}}  {'LAST SEEN':>10}  HANDLERS")
    for n in rows:
        ago = max(0, (now - n.seen_at) // 10**9)
        print(f"{clean(n.id):<{width}}  {f'{ago} s ago':>10}  {clean(', '.join(n.handlers))}")
        if n.notes:
            print(f"{'':<{width}}  {'':>10}  note: {clean(n.notes)}")
    return 0


def register(sub: Subparsers, verb: str) -> None:
    sp = add_verb(sub, "nodes", "list the nodes serving this store",
                  "List the nodes that registered with this store lately (a running node registers every minute): "
                  "their ids, when each was last seen, the handlers each serves, and what each says about itself "
                  "(a node running on the known-good copy of a profile or policy that went bad says so here, "
                  "until the file is fixed).",
                  ["peo nodes", "peo nodes --all --json"], cmd_nodes)
    sp.add_argument("--all", action="store_true", help=f"also nodes not seen in the last {RECENT_S // 60} minutes")
    sp.add_argument("--json", action="store_true", help="one JSON array")
