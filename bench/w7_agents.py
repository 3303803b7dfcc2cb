#!/usr/bin/env python
"""W7: the per-step overhead of an agent step over the bare model call, peo against LangGraph.

N agents (default 20, one after another: --concurrency 1) each make K ``lookup`` tool calls
(default 10) and then end, against a FakeLLMServer (peo.testing.fakellm) that this driver
starts afresh for every measurement: it answers ``lookup {"key": "k<i>"}`` while the
conversation holds fewer than K tool results, then ends it (peo: the control tool
``finish {"result": "ok"}``; LangGraph's prebuilt ReAct agent: the plain text ``ok``).
Each workload process measures, against that server, the runtime's time for the N agents
and the time of the same conversations driven by hand with the same client and no runtime
(``bare_s``: the mean of a run before and one after). The overhead per step is
``(runtime_s - bare_s) / steps``, one step being one model call (and the tool call it asks
for): N x (K + 1) steps.

    python bench/w7_agents.py                    # N=20, K=10, 5 interleaved runs, peo and LangGraph
    python bench/w7_agents.py --smoke            # N=2, K=2, 1 run: seconds (CI); LangGraph only if
                                                 # bench/.venv-peers exists
    python bench/w7_agents.py --agents 20 --steps 10 --concurrency 4 --runs 7 --json w7.json

Systems: ``peo`` (SQLite store, synchronous=FULL, every entry signed, one node with
``run_until_idle``), ``langgraph-sync`` and ``langgraph-async``; ``peo-reused-client`` (diagnostic, only when named in
--systems: peo forced to one AsyncOpenAI per process by a monkeypatch; equal to ``peo`` once
peo.agents.model caches its clients)
(``langgraph.prebuilt.create_react_agent`` + ``langchain_openai.ChatOpenAI``, SqliteSaver on
a file, ``durability="sync"`` / ``"async"``, LangGraph's default). Runs are interleaved (run 1
of every system, then run 2, ...), each in a fresh process and temporary directory; the
table gives median (min-max) and the ratio of the medians of the overhead per step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from peo.testing.fakellm import FakeLLMServer, Reply

BENCH = Path(__file__).resolve().parent
WORKLOADS = BENCH / "workloads"
PEERS_PY = BENCH / ".venv-peers" / "bin" / "python"
MODEL = "fake-model"

# system -> (peer?, script, extra argv, how the agent ends)
SYSTEMS: dict[str, tuple[bool, str, tuple[str, ...], str]] = {
    "peo": (False, "w7_peo.py", (), "finish"),
    # Diagnostic: peo with one AsyncOpenAI per process, forced by a monkeypatch in the workload
    # process. It measured what a client per call cost before peo.agents.model cached one per
    # event loop; on a tree that caches, it equals "peo". Not run unless named in --systems.
    "peo-reused-client": (False, "w7_peo.py", ("--reuse-client",), "finish"),
    "langgraph-sync": (True, "w7_lg.py", ("--durability", "sync"), "text"),
    "langgraph-async": (True, "w7_lg.py", ("--durability", "async"), "text"),
}
HEADLINE = "overhead_us_per_step"
SHOWN = ("overhead_us_per_step", "cpu_overhead_us_per_step", "bare_us_per_call", "bare_cpu_us_per_call",
         "runtime_us_per_step", "runtime_s", "bare_s", "steps",
         "served_calls", "entries_per_step", "checkpoints_per_step", "store_bytes_per_object",
         "bare_fresh_client_us_per_call", "fresh_client_extra_us_per_call", "client_construct_close_us",
         "peak_rss_mb")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def responder(steps: int, ending: str) -> Any:
    """The script: ``lookup`` while a conversation holds fewer than ``steps`` tool results, then the end."""
    lock = threading.Lock()  # the server calls it under its own lock already; cheap insurance

    def answer(body: dict[str, Any]) -> Reply:
        with lock:
            done = sum(1 for m in body.get("messages", []) if isinstance(m, dict) and m.get("role") == "tool")
        if done < steps:
            return Reply.tool_call("lookup", {"key": f"k{done}"})
        return Reply.tool_call("finish", {"result": "ok"}) if ending == "finish" else Reply.text("ok")

    return answer


def run_one(system: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    peer, script, extra, ending = SYSTEMS[system]
    python = str(PEERS_PY) if peer else sys.executable
    server = FakeLLMServer(responder(args.steps, ending), model=MODEL).start()
    cwd = Path(tempfile.mkdtemp(prefix="peo-w7-", dir=workdir))
    env = {**os.environ, "PYTHONPATH": str(WORKLOADS), "PYTHONDONTWRITEBYTECODE": "1"}
    argv = [python, str(WORKLOADS / script), "--base-url", server.base_url, "--agents", str(args.agents),
            "--steps", str(args.steps), "--concurrency", str(args.concurrency), *extra]
    if not peer and args.smoke:
        argv += ["--construct", "10"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=args.timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"error": f"timed out after {args.timeout} s"}
    finally:
        server.stop()
        shutil.rmtree(cwd, ignore_errors=True)
    wall = time.perf_counter() - t0
    lines = stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        return {"error": f"exit {proc.returncode}: {tail}"}
    result: dict[str, Any] = json.loads(lines[-1])
    result["wall_s"] = wall
    result["served_calls"] = server.calls
    if server.errors:
        return {"error": f"the fake server's script raised: {server.errors[0]!r}"}
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    out: dict[str, Any] = {"runs": len(runs), "ok": len(ok), "errors": [r["error"] for r in runs if "error" in r]}
    for key in sorted({k for r in ok for k, v in r.items() if isinstance(v, int | float) and not isinstance(v, bool)}):
        values = [r[key] for r in ok if isinstance(r.get(key), int | float)]
        if values:
            out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    return out


def fmt(v: float) -> str:
    if float(v).is_integer() and abs(v) < 1e6:
        return f"{int(v):,}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def table(summary: dict[str, dict[str, Any]]) -> str:
    names = list(summary)
    lines = ["| metric | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
    for m in SHOWN:
        cells = []
        for name in names:
            v = summary[name].get(m)
            cells.append(f"{fmt(v['median'])} ({fmt(v['min'])}–{fmt(v['max'])})" if isinstance(v, dict) else "–")
        if any(c != "–" for c in cells):
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
    for name in names:
        for err in summary[name]["errors"][:1]:
            lines.append(f"\n**{name} failed** ({len(summary[name]['errors'])}x): `{err.splitlines()[-1]}`")
    for mine in (n for n in names if n.startswith("peo")):
        peo = summary[mine].get(HEADLINE, {}).get("median")
        parts = [f"{n} {peo / s[HEADLINE]['median']:.2f}x" for n, s in summary.items()
                 if not n.startswith("peo") and peo is not None and s.get(HEADLINE, {}).get("median")]
        if parts:
            lines.append(f"\n{mine}/peer on {HEADLINE} (lower is better for peo): " + ", ".join(parts))
    return "\n".join(lines)


def versions(peers: bool) -> dict[str, Any]:
    from importlib.metadata import version

    info: dict[str, Any] = {"python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
                            "machine": platform.platform(), "cpus": os.cpu_count()}
    for name in ("peo", "openai", "httpx"):
        try:
            info[name] = version(name)
        except Exception as e:  # informative only
            info[f"{name}_error"] = repr(e)
    if peers:
        code = ("import json; from importlib.metadata import version as v; print(json.dumps({n: v(n) for n in "
                "('langgraph','langgraph-prebuilt','langgraph-checkpoint','langgraph-checkpoint-sqlite',"
                "'langchain-core','langchain-openai','openai','httpx')}))")
        out = subprocess.run([str(PEERS_PY), "-c", code], capture_output=True, text=True)
        info["peers"] = json.loads(out.stdout) if out.returncode == 0 else out.stderr
    return info


def peers_ready() -> str | None:
    """None if the peers' virtualenv can run w7_lg.py, else why not."""
    if not PEERS_PY.exists():
        return "bench/.venv-peers is missing (bash bench/setup.sh creates it)"
    probe = subprocess.run([str(PEERS_PY), "-c", "import langchain_openai, langgraph.prebuilt"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        return "bench/.venv-peers has no langchain-openai (bash bench/setup.sh installs it)"
    return None


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--agents", type=int, default=20, help="agents (objects, threads) per run (default 20)")
    p.add_argument("--steps", type=int, default=10, help="lookup calls per agent before it ends (default 10)")
    p.add_argument("--concurrency", type=int, default=1, help="agents in flight at once, every system (default 1)")
    p.add_argument("--runs", type=int, default=5, help="interleaved runs per system (default 5)")
    p.add_argument("--systems", default="peo,langgraph-sync,langgraph-async",
                   help=f"comma-separated, of {', '.join(SYSTEMS)}")
    p.add_argument("--peers", action=argparse.BooleanOptionalAction, default=True,
                   help="also run LangGraph (default: yes; skipped with a note when its virtualenv is not ready)")
    p.add_argument("--smoke", action="store_true", help="N=2, K=2, one run: checks that W7 still runs")
    p.add_argument("--timeout", type=float, default=600, help="seconds per measurement")
    p.add_argument("--workdir", help="where the stores are created (default: system temp, on disk)")
    p.add_argument("--json", help="also write every figure to this file")
    args = p.parse_args()
    if args.smoke:
        args.agents, args.steps, args.runs = 2, 2, 1
    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = [s for s in systems if s not in SYSTEMS]
    if unknown:
        p.error(f"unknown systems: {', '.join(unknown)}")
    if not args.peers:
        systems = [s for s in systems if not SYSTEMS[s][0]]
    peers = any(SYSTEMS[s][0] for s in systems)
    if peers and (why := peers_ready()):
        log(f"note: {why}: skipping the LangGraph side")
        systems = [s for s in systems if not SYSTEMS[s][0]]
        peers = False
    if not systems:
        log("nothing to run")
        return 2
    workdir = Path(args.workdir or tempfile.gettempdir())
    workdir.mkdir(parents=True, exist_ok=True)

    raw: dict[str, list[dict[str, Any]]] = {s: [] for s in systems}
    expected = args.agents * (args.steps + 1)
    for r in range(args.runs):
        for system in systems:
            result = run_one(system, args, workdir)
            if "error" not in result and result.get("steps") != expected:
                result = {"error": f"{result.get('steps')} model calls per pass, expected {expected}"}
            raw[system].append(result)
            if "error" in result:
                log(f"[{r + 1}/{args.runs}] {system}: FAILED {result['error'][-300:]}")
            else:
                log(f"[{r + 1}/{args.runs}] {system}: overhead {result[HEADLINE]:.0f} µs/step, bare "
                    f"{result['bare_us_per_call']:.0f} µs/call, runtime {result['runtime_s']:.3f} s "
                    f"({result['wall_s']:.1f} s)")
    summary = {s: summarize(rs) for s, rs in raw.items()}
    print(f"W7: {args.agents} agents x {args.steps} tool steps + 1 final call = {expected} steps per system, "
          f"concurrency {args.concurrency}, {args.runs} interleaved runs\n")
    print(table(summary))
    if args.json:
        doc = {"started": time.strftime("%Y%m%d-%H%M%S"), "agents": args.agents, "steps": args.steps,
               "concurrency": args.concurrency, "runs": args.runs, "versions": versions(peers),
               "summary": summary, "raw": raw}
        Path(args.json).write_text(json.dumps(doc, indent=1))
        log(f"results: {args.json}")
    failed = sum(s["runs"] - s["ok"] for s in summary.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
