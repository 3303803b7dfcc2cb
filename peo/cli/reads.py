"""Verbs that read objects: ``peo ls`` and ``peo show``."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from .parser import add_verb, open_client, positive_int, text_arg
from .render import clean, compact, dumps, iso, jsonable, short_outcome, table, when

if TYPE_CHECKING:
    from ..core.model import ObjectInfo
    from .parser import Subparsers

__all__ = ["cmd_ls", "cmd_show", "register"]

_STATUSES = ("runnable", "running", "dormant", "terminated", "quarantined")


async def cmd_ls(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        rows = await client.list(status=args.status, limit=args.limit)
    if args.json:
        doc = [
            {"id": r.id, "status": r.status, "handler": r.handler, "seq": r.seq, "priority": r.priority,
             "parent": r.parent, "reason": r.reason}
            for r in rows
        ]
        # One object per line: readable, greppable, and still one JSON array.
        lines = [json.dumps(o, ensure_ascii=False, allow_nan=False) for o in jsonable(doc)]
        print("[\n" + ",\n".join(lines) + "\n]" if lines else "[]")
        return 0
    if not rows:
        print("no objects" + (f" with status {args.status}" if args.status else ""))
        return 0
    table(
        ("ID", "STATUS", "HANDLER", "SEQ", "PRIORITY", "REASON"),
        ((r.id, r.status, r.handler, r.seq, r.priority, clean(r.reason or "", 60)) for r in rows),
        sys.stdout,
    )
    return 0


async def cmd_show(args: argparse.Namespace) -> int:
    async with open_client(args) as client:
        info = await client.get(args.id)
    if args.json:
        print(dumps(_show_doc(info)))
    else:
        _show_text(info)
    return 0


def _show_doc(info: ObjectInfo) -> dict[str, Any]:
    """``peo show --json``: the object and its memory, as documented."""
    from ..core.codec import unstructure

    return {
        "id": info.id,
        "status": str(info.status),
        "seq": info.seq,
        "intent": unstructure(info.intent),
        "context": unstructure(info.context),
        "result": info.result,
        "reason": info.reason,
        "state": info.state,
        "memory": [
            {"seq": e.seq, "action": str(e.action), "timestamp": iso(e.timestamp), "timestamp_ns": e.timestamp,
             "origin_node": e.origin_node, "policy_ref": e.policy_ref, "signer": e.signer, "hash": e.hash,
             "outcome": e.outcome}
            for e in info.memory
        ],
    }


def _show_head(info: ObjectInfo) -> list[tuple[str, str]]:
    """The ``KEY VALUE`` lines above the memory table."""
    ctx, intent = info.context, info.intent
    c = intent.constraints
    head = [
        ("id", info.id),
        ("status", f"{info.status}" + (f" ({clean(info.reason, 100)})" if info.reason else "")),
        ("handler", intent.handler),
        ("goal", compact(intent.goal, 100)),
        ("context", f"scope {ctx.trust_scope}, identity {ctx.identity}, priority {ctx.priority}, "
                    f"parent {ctx.parent or '-'}"),
    ]
    if ctx.labels:
        head.append(("labels", ", ".join(f"{k}={v}" for k, v in sorted(ctx.labels.items()))))
    limits = [f"deadline {when(c.deadline)}" if c.deadline else "",
              f"max failures {c.max_failures}" if c.max_failures else "",
              f"max steps {c.max_steps}" if c.max_steps else ""]
    if any(limits):
        head.append(("limits", ", ".join(x for x in limits if x)))
    head.append(("seq", str(info.seq)))
    if info.state:
        head.append(("state", compact(info.state, 100)))
    if info.result is not None:
        head.append(("result", compact(info.result, 100)))
    return head


def _show_text(info: ObjectInfo) -> None:
    for k, v in _show_head(info):
        print(f"{k:<9} {clean(v)}")
    print()
    table(
        ("SEQ", "ACTION", "TIME (UTC)", "NODE", "OUTCOME"),
        ((e.seq, e.action, when(e.timestamp), clean(e.origin_node, 24), short_outcome(str(e.action), e.outcome))
         for e in info.memory),
        sys.stdout,
    )
    if len(info.memory) != info.seq + 1:
        print(f"(only {len(info.memory)} of {info.seq + 1} entries decode: run `peo verify {info.id}`)")


def _ls_parser(sub: Subparsers) -> None:
    sp = add_verb(sub, "ls", "list objects",
                  "List objects as a table (id, status, handler, seq, priority, reason), or as JSON with --json.",
                  ["peo ls", "peo ls --status dormant", "peo ls --json --limit 100 | jq '.[].id'"], cmd_ls)
    sp.add_argument("--status", choices=_STATUSES, help="only objects with this status")
    sp.add_argument("--json", action="store_true",
                    help="a JSON array of {id,status,handler,seq,priority,parent,reason}")
    sp.add_argument("--limit", type=positive_int, metavar="N", help="at most N objects")


def _show_parser(sub: Subparsers) -> None:
    sp = add_verb(sub, "show", "show one object and its memory",
                  "Show an object's head (status, intent, context, state, result) and one line per memory entry. "
                  "Memory is shown as stored; `peo verify ID` checks its signatures and hash links.",
                  ["peo show 01J0ABC...", "peo show 01J0ABC... --json | jq .memory[-1]"], cmd_show)
    sp.add_argument("id", metavar="ID", type=text_arg("object id"))
    sp.add_argument("--json", action="store_true",
                    help="{id,status,intent,context,result,reason,state,memory:[{seq,action,timestamp,...}]}; "
                    "bytes appear as hex strings")


_PARSERS = {"ls": _ls_parser, "show": _show_parser}


def register(sub: Subparsers, verb: str) -> None:
    _PARSERS[verb](sub)
