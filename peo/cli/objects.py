"""Verbs that act on objects: ``peo submit``, ``peo signal``, ``peo cancel``."""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING

from ..core.model import CANCEL_SIGNAL, Retry, Status
from .parser import (
    EXAMPLE_ID,
    add_verb,
    fail,
    labels,
    open_client,
    parse_json,
    positive_int,
    positive_seconds,
    text_arg,
)
from .render import clean

if TYPE_CHECKING:
    from .parser import Subparsers

__all__ = ["cmd_cancel", "cmd_signal", "cmd_submit", "register"]


async def cmd_submit(args: argparse.Namespace) -> int:
    goal = parse_json(args.goal, "--goal") if args.goal is not None else {}
    if not isinstance(goal, dict):
        fail("--goal must be a JSON object, e.g. '{\"steps\": 3}'")
    label_map = labels(args.label or [])
    retry = _retry(args)
    # No silent new key for a store whose objects were signed by keys kept elsewhere.
    async with open_client(args, identity=args.identity, new_key=args.new_key) as client:
        served = args.handler in await client.served_handlers()
        if not served and args.strict:
            print(f"peo: error: no node has served handler {clean(args.handler)!r} on this store in the last day:"
                  " nothing would run it (submit without --strict to queue it anyway)", file=sys.stderr)
            return 1
        # With --id: the same intent again prints the existing id (exit 0); another intent
        # raises ObjectExistsError naming what differs (exit 1); a bad id is a UsageError.
        oid = await client.submit(
            args.handler, goal, priority=args.priority, scope=args.scope, deadline=args.deadline,
            labels=label_map, max_failures=args.max_failures, max_steps=args.max_steps, retry=retry,
            object_id=args.id, max_recoveries=args.max_recoveries,
        )
    if not served:
        print(f"peo: warning: no node has served handler {clean(args.handler)!r} on this store in the last day; "
              "the object waits until one does (check the handler name; --strict refuses instead)", file=sys.stderr)
    print(oid)
    return 0


def _retry(args: argparse.Namespace) -> Retry | None:
    """The --retry-* options as a Retry (None if none is given); recorded in the intent."""
    names = None
    if args.non_retryable is not None:
        names = tuple(n.strip() for n in args.non_retryable.split(",") if n.strip())
    if args.retry_base is None and args.retry_max is None and args.max_attempts is None and names is None:
        return None
    return Retry(base=args.retry_base, max=args.retry_max, max_attempts=args.max_attempts, non_retryable=names)


async def cmd_signal(args: argparse.Namespace) -> int:
    if args.name == CANCEL_SIGNAL:
        fail(f"signal name {CANCEL_SIGNAL!r} is reserved: use `peo cancel {clean(args.id)}`")
    payload = parse_json(args.payload, "--payload") if args.payload is not None else None
    async with open_client(args, create=False, key=args.key) as client:
        await client.signal(args.id, args.name, payload)  # ObjectTerminatedError: exit 1, nothing written
        info = await client.get(args.id, memory=False)
    if info.status is Status.QUARANTINED:
        print(f"signal {clean(args.name)} kept for {clean(args.id)}: the object is quarantined and reads it "
              "only if it is resumed")
    else:
        print(f"signal {clean(args.name)} sent to {clean(args.id)}")
    return 0


async def cmd_cancel(args: argparse.Namespace) -> int:
    from ..client.operator import CancelOutcome

    async with open_client(args, create=False, key=args.key) as client:
        info = await client.get(args.id, memory=False)
        if info.status.is_final:
            print(f"peo: error: object {clean(args.id)} is already {info.status}: nothing to cancel", file=sys.stderr)
            return 1
        outcome = await client.cancel(args.id, force=args.force)
        key_id = client.key.key_id if outcome is CancelOutcome.CANCELLED else None
    if outcome is CancelOutcome.CANCELLED:
        print(f"cancelled {clean(args.id)} (no node held it: the terminate entry is signed with your key {key_id})")
    else:
        print(f"cancellation requested for {clean(args.id)}: the node holding it records it on its next cycle"
              " (peo cancel --force takes it over if that node is dead)")
    return 0


def _submit_parser(sub: Subparsers) -> None:
    sp = add_verb(sub, "submit", "create an object; prints its id",
                  "Create a new object that asks for HANDLER with a goal. Its instantiation entry is signed "
                  "with the client key. Prints only the new object's id, so it composes in scripts. With --id "
                  "the submit is idempotent: the same id and intent again prints the existing id (exit 0); "
                  "the same id with another intent exits 1 and says what differs.",
                  ["peo submit research --goal '{\"docs\": 10}'",
                   "peo submit research --goal @goal.json --priority 5 --label team=search",
                   "ID=$(peo submit approval --deadline 3600)",
                   "peo submit research --id order-123 --max-attempts 3 --non-retryable ValueError,KeyError"],
                  cmd_submit)
    sp.add_argument("handler", metavar="HANDLER", type=text_arg("handler"), help="capability (handler) name")
    sp.add_argument("--goal", metavar="JSON", type=text_arg("--goal"),
                    help="the goal: a JSON object, or @FILE to read it from a file (default: {})")
    sp.add_argument("--priority", type=int, default=0, metavar="N", help="higher runs first (default 0)")
    sp.add_argument("--scope", default="default", metavar="NAME", type=text_arg("scope"),
                    help="trust scope nodes evaluate against their policy (default: default)")
    sp.add_argument("--deadline", type=positive_seconds, metavar="SECONDS",
                    help="terminate the object if it has not finished this many seconds from now")
    sp.add_argument("--label", action="append", metavar="K=V", type=text_arg("label"),
                    help="a label (repeatable)")
    sp.add_argument("--identity", default="anonymous", metavar="NAME", type=text_arg("identity"),
                    help="who submits (policies may accept only some identities; default: anonymous)")
    sp.add_argument("--id", metavar="ID", type=text_arg("object id"),
                    help="choose the object's id (printable, no whitespace, at most 128 characters): submitting "
                         "the same id and intent again prints it and creates nothing")
    sp.add_argument("--max-failures", type=positive_int, metavar="N", help="consecutive failures before it fails")
    sp.add_argument("--max-recoveries", type=positive_int, metavar="N",
                    help="claims without progress, or failed steps of one error class, in a row before a node "
                         "restores the known-good state, then quarantines (default: the node's max_recoveries)")
    sp.add_argument("--max-attempts", type=positive_int, metavar="N",
                    help="attempts of one step before the object fails (the same as --max-failures)")
    sp.add_argument("--retry-base", type=positive_seconds, metavar="SECONDS",
                    help="first retry delay after a failed step (doubles per failure)")
    sp.add_argument("--retry-max", type=positive_seconds, metavar="SECONDS", help="longest retry delay")
    sp.add_argument("--non-retryable", metavar="CLASSES", type=text_arg("--non-retryable"),
                    help="exception class names, comma-separated (e.g. ValueError,KeyError): such a failure, or "
                         "one of a subclass, fails the object at once")
    sp.add_argument("--max-steps", type=positive_int, metavar="N", help="step budget")
    sp.add_argument("--new-key", action="store_true",
                    help="create a new client key even though the store already has objects (then trust its .pub)")
    sp.add_argument("--strict", action="store_true",
                    help="refuse (exit 1) when no node has served HANDLER on this store in the last day; without "
                    "it, such a submit warns on stderr and queues the object")


def _signal_parser(sub: Subparsers) -> None:
    sp = add_verb(sub, "signal", "send a named signal to an object",
                  "Put a signal with an optional JSON payload in the object's inbox; an object waiting for it wakes. "
                  "Exit 1 if the object has terminated (nothing is written); a quarantined object keeps the signal "
                  "for when it is resumed. The signal is sealed with your client key (or --key FILE): a node "
                  "delivers it only if its policy trusts that key for the object, and `peo show ID` lists a "
                  "refused one with why. "
                  "To cancel, use `peo cancel ID`.",
                  [f"peo signal {EXAMPLE_ID} approve --payload '{{\"approved\": true}}'"], cmd_signal)
    sp.add_argument("id", metavar="ID", type=text_arg("object id"))
    sp.add_argument("name", metavar="NAME", type=text_arg("signal name"))
    sp.add_argument("--payload", metavar="JSON", type=text_arg("--payload"), help="any JSON value, or @FILE")
    sp.add_argument("--key", metavar="FILE", type=text_arg("--key"),
                    help="sign the signal with this key file (e.g. an operator's, from `peo keys --new FILE`) "
                    "instead of the deployment's client key; nodes deliver it only if their policy trusts it")


def _cancel_parser(sub: Subparsers) -> None:
    sp = add_verb(sub, "cancel", "cancel an object",
                  "Cancel an object. If a node holds it, the node records the cancel on its next cycle. If "
                  "none does (no node serves its handler, or every node is down), peo writes the terminate "
                  "entry itself, signed with your client key, and the object ends at once. Exit 1 if the "
                  "object has already terminated.",
                  [f"peo cancel {EXAMPLE_ID}", f"peo cancel --force {EXAMPLE_ID}"], cmd_cancel)
    sp.add_argument("id", metavar="ID", type=text_arg("object id"))
    sp.add_argument("--force", action="store_true",
                    help="also take the object over from a node that still holds its lease (a dead node)")
    sp.add_argument("--key", metavar="FILE", type=text_arg("--key"),
                    help="sign the cancel (and a terminate entry written for it) with this key file")


_PARSERS = {"submit": _submit_parser, "signal": _signal_parser, "cancel": _cancel_parser}


def register(sub: Subparsers, verb: str) -> None:
    _PARSERS[verb](sub)
