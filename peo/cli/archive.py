"""Verbs for signed memory as a whole: ``peo verify``, ``peo export``, ``peo import``."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import CodecError, ConflictError, IntegrityError, NotFoundError
from .parser import EXAMPLE_ID, add_verb, fail, open_client, read_limited, text_arg
from .render import clean, plural

if TYPE_CHECKING:
    from ..client import Client
    from .parser import Subparsers

__all__ = ["MAX_IMPORT_BYTES", "PROGRESS_EVERY", "cmd_export", "cmd_import", "cmd_verify", "register"]

#: Largest export file ``peo import`` reads (the client refuses larger documents anyway).
MAX_IMPORT_BYTES = 256 << 20
#: ``peo verify`` reports progress on stderr every this many objects.
PROGRESS_EVERY = 500


async def cmd_verify(args: argparse.Namespace) -> int:
    async with open_client(args, create=False) as client:
        ids = list(args.ids) if args.ids else [r.id for r in await client.list()]
        if not ids:
            print("no objects to verify")
            return 0
        counts: dict[str | None, int] = {"ok": 0, "unverifiable": 0, None: 0}
        for n, oid in enumerate(ids, 1):
            counts[await _verify_one(client, oid)] += 1
            if len(ids) > PROGRESS_EVERY and n % PROGRESS_EVERY == 0:
                print(f"peo verify: {n}/{len(ids)} objects checked", file=sys.stderr, flush=True)
    failed, unverifiable = counts[None], counts["unverifiable"]
    # A fork whose parent is not in this store: its own chain verified, its origin could
    # not be checked. Not a failure, but not "ok" either.
    extra = f", {unverifiable} with an unverifiable fork origin" if unverifiable else ""
    print(f"verified {len(ids)} object(s): {counts['ok']} ok, {failed} failed{extra}")
    return 1 if failed else 0


async def _verify_one(client: Client, oid: str) -> str | None:
    """Verify one object's chain and print its OK or FAIL line; returns "ok" (a fork's
    origin checked too), "unverifiable" (a fork whose parent is not in this store: its own
    chain verified) or None (failed)."""
    try:
        count = await client.verify(oid)
    except NotFoundError:
        print(f"FAIL  {clean(oid)}  no object {clean(oid)}")
    except IntegrityError as exc:
        where = f"seq {exc.seq}: " if exc.seq is not None else ""
        print(f"FAIL  {clean(oid)}  {where}{clean(exc.reason)}")
    except CodecError as exc:
        print(f"FAIL  {clean(oid)}  {clean(exc)}")
    else:
        what = f"{clean(oid)}  {count} {plural(count, 'entry')}"
        if count.origin == "unverifiable":  # peo.client.forks.Origin, a StrEnum
            print(f"OK    {what}; origin UNVERIFIABLE: {clean(count.note or '')}")
            return "unverifiable"
        print(f"OK    {what}" + (f"; {clean(count.note)}" if count.note else ""))
        return "ok"
    return None


async def cmd_export(args: argparse.Namespace) -> int:
    async with open_client(args, create=False) as client:
        data = await client.export(args.id)
    target = args.output if args.output is not None else f"{args.id}.peo"
    if target == "-":
        out = getattr(sys.stdout, "buffer", None)
        if out is None:
            fail("standard output does not accept binary data")
        out.write(data)
        out.flush()
        return 0
    path = Path(target)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        fail(f"cannot write {target}: {exc.strerror or exc}")
    print(f"exported {clean(args.id)} ({len(data)} bytes) to {clean(target)}")
    return 0


async def cmd_import(args: argparse.Namespace) -> int:
    if args.file == "-":
        data = sys.stdin.buffer.read(MAX_IMPORT_BYTES + 1)
        if len(data) > MAX_IMPORT_BYTES:
            fail(f"standard input is larger than {MAX_IMPORT_BYTES} bytes")
    else:
        data = read_limited(args.file, MAX_IMPORT_BYTES, "export file")
    async with open_client(args) as client:
        try:
            oid = await client.import_(data)
            info = await client.get(oid, memory=False)
        except (IntegrityError, CodecError) as exc:
            # Tampered, untrusted, damaged or not an export at all: the file is refused and
            # nothing was written. A verification failure, hence exit 1, not 2.
            print(f"peo: error: import refused: {clean(exc)}", file=sys.stderr)
            return 1
        except ConflictError:
            print("peo: error: import refused: an object with this id already exists in the store", file=sys.stderr)
            return 1
    # The id alone on stdout (it composes, like submit's); what was imported on stderr.
    entries = info.seq + 1
    print(f"imported {clean(oid)} ({info.status}, seq {info.seq}, {entries} {plural(entries, 'entry')}) "
          f"from {clean(args.file)}", file=sys.stderr)
    print(oid)
    return 0


def _verify_parser(sub: Subparsers) -> None:
    sp = add_verb(sub, "verify", "verify signed memory chains",
                  "Verify each object's memory: every signature by a trusted key (local keys and the policy's), "
                  "hash links, contiguous seq, entry 0 bound to the id, and the stored head; for a fork (peo fork), "
                  "also its origin: the parent's chain up to the seq it was forked at, that entry's hash and the "
                  "state the fork started from. A fork whose parent is not in this store has an UNVERIFIABLE "
                  "origin: its own chain is checked, it is not counted as failed. Prints OK or FAIL (with the "
                  "first bad seq) per object and a summary; exit 1 if any fails.",
                  ["peo verify", f"peo verify {EXAMPLE_ID} {EXAMPLE_ID[:-1]}d",
                   "peo verify --policy policies/strict.toml"],
                  cmd_verify)
    sp.add_argument("ids", nargs="*", metavar="ID", type=text_arg("object id"), help="objects to verify (default: all)")
    sp.add_argument("--policy", metavar="FILE", help="policy whose trusted keys to use")


def _export_parser(sub: Subparsers) -> None:
    sp = add_verb(sub, "export", "write an object and its whole memory to a file",
                  "Write one self-contained, signed file: the object id and every memory entry as signed.",
                  [f"peo export {EXAMPLE_ID}", f"peo export {EXAMPLE_ID} -o backup.peo",
                   f"peo export {EXAMPLE_ID} -o - | ssh host-b peo import -"],
                  cmd_export)
    sp.add_argument("id", metavar="ID", type=text_arg("object id"))
    sp.add_argument("-o", "--output", metavar="FILE", help="output file (default: ID.peo; - for standard output)")


def _import_parser(sub: Subparsers) -> None:
    sp = add_verb(sub, "import", "verify an exported object and store it",
                  "Verify an export file with the keys this set-up trusts, then store the object so nodes here can "
                  "continue it. A tampered, damaged or untrusted file is refused (exit 1) and nothing is written. "
                  "Prints the object's id.",
                  [f"peo import {EXAMPLE_ID}.peo", "peo --store postgresql://db/peo import backup.peo"], cmd_import)
    sp.add_argument("file", metavar="FILE", help="export file (- for standard input)")
    sp.add_argument("--policy", metavar="FILE", help="policy whose trusted keys to use")


_PARSERS = {"verify": _verify_parser, "export": _export_parser, "import": _import_parser}


def register(sub: Subparsers, verb: str) -> None:
    _PARSERS[verb](sub)
