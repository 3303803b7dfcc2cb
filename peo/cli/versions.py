"""``peo history`` and ``peo restore``: an object's versions, and a restore to one of them
(of one object, or of every object matching a filter, with a dry run by default)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import TYPE_CHECKING

from .parser import EXAMPLE_ID, accept_times_ago, add_verb, fail, open_client, seq_arg, text_arg
from .parser import parse_time as shared_parse_time
from .render import clean, iso, jsonable, short_outcome, table, when

if TYPE_CHECKING:
    from ..client import Client
    from ..client.versions import Target
    from .parser import Subparsers

__all__ = ["cmd_history", "cmd_restore", "parse_time", "register"]

TIME_HELP = ("ISO 8601 (2026-12-07T10:00:00Z, 2026-12-07T11:00:00+01:00, 2026-12-07; a time without a zone "
             "is UTC) or relative to now (-90s, -30m, -2h, -1d)")


def parse_time(text: str, now: int) -> int:
    """A --at TIME as ns since the epoch (see :data:`TIME_HELP`); bad input exits 2."""
    return shared_parse_time(text, now=now, bad=f"--at {clean(text, 60)!r} is not a time: give {TIME_HELP}")


# -- peo history -----------------------------------------------------------------------------


async def cmd_history(args: argparse.Namespace) -> int:
    from ..errors import IntegrityError

    async with open_client(args, create=False) as client:
        try:
            versions = await client.history(args.id)
        except IntegrityError as exc:
            where = f" at seq {exc.seq}" if exc.seq is not None else ""
            print(f"peo: error: object {clean(args.id)} fails verification{where}: {clean(exc.reason)}",
                  file=sys.stderr)
            return 1
    if args.json:
        for v in versions:
            doc = {"seq": v.seq, "time": iso(v.timestamp), "timestamp_ns": v.timestamp, "action": str(v.action),
                   "origin_node": v.origin_node, "signer": v.signer, "state_digest": v.state_digest,
                   "restored_to": v.restored_to, "summary": short_outcome(str(v.action), v.outcome, 200)}
            print(json.dumps(jsonable(doc), ensure_ascii=False, allow_nan=False))
        return 0
    table(("SEQ", "TIME", "ACTION", "NODE", "STATE", "WHAT"),
          ((v.seq, when(v.timestamp), v.action, clean(v.origin_node, 30), v.state_digest,
            short_outcome(str(v.action), v.outcome, 80)) for v in versions),
          sys.stdout)
    return 0


# -- peo restore -----------------------------------------------------------------------------


async def cmd_restore(args: argparse.Namespace) -> int:
    bulk_flags = [f for f, v in (("--handler", args.handler), ("--status", args.status), ("--yes", args.yes)) if v]
    if args.id is not None:
        if bulk_flags:
            verb = "is" if len(bulk_flags) == 1 else "are"
            fail(f"{' and '.join(bulk_flags)} {verb} for a bulk restore (no ID): give either an ID or them, not both")
        if (args.seq is None) == (args.at is None):
            fail("give --seq N or --at TIME: which version of the object to restore")
    else:
        if args.seq is not None:
            fail("--seq names a version of one object: a bulk restore (no ID) takes --at TIME")
        if args.at is None:
            fail("give an object ID (with --seq N or --at TIME), or --at TIME for a bulk restore")
    now = time.time_ns()
    at = None if args.at is None else parse_time(args.at, now)
    async with open_client(args, create=False) as client:
        if args.id is None:
            assert at is not None
            return await _bulk(client, args, at, now)
        from ..client.versions import restore_to

        done = await restore_to(client, args.id, seq=args.seq, at=at, reason=args.reason, force=args.force, now=now)
    print(f"restored {clean(args.id)} to seq {done.seq} (its state at {when(done.timestamp)}): a signed entry at "
          f"seq {done.entry_seq}; it is runnable")
    return 0


async def _bulk(client: Client, args: argparse.Namespace, at: int, now: int) -> int:
    """Restore every object the filters match to its state at ``at``; a dry run (a list of
    what would change, and what would be skipped and why) unless --yes."""
    from ..client.versions import restore_to, target
    from ..errors import PeoError

    rows = await client.list(handler=args.handler, status=args.status)
    plans: list[tuple[Target, str, str]] = []
    skipped: list[tuple[str, str]] = []
    for r in rows:
        try:
            t = await target(client, r.id, at=at, now=now)
        except PeoError as exc:
            skipped.append((r.id, str(exc)))
            continue
        if t.seq == t.head:
            skipped.append((r.id, f"unchanged since {when(at)} (its last entry, seq {t.head}, is older)"))
            continue
        plans.append((t, r.handler, str(r.status)))
    chosen = [f"{name} {clean(v)}" for name, v in (("handler", args.handler), ("status", args.status)) if v]
    filters = f" with {' and '.join(chosen)}" if chosen else ""
    if not args.yes:
        print(f"dry run: would restore {len(plans)} of {len(rows)} objects{filters} to their state at {when(at)} "
              "(--yes restores them)")
        if plans:
            table(("ID", "HANDLER", "STATUS", "SEQ", "RESTORE TO", "WRITTEN AT"),
                  ((t.object_id, h, s, t.head, t.seq, when(t.timestamp)) for t, h, s in plans), sys.stdout)
        _print_skipped(skipped)
        return 0
    failed = 0
    for t, _, _ in plans:
        try:
            done = await restore_to(client, t.object_id, at=at, reason=args.reason, force=args.force, now=now)
        except PeoError as exc:
            failed += 1
            print(f"peo: error: {clean(t.object_id)}: not restored: {clean(exc)}", file=sys.stderr)
            continue
        print(f"restored {clean(t.object_id)} to seq {done.seq} (its state at {when(done.timestamp)}): a signed "
              f"entry at seq {done.entry_seq}")
    _print_skipped(skipped)
    print(f"restored {len(plans) - failed} of {len(plans)} objects{filters} to their state at {when(at)}"
          + (f"; {failed} failed" if failed else "") + (f"; {len(skipped)} skipped" if skipped else ""))
    return 1 if failed else 0


def _print_skipped(skipped: list[tuple[str, str]]) -> None:
    if skipped:
        print(f"skipped {len(skipped)}:")
        table(("ID", "WHY"), ((oid, clean(why, 120)) for oid, why in skipped), sys.stdout)


# -- parsers ---------------------------------------------------------------------------------


def _history_parser(sub: Subparsers) -> None:
    sp = add_verb(sub, "history", "list an object's versions: one line per entry, with a digest of its state",
                  "List every version of an object, oldest first: one line per entry of its memory, with its seq, "
                  "time (UTC), action, the node (or operator) that wrote it, a short digest of the working state "
                  "after it (the same state always has the same digest, so a restore that brought a state back "
                  "shows its digest again) and what it recorded. The whole chain is verified with the keys trusted "
                  "here first: a chain that fails prints the first bad seq (exit 1). Any SEQ can be given to "
                  "`peo restore ID --seq SEQ`.",
                  [f"peo history {EXAMPLE_ID}", f"peo history {EXAMPLE_ID} --json | jq .state_digest"], cmd_history)
    sp.add_argument("id", metavar="ID", type=text_arg("object id"))
    sp.add_argument("--json", action="store_true",
                    help="one JSON object per line: seq, time, timestamp_ns, action, origin_node, signer, "
                    "state_digest, restored_to, summary")
    sp.add_argument("--policy", metavar="FILE", help="policy whose trusted keys to use")


def _restore_parser(sub: Subparsers) -> None:
    sp = add_verb(sub, "restore", "set an object's state back to an earlier version (or a fleet's, in bulk)",
                  "Set an object's working state back to what it was at version --seq N (see `peo history`) or at "
                  "--at TIME (the last entry written at or before it). This appends one entry, signed with your "
                  "key; the history before it is untouched, so a restore is undone by restoring to the seq just "
                  "before it. The object runs again afterwards, even if it had ended (done, failed, cancelled) or "
                  "was quarantined (its chain must verify). A deleted object is refused (peo undelete it first), "
                  "as is an object a node holds (stop the node, or --force if it died).\n\n"
                  "Without ID, a bulk restore: every object matching --handler and --status goes back to its state "
                  "at --at TIME. By default this is a dry run that lists what would be restored, and what would be "
                  "skipped and why (created after TIME, unchanged since, deleted); --yes restores them, reporting "
                  f"each failure (exit 1 if any failed).\n\nTIME is {TIME_HELP}.",
                  [f"peo restore {EXAMPLE_ID} --seq 12", f"peo restore {EXAMPLE_ID} --at -2h --reason 'bad deploy'",
                   f"peo restore {EXAMPLE_ID} --at 2026-12-07T10:00:00Z",
                   "peo restore --at 2026-12-07T10:00:00Z --handler research",
                   "peo restore --at -1h --handler research --status terminated --yes"], cmd_restore)
    # "-2h" must reach --at as its value, not be taken for an option (argparse's private
    # matcher decides what a negative number looks like; --at=-2h works regardless).
    accept_times_ago(sp)
    sp.add_argument("id", metavar="ID", nargs="?", type=text_arg("object id"),
                    help="the object to restore (omit it for a bulk restore)")
    which = sp.add_mutually_exclusive_group()
    which.add_argument("--seq", metavar="N", type=seq_arg, help="restore its state at this seq (see peo history)")
    which.add_argument("--at", metavar="TIME", type=text_arg("time"), help="restore its state at this time")
    sp.add_argument("--reason", metavar="TEXT", type=text_arg("reason"), help="why, recorded in the signed entry")
    sp.add_argument("--force", action="store_true",
                    help="take over the lease of a node that died holding the object")
    sp.add_argument("--handler", metavar="H", type=text_arg("handler"), help="bulk: only objects of this handler")
    sp.add_argument("--status", metavar="S", choices=("runnable", "running", "dormant", "terminated", "quarantined"),
                    help="bulk: only objects with this status")
    sp.add_argument("--yes", action="store_true", help="bulk: restore them (without it, a dry run)")
    sp.add_argument("--policy", metavar="FILE", help="policy whose trusted keys to use")


_PARSERS = {"history": _history_parser, "restore": _restore_parser}


def register(sub: Subparsers, verb: str) -> None:
    _PARSERS[verb](sub)
