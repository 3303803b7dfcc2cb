"""``peo resume``: put a quarantined object back in play once its chain verifies."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from .parser import add_verb, open_client, text_arg
from .render import clean

if TYPE_CHECKING:
    from .parser import Subparsers

__all__ = ["cmd_resume", "register"]


async def cmd_resume(args: argparse.Namespace) -> int:
    from ..core.model import Status
    from ..errors import CodecError, IntegrityError

    oid = clean(args.id)
    async with open_client(args, create=False) as client:
        try:
            status = (await client.get(args.id, memory=False)).status
        except IntegrityError:
            # Its row disagrees with its chain: reading it flagged it (quarantined), and
            # resuming is what rebuilds the row from the chain. If it was not flagged (the
            # signer is not trusted here), the store's status says so below.
            status = (await client.store.get(args.id)).status
        if status is not Status.QUARANTINED:
            print(f"peo: error: object {oid} is {status}, not quarantined: nothing to resume", file=sys.stderr)
            return 1
        try:
            info = await client.resume(args.id)
        except IntegrityError as exc:
            where = f" at seq {exc.seq}" if exc.seq is not None else ""
            print(f"peo: error: object {oid} still fails verification{where}: {clean(exc.reason)}; it stays "
                  "quarantined (see peo keys)", file=sys.stderr)
            return 1
        except CodecError as exc:
            print(f"peo: error: object {oid} still fails verification: {clean(exc)}; it stays quarantined",
                  file=sys.stderr)
            return 1
        if not args.from_known_good:
            print(f"resumed {oid}: quarantined -> {info.status} (seq {info.seq}; no entry written)")
            return 0
        from ..client.operator import restore_known_good
        from ..errors import PeoError

        try:
            good = await restore_known_good(client, args.id, reason="peo resume --from-known-good")
        except PeoError as exc:
            print(f"resumed {oid}: quarantined -> {info.status} (seq {info.seq}), but its state was not "
                  f"restored: {clean(exc)}", file=sys.stderr)
            return 1
    print(f"resumed {oid}: quarantined -> runnable, its state restored to the known-good state of seq {good} "
          f"(a signed entry at seq {info.seq + 1})")
    return 0


def _resume_parser(sub: Subparsers) -> None:
    sp = add_verb(sub, "resume", "re-verify a quarantined object and put it back in play",
                  "Verify a quarantined object's whole chain again with the keys trusted now (the deployment's "
                  "key directory and the policy's keys). If it verifies, its head is rebuilt from its memory and it "
                  "runs again (runnable, dormant or terminated as its memory says); no entry is written, since "
                  "quarantine is a flag on the head, not an entry. If it still fails, it stays quarantined and "
                  "the first bad seq is printed (exit 1). With --from-known-good, its working state is also set "
                  "back to its known-good state (its last checkpoint, else its last step that succeeded) by an "
                  "entry signed with your key, as self-healing does before it quarantines (docs/operations.md).",
                  ["peo resume 01J0ABC...", "peo resume 01J0ABC... --from-known-good",
                   "peo resume 01J0ABC... --policy policies/fleet.toml"], cmd_resume)
    sp.add_argument("id", metavar="ID", type=text_arg("object id"))
    sp.add_argument("--from-known-good", action="store_true",
                    help="also restore its state to its known-good state (a signed entry)")
    sp.add_argument("--policy", metavar="FILE", help="policy whose trusted keys to use")


_PARSERS = {"resume": _resume_parser}


def register(sub: Subparsers, verb: str) -> None:
    _PARSERS[verb](sub)
