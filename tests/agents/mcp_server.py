"""A small real MCP server for tests/agents/test_mcp.py, written with the SDK's server side.

``python tests/agents/mcp_server.py`` serves over stdio; ``python tests/agents/mcp_server.py
http PORT`` serves streamable HTTP on 127.0.0.1:PORT/mcp. ``MCP_TEST_RECORD`` names a file
that ``record`` appends one line to per run (so a test can count the runs); ``MCP_TEST_PIDS``
a file the server appends its pid to when it starts (so a test can see it was reaped).

``python tests/agents/mcp_server.py raw`` is not the SDK: a hand-written JSON-RPC loop that
does the handshake, lists one tool ``bad`` and answers its call with a result that is not MCP.
"""

from __future__ import annotations

import json
import os
import sys
import time

from mcp.server.mcpserver import MCPServer

server = MCPServer("peo-test", log_level="WARNING")


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool()
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
def crash() -> str:
    """Kill the server process in the middle of the call."""
    sys.stdout.flush()
    os._exit(3)


@server.tool()
def fail(message: str) -> str:
    """Raise: the SDK turns it into a result with isError true."""
    raise ValueError(message)


@server.tool()
def sleep(seconds: float) -> str:
    """Sleep (blocking the server) for a number of seconds."""
    time.sleep(seconds)
    return "slept"


@server.tool()
def record(text: str, idempotency_key: str = "") -> str:
    """Append one JSON line (text, key) to the file $MCP_TEST_RECORD."""
    path = os.environ["MCP_TEST_RECORD"]
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"text": text, "key": idempotency_key}) + "\n")
    return f"recorded {text}"


@server.tool()
def record_slowly(text: str, idempotency_key: str = "") -> str:
    """Like record, but the first run (no $MCP_TEST_RECORD.slow yet) then sleeps for a minute
    before it answers: a test kills the node that called it meanwhile."""
    path = os.environ["MCP_TEST_RECORD"]
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps({"text": text, "key": idempotency_key}) + "\n")
    if not os.path.exists(path + ".slow"):
        open(path + ".slow", "w").close()
        time.sleep(60)
    return f"recorded {text}"


def raw() -> None:
    """Just enough JSON-RPC by hand to list one tool and answer its call with garbage."""
    for line in sys.stdin:
        msg = json.loads(line)
        if "id" not in msg:
            continue  # a notification
        method, rid = msg.get("method"), msg["id"]
        if method == "initialize":
            result: object = {"protocolVersion": msg["params"]["protocolVersion"], "capabilities": {"tools": {}},
                              "serverInfo": {"name": "raw", "version": "0"}}
        elif method == "tools/list":
            result = {"tools": [{"name": "bad", "description": "Answers with garbage.",
                                 "inputSchema": {"type": "object", "properties": {}}}]}
        elif method == "tools/call":
            result = {"content": "this should be a list", "isError": "maybe"}
        else:
            print(json.dumps({"jsonrpc": "2.0", "id": rid, "error": {"code": -32601, "message": "no such method"}}),
                  flush=True)
            continue
        print(json.dumps({"jsonrpc": "2.0", "id": rid, "result": result}), flush=True)


if __name__ == "__main__":
    if os.environ.get("MCP_TEST_PIDS"):
        with open(os.environ["MCP_TEST_PIDS"], "a", encoding="utf-8") as fh:
            fh.write(f"{os.getpid()}\n")
    if sys.argv[1:] == ["raw"]:
        raw()
        sys.exit(0)
    if len(sys.argv) > 2 and sys.argv[1] == "http":
        server.run("streamable-http", host="127.0.0.1", port=int(sys.argv[2]))
    else:
        server.run()
