"""``peo init``: the store's schema and the local keys."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from .parser import add_verb, store_url
from .render import clean

if TYPE_CHECKING:
    from .parser import Subparsers

__all__ = ["cmd_init", "register"]


async def cmd_init(args: argparse.Namespace) -> int:
    from .. import keys
    from ..store import open_store

    url = store_url(args)
    store = open_store(url)
    existed: bool | None = None
    if url.startswith("sqlite:"):
        existed = os.path.exists(getattr(store, "path", ""))
    try:
        await store.open(force=args.force)  # brings the schema to the current version (idempotent)
    finally:
        await store.aclose()
    state = "" if existed is None else (" (existing)" if existed else " (created)")
    print(f"store       {clean(url)}: schema ready{state}")
    for name, label in (("client", "client key"), ("node", "node key")):
        path = keys.key_path(name, url)
        was = path.exists()
        key = keys.load_key(path, name)
        print(f"{label:<11} {clean(path)}: {'existing' if was else 'created'} (key id {key.key_id})")
    return 0


def _init_parser(sub: Subparsers) -> None:
    sp = add_verb(sub, "init", "create the store schema and the local keys (idempotent)",
                  "Create the store's schema (or bring it up to date), the client signing key and the default "
                  "node signing key in $PEO_HOME/keys. Safe to run again: existing keys and objects are kept. "
                  "Refuses a database (SQLite file, PostgreSQL schema) that already holds other tables unless "
                  "--force.",
                  ["peo init", "peo --store sqlite:///var/peo/fleet.db init",
                   "peo --store 'postgresql://postgres@127.0.0.1/app?schema=peo' init"], cmd_init)
    sp.add_argument("--force", action="store_true",
                    help="add peo's tables even to a database that holds other tables")


_PARSERS = {"init": _init_parser}


def register(sub: Subparsers, verb: str) -> None:
    _PARSERS[verb](sub)
