"""The ``peo`` command line: operate a fleet of persistent executable objects.

``peo [--store URL] [-v] VERB ...``. The store comes from ``--store``, else ``PEO_STORE``,
else ``sqlite:///peo.db`` in the current directory.

Exit codes: 0 success; 1 an operation or a verification failed (unknown id, tampered
chain, unreachable store); 2 bad usage or bad input (malformed JSON, bad flag, unreadable
file). A user mistake never prints a traceback: every error the library raises on purpose
(:class:`peo.errors.PeoError`) becomes one ``peo: error: ...`` line on stderr.

Output for people is aligned plain text (no extra dependency); ``--json`` output is for
programs and is always valid JSON (bytes become hex strings, non-finite floats strings).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import importlib
import inspect
import json
import logging
import math
import os
import re
import signal as _signal
import sys
import time
import tomllib
import traceback
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

from .errors import (
    CodecError,
    ConflictError,
    IntegrityError,
    NotFoundError,
    PeoError,
    PolicyError,
    UsageError,
)

if TYPE_CHECKING:  # annotations only; the verbs import what they use
    from .app import App
    from .core.crypto import SigningKey
    from .core.policy import Policy
    from .store import Store

__all__ = ["entry", "main"]

log = logging.getLogger("peo.cli")

DEFAULT_STORE = "sqlite:///peo.db"
#: Largest --goal / --payload accepted, before JSON parsing (the policy limits the encoded size later).
MAX_JSON_BYTES = 1 << 20
#: Largest export file ``peo import`` reads (the client refuses larger documents anyway).
MAX_IMPORT_BYTES = 256 << 20
#: ``peo verify`` reports progress on stderr every this many objects.
PROGRESS_EVERY = 500

_STATUSES = ("runnable", "running", "dormant", "terminated", "quarantined")
_PROFILE_KEYS: dict[str, type | tuple[type, ...]] = {
    "node_id": str,
    "key_file": str,
    "store": str,
    "policy": str,
    "concurrency": int,
    "lease_ttl": (int, float),
    "app": str,
}
_APP_SPEC = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


#: Set when ``peo node`` abandoned steps in flight: the console script must not wait for them.
_exit_now = False


class InputError(UsageError):
    """Bad input detected by the CLI itself (exit 2)."""


# -- small helpers ------------------------------------------------------------------------


def _fail(message: str) -> NoReturn:
    raise InputError(message)


def _clean(text: object, limit: int | None = None) -> str:
    """Text from the store, made safe for a terminal: control characters (which could
    carry escape sequences from an untrusted object) are shown escaped."""
    s = str(text)
    s = "".join(c if (32 <= ord(c) != 127 and not 0x80 <= ord(c) < 0xA0) else repr(c)[1:-1] for c in s)
    if limit is not None and len(s) > limit:
        s = s[: max(limit - 1, 0)] + "…"
    return s


def _valid_text(value: str, what: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        _fail(f"{what} is not valid UTF-8")
    return value


def _text_arg(what: str) -> Callable[[str], str]:
    def convert(value: str) -> str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise argparse.ArgumentTypeError(f"{what} is not valid UTF-8") from None
        return value

    convert.__name__ = what  # argparse names the type in its messages
    return convert


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be at least 1")
    return n


def _positive_seconds(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not math.isfinite(x) or x <= 0 or x > 1e9:
        raise argparse.ArgumentTypeError(f"{value!r} must be a positive number of seconds")
    return x


def _read_limited(path: str, limit: int, what: str) -> bytes:
    """Read a file the user named; any problem with it is bad input (exit 2)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        _fail(f"{what} {path} does not exist")
    except IsADirectoryError:
        _fail(f"{what} {path} is a directory")
    except OSError as exc:
        _fail(f"cannot read {what} {path}: {exc.strerror or exc}")
    if len(data) > limit:
        _fail(f"{what} {path} is larger than {limit} bytes")
    return data


def parse_json(text: str, what: str) -> Any:
    """Parse a JSON argument (or ``@FILE``) with a size limit; errors name line and column."""
    if text.startswith("@"):
        raw = _read_limited(text[1:], MAX_JSON_BYTES, f"{what} file")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            _fail(f"{what} file {text[1:]} is not UTF-8 text")
    _valid_text(text, what)
    if len(text.encode("utf-8")) > MAX_JSON_BYTES:
        _fail(f"{what} is larger than {MAX_JSON_BYTES} bytes")

    def no_constant(name: str) -> Any:
        raise ValueError(f"{name} is not allowed (JSON has no non-finite numbers)")

    def finite(literal: str) -> float:
        value = float(literal)
        if not math.isfinite(value):  # 1e400 parses as inf, which no store can hold faithfully
            raise ValueError(f"number {literal[:40]} is out of range")
        return value

    try:
        return json.loads(text, parse_constant=no_constant, parse_float=finite)
    except json.JSONDecodeError as exc:
        _fail(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}")
    except RecursionError:
        _fail(f"{what} is nested too deeply")
    except ValueError as exc:  # parse_constant, or an integer with too many digits
        _fail(f"{what} is not valid JSON: {exc}")


def _labels(pairs: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            _fail(f"bad label {pair!r}: use KEY=VALUE")
        out[key] = value
    return out


def jsonable(value: Any) -> Any:
    """A JSON-safe copy: bytes become hex strings, tuples lists, keys strings, and a
    non-finite float its name (JSON has no NaN)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, Mapping):
        return {(k if isinstance(k, str) else str(jsonable(k))): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v) for v in value]
    import enum

    if isinstance(value, enum.Enum):
        return jsonable(value.value)
    import attrs

    if attrs.has(type(value)):
        from .core.codec import unstructure

        return jsonable(unstructure(value))
    return str(value)


def _dumps(value: Any, *, indent: int | None = 2) -> str:
    return json.dumps(jsonable(value), indent=indent, ensure_ascii=False, allow_nan=False)


def _compact(value: Any, limit: int = 60) -> str:
    return _clean(json.dumps(jsonable(value), ensure_ascii=False, separators=(",", ":")), limit)


def _when(ns: int | None) -> str:
    if ns is None:
        return "-"
    t = _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def _iso(ns: int) -> str:
    return _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.UTC).isoformat().replace("+00:00", "Z")


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], out: IO[str]) -> None:
    """An aligned plain-text table (the last column is not padded)."""
    cells = [[_clean(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in cells:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))

    def line(values: Sequence[str]) -> str:
        parts = [v.ljust(widths[i]) for i, v in enumerate(values[:-1])]
        return "  ".join([*parts, values[-1]]).rstrip()

    print(line(list(headers)), file=out)
    for r in cells:
        print(line(r), file=out)


def _store_url(args: argparse.Namespace, fallback: str | None = None) -> str:
    url = args.store if args.store is not None else fallback
    if url is None:
        url = os.environ.get("PEO_STORE") or DEFAULT_STORE
    return str(url)


def _client(args: argparse.Namespace, **kw: Any) -> Any:
    from .client import Client

    policy = getattr(args, "policy", None)
    if policy is not None:
        from .core.policy import Policy

        kw["policy"] = Policy.load(policy)
    return Client(_store_url(args), **kw)


# -- verbs --------------------------------------------------------------------------------


async def cmd_init(args: argparse.Namespace) -> int:
    from . import _local
    from .store import make_store

    url = _store_url(args)
    store = make_store(url)
    existed: bool | None = None
    if url.startswith("sqlite:"):
        existed = os.path.exists(getattr(store, "path", ""))
    async with store:
        pass  # opening brings the schema to the current version (idempotent)
    state = "" if existed is None else (" (existing)" if existed else " (created)")
    print(f"store       {_clean(url)}: schema ready{state}")
    for name, label in (("client", "client key"), ("node", "node key")):
        path = _local.key_path(name)
        was = path.exists()
        key = _local.load_key(path, name)
        print(f"{label:<11} {_clean(path)}: {'existing' if was else 'created'} (key id {key.key_id})")
    return 0


async def cmd_submit(args: argparse.Namespace) -> int:
    goal = parse_json(args.goal, "--goal") if args.goal is not None else {}
    if not isinstance(goal, dict):
        _fail("--goal must be a JSON object, e.g. '{\"steps\": 3}'")
    labels = _labels(args.label or [])
    async with _client(args, identity=args.identity) as client:
        oid = await client.submit(
            args.handler, goal, priority=args.priority, scope=args.scope, deadline=args.deadline,
            labels=labels, max_failures=args.max_failures, max_steps=args.max_steps,
        )
    print(oid)
    return 0


async def cmd_ls(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        rows = await client.list(status=args.status, limit=args.limit)
    now = time.time_ns()
    if args.json:
        doc = [
            {"id": r.id, "status": r.status_at(now), "handler": r.handler, "seq": r.seq, "priority": r.priority,
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
        ((r.id, r.status_at(now), r.handler, r.seq, r.priority, _clean(r.reason or "", 60)) for r in rows),
        sys.stdout,
    )
    return 0


def _short_outcome(action: str, o: Mapping[str, Any], limit: int = 100) -> str:
    """One line saying what an entry recorded."""
    parts: list[str] = []
    if action == "instantiate":
        raw = o.get("intent")
        intent: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        parts.append(f"{intent.get('handler', '?')} {_compact(intent.get('goal', {}), 40)}")
    if "reason" in o and action == "terminate":
        parts.append(str(o["reason"]))
    status = o.get("status")
    if (status is not None and status != "ok") or (status == "ok" and action == "execute"):
        parts.append(str(status))
    err = o.get("error")
    if isinstance(err, Mapping):
        parts.append(f"{err.get('class')}: {err.get('message')}")
    if "trigger" in o:
        parts.append(f"trigger {o['trigger']}")
    if isinstance(o.get("retry_in"), int):
        parts.append(f"retry in {o['retry_in'] / 1e9:.2f} s")
    wake = o.get("wake")
    if isinstance(wake, Mapping):
        if wake.get("signal"):
            parts.append(f"wait for signal {wake['signal']}")
        if isinstance(wake.get("until"), int):
            parts.append(f"until {_when(wake['until'])[11:]}")  # the time of day; the date is in TIME
    if isinstance(o.get("children"), list):
        parts.append(f"{len(o['children'])} children" + (" (wait)" if o.get("wait") else ""))
    if action == "mutate" and isinstance(o.get("new"), Mapping):
        parts.append("refined " + ", ".join(sorted(map(str, o["new"]))))
    if action == "execute" and o.get("status") == "cannot_do":
        parts.append(f"cannot do {o.get('capability')}")
    if isinstance(o.get("signals"), list):
        names = [str(s.get("name")) for s in o["signals"] if isinstance(s, Mapping)]
        parts.append("signals " + ",".join(names))
    if "state" in o:
        parts.append("state " + _compact(o["state"], 30))
    if action == "terminate" and o.get("result") is not None:
        parts.append("result " + _compact(o["result"], 30))
    if isinstance(o.get("latency"), int):
        parts.append(f"{o['latency'] / 1e6:.1f} ms")
    return _clean("; ".join(parts), limit)


async def cmd_show(args: argparse.Namespace) -> int:
    from .core.codec import unstructure

    async with _client(args) as client:
        info = await client.get(args.id)
    if args.json:
        doc = {
            "id": info.id,
            "status": str(info.status),
            "seq": info.seq,
            "intent": unstructure(info.intent),
            "context": unstructure(info.context),
            "result": info.result,
            "reason": info.reason,
            "state": info.state,
            "memory": [
                {"seq": e.seq, "action": str(e.action), "timestamp": _iso(e.timestamp), "timestamp_ns": e.timestamp,
                 "origin_node": e.origin_node, "policy_ref": e.policy_ref, "signer": e.signer, "hash": e.hash,
                 "outcome": e.outcome}
                for e in info.memory
            ],
        }
        print(_dumps(doc))
        return 0
    ctx, intent = info.context, info.intent
    c = intent.constraints
    head = [
        ("id", info.id),
        ("status", f"{info.status}" + (f" ({_clean(info.reason, 100)})" if info.reason else "")),
        ("handler", intent.handler),
        ("goal", _compact(intent.goal, 100)),
        ("context", f"scope {ctx.trust_scope}, identity {ctx.identity}, priority {ctx.priority}, "
                    f"parent {ctx.parent or '-'}"),
    ]
    if ctx.labels:
        head.append(("labels", ", ".join(f"{k}={v}" for k, v in sorted(ctx.labels.items()))))
    limits = [f"deadline {_when(c.deadline)}" if c.deadline else "",
              f"max failures {c.max_failures}" if c.max_failures else "",
              f"max steps {c.max_steps}" if c.max_steps else ""]
    if any(limits):
        head.append(("limits", ", ".join(x for x in limits if x)))
    head.append(("seq", str(info.seq)))
    if info.state:
        head.append(("state", _compact(info.state, 100)))
    if info.result is not None:
        head.append(("result", _compact(info.result, 100)))
    for k, v in head:
        print(f"{k:<9} {_clean(v)}")
    print()
    table(
        ("SEQ", "ACTION", "TIME (UTC)", "NODE", "OUTCOME"),
        ((e.seq, e.action, _when(e.timestamp), _clean(e.origin_node, 24), _short_outcome(str(e.action), e.outcome))
         for e in info.memory),
        sys.stdout,
    )
    if len(info.memory) != info.seq + 1:
        print(f"(only {len(info.memory)} of {info.seq + 1} entries decode: run `peo verify {info.id}`)")
    return 0


async def cmd_verify(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        ids = list(args.ids) if args.ids else [r.id for r in await client.list()]
        if not ids:
            print("no objects to verify")
            return 0
        ok = failed = 0
        for n, oid in enumerate(ids, 1):
            try:
                count = await client.verify(oid)
            except NotFoundError:
                failed += 1
                print(f"FAIL  {_clean(oid)}  no object {_clean(oid)}")
            except IntegrityError as exc:
                failed += 1
                where = f"seq {exc.seq}: " if exc.seq is not None else ""
                print(f"FAIL  {_clean(oid)}  {where}{_clean(exc.reason)}")
            except CodecError as exc:
                failed += 1
                print(f"FAIL  {_clean(oid)}  {_clean(exc)}")
            else:
                ok += 1
                print(f"OK    {_clean(oid)}  {count} entries")
            if len(ids) > PROGRESS_EVERY and n % PROGRESS_EVERY == 0:
                print(f"peo verify: {n}/{len(ids)} objects checked", file=sys.stderr, flush=True)
    print(f"verified {len(ids)} object(s): {ok} ok, {failed} failed")
    return 1 if failed else 0


async def cmd_signal(args: argparse.Namespace) -> int:
    payload = parse_json(args.payload, "--payload") if args.payload is not None else None
    async with _client(args) as client:
        await client.signal(args.id, args.name, payload)
    print(f"signal {_clean(args.name)} sent to {_clean(args.id)}")
    return 0


async def cmd_cancel(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        row = await client.store.get(args.id)
        if row.status in ("terminated", "quarantined"):
            print(f"peo: error: object {_clean(args.id)} is already {row.status}: nothing to cancel", file=sys.stderr)
            return 1
        await client.cancel(args.id)
    print(f"cancellation requested for {_clean(args.id)} (a node records it on its next cycle)")
    return 0


async def cmd_export(args: argparse.Namespace) -> int:
    async with _client(args) as client:
        data = await client.export(args.id)
    target = args.output if args.output is not None else f"{args.id}.peo"
    if target == "-":
        out = getattr(sys.stdout, "buffer", None)
        if out is None:
            _fail("standard output does not accept binary data")
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
        _fail(f"cannot write {target}: {exc.strerror or exc}")
    print(f"exported {_clean(args.id)} ({len(data)} bytes) to {_clean(target)}")
    return 0


async def cmd_import(args: argparse.Namespace) -> int:
    if args.file == "-":
        data = sys.stdin.buffer.read(MAX_IMPORT_BYTES + 1)
        if len(data) > MAX_IMPORT_BYTES:
            _fail(f"standard input is larger than {MAX_IMPORT_BYTES} bytes")
    else:
        data = _read_limited(args.file, MAX_IMPORT_BYTES, "export file")
    async with _client(args) as client:
        try:
            oid = await client.import_(data)
        except (IntegrityError, CodecError) as exc:
            # Tampered, untrusted, damaged or not an export at all: the file is refused and
            # nothing was written. A verification failure, hence exit 1, not 2.
            print(f"peo: error: import refused: {_clean(exc)}", file=sys.stderr)
            return 1
        except ConflictError:
            print("peo: error: import refused: an object with this id already exists in the store", file=sys.stderr)
            return 1
    print(oid)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """Synchronous on purpose: the demo runs its own event loop and node processes."""
    try:
        from . import demo
    except ImportError as exc:
        print(f"peo: error: the demo is not available in this installation ({exc})", file=sys.stderr)
        return 1
    argv = list(args.demo_args)
    if args.store is not None:
        argv = ["--store", args.store, *argv]
    try:
        return int(demo.main(argv) or 0)
    except SystemExit as exc:  # the demo's own argparse (--help, bad option)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)


# -- node ---------------------------------------------------------------------------------


def load_profile(path: str) -> dict[str, Any]:
    """Read a node profile (TOML); unknown keys and wrong types are errors."""
    raw = _read_limited(path, 1 << 20, "profile")
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        _fail(f"profile {path} is not UTF-8 text")
    except tomllib.TOMLDecodeError as exc:
        _fail(f"profile {path} is not valid TOML: {exc}")
    unknown = sorted(set(doc) - set(_PROFILE_KEYS))
    if unknown:
        _fail(f"profile {path}: unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(_PROFILE_KEYS))})")
    for key, kind in _PROFILE_KEYS.items():
        if key in doc and (isinstance(doc[key], bool) or not isinstance(doc[key], kind)):
            want = "a string" if kind is str else "a number" if isinstance(kind, tuple) else "an integer"
            _fail(f"profile {path}: {key} must be {want}")
    if "concurrency" in doc and doc["concurrency"] < 1:
        _fail(f"profile {path}: concurrency must be at least 1")
    if "lease_ttl" in doc and not (math.isfinite(doc["lease_ttl"]) and 0 < doc["lease_ttl"] <= 1e9):
        _fail(f"profile {path}: lease_ttl must be a positive number of seconds")
    for key in ("node_id", "app", "store", "key_file", "policy"):
        if key in doc and not doc[key]:
            _fail(f"profile {path}: {key} must not be empty")
    return doc


def load_app(spec: str) -> App:
    """Import ``MODULE:ATTR`` (from PYTHONPATH or the current directory); it must be a peo.App."""
    from .app import App

    if not _APP_SPEC.match(spec):
        _fail(f"--app {spec!r} must look like MODULE:ATTR, e.g. myagents:app")
    module_name, _, attr = spec.partition(":")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)  # like `python -m`: modules in the current directory import
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name == module_name or (exc.name and module_name.startswith(exc.name + ".")):
            _fail(f"cannot import module {module_name!r}: not found on PYTHONPATH or in {cwd}")
        _fail(f"importing module {module_name!r} failed: {exc}")
    except Exception as exc:  # the user's module raised while importing: report, no traceback
        _fail(f"importing module {module_name!r} failed: {type(exc).__name__}: {exc}")
    obj: Any = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            _fail(f"module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not isinstance(obj, App):
        _fail(f"{spec} is a {type(obj).__name__}, not a peo.App")
    return obj


async def cmd_node(args: argparse.Namespace) -> int:
    from . import _local
    from .core.codec import check_name
    from .core.crypto import SigningKey
    from .core.policy import Policy
    from .store import make_store

    profile = load_profile(args.profile) if args.profile else {}
    spec = args.app or profile.get("app")
    if not spec:
        _fail("which handlers should this node run? give --app MODULE:ATTR (or app = ... in the profile)")
    app = load_app(spec)
    if not app.handlers:
        _fail(f"{spec} has no handlers registered")
    node_id = args.node_id or profile.get("node_id")
    if node_id is not None:
        try:
            check_name(node_id, "node id")
        except CodecError as exc:
            _fail(str(exc))
        _valid_text(node_id, "node id")
    policy_file = args.policy or profile.get("policy")
    policy = Policy.load(policy_file) if policy_file else Policy.default()
    if args.key is not None:
        # An explicit key file must exist: silently creating a new identity for a node
        # would make its entries unverifiable elsewhere.
        if not Path(args.key).exists():
            _fail(f"key file {args.key} does not exist (omit --key to use {_local.key_path('node')})")
        key = SigningKey.load(args.key)
    elif profile.get("key_file"):
        key = SigningKey.load_or_create(profile["key_file"])  # a profile's key is created on first use
    else:
        key = _local.load_key(None, "node")
    url = _store_url(args, profile.get("store"))
    concurrency = args.concurrency or profile.get("concurrency", 32)
    lease_ttl = args.lease_ttl or float(profile.get("lease_ttl", 1.5))
    store = make_store(url)
    await store.open()  # an unreachable store is reported before the node says it is serving
    try:
        return await _serve(args, store, url, app, node_id, concurrency, lease_ttl, policy, key)
    finally:
        await store.aclose()


async def _serve(args: argparse.Namespace, store: Store, url: str, app: App, node_id: str | None,
                 concurrency: int, lease_ttl: float, policy: Policy, key: SigningKey) -> int:
    from .node import Node

    node = Node(store, app, node_id=node_id, concurrency=concurrency, lease_ttl=lease_ttl, policy=policy, key=key)

    loop = asyncio.get_running_loop()
    main_task = asyncio.current_task()
    signals_seen = 0

    def on_signal() -> None:
        # First signal: graceful (stop claiming, finish steps in flight, release leases).
        # Second: abandon the steps in flight; their leases expire and another node redoes
        # them under the same idempotency keys.
        nonlocal signals_seen
        signals_seen += 1
        if signals_seen == 1:
            print(f"peo node {_clean(node.node_id)}: stopping (signal again to abandon steps in flight)",
                  file=sys.stderr, flush=True)
            node.stop()
        elif main_task is not None:
            main_task.cancel()

    installed: list[_signal.Signals] = []
    for sig in (_signal.SIGTERM, _signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals
            pass
    mode = "until idle" if args.until_idle else "until stopped (SIGTERM/SIGINT)"
    print(
        f"peo node {_clean(node.node_id)}: serving {', '.join(sorted(app.handlers))} from {_clean(url)} {mode}; "
        f"concurrency {concurrency}, lease TTL {lease_ttl:g} s, policy {policy.ref}, key {key.key_id}",
        file=sys.stderr, flush=True,
    )
    started = time.monotonic()
    code = 0
    try:
        if args.until_idle:
            await node.run_until_idle()
        else:
            await node.run()
    except asyncio.CancelledError:
        if signals_seen < 2 or main_task is None:
            raise
        main_task.uncancel()
        print(f"peo node {_clean(node.node_id)}: abandoned the steps in flight", file=sys.stderr)
        code = 1
        # A sync handler still sleeping in a worker thread would keep the interpreter from
        # exiting (executor threads are joined at exit): entry() exits at once instead.
        global _exit_now
        _exit_now = True
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
        s = node.stats
        print(
            f"peo node {_clean(node.node_id)}: stopped after {time.monotonic() - started:.1f} s: {s['steps']} steps, "
            f"{s['claims']} claims, {s['quarantined']} quarantined",
            file=sys.stderr, flush=True,
        )
    return code


# -- parser -------------------------------------------------------------------------------

_EXIT_CODES = "exit codes: 0 success, 1 operation or verification failed, 2 bad usage or input"


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    p = argparse.ArgumentParser(
        prog="peo",
        formatter_class=fmt,
        description="Operate persistent executable objects: long-running agents whose intent, context and "
        "signed history travel with them, run by stateless nodes over a shared store.",
        epilog="examples:\n"
        "  peo init\n"
        "  peo submit count --goal '{\"steps\": 5}'\n"
        "  peo node --app myagents:app --until-idle\n"
        "  peo ls\n"
        "  peo --store postgresql://postgres@127.0.0.1/peo verify\n\n"
        "The store is --store URL, else $PEO_STORE, else sqlite:///peo.db in the current directory.\n"
        "Keys live in $PEO_HOME/keys (default ./.peo/keys).\n" + _EXIT_CODES,
    )
    from . import __version__

    p.add_argument("--version", action="version", version=f"peo {__version__}")
    p.add_argument("--store", metavar="URL", type=_text_arg("store URL"),
                   help="store URL: sqlite:///path.db or postgresql://... (default: $PEO_STORE or sqlite:///peo.db)")
    p.add_argument("-v", "--verbose", action="count", default=0, help="log to stderr (-vv for debug detail)")
    sub = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(name: str, summary: str, description: str, examples: Sequence[str],
             fn: Callable[[argparse.Namespace], Awaitable[int] | int]) -> argparse.ArgumentParser:
        sp = sub.add_parser(
            name, help=summary, description=description, formatter_class=fmt,
            epilog="examples:\n" + "\n".join(f"  {e}" for e in examples) + "\n\n" + _EXIT_CODES,
        )
        sp.set_defaults(fn=fn)
        return sp

    oid = _text_arg("object id")

    verb("init", "create the store schema and the local keys (idempotent)",
         "Create the store's schema (or bring it up to date), the client signing key and the default node "
         "signing key in $PEO_HOME/keys. Safe to run again: existing keys and objects are kept.",
         ["peo init", "peo --store sqlite:///var/peo/fleet.db init"], cmd_init)

    sp = verb("submit", "create an object; prints its id",
              "Create a new object that asks for HANDLER with a goal. Its instantiation entry is signed "
              "with the client key. Prints only the new object's id, so it composes in scripts.",
              ["peo submit count --goal '{\"steps\": 10}'",
               "peo submit research --goal @goal.json --priority 5 --label team=search",
               "ID=$(peo submit count --goal '{\"steps\": 3}' --deadline 3600)"], cmd_submit)
    sp.add_argument("handler", metavar="HANDLER", type=_text_arg("handler"), help="capability (handler) name")
    sp.add_argument("--goal", metavar="JSON", type=_text_arg("--goal"),
                    help="the goal: a JSON object, or @FILE to read it from a file (default: {})")
    sp.add_argument("--priority", type=int, default=0, metavar="N", help="higher runs first (default 0)")
    sp.add_argument("--scope", default="default", metavar="NAME", type=_text_arg("scope"),
                    help="trust scope nodes evaluate against their policy (default: default)")
    sp.add_argument("--deadline", type=_positive_seconds, metavar="SECONDS",
                    help="terminate the object if it has not finished this many seconds from now")
    sp.add_argument("--label", action="append", metavar="K=V", type=_text_arg("label"),
                    help="a label (repeatable)")
    sp.add_argument("--identity", default="anonymous", metavar="NAME", type=_text_arg("identity"),
                    help="who submits (policies may accept only some identities; default: anonymous)")
    sp.add_argument("--max-failures", type=_positive_int, metavar="N", help="consecutive failures before it fails")
    sp.add_argument("--max-steps", type=_positive_int, metavar="N", help="step budget")

    sp = verb("node", "run a worker node",
              "Run a stateless node: claim due objects whose handler the app registers and whose trust scope "
              "the policy accepts, run cycles, append signed entries. MODULE is imported from PYTHONPATH or "
              "the current directory. With --profile, settings come from a node profile (TOML keys: node_id, "
              "key_file, store, policy, concurrency, lease_ttl, app); flags override the profile, and the "
              "profile's store overrides $PEO_STORE. Relative paths are relative to the current directory. "
              "SIGTERM or SIGINT stops it gracefully (exit 0).",
              ["peo node --app myagents:app", "peo node --profile nodes/local.toml --until-idle",
               "peo node --app myagents:app --node-id worker-2 --concurrency 64 --policy policies/strict.toml"],
              cmd_node)
    sp.add_argument("--app", metavar="MODULE:ATTR", type=_text_arg("--app"), help="the peo.App with the handlers")
    sp.add_argument("--profile", metavar="FILE", help="node profile (TOML), e.g. nodes/local.toml")
    sp.add_argument("--node-id", metavar="ID", type=_text_arg("node id"),
                    help="this node's id (default: HOST-PID; reuse it after a restart to reclaim leases at once)")
    sp.add_argument("--concurrency", type=_positive_int, metavar="N", help="objects held at once (default 32)")
    sp.add_argument("--lease-ttl", type=_positive_seconds, metavar="SECONDS",
                    help="lease time: a crashed node's objects are taken over after it (default 1.5)")
    sp.add_argument("--policy", metavar="FILE", help="policy document (default: the built-in default policy)")
    sp.add_argument("--key", metavar="FILE",
                    help="existing signing key file (default: $PEO_HOME/keys/node.key, created on first use)")
    sp.add_argument("--until-idle", action="store_true",
                    help="exit 0 once no object is runnable, leased or due soon")

    sp = verb("ls", "list objects",
              "List objects as a table (id, status, handler, seq, priority, reason), or as JSON with --json.",
              ["peo ls", "peo ls --status dormant", "peo ls --json --limit 100 | jq '.[].id'"], cmd_ls)
    sp.add_argument("--status", choices=_STATUSES, help="only objects with this status")
    sp.add_argument("--json", action="store_true",
                    help="a JSON array of {id,status,handler,seq,priority,parent,reason}")
    sp.add_argument("--limit", type=_positive_int, metavar="N", help="at most N objects")

    sp = verb("show", "show one object and its memory",
              "Show an object's head (status, intent, context, state, result) and one line per memory entry. "
              "Memory is shown as stored; `peo verify ID` checks its signatures and hash links.",
              ["peo show 01J0ABC...", "peo show 01J0ABC... --json | jq .memory[-1]"], cmd_show)
    sp.add_argument("id", metavar="ID", type=oid)
    sp.add_argument("--json", action="store_true",
                    help="{id,status,intent,context,result,reason,state,memory:[{seq,action,timestamp,...}]}; "
                    "bytes appear as hex strings")

    sp = verb("verify", "verify signed memory chains",
              "Verify each object's memory: every signature by a trusted key (local keys and the policy's), "
              "hash links, contiguous seq, entry 0 bound to the id, and the stored head. Prints OK or FAIL "
              "(with the first bad seq) per object and a summary; exit 1 if any fails.",
              ["peo verify", "peo verify 01J0ABC... 01J0DEF...", "peo verify --policy policies/strict.toml"],
              cmd_verify)
    sp.add_argument("ids", nargs="*", metavar="ID", type=oid, help="objects to verify (default: all)")
    sp.add_argument("--policy", metavar="FILE", help="policy whose trusted keys to use")

    sp = verb("signal", "send a named signal to an object",
              "Put a signal with an optional JSON payload in the object's inbox; an object waiting for it wakes.",
              ["peo signal 01J0ABC... approve --payload '{\"approved\": true}'"], cmd_signal)
    sp.add_argument("id", metavar="ID", type=oid)
    sp.add_argument("name", metavar="NAME", type=_text_arg("signal name"))
    sp.add_argument("--payload", metavar="JSON", type=_text_arg("--payload"), help="any JSON value, or @FILE")

    sp = verb("cancel", "cancel an object",
              "Request cancellation; the next cycle on any node terminates the object as cancelled and "
              "records it. Exit 1 if the object has already terminated.",
              ["peo cancel 01J0ABC..."], cmd_cancel)
    sp.add_argument("id", metavar="ID", type=oid)

    sp = verb("export", "write an object and its whole memory to a file",
              "Write one self-contained, signed file: the object id and every memory entry as signed.",
              ["peo export 01J0ABC...", "peo export 01J0ABC... -o backup.peo",
               "peo export 01J0ABC... -o - | ssh host-b peo import -"],
              cmd_export)
    sp.add_argument("id", metavar="ID", type=oid)
    sp.add_argument("-o", "--output", metavar="FILE", help="output file (default: ID.peo; - for standard output)")

    sp = verb("import", "verify an exported object and store it",
              "Verify an export file with the keys this set-up trusts, then store the object so nodes here can "
              "continue it. A tampered, damaged or untrusted file is refused (exit 1) and nothing is written. "
              "Prints the object's id.",
              ["peo import 01J0ABC....peo", "peo --store postgresql://db/peo import backup.peo"], cmd_import)
    sp.add_argument("file", metavar="FILE", help="export file (- for standard input)")
    sp.add_argument("--policy", metavar="FILE", help="policy whose trusted keys to use")

    sp = verb("demo", "run the demo: a fleet survives a node killed with SIGKILL",
              "Run a fleet of sample agents on two node processes on the store, kill one with SIGKILL mid-run, "
              "watch the other take over; ends by verifying every chain. Options after `demo` go to the demo "
              "(e.g. --no-kill, --timeout SECONDS).",
              ["peo demo", "peo --store sqlite:///demo.db demo"], cmd_demo)
    sp.set_defaults(demo_args=[])
    return p


# -- main ---------------------------------------------------------------------------------


def _setup_logging(verbosity: int) -> logging.Handler:
    handler = logging.StreamHandler(sys.stderr)
    if verbosity:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("peo: %(levelname)s: %(message)s"))
    root = logging.getLogger("peo")
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbosity > 1 else logging.INFO if verbosity else logging.WARNING)
    return handler


def _peo_error(exc: BaseException) -> PeoError | None:
    """The first PeoError in ``exc`` (TaskGroups wrap errors in groups)."""
    if isinstance(exc, PeoError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _peo_error(inner)
            if found is not None:
                return found
    return None


def _exit_code(exc: PeoError) -> int:
    if isinstance(exc, UsageError | PolicyError | CodecError):
        return 2
    return 1  # NotFound, Integrity, Store, ObjectFailed, Timeout: the operation failed


def main(argv: list[str] | None = None) -> int:
    """Run the CLI with ``argv`` (default: ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any("\x00" in a for a in argv):
        print("peo: error: arguments must not contain NUL bytes", file=sys.stderr)
        return 2
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            if args.verb != "demo":
                parser.error(f"unrecognized arguments: {' '.join(extra)}")
            args.demo_args = extra
    except SystemExit as exc:  # --help, --version, or a usage error argparse already printed
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    handler = _setup_logging(args.verbose)
    try:
        if inspect.iscoroutinefunction(args.fn):
            return int(asyncio.run(args.fn(args)))
        return int(args.fn(args))
    except BrokenPipeError:
        raise  # entry() handles a closed pipe; in-process callers see it
    except KeyboardInterrupt:
        print("peo: interrupted", file=sys.stderr)
        return 130
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        err = _peo_error(exc)
        if err is None:
            # Not a user mistake: a bug. One line by default; the traceback with -v.
            if args.verbose:
                traceback.print_exception(exc, file=sys.stderr)
            print(f"peo: internal error: {type(exc).__name__}: {_clean(exc, 500)} "
                  f"(this is a bug; run with -v for details)", file=sys.stderr)
            return 1
        log.debug("error", exc_info=err)
        print(f"peo: error: {_clean(err)}", file=sys.stderr)
        return _exit_code(err)
    finally:
        logging.getLogger("peo").removeHandler(handler)


def entry() -> None:
    """Console script ``peo``."""
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `peo ls | head`: the reader left; not an error worth a traceback
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 1
    if _exit_now:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
