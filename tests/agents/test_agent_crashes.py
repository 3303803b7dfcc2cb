"""An agent's node dies mid-run (real node processes, ``os._exit`` inside a tool): the model
is never asked again for a step memory records, an idempotent tool runs again under the same
key, and a non-idempotent one is never run twice: its call is *outcome unknown* until its
``reconcile`` hook or a person says what happened. Both stores; no timed assertions."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import peo
from peo.agents.approvals import pending
from peo.testing.fakellm import FakeLLMServer, Reply

pytest.importorskip("openai")

APP = '''
import os
import peo

app = peo.App()
LOG = os.environ["AGENT_LOG"]


def crash_once(marker):
    if not os.path.exists(LOG + "." + marker):
        open(LOG + "." + marker, "w").close()
        os._exit(137)  # the node dies here, as under kill -9


@app.tool(idempotent=True)
def fetch(url: str, idempotency_key: str) -> str:
    """Fetch a page."""
    with open(LOG, "a") as f:
        f.write(f"fetch {idempotency_key}\\n")
    crash_once("fetch")
    return "page"


@app.tool()
def charge(amount: int) -> str:
    """Charge the customer."""
    with open(LOG, "a") as f:
        f.write(f"charge {amount}\\n")
    crash_once("charge")
    return "charged"


def charged(arguments, idempotency_key):
    with open(LOG) as f:
        return {"charged": f.read().count("charge ") > 0}


model = peo.Model("fake-model", base_url=os.environ["FAKE_LLM_URL"], api_key_env=None, timeout=20)
app.agent("fetcher", model=model, tools=[fetch])
app.agent("biller", model=model, tools=[charge])
app.agent("careful_biller", model=model, tools=[peo.agents.tool_from_function(charge, name="charge_checked",
                                                                              reconcile=charged)])
'''


def responder(tool: str, arguments: dict[str, Any]) -> Any:
    def answer(body: dict[str, Any]) -> Reply:
        if not any(m.get("role") == "tool" for m in body["messages"]):
            return Reply.tool_call(tool, arguments)
        return Reply.tool_call("finish", {"result": body["messages"][-1]["content"]})
    return answer


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "agentapp.py").write_text(APP)
    (tmp_path / "node.toml").write_text("lease_ttl = 0.3\n")
    return tmp_path


def node(url: str, cwd: Path, server: FakeLLMServer, node_id: str) -> int:
    env = {**os.environ, "FAKE_LLM_URL": server.base_url, "AGENT_LOG": str(cwd / "effects.log"),
           "PYTHONPATH": os.pathsep.join([str(Path(peo.__file__).parent.parent), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "-m", "peo", "--store", url, "node", "--app", "agentapp:app",
                           "--profile", "node.toml", "--node-id", node_id, "--until-idle"],
                          cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    (cwd / f"{node_id}.log").write_text(done.stderr)
    return done.returncode


def effects(cwd: Path) -> list[str]:
    return (cwd / "effects.log").read_text().splitlines()


@pytest.fixture
def fetch_server() -> Iterator[FakeLLMServer]:
    with FakeLLMServer(responder("fetch", {"url": "https://example.com"})) as s:
        yield s


async def test_a_crash_after_the_models_answer_never_asks_the_model_again(
        store_url: str, workdir: Path, fetch_server: FakeLLMServer) -> None:
    async with peo.Client(store_url) as client:
        oid = await client.submit("fetcher", {"task": "fetch it"})
        assert node(store_url, workdir, fetch_server, "a") == 137  # died inside the tool
        assert fetch_server.calls == 1
        assert node(store_url, workdir, fetch_server, "b") == 0
        assert await client.wait(oid, timeout=10) == '{"result": "page"}'
    assert fetch_server.calls == 2  # the first answer was recorded: one call per step, not three
    first, again = effects(workdir)
    assert first == again and first.startswith(f"fetch {oid}:")  # the same idempotency key both times


async def test_a_crash_inside_a_non_idempotent_tool_is_outcome_unknown_never_a_second_run(
        store_url: str, workdir: Path) -> None:
    with FakeLLMServer(responder("charge", {"amount": 30})) as server:
        async with peo.Client(store_url) as client:
            oid = await client.submit("biller", {"task": "bill"})
            assert node(store_url, workdir, server, "a") == 137
            assert node(store_url, workdir, server, "b") == 0
            (waiting,) = await pending(client)
            assert (waiting.object_id, waiting.kind, waiting.tool, waiting.arguments) == \
                (oid, "outcome_unknown", "charge", {"amount": 30})
            await client.signal(oid, "resolve", {"happened": True})
            assert node(store_url, workdir, server, "c") == 0
            result = await client.wait(oid, timeout=10)
    assert effects(workdir) == ["charge 30"]  # once, never again
    assert "outcome_unknown" in result and "happened" in result


async def test_a_reconcile_hook_says_what_happened_to_a_call_whose_node_died(store_url: str, workdir: Path) -> None:
    with FakeLLMServer(responder("charge_checked", {"amount": 5})) as server:
        async with peo.Client(store_url) as client:
            oid = await client.submit("careful_biller", {"task": "bill"})
            assert node(store_url, workdir, server, "a") == 137
            assert node(store_url, workdir, server, "b") == 0
            result = await client.wait(oid, timeout=10)
    assert effects(workdir) == ["charge 5"]
    assert '"reconciled": {"charged": true}' in result
