"""``peo pending``, ``peo approve``, ``peo deny``: answer what agents wait for from people."""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from .parser import EXAMPLE_ID, add_verb, open_client, text_arg
from .render import clean, jsonable, table, when

if TYPE_CHECKING:
    from .parser import Subparsers

__all__ = ["cmd_answer", "cmd_pending", "register"]


async def cmd_pending(args: argparse.Namespace) -> int:
    from ..agents.approvals import pending

    async with open_client(args, create=False) as client:
        waiting = await pending(client, object_id=args.id)
    if args.json:
        print(json.dumps(jsonable([p.as_json() for p in waiting]), ensure_ascii=False, indent=1))
        return 0
    if not waiting:
        print("nothing waits for a person")
        return 0
    rows = []
    for p in waiting:
        if p.kind == "approval":
            what = f"{p.tool}({json.dumps(p.arguments, ensure_ascii=False, sort_keys=True)})"
            answer = f"peo approve {p.object_id} {p.digest}"
        elif p.kind == "question":
            what, answer = p.question or "", f"peo signal {p.object_id} human --payload '\"...\"'"
        else:
            what = f"{p.tool}({json.dumps(p.arguments, ensure_ascii=False, sort_keys=True)}): did it happen?"
            answer = f"peo signal {p.object_id} resolve --payload '{{\"happened\": true}}'"
        rows.append((p.object_id, p.handler, p.kind, when(p.since), clean(what, 100), clean(answer, 200)))
    table(("ID", "HANDLER", "WAITS FOR", "SINCE", "WHAT", "ANSWER WITH"), rows, sys.stdout)
    return 0


async def cmd_answer(args: argparse.Namespace) -> int:
    from ..agents.approvals import answer_approval

    approve = args.verb == "approve"
    async with open_client(args, create=False, key=args.key) as client:
        done = await answer_approval(client, args.id, args.digest, approve=approve, reason=args.reason)
    verb = "approved" if approve else "denied"
    print(f"{verb} {clean(done.tool or '?')} for {clean(args.id)} (call {clean(done.call or '?')}); "
          "the agent goes on at its next cycle")
    return 0


def _pending_parser(sub: Subparsers) -> None:
    sp = add_verb(sub, "pending", "list what agents wait for from people (approvals, questions)",
                  "List the dormant agents that wait for a person: a tool call that needs approval (with the "
                  "tool, its exact arguments and the call's digest), a question the model asked (ask_human), or "
                  "a call whose outcome is unknown because its node died mid-call. Each line says the command "
                  "that answers it.",
                  ["peo pending", f"peo pending {EXAMPLE_ID} --json"], cmd_pending)
    sp.add_argument("id", metavar="ID", nargs="?", type=text_arg("object id"), help="only this object")
    sp.add_argument("--json", action="store_true", help="a JSON array of {object_id,handler,kind,signal,since,"
                                                        "tool,arguments,digest,call,question}")


def _answer_parser(sub: Subparsers, verb: str) -> None:
    approve = verb == "approve"
    sp = add_verb(sub, verb, f"{verb} the tool call an agent waits for, named by its digest",
                  f"{'Approve' if approve else 'Deny'} the one tool call object ID waits for. DIGEST is the "
                  "call's digest as peo pending prints it (sha256 of the tool's name and its exact arguments): "
                  "an answer for other arguments, or for an earlier call, is refused. The answer is a signal "
                  "signed with your key; the node also checks that the policy lets your key send it"
                  + ("." if approve else "; the model is told the call was denied, and why."),
                  [f"peo {verb} {EXAMPLE_ID} sha256:3f2a...c9" + ("" if approve else " --reason 'not this customer'")],
                  cmd_answer)
    sp.add_argument("id", metavar="ID", type=text_arg("object id"))
    sp.add_argument("digest", metavar="DIGEST", type=text_arg("digest"))
    sp.add_argument("--reason", type=text_arg("reason"), required=not approve,
                    help="why (shown to the model)" if not approve else "a note recorded with the approval")
    sp.add_argument("--key", metavar="FILE", help="sign with this key file instead of the local client key")


def register(sub: Subparsers, verb: str) -> None:
    if verb == "pending":
        _pending_parser(sub)
    else:
        _answer_parser(sub, verb)
