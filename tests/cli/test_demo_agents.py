"""``peo demo --agents``: research agents on a scripted model server, on two node processes,
one killed with SIGKILL; an approval answered with ``peo approve``; every chain verified.
The whole demo runs as a subprocess, as a user runs it. No timed assertions (the timeouts
only stop a hung run)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from clirun import run

from peo.testing.fakellm import FakeLLMServer, Reply

pytest.importorskip("openai")

from peo import demo_agents


def demo(*argv: str, tmp: Path, **env_vars: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TMPDIR": str(tmp), **env_vars}  # the demo's own temporary store lands in the test's directory
    return subprocess.run([sys.executable, "-m", "peo", "demo", "--agents", *argv], env=env, cwd=tmp,
                          capture_output=True, text=True, timeout=220)


def check_success(done: subprocess.CompletedProcess[str]) -> str:
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    assert "Traceback" not in out + done.stderr
    assert "finished 6 of 6 agents (and 2 delegated fact checks)" in out
    assert "the 'pricing' agent waits for a person to approve write_report; `peo pending` shows:" in out
    (digest,) = set(re.findall(r"\$ peo --store \S+ approve \S+ (sha256:[0-9a-f]{64})", out))
    assert re.search(r"approved write_report for \S+ \(call \S+\); the agent goes on", out)
    assert f"the approval of the 'pricing' agent's write_report named {digest}: the digest of that exact call" in out
    assert re.search(r"every chain verified: 8 objects, all signatures and hash links intact", out)
    results = dict(re.findall(r"^  (pricing|energy use) +(\{.*\})$", out, re.M))
    assert json.loads(results["pricing"])["title"] == "Pricing: what the sources say"
    calls = re.search(r"model calls: (\d+) recorded, one step each \(\d+ tokens\)", out)
    assert calls and int(calls[1]) == 20  # 3 per agent, 4 for the two fact-checked
    return out


@pytest.mark.timeout(240)  # the demo's own --timeout ends a hung run first
def test_the_agents_demo_survives_a_sigkill_and_takes_its_approval_from_the_cli(tmp_path: Path) -> None:
    out = check_success(demo("--timeout", "180", tmp=tmp_path))
    served = re.search(r"; the scripted server answered (\d+) requests", out)
    assert served and int(served[1]) >= 20  # more if an answer was lost with demo-a before it was recorded
    assert "SIGKILL -> node demo-a, mid-run" in out
    assert re.search(r"takeovers after the SIGKILL: \d+ objects continued by demo-b", out)
    (store,) = set(re.findall(r"^store: (sqlite:///\S+)$", out, re.M))
    assert Path(store.removeprefix("sqlite:///")).is_relative_to(tmp_path)


@pytest.mark.timeout(240)  # the demo's own --timeout ends a hung run first
def test_the_agents_demo_without_a_kill_on_a_given_store_and_an_outside_model_server(tmp_path: Path) -> None:
    """--llm-base-url: the demo starts no model server of its own; the nodes ask this one, with the key."""
    url = f"sqlite:///{tmp_path / 'agents.db'}"
    with FakeLLMServer(demo_agents.responder, model="outside-model", api_key="k-123") as server:
        base = server.base_url
        out = check_success(demo("--no-kill", "--store", url, "--timeout", "180", "--llm-base-url", base,
                                 "--model", "outside-model", "--api-key-env", "DEMO_TEST_KEY", tmp=tmp_path,
                                 DEMO_TEST_KEY="k-123"))
        assert server.calls == 20
    assert "SIGKILL" not in out and f"store: {url}" in out and "scripted server" not in out
    assert f"model: outside-model at {base} (the API key in $DEMO_TEST_KEY)" in out
    assert f"peo --store {url} verify" in out


@pytest.mark.timeout(240)  # the demo's own --timeout ends a hung run first
def test_an_unreachable_model_server_fails_the_agents_with_a_clear_error(tmp_path: Path) -> None:
    done = demo("--llm-base-url", "http://127.0.0.1:9/v1", "--model", "x", "--no-kill", "--timeout", "180",
                tmp=tmp_path)
    assert done.returncode == 1
    assert "Traceback" not in done.stdout + done.stderr
    assert "model: x at http://127.0.0.1:9/v1 (no API key)" in done.stdout
    assert "finished 0 of 6 agents" in done.stdout
    (line,) = done.stderr.splitlines()
    assert line.startswith("peo demo: error: 6 of 6 agents did not finish; the first, 'durable agents': failed")
    assert "cannot reach the model server at http://127.0.0.1:9/v1" in line
    assert "(check --llm-base-url, --model and --api-key-env)" in line


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["demo", "--model", "m"], 2, "--model go with --agents"),
    (["demo", "--agents", "--llm-base-url", "http://127.0.0.1:9/v1"], 2, "--llm-base-url needs --model NAME"),
    (["demo", "--agents", "--model", "m"], 2, "--model and --api-key-env need --llm-base-url URL"),
    (["demo", "--agents", "--llm-base-url", "ftp://x", "--model", "m"], 1, "base_url must be an http"),
    (["demo", "--agents", "--llm-base-url", "http://127.0.0.1:9/v1", "--model", "m", "--api-key-env",
      "PEO_TEST_NO_SUCH_KEY"], 1, "--api-key-env PEO_TEST_NO_SUCH_KEY: that environment variable is not set"),
])
def test_bad_agents_demo_options_say_what_is_wrong(capsys: pytest.CaptureFixture[str], argv: list[str],
                                                   code: int, message: str) -> None:
    got, out, err = run(capsys, *argv)
    assert got == code and message in err, (out, err)
    assert "submitted" not in out  # nothing was started


def said(*calls: tuple[str, dict[str, Any], Any]) -> list[dict[str, Any]]:
    """A conversation so far: each call the model made and what the tool answered."""
    messages: list[dict[str, Any]] = []
    for n, (name, arguments, answer) in enumerate(calls):
        messages.append({"role": "assistant", "content": None, "tool_calls": [
            {"id": f"c{n}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}]})
        messages.append({"role": "tool", "tool_call_id": f"c{n}", "content": json.dumps(answer)})
    return messages


def step(topic: str, *calls: tuple[str, dict[str, Any], Any]) -> tuple[str, dict[str, Any]]:
    reply: Reply = demo_agents.responder({"messages": [
        {"role": "system", "content": demo_agents.INSTRUCTIONS},
        {"role": "user", "content": demo_agents.task(topic)}, *said(*calls)]})
    ((_, name, arguments),) = reply.calls
    return name, json.loads(arguments)


def test_the_scripted_model_searches_checks_a_fact_writes_and_finishes() -> None:
    assert step("pricing") == ("search", {"query": "pricing overview"})
    found = ("search", {"query": "pricing overview"}, {"result": []})
    name, arguments = step("pricing", found)
    assert name == "delegate" and arguments["handler"] == "fact_check" and "claim" in arguments["goal"]
    checked = ("delegate", arguments, {"result": {"verdict": "supported"}})
    name, report = step("pricing", found, checked)
    assert name == "write_report" and report["title"] == "Pricing: what the sources say"
    assert step("evaluation", found)[0] == "write_report"  # only some tasks ask for a fact check
    written = ("write_report", report, {"result": {"published": "https://reports.example/x"}})
    assert step("pricing", found, checked, written) == ("finish", {"result": {
        "topic": "pricing", "title": "Pricing: what the sources say", "summary": "Pricing: three sources agree"}})
    denied = ("write_report", report, {"denied": "a human denied write_report: no"})
    summary = step("pricing", found, checked, denied)[1]["result"]["summary"]
    assert summary.endswith("(report not published)")


def test_the_agents_app_is_importable_by_a_node_and_only_the_pricing_agent_needs_approval() -> None:
    handlers = demo_agents.app.handlers
    assert {"researcher", "reviewed_researcher", "fact_check"} <= set(handlers)
    assert [agent for _, agent in demo_agents.FLEET].count("reviewed_researcher") == 1
    assert dict(demo_agents.FLEET)["pricing"] == "reviewed_researcher"


def test_the_agents_demo_without_its_module_says_so_clearly(capsys: pytest.CaptureFixture[str],
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import peo

    monkeypatch.setitem(sys.modules, "peo.demo_agents", None)  # makes `from peo import demo_agents` fail
    monkeypatch.delattr(peo, "demo_agents", raising=False)
    code, _, err = run(capsys, "demo", "--agents")
    assert code == 1 and "the agents demo is not available" in err and "pip install 'peo[llm]'" in err
