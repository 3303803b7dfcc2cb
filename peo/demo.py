"""``peo demo``: a fleet of sample agents survives a node being killed with SIGKILL.

The demo runs on the embedded default store (``sqlite:///peo.db`` in the current
directory, or ``--store``). It submits a small fleet whose handlers between them use all
six actions, and one durable function (``brief``: steps, a durable sleep and two children,
written as ordinary async code), starts two node processes, kills one with SIGKILL mid-run,
lets the other take over, answers a human-in-the-loop wait with a signal, and ends by
verifying every chain. Everything is local: no network, no API keys.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shlex
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from . import (
    App,
    CannotDo,
    Client,
    Continue,
    Delegate,
    Done,
    Fail,
    Intent,
    Node,
    Refine,
    Run,
    Sleep,
    Step,
    WaitSignal,
)
from .config import DEFAULT_STORE, store_url
from .core.model import Action, Entry, Status
from .errors import PeoError
from .node.signals import serve_until_signalled

__all__ = ["app", "main"]

app = App()

_WORK = 0.15  # seconds of pretend work per step, so the kill lands mid-run

_TEXTS = [
    "persistent objects carry their own intent context and memory",
    "any stateless node can pick an object up and continue",
    "a crash a lease lost or a deliberate sleep all resume the same way",
    "dormant objects cost no memory on any node",
]


@app.handler("research")
def research(step: Step) -> Any:
    """Reads documents one per step, keeping a running word count (execute x N)."""
    time.sleep(_WORK)
    i = step.state.get("i", 0)
    docs = step.goal.get("docs", 6)
    if i >= docs:
        return Done({"words": step.state.get("words", 0), "docs": docs})
    words = len(_TEXTS[i % len(_TEXTS)].split())
    return Continue(state={"i": i + 1, "words": step.state.get("words", 0) + words})


@app.handler("approval")
def approval(step: Step) -> Any:
    """Drafts, then waits for a human's approval signal (dormancy, reentry on signal)."""
    time.sleep(_WORK)
    if not step.state.get("drafted"):
        return WaitSignal("approve", timeout=120, state={"drafted": True})
    answer = next((s.payload for s in step.signals if s.name == "approve"), None)
    return Done({"approved": bool(answer and answer.get("approved")), "by": (answer or {}).get("by")})


@app.handler("planner")
def planner(step: Step) -> Any:
    """Refines its goal (mutate), delegates subtasks (delegate) and merges their results."""
    time.sleep(_WORK)
    if "parts" not in step.goal:
        return Refine(goal={**step.goal, "parts": 3})
    if not step.state.get("delegated"):
        subtasks = [Intent("subtask", {"n": n}) for n in range(step.goal["parts"])]
        return Delegate(subtasks, wait=True, state={"delegated": True})
    return Done({"total": sum(v for v in step.children.values() if isinstance(v, int))})


@app.handler("subtask")
def subtask(step: Step) -> Any:
    time.sleep(_WORK)
    k = step.state.get("k", 0)
    if k < 2:
        return Continue(state={"k": k + 1})
    return Done(step.goal["n"] * 10)


@app.handler("flaky")
def flaky(step: Step) -> Any:
    """A tool that fails twice (rate limited, then timed out) and then works: backoff."""
    time.sleep(_WORK)
    if step.attempt == 1 and not step.state.get("tried"):
        return Fail("429 Too Many Requests", error_class="rate_limit", state={"tried": 1})
    if step.state.get("tried") == 1:
        return Fail("tool timed out", error_class="timeout", state={"tried": 2})
    return Done({"attempts": 3})


@app.handler("sleeper")
def sleeper(step: Step) -> Any:
    """Sleeps for a second (dormancy on a timer), notes it cannot browse, then finishes."""
    time.sleep(_WORK)
    if not step.state.get("slept"):
        return Sleep(seconds=1.0, state={"slept": True})
    if "web" not in step.cannot_do:
        return CannotDo("web", "the demo has no network access")
    return Done("rested")


def _search(topic: str) -> list[str]:
    """A pretend search: a step's side effect, run once; a re-run reads its recorded result."""
    time.sleep(_WORK)
    return [text for text in _TEXTS if "objects" in text]


def _count_words(text: str) -> int:
    time.sleep(_WORK)
    return len(text.split())


def _compose(topic: str, sources: list[str], words: list[int]) -> dict[str, Any]:
    time.sleep(_WORK)
    return {"topic": topic, "sources": len(sources), "words": sum(words)}


@app.function("brief", version="demo-1")
async def brief(run: Run, topic: str) -> dict[str, Any]:
    """A durable function (execute, dormancy, reentry, delegate, terminate): a search step,
    a durable sleep, a summary of each source by a child, a last step. Whichever node wakes
    it re-runs it from the top, recorded operations returning their recorded results."""
    sources = await run.step(_search, topic)
    run.progress({"sources": len(sources), "now": "resting"})
    await run.sleep(seconds=1.0)  # dormant: no node holds it meanwhile (a SIGKILL loses nothing)
    run.progress({"sources": len(sources), "now": "summarising"})
    words = await run.gather(*(run.child("summarise", text=text) for text in sources))
    result: dict[str, Any] = await run.step(_compose, topic, sources, words)
    return result


@app.function("summarise")
async def summarise(run: Run, text: str) -> int:
    """A durable function as a child: one step, its result returned to the parent."""
    return int(await run.step(_count_words, text))


#: The demo's durable functions started by the fleet (their children are counted with them).
_FUNCTIONS = ("brief",)

_FLEET = [("research", {"docs": 8})] * 8 + [("approval", {})] * 2 + [("planner", {"topic": "durability"})] * 2 \
    + [("flaky", {})] * 2 + [("sleeper", {})] * 2 + [("brief", {"topic": "durability"})]
_BRIEF_AT = [handler for handler, _ in _FLEET].index("brief")


def _worker(argv: list[str]) -> int:
    """A demo node process (``python -m peo.demo --worker --store URL --node-id ID``)."""
    p = argparse.ArgumentParser(prog="peo.demo worker")
    p.add_argument("--store", required=True)
    p.add_argument("--node-id", required=True)
    args = p.parse_args(argv)
    node = Node(args.store, app, node_id=args.node_id, concurrency=8, lease_ttl=1.5)
    asyncio.run(serve_until_signalled(node))
    return 0


def _spawn(store: str, node_id: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "peo.demo", "--worker", "--store", store, "--node-id", node_id],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def _say(msg: str) -> None:
    print(msg, flush=True)


async def _run(store: str, kill: bool, timeout: float) -> int:
    async with Client(store, identity="demo") as client:
        ids = []
        for handler, goal in _FLEET:
            ids.append(await client.submit(handler, goal, labels={"demo": "1"}))
        fleet = set(ids)
        _say(f"submitted {len(ids)} agent objects to {store}")
        nodes = {"demo-a": _spawn(store, "demo-a"), "demo-b": _spawn(store, "demo-b")}
        _say("started two node processes: demo-a and demo-b")
        started = time.monotonic()
        killed_at: float | None = None
        approved: set[str] = set()
        returned: set[str] = set()
        last = ""
        try:
            while True:
                rows = [r for r in await client.list() if r.id in fleet or r.parent in fleet
                        or (r.parent is not None and r.parent in fleet)]
                for r in rows:
                    if r.parent in fleet:
                        fleet.add(r.id)
                statuses = Counter(str(r.status) for r in rows)
                steps = sum(r.seq for r in rows)
                line = " ".join(f"{k}={v}" for k, v in sorted(statuses.items()))
                if line != last:
                    _say(f"  {time.monotonic() - started:5.1f}s  steps={steps:<4d} {line}")
                    last = line
                if kill and killed_at is None and steps >= 40:
                    nodes["demo-a"].send_signal(signal.SIGKILL)
                    nodes["demo-a"].wait()
                    killed_at = time.monotonic()
                    _say(f"  {killed_at - started:5.1f}s  SIGKILL -> node demo-a (its leases expire in 1.5 s;"
                         " demo-b takes over)")
                for r in rows:
                    if r.handler == "approval" and r.status is Status.DORMANT and r.waiting_for == "approve" \
                            and r.id not in approved:
                        await client.signal(r.id, "approve", {"approved": True, "by": "a human (the demo)"})
                        approved.add(r.id)
                        _say(f"  {time.monotonic() - started:5.1f}s  a human approves {r.id} (signal)")
                for r in rows:
                    if r.handler in _FUNCTIONS and r.status.is_final and r.id not in returned:
                        returned.add(r.id)
                        info = await client.get(r.id)
                        _say(f"  {time.monotonic() - started:5.1f}s  the durable function {r.handler} returned "
                             f"{info.result} ({_writers(info.memory)})")
                if rows and all(r.status.is_final for r in rows):
                    break
                if time.monotonic() - started > timeout:
                    _say(f"the fleet did not finish within {timeout:.0f} s")
                    return 1
                await asyncio.sleep(0.25)
        finally:
            for proc in nodes.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in nodes.values():
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
        return await _report(client, store, ids, fleet, kill, time.monotonic() - started)


def _writers(memory: Sequence[Entry]) -> str:
    """Which nodes wrote an object's entries, in the order they first did."""
    nodes = list(dict.fromkeys(e.origin_node for e in memory[1:]))
    return "written by " + " and ".join(nodes) if nodes else "nothing written"


async def _report(client: Client, store: str, ids: list[str], fleet: set[str], kill: bool, elapsed: float) -> int:
    """Verify every chain and say what happened, from the memories themselves."""
    verified, takeovers, actions, steps = 0, 0, Counter[str](), 0
    functions: list[str] = []
    for oid in sorted(fleet):
        await client.verify(oid)
        verified += 1
        info = await client.get(oid)
        if info.intent.handler in _FUNCTIONS and info.context.parent is None:
            ops = Counter(e.action for e in info.memory[1:])
            functions.append(f"the durable function {info.intent.handler} ({oid}): "
                             + ", ".join(f"{a} x{ops[a]}" for a in Action if ops[a])
                             + f"; chain verified; result {info.result}")
        writers = [e.origin_node for e in info.memory[1:]]
        steps += len(writers)
        actions.update(str(e.action) for e in info.memory[1:])
        if "demo-a" in writers and "demo-b" in writers[writers.index("demo-a"):]:
            takeovers += 1
    done = [await client.get(oid, memory=False) for oid in sorted(fleet)]
    finished = sum(1 for d in done if d.reason == "done")
    _say("")
    _say(f"finished {finished} of {len(done)} objects in {elapsed:.1f} s; {steps} steps recorded")
    if kill:
        _say(f"takeovers after the SIGKILL: {takeovers} objects continued by demo-b where demo-a stopped")
    _say("actions used: " + ", ".join(f"{a} x{actions[str(a)]}" for a in Action if a is not Action.INSTANTIATE))
    _say(f"every chain verified: {verified} objects, all signatures and hash links intact")
    for line in functions:
        _say(line)
    flag = "" if store == DEFAULT_STORE else f" --store {shlex.quote(store)}"  # quoted: zsh globs ?
    _say("")
    _say("try next:")
    _say(f"  peo{flag} ls")
    _say(f"  peo{flag} show {ids[10]}")
    if len(ids) > _BRIEF_AT:
        _say(f"  peo{flag} show {ids[_BRIEF_AT]}")  # the durable function: its operations and progress
    _say(f"  peo{flag} verify")
    missing = [a for a in Action if a is not Action.INSTANTIATE and actions[str(a)] == 0]
    return 0 if finished == len(done) and not missing else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--worker"]:
        return _worker(argv[1:])
    p = argparse.ArgumentParser(
        prog="peo demo",
        description="Run a fleet of sample agents on two node processes, kill one with SIGKILL "
        "mid-run, and show the other take over; ends by verifying every chain.",
    )
    p.add_argument("--store", default=store_url(),
                   help="store URL (default: PEO_STORE or sqlite:///peo.db)")
    p.add_argument("--no-kill", action="store_true", help="do not kill a node (for comparison)")
    p.add_argument("--timeout", type=float, default=55.0, help="give up after this many seconds (default 55)")
    args = p.parse_args(argv)
    try:
        return asyncio.run(_run(args.store, not args.no_kill, args.timeout))
    except PeoError as exc:
        print(f"peo demo: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    with contextlib.suppress(BrokenPipeError):
        sys.exit(main())
