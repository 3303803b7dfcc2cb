"""The argument parser and what every verb shares: argument types, JSON and file input,
the store URL and the client.

Each verb module has ``register(sub, verb)``, which adds the subparser for ``verb``;
:data:`VERBS` lists them in the order ``peo --help`` shows them. Adding a verb is one
module plus one line there.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import math
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

from .. import config
from ..errors import UsageError

if TYPE_CHECKING:  # annotations only; the verbs import what they use
    from ..client import Client

    Subparsers: TypeAlias = argparse._SubParsersAction[argparse.ArgumentParser]

__all__ = [
    "DEFAULT_STORE",
    "EXAMPLE_ID",
    "EXIT_CODES",
    "MAX_JSON_BYTES",
    "VERBS",
    "InputError",
    "Parser",
    "accept_times_ago",
    "add_verb",
    "build_parser",
    "fail",
    "labels",
    "open_client",
    "parse_json",
    "parse_time",
    "positive_int",
    "positive_seconds",
    "read_limited",
    "seq_arg",
    "store_url",
    "text_arg",
    "valid_text",
]

DEFAULT_STORE = config.DEFAULT_STORE
#: Largest --goal / --payload accepted, before JSON parsing (the policy limits the encoded size later).
MAX_JSON_BYTES = 1 << 20

#: (module in peo.cli, verb), in the order ``peo --help`` lists the verbs.
VERBS: tuple[tuple[str, str], ...] = (
    ("setup", "init"),
    ("objects", "submit"),
    ("node", "node"),
    ("fleet", "fleet"),
    ("nodes", "nodes"),
    ("reads", "ls"),
    ("reads", "show"),
    ("forks", "fork"),
    ("archive", "verify"),
    ("resume", "resume"),
    ("versions", "history"),
    ("versions", "restore"),
    ("postmortem", "postmortem"),
    ("objects", "signal"),
    ("objects", "cancel"),
    ("agents", "pending"),
    ("agents", "approve"),
    ("agents", "deny"),
    ("deletion", "rm"),
    ("deletion", "undelete"),
    ("deletion", "purge"),
    ("archive", "export"),
    ("archive", "import"),
    ("keys", "keys"),
    ("mcp", "mcp"),
    ("demo", "demo"),
)

#: An object id as peo makes them (a UUIDv7), for the help's examples.
EXAMPLE_ID = "01a250c5-bca2-7495-817f-4cc97f262c8b"

EXIT_CODES = "exit codes: 0 success, 1 operation or verification failed, 2 bad usage or input"

VerbFunction: TypeAlias = Callable[[argparse.Namespace], Awaitable[int] | int]


class InputError(UsageError):
    """Bad input detected by the CLI itself (exit 2)."""


def fail(message: str) -> NoReturn:
    raise InputError(message)


# -- argument types -----------------------------------------------------------------------


def valid_text(value: str, what: str) -> str:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        fail(f"{what} is not valid UTF-8")
    return value


def text_arg(what: str) -> Callable[[str], str]:
    """An argparse type: text that must be valid UTF-8 (``what`` names it in errors)."""

    def convert(value: str) -> str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise argparse.ArgumentTypeError(f"{what} is not valid UTF-8") from None
        return value

    convert.__name__ = what  # argparse names the type in its messages
    return convert


def positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{value!r} must be at least 1")
    return n


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 7 * 86_400}
_TIME_AGO = re.compile(r"-(\d{1,9})([smhdw])")
# What argparse may read as a value although it starts with "-": numbers and times ago.
_NEGATIVE = re.compile(r"^-\.?\d[\w.:]*$")


def parse_time(text: str, *, bad: str, now: int | None = None) -> int:
    """A TIME argument as ns since the epoch: ISO 8601 (a time without a zone is UTC) or a
    time ago (``-90s``, ``-30m``, ``-2h``, ``-1d``, ``-2w``, from ``now``). Exits 2 with
    ``bad`` for anything else, and for a time outside the 64-bit nanoseconds a store keeps."""
    now = time.time_ns() if now is None else now
    ago = _TIME_AGO.fullmatch(text.strip())
    if ago:
        return now - int(ago.group(1)) * _UNITS[ago.group(2)] * 10**9
    try:
        moment = datetime.datetime.fromisoformat(text.strip())
    except ValueError:
        fail(bad)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    delta = moment - datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
    ns = (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000
    if not -(2**63) <= ns < 2**63:
        fail(f"time {text!r} is out of range: use a time between the years 1678 and 2261")
    return ns


def accept_times_ago(parser: argparse.ArgumentParser) -> None:
    """Let an option take a time ago (``--at -2h``) as its value: argparse reads only plain
    negative numbers as values, anything else starting with "-" as an option (a private
    matcher decides; ``--at=-2h`` works regardless)."""
    if hasattr(parser, "_negative_number_matcher"):
        parser._negative_number_matcher = _NEGATIVE


def seq_arg(value: str) -> int:
    """An argparse type: a seq (an integer, 0 or more)."""
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not an integer") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value!r} is negative: a seq must be 0 or more (seqs start at 0)")
    return n


def positive_seconds(value: str) -> float:
    try:
        x = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number") from None
    if not math.isfinite(x) or x <= 0 or x > 1e9:
        raise argparse.ArgumentTypeError(f"{value!r} must be a positive number of seconds")
    return x


# -- input --------------------------------------------------------------------------------


def read_limited(path: str, limit: int, what: str) -> bytes:
    """Read a file the user named; any problem with it is bad input (exit 2)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except FileNotFoundError:
        fail(f"{what} {path} does not exist")
    except IsADirectoryError:
        fail(f"{what} {path} is a directory")
    except OSError as exc:
        fail(f"cannot read {what} {path}: {exc.strerror or exc}")
    if len(data) > limit:
        fail(f"{what} {path} is larger than {limit} bytes")
    return data


def parse_json(text: str, what: str) -> Any:
    """Parse a JSON argument (or ``@FILE``) with a size limit; errors name line and column."""
    if text.startswith("@"):
        raw = read_limited(text[1:], MAX_JSON_BYTES, f"{what} file")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            fail(f"{what} file {text[1:]} is not UTF-8 text")
    valid_text(text, what)
    if len(text.encode("utf-8")) > MAX_JSON_BYTES:
        fail(f"{what} is larger than {MAX_JSON_BYTES} bytes")

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
        fail(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}")
    except RecursionError:
        fail(f"{what} is nested too deeply")
    except ValueError as exc:  # parse_constant, or an integer with too many digits
        fail(f"{what} is not valid JSON: {exc}")


def labels(pairs: Sequence[str]) -> dict[str, str]:
    """``KEY=VALUE`` arguments as a dict."""
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key or not value:
            fail(f"bad label {pair!r}: use KEY=VALUE")
        out[key] = value
    return out


# -- the store and the client -------------------------------------------------------------


def store_url(args: argparse.Namespace, fallback: str | None = None) -> str:
    """--store, else ``fallback`` (a node profile's store), else $PEO_STORE, else the default."""
    return config.store_url(args.store if args.store is not None else fallback)


def open_client(args: argparse.Namespace, **kw: Any) -> Client:
    """A client on the store the arguments name (with --policy, if the verb has it)."""
    from ..client import Client

    policy = getattr(args, "policy", None)
    if policy is not None:
        from ..config import load_policy

        kw["policy"] = load_policy(policy)
    return Client(store_url(args), **kw)


# -- the parser ---------------------------------------------------------------------------

_FORMATTER = argparse.RawDescriptionHelpFormatter


class Parser(argparse.ArgumentParser):
    """argparse with peo's one error format: ``peo: error: ...`` on stderr, exit 2."""

    def error(self, message: str) -> NoReturn:
        hint = f"{self.prog} --help"
        self.exit(2, f"peo: error: {message} (see `{hint}`)\n")


def _global_options(p: argparse.ArgumentParser, *, after_verb: bool) -> None:
    """--store and -v: before the verb, and (``after_verb``) after it too. After the verb
    they default to SUPPRESS, so that a value given before the verb is kept."""
    extra: dict[str, Any] = {"default": argparse.SUPPRESS} if after_verb else {}
    p.add_argument("--store", metavar="URL", type=text_arg("store URL"),
                   help="store URL: sqlite:///path.db or postgresql://... (default: $PEO_STORE or sqlite:///peo.db)",
                   **extra)
    p.add_argument("-v", "--verbose", action="count", help="log to stderr (-vv for debug detail)",
                   **(extra or {"default": 0}))


def add_verb(sub: Subparsers, name: str, summary: str, description: str, examples: Sequence[str],
             fn: VerbFunction) -> argparse.ArgumentParser:
    """Add the subparser for one verb, with its examples and the exit codes in its help; the
    global options (--store, -v) are accepted after the verb too."""
    sp = sub.add_parser(
        name, help=summary, description=description, formatter_class=_FORMATTER,
        epilog="examples:\n" + "\n".join(f"  {e}" for e in examples) + "\n\n" + EXIT_CODES,
    )
    _global_options(sp, after_verb=True)
    sp.set_defaults(fn=fn)
    return sp


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="peo",
        formatter_class=_FORMATTER,
        description="Operate persistent executable objects: long-running agents whose intent, context and "
        "signed history travel with them, run by stateless nodes over a shared store.",
        epilog="examples:\n"
        "  peo init\n"
        "  peo submit research --goal '{\"docs\": 5}'\n"
        "  peo node --app peo.demo:app --until-idle\n"
        "  peo ls --handler research\n"
        "  peo show 01a250c5-bca2-7495-817f-4cc97f262c8b\n"
        "  peo --store postgresql://postgres@127.0.0.1/peo verify\n\n"
        "The store is --store URL (before or after the verb), else $PEO_STORE, else sqlite:///peo.db in the\n"
        "current directory. Only init, submit, node, import and demo create a store.\n"
        "Keys live in $PEO_HOME/keys (default ./.peo/keys).\n" + EXIT_CODES,
    )
    from .. import __version__

    p.add_argument("--version", action="version", version=f"peo {__version__}")
    _global_options(p, after_verb=False)
    sub = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    for module, verb in VERBS:
        importlib.import_module(f"{__package__}.{module}").register(sub, verb)
    return p
