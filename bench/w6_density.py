"""W6, density: a node with a memory limit and more objects than fit at once.

Objects whose steps each hold tens of MiB (a filled bytearray kept alive across an await,
so that many are in flight at once), at three priorities, run by one node process
(``python -m peo node --app w6_density:app --memory-limit SIZE --until-idle``). A thread
samples the node's RSS from ``/proc/PID/status`` every 10 ms. Reported per run: the peak RSS
against the limit, whether the node was killed, whether every object finished (and its chain
verifies), sheds, and the order of completion by priority. The same objects run with the
budget on (declared reserves), on with reserves left to the node's estimate, on with
reserves declared too small (so that shedding has to catch up), and off.

    python bench/w6_density.py                       # 24 objects x 40 MiB, limit 400 MiB
    python bench/w6_density.py --smoke               # a few seconds (CI)
    python bench/w6_density.py --per-priority 12 --mib 60 --limit 600MiB --runs declared,off
    python bench/w6_density.py --json out.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import peo

MiB = 1 << 20
HERE = Path(__file__).resolve().parent
PRIORITIES = (9, 5, 1)  # high, mid, low

app = peo.App()


@app.handler("hold", memory=os.environ.get("W6_RESERVE") or None)
async def hold(step: peo.Step) -> peo.Proposal:
    """``steps`` steps, each holding ``mib`` MiB (touched, so resident) for ``hold`` seconds."""
    g = step.goal
    buf = bytearray(b"\x01") * (g["mib"] * MiB)
    await asyncio.sleep(g["hold"])
    n = step.state.get("n", 0) + 1
    size = len(buf)
    del buf
    if n >= g["steps"]:
        return peo.Done({"n": n, "bytes": size})
    return peo.Continue(state={"n": n})


class Sampler(threading.Thread):
    """The RSS of process ``pid`` every ``interval`` seconds, until it exits."""

    def __init__(self, pid: int, interval: float = 0.01):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        path = f"/proc/{self.pid}/status"
        start = time.perf_counter()
        while not self.stop.is_set():
            try:
                with open(path, "rb") as f:
                    for line in f:
                        if line.startswith(b"VmRSS:"):
                            self.samples.append((time.perf_counter() - start, int(line.split()[1]) * 1024))
                            break
            except OSError:
                return  # the process is gone
            time.sleep(self.interval)

    def time_over(self, limit: int) -> float:
        """Seconds the RSS spent above ``limit`` (sample to sample)."""
        pairs = zip(self.samples, self.samples[1:], strict=False)
        return sum(b[0] - a[0] for a, b in pairs if a[1] > limit)

    @property
    def peak(self) -> int:
        return max((rss for _, rss in self.samples), default=0)


def parse_size(text: str) -> int:
    from peo.healing.memory import parse_size as parse

    return parse(text)


async def submit_all(url: str, args: argparse.Namespace) -> dict[str, int]:
    """Submit the objects, high priority last (so that claim order, not submit order, decides)."""
    goal = {"mib": args.mib, "steps": args.steps, "hold": args.hold}
    ids: dict[str, int] = {}
    async with peo.Client(url) as client:
        for priority in reversed(PRIORITIES):
            for oid in await client.submit_many("hold", [goal] * args.per_priority, priority=priority):
                ids[oid] = priority
    return ids


async def outcomes(url: str, ids: dict[str, int]) -> dict[str, Any]:
    """Finished, verified, shed, and completion order by priority."""
    done: list[tuple[int, int]] = []  # (time of the last entry, priority)
    sheds = verified = 0
    shed_by = dict.fromkeys(PRIORITIES, 0)
    async with peo.Client(url) as client:
        for oid, priority in ids.items():
            info = await client.get(oid)
            if info.status is peo.Status.TERMINATED and info.reason == "done":
                done.append((info.memory[-1].timestamp, priority))
            shed = sum(1 for e in info.memory if e.outcome.get("status") == "shed")
            sheds += shed
            shed_by[priority] += shed
            verified += await client.verify(oid) == len(info.memory)
    done.sort()
    rank = {p: [i for i, (_, q) in enumerate(done) if q == p] for p in PRIORITIES}
    last_high = max(rank[PRIORITIES[0]], default=-1)
    first_low = min(rank[PRIORITIES[-1]], default=len(done))
    return {
        "finished": len(done), "objects": len(ids), "verified": verified, "sheds_recorded": sheds,
        "sheds_by_priority": shed_by,
        "mean_rank": {p: round(statistics.mean(r), 1) if r else None for p, r in rank.items()},
        "order": "".join({9: "H", 5: "M", 1: "L"}[p] for _, p in done),
        "high_before_low": last_high < first_low,
    }


def run_node(url: str, args: argparse.Namespace, mode: str, env: dict[str, str]) -> dict[str, Any]:
    limit = "off" if mode == "off" else args.limit
    reserve = {"declared": f"{args.mib + args.reserve_slack}MiB", "underdeclared": f"{max(args.mib // 4, 1)}MiB"}
    reserve = reserve.get(mode, "")
    cmd = [sys.executable, "-m", "peo", "--store", url, "node", "--app", "w6_density:app", "--until-idle",
           "--node-id", f"w6-{mode}", "--concurrency", str(args.concurrency), "--memory-limit", limit]
    penv = {**env, "W6_RESERVE": reserve,
            "PYTHONPATH": os.pathsep.join([str(HERE), env.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, env=penv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    sampler = Sampler(proc.pid, args.interval)
    sampler.start()
    _, err = proc.communicate(timeout=args.timeout)
    sampler.stop.set()
    sampler.join()
    shed_lines = [line for line in err.splitlines() if "object_shed" in line]
    return {"mode": mode, "limit": None if mode == "off" else parse_size(args.limit), "exit": proc.returncode,
            "killed": proc.returncode < 0, "seconds": round(time.perf_counter() - started, 2),
            "peak_rss": sampler.peak, "samples": len(sampler.samples), "shed_log_lines": len(shed_lines),
            "over_limit_s": round(sampler.time_over(parse_size(args.limit)), 2),
            "stderr_tail": err.splitlines()[-3:] if proc.returncode else []}


async def one_run(mode: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    home = workdir / f"home-{mode}"
    env = {**os.environ, "PEO_HOME": str(home)}
    os.environ["PEO_HOME"] = str(home)  # the client's keys, which the node's keyring trusts
    url = f"sqlite:///{workdir / f'w6-{mode}.db'}"
    ids = await submit_all(url, args)
    result = run_node(url, args, mode, env)
    result.update(await outcomes(url, ids))
    return result


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    limit = parse_size(args.limit)
    rows = ["| budget | peak RSS | limit | peak/limit | s over limit | killed | finished | verified | sheds | s "
            "| mean completion rank H/M/L | high all before low |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        ranks = "/".join(str(r["mean_rank"][p]) for p in PRIORITIES)
        rows.append(f"| {r['mode']} | {r['peak_rss'] / MiB:.0f} MiB | {limit / MiB:.0f} MiB "
                    f"| {r['peak_rss'] / limit:.2f} | {r['over_limit_s']} | {'yes' if r['killed'] else 'no'} "
                    f"| {r['finished']}/{r['objects']} | {r['verified']} | {r['sheds_recorded']} | {r['seconds']} "
                    f"| {ranks} | {'yes' if r['high_before_low'] else 'no'} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", default="400MiB", help="the node's --memory-limit (default 400MiB)")
    ap.add_argument("--mib", type=int, default=40, help="MiB each step holds (default 40)")
    ap.add_argument("--per-priority", type=int, default=8, help="objects per priority, 3 priorities (default 8)")
    ap.add_argument("--steps", type=int, default=3, help="steps per object (default 3)")
    ap.add_argument("--hold", type=float, default=0.2, help="seconds each step holds its memory (default 0.2)")
    ap.add_argument("--reserve-slack", type=int, default=8,
                    help="declared reserve = --mib plus this many MiB (interpreter overhead; default 8)")
    ap.add_argument("--concurrency", type=int, default=32, help="the node's --concurrency (default 32)")
    ap.add_argument("--interval", type=float, default=0.01, help="RSS sampling interval, s (default 0.01)")
    ap.add_argument("--runs", default="declared,observed,underdeclared,off",
                    help="budgets to run: declared (reserves declared by the handler), observed (the node's "
                    "estimate), underdeclared (the handler declares a quarter of what it holds: shedding has "
                    "to catch up), off (no budget); default all four")
    ap.add_argument("--timeout", type=float, default=300, help="seconds a node may take (default 300)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: a few seconds; exit 1 unless W6 holds")
    ap.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    ap.add_argument("--workdir", help="where the stores go (default: a temporary directory)")
    args = ap.parse_args(argv)
    if args.smoke:
        args.limit, args.mib, args.per_priority, args.steps, args.hold = "160MiB", 24, 3, 2, 0.05
        args.runs = "declared,off"
    with tempfile.TemporaryDirectory(prefix="peo-w6-", dir=args.workdir) as tmp:
        results = [asyncio.run(one_run(mode.strip(), args, Path(tmp))) for mode in args.runs.split(",")]
    print(f"W6 density: {3 * args.per_priority} objects x {args.steps} steps x {args.mib} MiB held "
          f"{args.hold} s, priorities {PRIORITIES}, limit {args.limit}, concurrency {args.concurrency}, "
          f"RSS every {args.interval * 1000:.0f} ms")
    print(table(results, args))
    for r in results:
        shed_by = ", ".join(f"{p}: {n}" for p, n in r["sheds_by_priority"].items())
        print(f"  {r['mode']}: completion order {r['order']}; {r['samples']} samples; "
              f"{r['shed_log_lines']} object_shed log lines; sheds by priority {shed_by}"
              + (f"; exit {r['exit']}" if r["exit"] else ""))
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    return 0 if holds(results, args) else 1


def holds(results: list[dict[str, Any]], args: argparse.Namespace) -> bool:
    """W6's claims: with a declared budget the peak stays under the limit, nothing is killed,
    every object finishes and verifies, high priority first; with none the peak exceeds it."""
    limit = parse_size(args.limit)
    ok = True
    for r in results:
        complete = r["finished"] == r["objects"] == r["verified"] and not r["killed"]
        if r["mode"] == "declared":
            ok &= complete and r["peak_rss"] < limit and r["high_before_low"]
        elif r["mode"] == "off":
            ok &= complete and r["peak_rss"] > limit
        else:
            ok &= complete
    return ok


if __name__ == "__main__":
    sys.exit(main())
