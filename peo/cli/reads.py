"""Verbs that read objects: ``peo ls`` and ``peo show``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..core.model import Action, Status
from ..errors import IntegrityError
from ..functions import PROGRESS_KEY, progress_of
from .parser import EXAMPLE_ID, add_verb, fail, labels, open_client, positive_int, text_arg
from .render import clean, compact, dumps, iso, jsonable, plural, short_outcome, table, when

if TYPE_CHECKING:
    from ..core.model import ObjectInfo, ObjectSummary
    from ..store import RefusedSignal
    from .parser import Subparsers

__all__ = ["cmd_ls", "cmd_show", "register"]

_STATUSES = ("runnable", "running", "dormant", "terminated", "quarantined")


async def cmd_ls(args: argparse.Namespace) -> int:
    label_map = labels(args.label or [])
    if len(label_map) < len(set(args.label or [])):
        fail("--label gives one key two values: an object has one value per key, so none would match")
    async with open_client(args, create=False) as client:
        rows = await client.list(status=args.status, limit=args.limit, handler=args.handler, parent=args.parent,
                                 after=args.after, labels=label_map or None, deleted=args.deleted)
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
        filters = [f"{k} {clean(v)}" for k, v in (("status", args.status), ("handler", args.handler),
                                                    ("parent", args.parent)) if v]
        filters += [f"label {clean(k)}={clean(v)}" for k, v in sorted(label_map.items())]
        print(("no deleted objects" if args.deleted else "no objects")
              + (f" with {' and '.join(filters)}" if filters else ""))
        return 0
    table(
        ("ID", "STATUS", "HANDLER", "SEQ", "PRIORITY", "REASON"),
        ((r.id, r.status, r.handler, r.seq, r.priority, clean(_reason(r), 60)) for r in rows),
        sys.stdout,
    )
    return 0


def _reason(r: ObjectSummary) -> str:
    """The REASON column: why it ended, for a dormant object what wakes it (and that a node
    shed it), and for a live object no node serves, that; for a deleted one, when it was deleted."""
    if r.deleted_at is not None:
        return f"deleted {when(r.deleted_at)}"
    if r.unserved and r.status is not Status.DORMANT:
        return "no node serves this handler"
    if r.status is not Status.DORMANT:
        return r.reason or ""
    waits = [f"signal {r.waiting_for}"] if r.waiting_for else []
    if r.waits_for_children:
        waits.append("children")
    if r.due_at is not None:
        waits.append(f"until {when(r.due_at)}")
    shed = f"{r.reason}, " if r.reason else ""  # shed by a node short of memory
    return shed + ("waits for " + " or ".join(waits) if waits else "waits (for nothing: a cancel wakes it)")


async def cmd_show(args: argparse.Namespace) -> int:
    async with open_client(args, create=False) as client:
        try:
            info = await client.get(args.id)
        except IntegrityError as exc:
            # The row disagrees with the signed memory: nothing of it is shown (the client
            # has flagged the object). A verification failure, hence exit 1.
            where = f" at seq {exc.seq}" if exc.seq is not None else ""
            print(f"peo: error: object {clean(args.id)} fails verification{where}: {clean(exc.reason)}",
                  file=sys.stderr)
            return 1
        refused = await client.store.refused(args.id, limit=5)
        row = await client.store.get(args.id)  # claims without progress are the store's count
        forks = await client.store.forks(args.id)
    if args.json:
        doc = _show_doc(info)
        doc["stalls"], doc["stalled_on"] = row.stalls, list(row.stalled_on)
        doc["deleted_at"] = None if row.deleted_at is None else iso(row.deleted_at)
        doc["lineage"] = _lineage_doc(info, forks)
        doc["refused_signals"] = [{"id": r.id, "name": r.name, "reason": r.reason, "sender": r.sender,
                                   "refused_at": iso(r.refused_at)} for r in refused]
        print(dumps(doc))
    else:
        if row.deleted_at is not None:  # an operator's tombstone is its last word (peo rm)
            print(f"{'deleted':<9} at {when(row.deleted_at)}: peo undelete {clean(args.id)} brings it back as it was")
        _show_text(info, refused, row.stalls, row.stalled_on, lineage=_lineage_lines(info, forks))
    return 0


#: ``peo show`` names at most this many forks (then counts the rest).
FORKS_SHOWN = 5


def _lineage_doc(info: ObjectInfo, forks: Sequence[str]) -> dict[str, Any]:
    """``peo show --json``'s lineage: the parent and children (delegation, from the signed
    memory), the fork origin entry 0 records, and the forks the store lists."""
    first = info.memory[0].outcome if info.memory and info.memory[0].seq == 0 else {}
    origin = first.get("fork")
    children = [c.get("id") for e in info.memory if e.action is Action.DELEGATE
                for c in e.outcome.get("children", ()) if isinstance(c, Mapping)]
    return {"parent": info.context.parent, "children": children,
            "forked_from": dict(origin) if isinstance(origin, Mapping) else None, "forks": list(forks)}


def _lineage_lines(info: ObjectInfo, forks: Sequence[str]) -> list[tuple[str, str]]:
    """The lineage lines of ``peo show``: where a fork came from, children, forks."""
    doc = _lineage_doc(info, forks)
    lines = []
    origin = doc["forked_from"]
    if origin is not None:
        lines.append(("forked", f"from {origin.get('object')} at seq {origin.get('seq')}"))
    if doc["children"]:
        lines.append(("children", f"{len(doc['children'])} (peo ls --parent {info.id})"))
    if forks:
        more = f" and {len(forks) - FORKS_SHOWN} more" if len(forks) > FORKS_SHOWN else ""
        lines.append(("forks", ", ".join(forks[:FORKS_SHOWN]) + more))
    return lines


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
        "progress": progress_of(info),
        "last_error": _last_error(info),
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
    if PROGRESS_KEY in info.state:  # a durable function's answer to "what is it doing now?"
        head.append(("progress", compact(progress_of(info), 100)))
    if info.state:
        head.append(("state", compact(info.state, 100)))
    if info.result is not None:
        head.append(("result", compact(info.result, 100)))
    return head


def _last_error(info: ObjectInfo) -> dict[str, Any] | None:
    """The error the last failed entry recorded: {seq, class, message, retryable, traceback}
    (None for what an entry did not record), or None if no entry recorded one."""
    for e in reversed(info.memory):
        err = e.outcome.get("error")
        if isinstance(err, Mapping):
            tb = err.get("traceback")
            return {"seq": e.seq, "class": err.get("class"), "message": err.get("message"),
                    "retryable": err.get("retryable"), "traceback": tb if isinstance(tb, str) else None}
        if isinstance(err, str):  # entries written before errors were structured
            return {"seq": e.seq, "class": None, "message": err, "retryable": None, "traceback": None}
    return None


def _show_error(err: dict[str, Any]) -> None:
    """The last error, after the head: its class and message, then its traceback."""
    what = f"{err['class']}: {err['message']}" if err["class"] else str(err["message"])
    retry = {True: " (retryable)", False: " (not retryable)"}.get(err["retryable"], "")
    print(f"{'error':<9} {clean(what, 300)} at seq {err['seq']}{retry}")
    if err["traceback"]:
        for line in err["traceback"].rstrip("\n").splitlines():
            print(f"          {clean(line)}")
    print()


def _show_text(info: ObjectInfo, refused: Sequence[RefusedSignal] = (), stalls: int = 0,
               stalled_on: Sequence[str] = (), lineage: Sequence[tuple[str, str]] = ()) -> None:
    head = _show_head(info)
    head.extend(lineage)
    if stalls:  # self-healing: claims that ended with its node dead or hung (docs/operations.md)
        where = f" (on {', '.join(stalled_on)})" if stalled_on else ""
        head.append(("stalls", f"{stalls} {plural(stalls, 'claim')} in a row ended without progress{where}"))
    for k, v in head:
        print(f"{k:<9} {clean(v)}")
    print()
    if refused:
        # Signals the node would not deliver (unsigned, untrusted, replayed, too large): the
        # object never saw them; they are listed so that a sender learns why.
        for r in refused:
            print(f"{'refused':<9} signal {clean(r.name, 60)} from {clean(r.sender or 'no key', 20)} at "
                  f"{when(r.refused_at)}: {clean(r.reason, 200)}")
        print()
    err = _last_error(info)
    if err is not None:
        _show_error(err)
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
                  "List objects as a table (id, status, handler, seq, priority, reason), or as JSON with --json. "
                  "For a dormant object, REASON says what wakes it: a signal, its children, a time.",
                  ["peo ls", "peo ls --status dormant --handler approval", f"peo ls --parent {EXAMPLE_ID}",
                   "peo ls --label team=ops --label env=prod", "peo ls --json --limit 100 | jq '.[].id'"], cmd_ls)
    sp.add_argument("--status", choices=_STATUSES, help="only objects with this status")
    sp.add_argument("--json", action="store_true",
                    help="a JSON array of {id,status,handler,seq,priority,parent,reason}")
    sp.add_argument("--limit", type=positive_int, metavar="N", help="at most N objects")
    sp.add_argument("--after", metavar="ID", type=text_arg("object id"),
                    help="only objects with ids after ID (the next page: the last id of this one)")
    sp.add_argument("--handler", metavar="NAME", type=text_arg("handler"), help="only objects asking for this handler")
    sp.add_argument("--parent", metavar="ID", type=text_arg("parent id"),
                    help="only the children of this object (those it delegated to)")
    sp.add_argument("--deleted", action="store_true",
                    help="only the deleted objects (peo rm), which are otherwise left out; REASON says when")
    sp.add_argument("--label", action="append", metavar="KEY=VALUE", type=text_arg("label"),
                    help="only objects with this label (repeatable: all must match; a child carries its parent's "
                    "labels; objects created before the store was upgraded to list by label carry none)")


def _show_parser(sub: Subparsers) -> None:
    sp = add_verb(sub, "show", "show one object and its memory",
                  "Show an object's head (status, intent, context, state, a durable function's progress, result), "
                  "its last error with its traceback (if an entry recorded one) and one line per memory entry. "
                  "Status, result and reason are checked against the signed head entry (with the keys this set-up "
                  "trusts): a stored head that disagrees is refused (exit 1) and the object quarantined "
                  "(`peo resume ID` repairs it). "
                  "Signals a node refused to deliver (unsigned, untrusted, replayed, too large) are listed with why, "
                  "and claims that ended without progress (its node died or hung holding it) are counted. "
                  "Memory is shown as stored; `peo verify ID` checks its signatures and hash links.",
                  [f"peo show {EXAMPLE_ID}", f"peo show {EXAMPLE_ID} --json | jq .memory[-1]"], cmd_show)
    sp.add_argument("id", metavar="ID", type=text_arg("object id"))
    sp.add_argument("--json", action="store_true",
                    help="{id,status,intent,context,result,reason,state,progress,last_error,memory:[{seq,action,timestamp,"
                    "...}],refused_signals:[{id,name,reason,sender,refused_at}],stalls,stalled_on}; last_error is "
                    "{seq,class,message,retryable,traceback} or null; progress is what a durable function last gave "
                    "run.progress (state[\"fn.progress\"]) or null; refused_signals are the latest signals the "
                    "node would not deliver (at most 5); stalls counts its claims in a row that ended without "
                    "progress, stalled_on the nodes they were on; lineage is {parent,children,forked_from,forks} "
                    "(forked_from: {object,seq,hash} for a fork made by peo fork, else null); bytes appear as hex "
                    "strings")
    sp.add_argument("--policy", metavar="FILE", help="policy whose trusted keys to use")


_PARSERS = {"ls": _ls_parser, "show": _show_parser}


def register(sub: Subparsers, verb: str) -> None:
    _PARSERS[verb](sub)
