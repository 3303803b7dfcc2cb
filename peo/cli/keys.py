"""``peo keys``: the keys in the deployment's key directory and what the policy trusts them for."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from .parser import add_verb, store_url
from .render import clean, dumps, table

if TYPE_CHECKING:
    from .parser import Subparsers

__all__ = ["cmd_keys", "register"]


def cmd_keys(args: argparse.Namespace) -> int:
    from .. import keys
    from ..config import resolve_policy
    from ..core.crypto import key_id_of

    if args.new is not None:
        return _new_key(args.new, args.scope)
    policy = resolve_policy(args.policy)
    where = keys.locate(store_url(args))
    found, problems = keys.key_files(where.path)
    rows: list[dict[str, Any]] = []
    for k in found:
        rows.append({
            "key_id": k.key_id,
            "file": str(k.secret_file or k.public_file),
            "public_key": k.public_key.hex(),
            "scopes": keys.trusted_scopes(policy, k.public_key, local=True),
            "secret": k.secret_file is not None,
            "source": "key directory",
        })
    listed = {k.public_key.hex() for k in found}
    for hex_key in sorted(policy.trusted_keys):
        try:
            public = bytes.fromhex(hex_key)
        except ValueError:
            continue  # the policy parser lets it through; the keyring refuses it when it is used
        if public.hex() in listed:
            continue
        listed.add(public.hex())
        rows.append({
            "key_id": key_id_of(public), "file": None, "public_key": public.hex(),
            "scopes": keys.trusted_scopes(policy, public, local=False), "secret": False, "source": "policy",
        })
    if args.json:
        print(dumps({"directory": str(where.path), "source": where.source, "policy": policy.ref,
                     "trust_local_keys": policy.trust_local_keys, "keys": rows, "problems": problems}))
        return 0
    print(f"key directory {clean(where.path)} ({clean(where.why)})")
    for problem in problems:
        # A node, a client or peo verify reading this directory stops on the same refusal (all
        # but a .pub that does not match its secret: that one only leaves a key untrusted).
        print(f"peo keys: refused: {clean(problem)}", file=sys.stderr)
    if not rows:
        print("no keys" if problems else "no keys (peo init or the first peo submit creates them)")
        return 0
    table(["KEY ID", "FILE", "TRUSTED FOR", "SECRET"],
          [[r["key_id"], r["file"] if r["file"] is not None else f"(listed in policy {policy.ref})",
            ", ".join(r["scopes"]) if r["scopes"] else "not trusted", "yes" if r["secret"] else "no"]
           for r in rows], sys.stdout)
    if not policy.trust_local_keys:
        print(f"policy {clean(policy.ref)} does not trust the key directory ([trust] local_keys = false)")
    return 0


def _new_key(path: str, scope: str) -> int:
    """``peo keys --new FILE``: a new signing key (an operator's, say), and how to trust it."""
    from pathlib import Path

    from .. import keys
    from ..errors import UsageError

    target = Path(path).expanduser()
    if target.exists() or target.is_symlink():
        raise UsageError(f"{target} exists: refusing to replace a key (choose another file)")
    key = keys.generate()
    try:
        keys.save(key, target, overwrite=False)
    except FileExistsError:
        raise UsageError(f"{target} exists: refusing to replace a key (choose another file)") from None
    print(f"created {clean(target)} (secret, 0600) and {clean(target)}.pub")
    print(f"key id     {key.key_id}")
    print(f"public key {key.public_key.hex()}")
    print("trust it in the policy of every node and client of the deployment:")
    print(f'  [trust]\n  keys = {{ "{key.public_key.hex()}" = ["{clean(scope)}"] }}')
    print(f"then sign with it: peo signal ID NAME --key {clean(target)}")
    return 0


def _keys_parser(sub: Subparsers) -> None:
    sp = add_verb(sub, "keys", "list the deployment's keys and the scopes that trust them",
                  "List the signing keys in the deployment's key directory ($PEO_KEYS, else $PEO_HOME/keys, else "
                  ".peo/keys beside an SQLite store's file, else ./.peo/keys) and the keys the policy lists: key "
                  "id, file, the trust scopes the policy trusts each for, and whether its secret is present. "
                  "Files peo refuses to use (malformed, a symlink, writable by others, a secret readable by "
                  "others...) are reported on stderr with how to fix them.",
                  ["peo keys", "peo keys --json", "peo keys --policy policies/strict.toml",
                   "peo keys --new ~/.peo-ops/ops.key --scope ops"], cmd_keys)
    sp.add_argument("--new", metavar="FILE",
                    help="create a new signing key in FILE (and FILE.pub) instead, e.g. an operator's, and print "
                    "the policy line that trusts it; sign signals with it by `peo signal ... --key FILE`")
    sp.add_argument("--scope", default="ops", metavar="SCOPE",
                    help="with --new: the trust scope to show in the policy line (default: ops)")
    sp.add_argument("--policy", metavar="FILE", help="policy whose trust to show (default: the built-in policy)")
    sp.add_argument("--json", action="store_true", help="print JSON: the directory and one object per key")


_PARSERS = {"keys": _keys_parser}


def register(sub: Subparsers, verb: str) -> None:
    _PARSERS[verb](sub)
