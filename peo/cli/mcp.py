"""``peo mcp ls SERVER``: the tools an MCP server offers, as an agent would see them."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from typing import TYPE_CHECKING, Any

from .parser import add_verb, fail, positive_seconds, text_arg
from .render import clean, dumps, table

if TYPE_CHECKING:
    from .parser import Subparsers

__all__ = ["cmd_mcp_ls", "register"]

#: The SDK's loggers: quiet unless -v (a server that writes garbage makes it log tracebacks).
_SDK_LOGGERS = ("mcp", "client")


def _server(args: argparse.Namespace) -> Any:
    from ..agents import mcp_tools

    spec = args.server.strip()
    headers: dict[str, str] = {}
    for pair in args.header or ():
        key, sep, value = pair.partition(":")
        if not sep or not key.strip():
            fail(f"bad header {pair!r}: use NAME:VALUE")
        headers[key.strip()] = value.strip()
    if spec.startswith(("http://", "https://")):
        return mcp_tools.http(spec, headers=headers or None, timeout=args.timeout)
    if headers:
        fail("--header is for an http:// or https:// server, not a command")
    try:
        argv = shlex.split(spec)
    except ValueError as exc:
        fail(f"cannot split the server command {spec!r}: {exc}")
    if not argv:
        fail("SERVER is empty: give a URL or a command line")
    return mcp_tools.stdio(argv[0], *argv[1:], timeout=args.timeout)


def _param_type(schema: object) -> str:
    if not isinstance(schema, dict):
        return "any"
    kind = schema.get("type")
    if isinstance(kind, list):
        return "|".join(str(k) for k in kind)
    if isinstance(kind, str):
        if kind == "array" and isinstance(schema.get("items"), dict) and "type" in schema["items"]:
            return f"{_param_type(schema['items'])}[]"
        return kind
    for key in ("anyOf", "oneOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            return "|".join(_param_type(o) for o in options)
    if "enum" in schema:
        return "enum"
    return "any"


def _parameters(schema: dict[str, Any]) -> list[dict[str, Any]]:
    props = schema.get("properties")
    listed = schema.get("required")
    required: list[Any] = listed if isinstance(listed, list) else []
    if not isinstance(props, dict):
        return []
    return [{"name": name, "type": _param_type(spec), "required": name in required} for name, spec in props.items()]


async def cmd_mcp_ls(args: argparse.Namespace) -> int:
    server = _server(args)
    quiet: list[tuple[logging.Logger, int]] = []
    if not args.verbose:
        for name in _SDK_LOGGERS:
            logger = logging.getLogger(name)
            quiet.append((logger, logger.level))
            logger.setLevel(logging.CRITICAL + 1)
    try:
        tools = await server.tools()
    finally:
        for logger, level in quiet:
            logger.setLevel(level)
    rows = [{"name": t.name, "description": t.description, "parameters": _parameters(t.parameters),
             "needs_approval": t.needs_approval, "idempotent": t.idempotent, "schema": t.parameters}
            for t in tools]
    if args.json:
        print(dumps({"server": server.name, "source": server.source, "tools": rows}))
        return 0
    if not rows:
        print(f"MCP server {clean(server.name)} offers no tools")
        return 0

    def params(r: dict[str, Any]) -> str:
        return ", ".join(f"{p['name']}:{p['type']}{'*' if p['required'] else ''}" for p in r["parameters"]) or "-"

    def summary(r: dict[str, Any]) -> str:
        text = r["description"].strip().splitlines()[0] if r["description"].strip() else ""
        return clean(text, 70) + (" (idempotency key passed)" if r["idempotent"] else "")

    table(["TOOL", "PARAMETERS (* required)", "DESCRIPTION"],
          [[clean(r["name"]), clean(params(r), 80), summary(r)] for r in rows], sys.stdout)
    return 0


def _mcp_parser(sub: Subparsers) -> None:
    sp = add_verb(sub, "mcp", "list the tools of an MCP server",
                  "Connect to a Model Context Protocol server and list its tools as an agent sees them "
                  "(peo.mcp.stdio / peo.mcp.http). Needs no store. SERVER is an http:// or https:// URL "
                  "(streamable HTTP) or a command line, given as one argument, that runs the server over stdio.",
                  ['peo mcp ls "python tests/agents/mcp_server.py"',
                   'peo mcp ls "npx -y @modelcontextprotocol/server-filesystem /tmp"',
                   "peo mcp ls http://127.0.0.1:8000/mcp --json",
                   "peo mcp ls https://mcp.example/mcp --header 'Authorization: Bearer TOKEN'"], _no_action)
    actions = sp.add_subparsers(dest="mcp_action", metavar="ACTION", required=True)
    ls = actions.add_parser("ls", help="list the server's tools: name, parameters (name:type, * required), "
                                       "description",
                            description="List the tools of the MCP server SERVER: one line per tool with its "
                                        "parameters (name:type, * marks a required one) and the first line of "
                                        "its description. Exit 1 if the server cannot be started or reached, "
                                        "dies or does not answer within --timeout.",
                            epilog='examples:\n  peo mcp ls "python -m my_server"\n  peo mcp ls http://127.0.0.1:8000/mcp\n',
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    ls.add_argument("server", metavar="SERVER", type=text_arg("SERVER"),
                    help="an http(s):// URL, or the command line that starts the server (one quoted argument)")
    ls.add_argument("--json", action="store_true", help="print JSON (with each tool's full input schema)")
    ls.add_argument("--timeout", type=positive_seconds, default=30.0, metavar="SECONDS",
                    help="give up on the server after this many seconds (default 30)")
    ls.add_argument("--header", action="append", metavar="NAME:VALUE",
                    help="an HTTP header for a URL server (repeatable)")
    ls.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                    help="log to stderr, the MCP SDK's logs included")
    ls.set_defaults(fn=cmd_mcp_ls)


def _no_action(args: argparse.Namespace) -> int:  # pragma: no cover - argparse requires ACTION
    fail("peo mcp needs an action: ls")


_PARSERS = {"mcp": _mcp_parser}


def register(sub: Subparsers, verb: str) -> None:
    _PARSERS[verb](sub)
