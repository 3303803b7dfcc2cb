"""An agent uses a tool of a real MCP server (tests/agents/mcp_server.py, written with the
SDK's server side, over stdio), and its node is killed between the call and its recorded
result: the node that takes over calls the idempotent tool again with the same key, and
never asks the model again for a recorded step. Both stores; no timed assertions."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import peo
from peo.testing.fakellm import FakeLLMServer, Reply

pytest.importorskip("mcp")
pytest.importorskip("openai")

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

APP = f'''
import os, sys
import peo
import peo.mcp

app = peo.App()
server = peo.mcp.stdio(sys.executable, {str(HERE / "mcp_server.py")!r},
                       env={{"MCP_TEST_RECORD": os.environ["MCP_TEST_RECORD"]}}, timeout=120)
model = peo.Model("fake-model", base_url=os.environ["FAKE_LLM_URL"], api_key_env=None, timeout=20)
app.agent("recorder", model=model, instructions="Record the note, then finish.", tools=[server])
'''


def answer(body: dict[str, Any]) -> Reply:
    if not any(m.get("role") == "tool" for m in body["messages"]):
        return Reply.tool_call("record_slowly", {"text": "hello"})
    return Reply.tool_call("finish", {"result": body["messages"][-1]["content"]})


def start_node(url: str, cwd: Path, base_url: str, node_id: str) -> subprocess.Popen[str]:
    env = {**os.environ, "FAKE_LLM_URL": base_url, "MCP_TEST_RECORD": str(cwd / "record.jsonl"),
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "peo", "--store", url, "node", "--app", "mcpagent:app",
                             "--profile", "node.toml", "--node-id", node_id, "--until-idle"],
                            cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True,
                            start_new_session=True)


async def test_an_agent_uses_an_mcp_tool_and_survives_a_crash_between_the_call_and_its_result(
        store_url: str, tmp_path: Path) -> None:
    (tmp_path / "mcpagent.py").write_text(APP)
    (tmp_path / "node.toml").write_text("lease_ttl = 0.3\n")
    record = tmp_path / "record.jsonl"
    with FakeLLMServer(answer) as llm:
        async with peo.Client(store_url) as client:
            oid = await client.submit("recorder", {"task": "record hello"})
            first = start_node(store_url, tmp_path, llm.base_url, "a")
            deadline = time.monotonic() + 120
            while not (record.exists() and record.read_text().strip()):  # the call has happened...
                assert first.poll() is None and time.monotonic() < deadline, "the tool was never called"
                time.sleep(0.05)
            os.killpg(first.pid, signal.SIGKILL)  # ...and its node dies before recording the result
            first.wait(timeout=30)
            assert (await client.get(oid, memory=False)).status is not peo.Status.TERMINATED
            second = start_node(store_url, tmp_path, llm.base_url, "b")
            assert second.wait(timeout=240) == 0
            result = await client.wait(oid, timeout=10)
            info = await client.get(oid)
    runs = [json.loads(line) for line in record.read_text().splitlines()]
    assert [r["text"] for r in runs] == ["hello", "hello"]
    assert runs[0]["key"] == runs[1]["key"] and runs[0]["key"].startswith(f"{oid}:")  # the same call, again
    assert "recorded hello" in result
    assert llm.calls == 2  # one model call per recorded step: the first answer was not asked for again
    names = [v["name"] for k, v in sorted(info.state.items()) if k.startswith("fn.") and k[3:].isdigit()]
    assert names[0] == "mcp:mcp_server" and "tool:record_slowly" in names
