"""``peo postmortem``: the whole story of an object that self-healing could not save."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .parser import EXAMPLE_ID, add_verb, open_client, text_arg
from .render import clean, dumps

if TYPE_CHECKING:
    from ..core.crypto import Keyring
    from ..core.model import Entry
    from .parser import Subparsers

__all__ = ["cmd_postmortem", "register"]


def verified_memory(object_id: str, rows: Sequence[tuple[bytes, bytes]],
                    keyring: Keyring) -> tuple[list[Entry], str | None]:
    """The entries of ``rows`` that verify with ``keyring``, from seq 0 up to the first bad
    one, and what is wrong with that one (None: the whole chain verifies)."""
    from ..core.memory import verify_chain
    from ..errors import IntegrityError

    try:
        return verify_chain(object_id, rows, keyring)[1], None
    except IntegrityError as exc:
        bad = exc.seq if exc.seq is not None else 0
        problem = (f"the memory fails verification at seq {bad}: {exc.reason}; only the {bad} entries before "
                   "it are told (see peo verify, peo keys)")
    try:
        return verify_chain(object_id, rows[:bad], keyring)[1], problem
    except IntegrityError:  # pragma: no cover - a prefix of a chain that verified up to bad
        return [], problem


async def cmd_postmortem(args: argparse.Namespace) -> int:
    from ..errors import NotFoundError
    from ..healing.postmortem import build

    oid = clean(args.id)
    async with open_client(args, create=False) as client:
        try:
            row = await client.store.get(args.id)
        except NotFoundError:
            print(f"peo: error: no object {oid} in this store (see peo ls)", file=sys.stderr)
            return 1
        memory, problem = verified_memory(args.id, await client.store.entries(args.id), client.keyring)
        alerts = await client.store.alerts(args.id)
    pm = build(memory, row, alerts=alerts, problem=problem)
    if args.json:
        print(dumps(pm.as_dict()))
    else:
        # Text from the store (messages, node ids, reasons), made safe for a terminal line by line.
        print("".join(clean(line) + "\n" for line in pm.render_text().splitlines()), end="")
    if problem:
        print(f"peo: error: object {oid}: {clean(problem)}", file=sys.stderr)
        return 1
    return 0


def _postmortem_parser(sub: Subparsers) -> None:
    sp = add_verb(
        sub, "postmortem", "tell what happened to an object: failures, healing tiers, alerts",
        "Tell the story of one object from its own signed memory, verified with the keys trusted here: the "
        "failure streak since the last step that succeeded (each failed step's seq, time, node, error class and "
        "message), the claims that ended without progress and on which nodes, what each tier of self-healing "
        "tried and how it ended (1 restart in place, 2 recreate elsewhere, 3 known-good restore, 4 quarantine and "
        "alert), each restore with the known-good seq it went back to and the state keys it added, removed or "
        "changed, the sheds, the quarantine reason, configuration repairs, and the delivery of each alert "
        "(sink, attempts, delivered or the last error). It works on any object, quarantined or not; it writes "
        "nothing. With --json the same as one JSON document (times as ISO 8601 UTC and ns). If the memory "
        "fails verification, the entries before the first bad one are told and the exit code is 1.",
        [f"peo postmortem {EXAMPLE_ID}", f"peo postmortem {EXAMPLE_ID} --json | jq .streak.error_classes"],
        cmd_postmortem)
    sp.add_argument("id", metavar="ID", type=text_arg("object id"))
    sp.add_argument("--json", action="store_true", help="print the post-mortem as JSON")
    sp.add_argument("--policy", metavar="FILE", help="policy whose trusted keys to verify the memory with")


_PARSERS = {"postmortem": _postmortem_parser}


def register(sub: Subparsers, verb: str) -> None:
    _PARSERS[verb](sub)
