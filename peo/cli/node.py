"""``peo node``: run a worker node; its app (``--app MODULE:ATTR``) and profile (TOML)."""

from __future__ import annotations

import argparse
import importlib
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import NodeSettings, resolve_policy
from . import exit_at_once
from .parser import add_verb, fail, positive_int, positive_seconds, store_url, text_arg
from .render import clean, plural

if TYPE_CHECKING:
    from ..app import App
    from ..core.crypto import SigningKey
    from ..core.policy import Policy
    from ..healing.config import KnownGood
    from ..store import Store
    from .parser import Subparsers

__all__ = ["cmd_node", "load_app", "register"]

_APP_SPEC = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def load_app(spec: str) -> App:
    """Import ``MODULE:ATTR`` (from PYTHONPATH or the current directory); it must be a peo.App."""
    from ..app import App

    if not _APP_SPEC.match(spec):
        fail(f"--app {spec!r} must look like MODULE:ATTR, e.g. myagents:app")
    module_name, _, attr = spec.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # like `python -m`: modules in the current directory import
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name or (exc.name and module_name.startswith(exc.name + ".")):
            fail(f"cannot import module {module_name!r}: not found on PYTHONPATH or in {cwd}")
        fail(f"importing module {module_name!r} failed: {exc}")
    except Exception as exc:  # the user's module raised while importing: report, no traceback
        fail(f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}")
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            fail(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, App):
        fail(f"{spec} is a {type(obj).__name__}, not a peo.App")
    return obj


def _node_key(args: argparse.Namespace, settings: NodeSettings) -> SigningKey:
    from .. import keys

    if args.key is not None:
        # An explicit key file must exist: silently creating a new identity for a node
        # would make its entries unverifiable elsewhere.
        if not Path(args.key).exists():
            fail(f"key file {args.key} does not exist (omit --key to use {keys.key_path('node', args.store)})")
        return keys.load_key_file(args.key)
    if settings.key_file:
        return keys.load_or_create(settings.key_file)  # a profile's key is created on first use
    return keys.load_key(None, "node", store_url(args, settings.store))


async def cmd_node(args: argparse.Namespace) -> int:
    from ..healing.config import load_policy_repaired, load_profile_repaired
    from ..healing.memory import parse_limit
    from ..store import open_store

    flags = {"app": args.app, "node_id": args.node_id, "concurrency": args.concurrency,
             "lease_ttl": args.lease_ttl, "policy": args.policy, "memory_limit": args.memory_limit}
    # A profile or policy that went bad is replaced by its last known-good copy (kept, signed,
    # each time one loads): the node starts, and says so (peo.healing.config).
    known = _known_good(args)
    repairs = []
    if args.profile:
        settings, repaired = load_profile_repaired(args.profile, known, **flags)
        repairs.append(repaired)
    else:
        settings = NodeSettings().with_options(**flags)
    if not settings.app:
        fail("which handlers should this node run? give --app MODULE:ATTR (or app = ... in the profile)")
    parse_limit(settings.memory_limit)  # a malformed --memory-limit (or profile value) is a UsageError now
    app = load_app(settings.app)
    if not app.handlers:
        fail(f"{settings.app} has no handlers registered")
    if settings.policy is not None:
        policy, repaired = load_policy_repaired(settings.policy, known)
        repairs.append(repaired)
    else:
        policy = resolve_policy(None)
    for repair in (r for r in repairs if r is not None):
        print(f"peo: warning: {clean(repair.line())}\n  what was wrong: {clean(repair.problem)}\n"
              + "\n".join(f"  {clean(line)}" for line in repair.diff.splitlines()), file=sys.stderr)
    notes = "; ".join(r.line() for r in repairs if r is not None) or None
    key = _node_key(args, settings)
    url = store_url(args, settings.store)
    store = open_store(url)
    # An unreachable store is reported before the node says it is serving.
    await _open_store(store, args.wait_for_store)
    try:
        return await _serve(args, store, url, app, settings, policy, key, notes)
    finally:
        await store.aclose()


def _known_good(args: argparse.Namespace) -> KnownGood | None:
    """Where this node keeps its known-good configuration: beside its keys, signed with the
    local node key (None if that key cannot be had: then nothing is kept or repaired)."""
    from .. import keys
    from ..errors import PeoError
    from ..healing.config import KnownGood

    url = store_url(args, None)
    try:
        return KnownGood(keys.key_dir(url) / "known-good", keys.load_key(None, "node", url))
    except (PeoError, OSError):
        return None


async def _open_store(store: Store, bound: float | None) -> None:
    """Open the store as the library's Node does: a failure that may pass (a locked SQLite
    file, a PostgreSQL server not up yet) is logged and retried with the same backoff, for
    at most ``bound`` seconds (None: until it opens or the node is interrupted); one that
    cannot pass (bad URL, refused login, missing directory) raises at once."""
    import asyncio

    from ..errors import StoreError
    from ..node.leases import open_with_retry

    if bound is None:
        await open_with_retry(store, asyncio.Event())
        return
    give_up = asyncio.Event()
    timer = asyncio.get_running_loop().call_later(bound, give_up.set)
    try:
        if await open_with_retry(store, give_up):
            return
    finally:
        timer.cancel()
    try:  # one last attempt, so that the message says what is wrong now
        await store.open()
    except StoreError as exc:
        raise StoreError(f"gave up waiting for the store after --wait-for-store {bound:g} s: {exc}",
                         retryable=False) from None


async def _serve(args: argparse.Namespace, store: Store, url: str, app: App, settings: NodeSettings,
                 policy: Policy, key: SigningKey, notes: str | None) -> int:
    from ..healing.memory import format_size
    from ..node import Node
    from ..node.signals import serve_until_signalled

    node = Node(store, app, settings, policy=policy, key=key)
    node.notes = notes  # registered with the node: peo nodes shows it
    name = clean(node.node_id)

    def say(what: str) -> None:
        print(f"peo node {name}: {what}", file=sys.stderr, flush=True)

    mode = "until idle" if args.until_idle else "until stopped (SIGTERM/SIGINT)"
    serving = (f"serving {', '.join(sorted(app.handlers))} from {clean(url)} {mode}; "
               f"concurrency {settings.concurrency}, lease TTL {settings.lease_ttl:g} s, policy {policy.ref}, "
               f"key {key.key_id}")
    if node.memory is not None:
        serving += f"; memory limit {format_size(node.memory.limit)} ({node.memory.source})"
    started = time.monotonic()
    abandoned = False
    try:
        # "serving" is said once the signal handlers are in place: whoever waits for this
        # line may signal the node at once.
        abandoned = await serve_until_signalled(node, until_idle=args.until_idle, announce=say,
                                                on_ready=lambda: say(serving))
    finally:
        if abandoned:
            say("abandoned the steps in flight")
            exit_at_once()
        s = node.stats
        say(f"stopped after {time.monotonic() - started:.1f} s: {s['steps']} {plural(s['steps'], 'step')}, "
            f"{s['claims']} {plural(s['claims'], 'claim')}, {s['quarantined']} quarantined"
            + (f", {s['sheds']} shed for memory" if "sheds" in s else ""))
        for why, n in node.left_behind.items():  # until idle: what this node cannot run, and why
            say(f"left {n} {plural(n, 'object')} behind: {clean(why)} (peo ls shows them)")
    return 1 if abandoned else 0


def _node_parser(sub: Subparsers) -> None:
    sp = add_verb(sub, "node", "run a worker node",
                  "Run a stateless node: claim due objects whose handler the app registers and whose trust scope "
                  "the policy accepts, run cycles, append signed entries. MODULE is imported from PYTHONPATH or "
                  "the current directory. With --profile, settings come from a node profile (TOML keys: node_id, "
                  "key_file, store, policy, concurrency, lease_ttl, poll_interval, idle_horizon, app); flags "
                  "override the profile, and the "
                  "profile's store overrides $PEO_STORE. Relative paths are relative to the current directory. "
                  "SIGTERM or SIGINT stops it gracefully (exit 0).",
                  ["peo node --app myagents:app", "peo node --profile nodes/local.toml --until-idle",
                   "peo node --app myagents:app --node-id worker-2 --concurrency 64 --policy policies/strict.toml",
                   "peo --store postgresql://peo@db:5432/agents node --app myagents:app --wait-for-store 60"],
                  cmd_node)
    sp.add_argument("--app", metavar="MODULE:ATTR", type=text_arg("--app"), help="the peo.App with the handlers")
    sp.add_argument("--profile", metavar="FILE", help="node profile (TOML), e.g. nodes/local.toml")
    sp.add_argument("--node-id", metavar="ID", type=text_arg("node id"),
                    help="this node's id (default: HOST-PID; reuse it after a restart to reclaim leases at once)")
    sp.add_argument("--concurrency", type=positive_int, metavar="N", help="objects held at once (default 32)")
    sp.add_argument("--lease-ttl", type=positive_seconds, metavar="SECONDS",
                    help="lease time: a crashed node's objects are taken over after it (default 1.5)")
    sp.add_argument("--policy", metavar="FILE", help="policy document (default: the built-in default policy)")
    sp.add_argument("--key", metavar="FILE",
                    help="existing signing key file (default: $PEO_HOME/keys/node.key, created on first use)")
    sp.add_argument("--memory-limit", metavar="SIZE", type=text_arg("--memory-limit"),
                    help="memory budget: admit objects while memory stays under 85%% of SIZE, shed the lowest "
                    "priority ones above it (e.g. 400MiB, 2GiB; 'auto', the default: the cgroup v2 memory.max "
                    "when set; 'off': no budget)")
    sp.add_argument("--until-idle", action="store_true",
                    help="exit 0 once no object is runnable, leased or due soon")
    sp.add_argument("--wait-for-store", type=_wait_seconds, metavar="SECONDS",
                    help="wait at most this long for a store that is locked or not up yet, logging each retry "
                    "(default: wait until it opens; exit 1 when the time passes)")


def _wait_seconds(value: str) -> float:
    """--wait-for-store: seconds, 0 for no waiting at all."""
    return 0.0 if value.strip() in ("0", "0.0") else positive_seconds(value)


_PARSERS = {"node": _node_parser}


def register(sub: Subparsers, verb: str) -> None:
    _PARSERS[verb](sub)
