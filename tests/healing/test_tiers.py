"""The tiers end to end, with real node processes: a step that kills its node every time.

The object writes a checkpoint, then a poisoned state; with the poison, its step calls
``os._exit``. Node processes (two ids, taking turns as a supervisor would restart them) keep
dying on it. After ``max_recoveries`` claims without progress the next node restores the
checkpoint (tier 3, a signed entry); the object poisons itself again and the crashes go on,
so the next time it is quarantined (tier 4) and one alert goes to a webhook (a real HTTP
server on 127.0.0.1) and to a command. Other objects on those nodes finish. ``peo
postmortem`` tells the story; once the handler is fixed, ``peo resume --from-known-good``
brings the checkpoint back and the object finishes.

No assertion is on wall time: deadlines only turn a hang into a failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

import peo
from peo.core.model import Action

APP = '''
import os

import peo

app = peo.App()


@app.handler("fragile")
def fragile(step: peo.Step) -> peo.Proposal:
    if step.state.get("poison"):
        os._exit(1)  # the bad state kills the node, every time
    if step.state.get("n") is None:
        return peo.Continue(state={"n": 1}, checkpoint=True)
    if os.path.exists(step.goal["fixed"]):
        return peo.Done("fixed")
    return peo.Continue(state={"poison": True})


@app.handler("fine")
def fine(step: peo.Step) -> peo.Proposal:
    n = step.state.get("n", 0)
    return peo.Done(n) if n >= 3 else peo.Continue(state={"n": n + 1})
'''

SINK = '''
import sys
with open(sys.argv[1], "a") as f:
    f.write(sys.stdin.read().replace("\\n", " ") + "\\n")
'''

DEADLINE = 120.0


class Hook(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        Hook.received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def webhook() -> Any:
    Hook.received = []
    server = HTTPServer(("127.0.0.1", 0), Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/alerts", Hook.received
    server.shutdown()
    server.server_close()


def node(url: str, cwd: Path, node_id: str) -> int:
    """One node process until idle (or until the step kills it); its exit status."""
    done = subprocess.run(
        [sys.executable, "-m", "peo", "--store", url, "node", "--app", "tiersapp:app", "--profile", "node.toml",
         "--node-id", node_id, "--until-idle"],
        cwd=cwd, capture_output=True, text=True, timeout=DEADLINE)
    with (cwd / f"{node_id}.log").open("a") as log:
        log.write(done.stderr)
    return done.returncode


def peo_cli(url: str, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "peo", "--store", url, *args], cwd=cwd, capture_output=True,
                          text=True, timeout=DEADLINE)


async def test_a_step_that_kills_its_node_is_restored_then_quarantined_with_one_alert(
        store_url: str, tmp_path: Path, webhook: tuple[str, list[dict[str, Any]]]) -> None:
    hook_url, received = webhook
    (tmp_path / "tiersapp.py").write_text(APP)
    (tmp_path / "sink.py").write_text(SINK)
    alerts_file = tmp_path / "alerts.jsonl"
    (tmp_path / "node.toml").write_text(
        f'lease_ttl = 0.3\nmax_recoveries = 2\nalert_webhook = "{hook_url}"\n'
        f'alert_command = "{sys.executable} sink.py {alerts_file}"\n')
    fixed = tmp_path / "fixed"
    url = store_url
    async with peo.Client(url) as client:
        oid = await client.submit("fragile", {"fixed": str(fixed)})
        others = [await client.submit("fine") for _ in range(3)]

    exits: list[int] = []
    deadline = time.monotonic() + DEADLINE
    async with peo.Client(url) as client:
        while (await client.get(oid, memory=False)).status is not peo.Status.QUARANTINED:
            assert time.monotonic() < deadline, f"not quarantined; node exits so far: {exits}"
            exits.append(node(url, tmp_path, "ab"[len(exits) % 2]))
        assert 1 in exits  # the step did kill its nodes
        for other in others:  # the other objects on those nodes finished
            assert await client.wait(other, timeout=10) == 3

        info = await client.get(oid)
        assert info.reason is not None and "after a restore" in info.reason
        restores = [e for e in info.memory if e.action is Action.MUTATE and "restore" in e.outcome]
        assert [(e.outcome["restore"]["seq"], e.outcome["restore"]["by"]) for e in restores] == [(1, "node")]
        assert restores[0].outcome["reset"] == {"n": 1}
        assert await client.verify(oid) == len(info.memory)

    # One alert per sink, for this incident (the node delivers it; run one more to be sure
    # a restart does not deliver it again).
    node(url, tmp_path, "c")
    assert [a["object_id"] for a in received] == [oid]
    assert [json.loads(line)["object_id"] for line in alerts_file.read_text().splitlines()] == [oid]

    shown = peo_cli(url, tmp_path, "show", oid)
    assert shown.returncode == 0, shown.stderr
    assert "claims in a row ended without progress" in shown.stdout
    assert "state restored to seq 1 by node" in shown.stdout and "checkpoint" in shown.stdout

    story = peo_cli(url, tmp_path, "postmortem", oid)
    assert story.returncode == 0, story.stderr
    for part in ("quarantined", "restore", "claims without progress", "the last checkpoint",
                 "state set back to seq 1", "alert delivered to command, webhook"):
        assert part in story.stdout.lower(), story.stdout

    fixed.write_text("")  # the handler is fixed; bring the checkpoint back
    resumed = peo_cli(url, tmp_path, "resume", oid, "--from-known-good")
    assert resumed.returncode == 0, resumed.stderr
    assert "restored to the known-good state of seq 1" in resumed.stdout
    node(url, tmp_path, "a")
    async with peo.Client(url) as client:
        assert await client.wait(oid, timeout=10) == "fixed"
        assert await client.verify(oid) == len((await client.get(oid)).memory)
