"""The tools of MCP servers (peo.mcp): a real server (tests/agents/mcp_server.py) run by the SDK."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mcp")

import peo.mcp
from peo.agents.tools import ToolArgumentsError
from peo.cli import main

SERVER = str(Path(__file__).with_name("mcp_server.py"))


@pytest.fixture
def record_file(tmp_path: Path) -> Path:
    return tmp_path / "record.jsonl"


@pytest.fixture
def pids_file(tmp_path: Path) -> Path:
    return tmp_path / "pids.txt"


@pytest.fixture
def server(record_file: Path, pids_file: Path) -> peo.mcp.MCPServer:
    return peo.mcp.stdio(sys.executable, SERVER, env={"MCP_TEST_RECORD": str(record_file),
                                                      "MCP_TEST_PIDS": str(pids_file)}, timeout=20)


def assert_reaped(pids_file: Path) -> None:
    """Every server process the tests started is gone: not running, not a zombie (the SDK
    waited for it). Linux only (/proc)."""
    if not Path("/proc/self/stat").exists():
        return
    pids = [int(p) for p in pids_file.read_text().split()]
    assert pids
    for pid in pids:
        stat = Path(f"/proc/{pid}/stat")
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            continue
        raise AssertionError(f"server process {pid} is still there (state {state})")


async def test_tools_lists_the_servers_tools_with_their_schemas(server: peo.mcp.MCPServer) -> None:
    tools = {t.name: t for t in await server.tools()}
    assert {"add", "echo", "crash", "record"} <= set(tools)
    add = tools["add"]
    assert add.source == "mcp:mcp_server"
    assert add.description == "Add two integers."
    assert add.parameters["properties"]["a"]["type"] == "integer"
    assert sorted(add.parameters["required"]) == ["a", "b"]
    assert not add.idempotent and not add.needs_approval


async def test_calling_add_returns_plain_data(server: peo.mcp.MCPServer) -> None:
    add = next(t for t in await server.tools() if t.name == "add")
    result = await add.call(add.check({"a": 1, "b": 2}), "obj:1:0")
    assert result == {"content": ["3"], "structured": {"result": 3}, "is_error": False}
    assert await server.call("echo", {"text": "hé"}) == {"content": ["hé"], "structured": {"result": "hé"},
                                                        "is_error": False}


async def test_a_failing_tool_is_a_result_not_an_exception(server: peo.mcp.MCPServer) -> None:
    result = await server.call("fail", {"message": "boom"})
    assert result["is_error"] is True


async def test_invalid_arguments_are_refused_before_any_call(server: peo.mcp.MCPServer, record_file: Path) -> None:
    tools = {t.name: t for t in await server.tools()}
    with pytest.raises(ToolArgumentsError, match="'b' is a required property"):
        tools["add"].check({"a": 1})
    with pytest.raises(ToolArgumentsError, match="is not of type 'integer'"):
        tools["add"].check({"a": "one", "b": 2})
    with pytest.raises(ToolArgumentsError, match="is not of type 'string'"):
        tools["record"].check({"text": 5})
    assert not record_file.exists()


def test_unknown_properties_are_refused_when_the_schema_is_closed() -> None:
    from peo.agents.mcp_tools import schema_validator

    check = schema_validator({"type": "object", "properties": {"x": {"type": "string"}},
                              "additionalProperties": False}, "t")
    assert check({"x": "a"}) == {"x": "a"}
    with pytest.raises(ToolArgumentsError, match="Additional properties"):
        check({"x": "a", "y": 1})


async def test_a_server_that_dies_mid_call_is_mcp_crashed(server: peo.mcp.MCPServer, pids_file: Path) -> None:
    with pytest.raises(peo.mcp.MCPError) as caught:
        await server.call("crash", {})
    assert caught.value.error_class == "mcp_crashed"
    assert "mcp_server" in str(caught.value)
    assert "\n" not in str(caught.value)
    # a second call runs on a fresh process
    assert (await server.call("add", {"a": 2, "b": 2}))["structured"] == {"result": 4}
    assert_reaped(pids_file)


async def test_a_slow_call_is_mcp_timeout(pids_file: Path) -> None:
    slow = peo.mcp.stdio(sys.executable, SERVER, env={"MCP_TEST_PIDS": str(pids_file)}, timeout=3)
    with pytest.raises(peo.mcp.MCPError) as caught:
        await slow.call("sleep", {"seconds": 60})
    assert caught.value.error_class == "mcp_timeout"
    assert_reaped(pids_file)


async def test_a_result_that_is_not_mcp_is_mcp_protocol(pids_file: Path) -> None:
    raw = peo.mcp.stdio(sys.executable, SERVER, "raw", env={"MCP_TEST_PIDS": str(pids_file)}, timeout=20)
    assert [t.name for t in await raw.tools()] == ["bad"]
    with pytest.raises(peo.mcp.MCPError) as caught:
        await raw.call("bad", {})
    assert caught.value.error_class == "mcp_protocol"
    assert "not valid MCP" in str(caught.value)
    assert_reaped(pids_file)


async def test_a_command_that_does_not_exist_is_mcp_unavailable(tmp_path: Path) -> None:
    missing = peo.mcp.stdio(str(tmp_path / "no-such-server"))
    with pytest.raises(peo.mcp.MCPError) as caught:
        await missing.tools()
    assert caught.value.error_class == "mcp_unavailable"
    assert "cannot be started" in str(caught.value)


async def test_a_server_that_exits_at_once_is_mcp_unavailable_with_its_stderr() -> None:
    dead = peo.mcp.stdio(sys.executable, "-c", "import sys; sys.exit('no config found')")
    with pytest.raises(peo.mcp.MCPError) as caught:
        await dead.tools()
    assert caught.value.error_class == "mcp_unavailable"
    assert "no config found" in str(caught.value)


async def test_the_idempotency_key_reaches_a_tool_that_declares_it(server: peo.mcp.MCPServer,
                                                                    record_file: Path) -> None:
    tools = {t.name: t for t in await server.tools()}
    record = tools["record"]
    assert record.idempotent
    assert "idempotency_key" not in record.parameters["properties"]  # the model never sees it
    await record.call(record.check({"text": "once"}), "obj:5:0")
    # a tool that does not declare it never receives it
    await tools["echo"].call({"text": "x"}, "obj:5:1")
    lines = [json.loads(line) for line in record_file.read_text().splitlines()]
    assert lines == [{"text": "once", "key": "obj:5:0"}]


def test_needs_approval_names_tools() -> None:
    s = peo.mcp.stdio("srv", needs_approval=frozenset({"delete"}))
    assert s._needs_approval("delete") and not s._needs_approval("read")
    assert peo.mcp.stdio("python", "-m", "files.server").name == "files.server"
    assert peo.mcp.http("http://127.0.0.1:9/mcp").name == "127.0.0.1"


def test_peo_mcp_ls_prints_the_tools(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["mcp", "ls", f"{sys.executable} {SERVER}"])
    out = capsys.readouterr().out
    assert code == 0
    assert "add" in out and "a:integer*, b:integer*" in out and "Add two integers." in out
    code = main(["mcp", "ls", f"{sys.executable} {SERVER}", "--json"])
    data = json.loads(capsys.readouterr().out)
    assert code == 0
    assert {t["name"] for t in data["tools"]} >= {"add", "echo"}


def test_peo_mcp_ls_fails_clearly_for_a_missing_command(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["mcp", "ls", "no-such-mcp-server-command --flag"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("peo: error: MCP server no-such-mcp-server-command")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_peo_mcp_ls_bad_command_line_is_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["mcp", "ls", "python 'unclosed"]) == 2
    assert "cannot split" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_over_streamable_http(record_file: Path) -> None:
    port = _free_port()
    env = {**os.environ, "MCP_TEST_RECORD": str(record_file)}
    proc = subprocess.Popen([sys.executable, SERVER, "http", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        server = peo.mcp.http(f"http://127.0.0.1:{port}/mcp", timeout=20)
        tools = None
        for _ in range(200):  # until uvicorn listens
            try:
                tools = await server.tools()
                break
            except peo.mcp.MCPError as exc:
                assert exc.error_class == "mcp_unavailable"
                assert proc.poll() is None
                import asyncio

                await asyncio.sleep(0.1)
        assert tools is not None
        assert "add" in {t.name for t in tools}
        assert (await server.call("add", {"a": 20, "b": 22}))["structured"] == {"result": 42}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
