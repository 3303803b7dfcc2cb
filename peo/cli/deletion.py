"""Verbs that delete and bring back objects: ``peo rm``, ``peo undelete``, ``peo purge``."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from .parser import EXAMPLE_ID, accept_times_ago, add_verb, fail, open_client, text_arg
from .parser import parse_time as shared_parse_time
from .render import clean, plural, when

if TYPE_CHECKING:
    from ..store.retention import PurgeReport
    from .parser import Subparsers

__all__ = ["cmd_purge", "cmd_rm", "cmd_undelete", "parse_time", "register"]

def parse_time(text: str, *, now: int | None = None) -> int:
    """TIME as ns since the epoch: ISO 8601 (``2025-01-31``, ``2025-01-31T12:00``, with a
    zone or naive = UTC), or relative to now: ``-30d``, ``-12h``, ``-90m``, ``-45s``, ``-2w``."""
    return shared_parse_time(text, now=now, bad=f"bad time {text!r}: use ISO 8601 (2025-01-31 or 2025-01-31T12:00:00, "
                             "UTC unless a zone is given) or a time ago like -30d, -12h, -90m")


async def cmd_rm(args: argparse.Namespace) -> int:
    async with open_client(args, create=False) as client:
        seq = await client.rm(args.id, reason=args.reason, force=args.force)
        key_id = client.key.key_id
    print(f"deleted {clean(args.id)}: a tombstone signed with your key {key_id} at seq {seq}; nothing is destroyed "
          f"(peo undelete {clean(args.id)} brings it back; peo purge drops deleted objects for good)")
    return 0


async def cmd_undelete(args: argparse.Namespace) -> int:
    async with open_client(args, create=False) as client:
        seq = await client.undelete(args.id, force=args.force)
        info = await client.get(args.id, memory=False)
    print(f"undeleted {clean(args.id)}: back as it was, {info.status} (an entry signed with your key at seq {seq})")
    return 0


async def cmd_purge(args: argparse.Namespace) -> int:
    if args.deleted_before is None:
        fail("purge needs --deleted-before TIME (e.g. -30d): only objects deleted before it are dropped")
    before = parse_time(args.deleted_before)
    async with open_client(args, create=False) as client:
        report = await client.purge(deleted_before=before, dry_run=not args.yes)
    _print_report(report)
    return 0


def _print_report(report: PurgeReport) -> None:
    verb = "would drop" if report.dry_run else "dropped"
    for oid in report.purged:
        print(f"{verb} {clean(oid)}")
    for k in report.kept:
        print(f"keeps {clean(k.id)} (deleted {when(k.deleted_at)}): it is {clean(k.why)}")
    n, kept = len(report.purged), len(report.kept)
    summary = f"{n} {plural(n, 'object')} deleted before {when(report.deleted_before)}"
    also = f"; {kept} kept: an object that stays depends on {'it' if kept == 1 else 'them'}" if kept else ""
    if report.dry_run:
        print(f"dry run: {verb} {summary}{also}; nothing changed (pass --yes to drop them)")
    else:
        rows = f", every row of {'it' if n == 1 else 'them'}" if n else ""
        print(f"{verb} {summary}{rows}{also}")


def _rm_parser(sub: Subparsers) -> None:
    sp = add_verb(sub, "rm", "delete an object (a signed tombstone; peo undelete brings it back)",
                  "Delete an object: an entry signed with your client key (a tombstone) after which the object "
                  "is left out of `peo ls` (see `peo ls --deleted`), no node claims it and signals to it are "
                  "refused. Nothing else of it changes and no data is destroyed: `peo undelete ID` brings it back "
                  "exactly as it was; only `peo purge` drops deleted objects for good. Any object can be deleted "
                  "(runnable, dormant, terminated, or quarantined if its chain verifies), but not while a node is "
                  "running it: stop that node (or `peo cancel` it), or pass --force if the node is dead. "
                  "Exit 1 for an unknown id, 2 if it is deleted already or held.",
                  [f"peo rm {EXAMPLE_ID}", f"peo rm {EXAMPLE_ID} --reason 'duplicate of another run'",
                   f"peo rm --force {EXAMPLE_ID}"], cmd_rm)
    sp.add_argument("id", metavar="ID", type=text_arg("object id"))
    sp.add_argument("--reason", metavar="TEXT", type=text_arg("--reason"), help="why (recorded in the tombstone)")
    sp.add_argument("--force", action="store_true",
                    help="also take the object over from a node that still holds its lease (a dead node)")


def _undelete_parser(sub: Subparsers) -> None:
    sp = add_verb(sub, "undelete", "bring a deleted object back as it was",
                  "Undo `peo rm`: an entry signed with your client key after which the object is back exactly as "
                  "it was before its tombstone (status, what it waits for, due time, result) and listed again. "
                  "A dormant object goes on waiting; one whose wake-up came meanwhile (a time passed) is due "
                  "at once. Exit 1 for an unknown id, 2 if it is not deleted.",
                  [f"peo undelete {EXAMPLE_ID}", "peo ls --deleted"], cmd_undelete)
    sp.add_argument("id", metavar="ID", type=text_arg("object id"))
    sp.add_argument("--force", action="store_true",
                    help="also take the object over from a holder whose lease has not lapsed (a dead operator)")


def _purge_parser(sub: Subparsers) -> None:
    sp = add_verb(sub, "purge", "drop deleted objects for good (retention)",
                  "Destroy the objects deleted (peo rm) before TIME: their head, memory, inbox, refused signals and "
                  "alerts, in one transaction. The only verb that destroys data, and only of deleted objects. "
                  "An object that an object which stays depends on is kept, and why is said: the parent or root "
                  "of a live child, the origin of a fork (it goes once they do). Without --yes it is a dry run: "
                  "it lists what would be dropped and what kept, and changes nothing. "
                  "TIME is ISO 8601 (UTC unless a zone is given) or a time ago: -30d, -12h, -90m, -45s, -2w.",
                  ["peo purge --deleted-before -30d", "peo purge --deleted-before -30d --yes",
                   "peo purge --deleted-before 2025-01-31T00:00:00 --yes"], cmd_purge)
    sp.add_argument("--deleted-before", metavar="TIME", type=text_arg("--deleted-before"),
                    help="drop objects deleted before this time (required)")
    # argparse takes "-30d" for an option (it reads only plain numbers as values): a time
    # ago reads as a value too, as its documented spelling promises.
    accept_times_ago(sp)
    sp.add_argument("--yes", action="store_true", help="really drop them (without it: a dry run)")


_PARSERS = {"rm": _rm_parser, "undelete": _undelete_parser, "purge": _purge_parser}


def register(sub: Subparsers, verb: str) -> None:
    _PARSERS[verb](sub)
