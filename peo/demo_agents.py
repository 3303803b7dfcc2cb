"""``peo demo --agents``: a fleet of research agents survives a node killed with SIGKILL.

Six research agents (``@app.agent``, one model call per recorded step) run on two node
processes. Each searches (an idempotent tool), may delegate a fact check to a plain
handler, writes a report and calls ``finish``. The ``pricing`` agent's ``write_report``
needs a person's approval: the demo shows what ``peo pending`` lists and answers it with
``peo approve ID DIGEST``, run as a command, as a person would. One node is killed with
SIGKILL mid-run; the other continues its agents from their memories (a model answer
already recorded is never asked for again). The demo ends with each agent's result, the
model calls, the approval's digest and a verification of every chain.

By default the model is a scripted OpenAI-compatible server started in this process
(:class:`peo.testing.fakellm.FakeLLMServer`): no network, no key. ``--llm-base-url URL
--model NAME [--api-key-env VAR]`` points the same agents at a real server instead. The
node processes read the model from ``PEO_DEMO_LLM_URL``, ``PEO_DEMO_MODEL`` and
``PEO_DEMO_API_KEY_ENV`` (``peo.demo_agents:app``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import App, Client, Done, Model, Retry, Step
from .agents.tools import call_digest, tool_from_function
from .core.model import ObjectInfo, Status
from .errors import PeoError, UsageError
from .testing.fakellm import FakeLLMServer, Reply

__all__ = ["app", "main", "responder"]

URL_ENV, MODEL_ENV, KEY_ENV = "PEO_DEMO_LLM_URL", "PEO_DEMO_MODEL", "PEO_DEMO_API_KEY_ENV"
FAKE_MODEL = "fake-model"
_WORK = 0.1  # seconds of pretend work per tool call
_THINK = 0.25  # seconds the scripted model takes per answer, so the kill lands mid-run

#: (topic, agent): the pricing agent's write_report waits for a person's approval.
FLEET = [("durable agents", "researcher"), ("pricing", "reviewed_researcher"), ("vector search", "researcher"),
         ("model serving", "researcher"), ("evaluation", "researcher"), ("energy use", "researcher")]
_CHECKED = {"pricing", "model serving"}  # their tasks ask for a fact check (a delegation)

INSTRUCTIONS = """You are a research agent. Your task names a topic. Always act by calling a tool, one at a time:
1. Call search with a short query about the topic.
2. If the task asks for a fact check, call delegate with handler "fact_check" and goal {"claim": "<one claim \
from the search results>"}.
3. Call write_report once, with a title and a body of three to five sentences drawn from the search results.
4. Call finish with result {"topic": "<the topic>", "title": "<the report's title>", "summary": "<one sentence>"}.
If write_report is denied, call finish anyway and say in the summary that the report was not published."""

app = App()


@app.tool(idempotent=True)
def search(query: str, idempotency_key: str) -> list[dict[str, str]]:
    """Search the web (pretend: no network). Returns up to three results, each a title and a snippet."""
    time.sleep(_WORK)
    words = query.lower().split()
    topic = " ".join(w for w in words if w not in ("overview", "latest", "trends")) or "the topic"
    return [{"title": f"{topic.title()}: {kind}", "snippet": f"{topic.capitalize()} {text}."}
            for kind, text in (("a survey", "matters most where work runs for hours and must survive restarts"),
                               ("field notes", "costs less when idle work holds no memory on any node"),
                               ("a benchmark", "is measured best by what was recorded, not what was printed"))]


def _publish(title: str, body: str, idempotency_key: str) -> dict[str, Any]:
    """Publish the research report (a title and a body of a few sentences). Call it once, before finish."""
    time.sleep(_WORK)
    slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")[:60] or "report"
    return {"published": f"https://reports.example/{slug}", "words": len(body.split())}


_RETRY = Retry(base=0.5, max=4.0, max_attempts=3)  # an unreachable server fails an agent in seconds


def _model() -> Model:
    """The model the node processes' agents ask (from the environment the demo sets)."""
    return Model(os.environ.get(MODEL_ENV) or FAKE_MODEL, base_url=os.environ.get(URL_ENV) or None,
                 api_key_env=os.environ.get(KEY_ENV) or None, timeout=120.0)


@app.handler("fact_check")
def fact_check(step: Step) -> Any:
    """A plain handler an agent delegates to: checks one claim against the pretend sources."""
    time.sleep(_WORK)
    claim = str(step.goal.get("claim") or "")
    return Done({"claim": claim[:200], "verdict": "supported by 2 of 3 sources"})


app.agent("researcher", model=_model(), instructions=INSTRUCTIONS, retry=_RETRY,
          tools=[search, tool_from_function(_publish, name="write_report", idempotent=True)])
app.agent("reviewed_researcher", model=_model(), retry=_RETRY,
          instructions=INSTRUCTIONS + "\nEach write_report call waits for a person's approval before it runs.",
          tools=[search, tool_from_function(_publish, name="write_report", idempotent=True, needs_approval=True)])


def task(topic: str) -> str:
    check = " Have one claim from the results fact-checked first." if topic in _CHECKED else ""
    return f"Write a short research report on: {topic}.{check}"


# -- the scripted model ------------------------------------------------------------------


def responder(body: Mapping[str, Any]) -> Reply:
    """The scripted model: search, maybe delegate a fact check, write the report, finish."""
    messages = list(body.get("messages") or ())
    text = next((str(m.get("content")) for m in messages if m.get("role") == "user"), "")
    topic = text.partition(": ")[2].partition(".")[0] or "the topic"
    called: dict[str, Any] = {}  # tool name -> what it answered
    names = {c.get("id"): c["function"]["name"] for m in messages if m.get("role") == "assistant"
             for c in m.get("tool_calls") or ()}
    for m in messages:
        if m.get("role") == "tool":
            called[names.get(m.get("tool_call_id"), "?")] = m.get("content")
    if "search" not in called:
        return Reply.tool_call("search", {"query": f"{topic} overview"}, delay=_THINK)
    if "fact-checked" in text and "delegate" not in called:
        claim = f"{topic.capitalize()} matters most where work runs for hours and must survive restarts."
        return Reply.tool_call("delegate", {"handler": "fact_check", "goal": {"claim": claim}}, delay=_THINK)
    title = f"{topic.capitalize()}: what the sources say"
    if "write_report" not in called:
        body_text = (f"{topic.capitalize()} matters most where work runs for hours. Idle work should hold no "
                     "memory. What was recorded is the measure, not what was printed.")
        return Reply.tool_call("write_report", {"title": title, "body": body_text}, delay=_THINK)
    published = "published" in str(called["write_report"])
    summary = f"{topic.capitalize()}: three sources agree" + ("" if published else " (report not published)")
    return Reply.tool_call("finish", {"result": {"topic": topic, "title": title, "summary": summary}}, delay=_THINK)


# -- the demo ----------------------------------------------------------------------------


#: The nodes' policy: the default one, with what the agents may do (a real model included).
POLICY = """name = "demo-agents"

[agents]
tools = ["search", "write_report"]
handlers = ["fact_check"]
max_model_calls = 12
max_children = 3
"""


def _worker(argv: list[str]) -> int:
    """A demo node process (``python -m peo.demo_agents --worker --store URL --node-id ID``)."""
    from . import Node, Policy
    from .node.signals import serve_until_signalled

    p = argparse.ArgumentParser(prog="peo.demo_agents worker")
    p.add_argument("--store", required=True)
    p.add_argument("--node-id", required=True)
    args = p.parse_args(argv)
    with contextlib.suppress(ImportError):  # now, not in the first model call: a slow import there would
        import openai  # noqa: F401  (block the node's event loop past its leases' 1.5 s)
    policy = Policy.parse(POLICY, source="peo.demo_agents.POLICY")
    node = Node(args.store, app, policy=policy, node_id=args.node_id, concurrency=3,  # 3: both nodes get agents
                lease_ttl=1.5)
    asyncio.run(serve_until_signalled(node))
    return 0


def _say(msg: str = "") -> None:
    print(msg, flush=True)


def _at(started: float, msg: str) -> None:
    _say(f"  {time.monotonic() - started:5.1f}s  {msg}")


class _Demo:
    def __init__(self, store: str, env: dict[str, str], kill: bool, timeout: float, server: FakeLLMServer | None):
        self.store, self.env, self.kill, self.timeout, self.server = store, env, kill, timeout, server
        self.flag = ["--store", store]
        self.started = time.monotonic()
        self.topics: dict[str, str] = {}  # object id -> topic
        self.answered: set[str] = set()
        self.killed = False

    def spawn(self, node_id: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "peo.demo_agents", "--worker", "--store", self.store,
                                 "--node-id", node_id], env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def peo(self, why: str, *argv: str) -> int:
        """Run ``peo --store URL ARGV`` as a person would; print why, the command and its output."""
        done = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "peo", *self.flag, *argv],
                                       env=self.env, capture_output=True, text=True, timeout=60)
        _at(self.started, why)
        _say("           $ " + " ".join(shlex.quote(a) for a in ["peo", *self.flag, *argv]))
        for line in (done.stdout + done.stderr).rstrip("\n").splitlines():
            _say(f"             {line}")
        return done.returncode

    async def answer(self, client: Client) -> None:
        """Answer, from the CLI, what the agents wait for from a person (a background task)."""
        from .agents.approvals import pending

        for p in await pending(client):
            key = f"{p.object_id}:{p.call if p.call is not None else p.since}"
            if key in self.answered:
                continue
            self.answered.add(key)
            topic = self.topics.get(p.object_id, p.object_id)
            if p.kind == "approval":
                await self.peo(f"the {topic!r} agent waits for a person to approve {p.tool}; `peo pending` shows:",
                               "pending", p.object_id)
                code = await self.peo("a person approves that exact call, named by its digest, from the CLI:",
                                      "approve", p.object_id, str(p.digest))
            elif p.kind == "question":  # a real model may ask one: answer it from the CLI too
                code = await self.peo(f"the {topic!r} agent asks a person: {_clip(p.question, 200)}", "signal",
                                      p.object_id, "human", "--payload", json.dumps("Use your own judgement."))
            else:
                continue  # an unknown outcome: the demo's tools are idempotent, so there is none
            if code != 0:
                raise UsageError(f"the CLI could not answer object {p.object_id} (exit {code})")

    async def run(self) -> int:
        async with Client(self.store, identity="demo") as client:
            for topic, agent in FLEET:
                oid = await client.submit(agent, {"task": task(topic)}, labels={"demo": "agents"})
                self.topics[oid] = topic
            ids = list(self.topics)
            _say(f"submitted {len(ids)} research agents: " + ", ".join(
                t + (" (its write_report needs a person's approval)" if a == "reviewed_researcher" else "")
                for t, a in FLEET))
            nodes = {"demo-a": self.spawn("demo-a"), "demo-b": self.spawn("demo-b")}
            _say("started two node processes: demo-a and demo-b")
            try:
                if not await self.watch(client, nodes):
                    return 1
            finally:
                for proc in nodes.values():
                    if proc.poll() is None:
                        proc.send_signal(signal.SIGTERM)
                for proc in nodes.values():
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            return await self.report(client, ids)

    async def report(self, client: Client, ids: list[str]) -> int:
        """Verify every chain and say what happened, from the memories themselves."""
        elapsed = time.monotonic() - self.started
        fleet = set(ids) | {r.id for r in await client.list() if r.parent in self.topics}
        infos = {oid: await client.get(oid) for oid in sorted(fleet)}
        for oid in infos:
            await client.verify(oid)
        agents = [infos[oid] for oid in ids]
        done = [i for i in agents if i.reason == "done"]
        steps = sum(len(i.memory) - 1 for i in infos.values())
        _say()
        _say(f"finished {len(done)} of {len(agents)} agents (and {len(infos) - len(agents)} delegated fact checks) "
             f"in {elapsed:.1f} s; {steps} steps recorded")
        if self.kill and not self.killed:
            _say("demo-a was not killed: no agent was mid-run on it")
        elif self.kill:
            moved = sum(1 for i in infos.values() if _taken_over(i))
            _say(f"takeovers after the SIGKILL: {moved} objects continued by demo-b where demo-a stopped, "
                 "from their memories (a model answer already recorded is never asked for again)")
        calls = [r for i in agents for r in _records(i) if r.get("op") == "step" and r.get("name") == "model"]
        tokens = sum(int(u.get("prompt", 0)) + int(u.get("completion", 0))
                     for r in calls for u in [(r.get("result") or {}).get("usage") or {}])
        served = "" if self.server is None else f"; the scripted server answered {self.server.calls} requests"
        if self.server is not None and self.killed and self.server.calls > len(calls):
            served += (f" ({self.server.calls - len(calls)} asked by demo-a were lost with it before their answers "
                       "were recorded, and asked again by demo-b)")
        _say(f"model calls: {len(calls)} recorded, one step each ({tokens} tokens){served}")
        _say("results:")
        width = max(len(t) for t in self.topics.values())
        for info in agents:
            what = _clip(info.result) if info.reason == "done" else _ending(info)
            _say(f"  {self.topics[info.id]:<{width}}  {what}")
        bound = [line for info in agents for line in _approvals(info, self.topics[info.id])]
        for line in bound:
            _say(line)
        if not bound:
            _say("no approval was asked for: the pricing agent did not call write_report")
        _say(f"every chain verified: {len(infos)} objects, all signatures and hash links intact")
        _say()
        _say("try next:")
        flag = f"--store {shlex.quote(self.store)}"
        pricing = next(oid for oid, t in self.topics.items() if t == "pricing")
        for line in (f"peo {flag} ls", f"peo {flag} show {pricing}", f"peo {flag} verify"):
            _say(f"  {line}")
        if len(done) < len(agents):
            first = next(i for i in agents if i.reason != "done")
            hint = " (check --llm-base-url, --model and --api-key-env)" if _error(first).get("class") in (
                "unreachable", "model_not_found", "model_auth", "model_config", "timeout") else ""
            print(f"peo demo: error: {len(agents) - len(done)} of {len(agents)} agents did not finish; the first, "
                  f"{self.topics[first.id]!r}: {_ending(first)}{hint}", file=sys.stderr, flush=True)
            return 1
        if self.server is not None and not bound:
            print("peo demo: error: the pricing agent's approval was not recorded", file=sys.stderr, flush=True)
            return 1
        return 0

    async def watch(self, client: Client, nodes: dict[str, subprocess.Popen[bytes]]) -> bool:
        """Show progress until every object of the fleet ends (False: the time ran out)."""
        fleet, finished, last = set(self.topics), set[str](), ""
        answering: asyncio.Task[None] | None = None
        while True:
            rows = [r for r in await client.list() if r.id in fleet or r.parent in fleet]
            fleet |= {r.id for r in rows}
            counts: dict[str, int] = {}
            for r in rows:
                counts[str(r.status)] = counts.get(str(r.status), 0) + 1
            steps = sum(r.seq for r in rows)
            line = " ".join(f"{k}={v}" for k, v in sorted(counts.items()))
            if line != last:
                _at(self.started, f"steps={steps:<4d} {line}")
                last = line
            busy = [r for r in rows if r.lease_owner == "demo-a" and r.status is Status.RUNNING and r.seq >= 2]
            if self.kill and not self.killed and busy and steps >= 12:
                nodes["demo-a"].send_signal(signal.SIGKILL)
                nodes["demo-a"].wait()
                self.killed = True
                _at(self.started, "SIGKILL -> node demo-a, mid-run (its leases expire in 1.5 s; demo-b takes over)")
            for r in rows:
                if r.id in self.topics and r.status.is_final and r.id not in finished:
                    finished.add(r.id)
                    info = await client.get(r.id)
                    _at(self.started, f"the {self.topics[r.id]!r} agent " + (
                        "finished" if info.reason == "done" else f"ended: {_ending(info)}"))
            if answering is not None and answering.done():
                answering.result()  # raises what went wrong
                answering = None
            if answering is None and any(r.status is Status.DORMANT and r.waiting_for in ("approve", "human")
                                         for r in rows):
                answering = asyncio.create_task(self.answer(client))
            if rows and all(r.status.is_final for r in rows):
                return True
            if time.monotonic() - self.started > self.timeout:
                if answering is not None:
                    answering.cancel()
                print(f"peo demo: error: the agents did not finish within {self.timeout:.0f} s "
                      "(--timeout SECONDS gives them longer)", file=sys.stderr, flush=True)
                return False
            await asyncio.sleep(0.25)


def _records(info: ObjectInfo) -> list[dict[str, Any]]:
    """An agent's recorded operations, in order."""
    found = {int(k[3:]): v for k, v in info.state.items() if k.startswith("fn.") and k[3:].isdigit()}
    return [found[n] for n in sorted(found) if isinstance(found[n], dict)]


def _taken_over(info: ObjectInfo) -> bool:
    writers = [e.origin_node for e in info.memory[1:]]
    return "demo-a" in writers and "demo-b" in writers[writers.index("demo-a"):]


def _approvals(info: ObjectInfo, topic: str) -> list[str]:
    """How each approval the agent waited for was bound to its call: the digest it named."""
    lines = []
    for record in _records(info):
        approval = (record.get("note") or {}).get("approval") if record.get("op") == "signal" else None
        if not isinstance(approval, dict):
            continue
        seq = int(record["seq"]) + 1  # the reentry entry that delivered the answer
        signals = info.memory[seq].outcome.get("signals", ()) if len(info.memory) > seq else ()
        sent = [s for s in signals if s.get("name") == "approve"]
        if not sent:
            continue
        payload, digest = sent[0].get("payload") or {}, approval.get("digest")
        exact = digest == call_digest(str(approval.get("tool")), approval.get("arguments") or {})
        if payload.get("digest") == digest and exact:
            lines.append(f"the approval of the {topic!r} agent's {approval.get('tool')} named {digest}: the digest of "
                         f"that exact call (its tool and arguments), signed by key {sent[0].get('sender')}; the "
                         "agent checked it before the tool ran")
        else:
            lines.append(f"the {topic!r} agent refused an approval for {payload.get('digest')}: its call is {digest}")
    return lines


def _error(info: ObjectInfo) -> dict[str, Any]:
    """The last error an object's memory records ({} if none)."""
    for entry in reversed(info.memory):
        error = entry.outcome.get("error")
        if isinstance(error, dict):
            return error
    return {}


def _ending(info: ObjectInfo) -> str:
    if info.reason == "done":
        return "finished"
    error = _error(info)
    return f"{info.reason} ({error.get('class', '?')}: {error.get('message', _clip(info.result))})"


def _clip(value: Any, n: int = 300) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= n else text[:n] + "..."


def _options(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="peo demo --agents",
        description="Run six research agents on two node processes, answer an approval from the CLI, kill a node "
        "with SIGKILL mid-run; ends with each agent's result and a verification of every chain.")
    p.add_argument("--store", help="store URL (default: a new SQLite store in a temporary directory)")
    p.add_argument("--no-kill", action="store_true", help="do not kill a node (for comparison)")
    p.add_argument("--timeout", type=float, help="give up after this many seconds (default 55; 300 with a real "
                   "server)")
    p.add_argument("--llm-base-url", metavar="URL", help="an OpenAI-compatible server (default: a scripted one)")
    p.add_argument("--model", metavar="NAME", help="the model to ask at --llm-base-url")
    p.add_argument("--api-key-env", metavar="VAR", help="the environment variable holding the server's API key")
    args = p.parse_args(argv)
    if args.llm_base_url is None and (args.model is not None or args.api_key_env is not None):
        p.error("--model and --api-key-env need --llm-base-url URL (the server to ask)")
    if args.llm_base_url is not None and args.model is None:
        p.error("--llm-base-url needs --model NAME (the model to ask)")
    if args.timeout is not None and not args.timeout > 0:
        p.error("--timeout must be a positive number of seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return _worker(argv[1:])
    args = _options(argv)
    try:
        import openai  # noqa: F401  (the agents' model client)
    except ImportError:
        print("peo demo: error: the agents demo needs the llm extra: pip install 'peo[llm]'", file=sys.stderr)
        return 1
    env = dict(os.environ)
    server: FakeLLMServer | None = None
    try:
        if args.llm_base_url is None:
            server = FakeLLMServer(responder, model=FAKE_MODEL).start()
            env.update({URL_ENV: server.base_url, MODEL_ENV: FAKE_MODEL, KEY_ENV: ""})
            _say(f"model: {FAKE_MODEL}, a scripted OpenAI-compatible server at {server.base_url} (in this process; "
                 "no network, no API key)")
        else:
            Model(args.model, base_url=args.llm_base_url, api_key_env=args.api_key_env)  # checks them
            if args.api_key_env and not os.environ.get(args.api_key_env):
                raise UsageError(f"--api-key-env {args.api_key_env}: that environment variable is not set")
            env.update({URL_ENV: args.llm_base_url, MODEL_ENV: args.model, KEY_ENV: args.api_key_env or ""})
            key = f"the API key in ${args.api_key_env}" if args.api_key_env else "no API key"
            _say(f"model: {args.model} at {args.llm_base_url} ({key})")
        store = args.store
        if store is None:
            where = Path(tempfile.mkdtemp(prefix="peo-demo-agents-")) / "agents.db"
            store = f"sqlite:///{where}"
        _say(f"store: {store}")
        timeout = args.timeout or (55.0 if server is not None else 300.0)
        demo = _Demo(store, env, not args.no_kill, timeout, server)
        return asyncio.run(demo.run())
    except PeoError as exc:
        print(f"peo demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        if server is not None:
            server.stop()


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
