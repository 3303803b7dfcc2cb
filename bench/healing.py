"""Self-healing timings: takeover after a SIGKILL, and time to quarantine a crash loop.

1. **Takeover.** Node process ``a`` (``python -m peo --store URL node --app healing:app --node-id
   a-... --lease-ttl T``) runs an object of many short steps (each sleeps ~10 ms, then Continue).
   Once ``a`` has committed a few steps it is killed with SIGKILL and node ``b`` is started
   at once. Measured: from the SIGKILL to the timestamp of the first entry node ``b``
   commits (``Entry.origin_node``, ``Entry.timestamp``, ns; both nodes and this script run on
   one machine, one clock). Also shown: what was left of ``a``'s lease at the kill (read from
   the store row just before it) and when ``b`` was up (its ``serving ...`` line).
2. **Quarantine of a crash loop.** ``python -m peo fleet --workers 2 --app healing:app
   --profile node.toml`` (``max_recoveries``, ``lease_ttl`` in node.toml) serves object
   ``bomb``, whose every step calls ``os._exit(1)``, and a few normal objects that finish.
   Measured: from the first worker exit the fleet logs to the bomb's status QUARANTINED
   (polled every 20 ms), the worker restarts so far, whether the normal objects finished,
   and where the time went between one crash and the next (a restart of the crashed worker,
   with its backoff, or the lease lapsing under the other worker).

    python bench/healing.py                              # 5 runs each, lease 1.5 s and 0.5 s
    python bench/healing.py --runs 3 --lease-ttl 1.5     # one lease only
    python bench/healing.py --smoke                      # ~6 s; exit 1 if something is off (CI)
    python bench/healing.py --skip takeover --runs 3 --max-backoff 0.5   # no backoff growth
    python bench/healing.py --store postgresql://postgres@127.0.0.1:5432/test --runs 3
    python bench/healing.py --json out.json

``--smoke``: one run of each, lease TTL 0.5 s, ``max_recoveries`` 2, fleet backoff from 0.1 s,
2 normal objects, 15 s to quarantine. Exit status 1 if a takeover did not happen (node ``b``
committed nothing within the deadline), if the bomb was not quarantined, or if a normal
object did not finish.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import peo

HERE = Path(__file__).resolve().parent
DEADLINE = 120.0  # seconds; against hangs only

app = peo.App()


@app.handler("ticker")
async def ticker(step: peo.Step) -> peo.Proposal:
    """Many short steps: each sleeps ``sleep`` seconds, then counts one."""
    await asyncio.sleep(step.goal.get("sleep", 0.01))
    n = step.state.get("n", 0) + 1
    return peo.Done(n) if n >= step.goal["steps"] else peo.Continue(state={"n": n})


@app.handler("bomb")
def bomb(step: peo.Step) -> peo.Proposal:
    """Kills its node process, every step."""
    os._exit(1)


@app.handler("fine")
async def fine(step: peo.Step) -> peo.Proposal:
    await asyncio.sleep(0.01)
    n = step.state.get("n", 0) + 1
    return peo.Done(n) if n >= step.goal.get("steps", 3) else peo.Continue(state={"n": n})


# --- helpers -------------------------------------------------------------------------------


class Lines(threading.Thread):
    """The lines of a pipe, each with the wall-clock ns it was read at."""

    def __init__(self, pipe: Any):
        super().__init__(daemon=True)
        self.pipe = pipe
        self.lines: list[tuple[int, str]] = []

    def run(self) -> None:
        for line in self.pipe:
            self.lines.append((time.time_ns(), line.rstrip("\n")))

    def first(self, pattern: str) -> int | None:
        return next((t for t, line in list(self.lines) if re.search(pattern, line)), None)


def env_for(home: Path) -> dict[str, str]:
    return {**os.environ, "PEO_HOME": str(home),
            "PYTHONPATH": os.pathsep.join(p for p in (str(HERE), os.environ.get("PYTHONPATH", "")) if p)}


def spawn_node(url: str, node_id: str, ttl: float, env: dict[str, str]) -> tuple[subprocess.Popen[str], Lines]:
    cmd = [sys.executable, "-m", "peo", "--store", url, "node", "--app", "healing:app",
           "--node-id", node_id, "--lease-ttl", f"{ttl:g}"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = Lines(proc.stderr)
    lines.start()
    return proc, lines


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def fresh_url(args: argparse.Namespace, workdir: Path, name: str) -> str:
    """A fresh store per run: a SQLite file, or a new schema of the ``--store`` server
    (dropped at the end, :func:`drop_schemas`)."""
    if not args.store:
        return f"sqlite:///{workdir / f'{name}.db'}"
    if args.store.startswith("postgres"):
        schema = f"bench_heal_{secrets.token_hex(6)}"
        args.schemas.append(schema)
        return f"{args.store}{'&' if '?' in args.store else '?'}schema={schema}"
    return args.store


async def drop_schemas(base_url: str, schemas: list[str]) -> None:
    import asyncpg

    conn = await asyncpg.connect(base_url.split("?")[0])
    try:
        for schema in schemas:
            await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await conn.close()


def summary(values: list[float]) -> str:
    if not values:
        return "-"
    if all(isinstance(v, int) for v in values):
        return f"{statistics.median(values):g} ({min(values)}-{max(values)})"
    return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"


# --- 1. takeover ---------------------------------------------------------------------------


async def takeover(args: argparse.Namespace, workdir: Path, ttl: float, run: int) -> dict[str, Any]:
    home = workdir / f"home-t{ttl:g}-{run}"
    env = env_for(home)
    os.environ["PEO_HOME"] = str(home)  # the client's key, which the nodes' keyring trusts
    url = fresh_url(args, workdir, f"takeover-{ttl:g}-{run}")
    suffix = f"{ttl:g}-{run}".replace(".", "_")
    node_a, node_b = f"a-{suffix}", f"b-{suffix}"
    result: dict[str, Any] = {"lease_ttl": ttl, "run": run, "ok": False}
    async with peo.Client(url) as client:
        oid = await client.submit("ticker", {"steps": 1_000_000, "sleep": 0.01})
        a, a_lines = spawn_node(url, node_a, ttl, env)
        b = None
        try:
            deadline = time.monotonic() + DEADLINE
            # Progress first: a few steps committed by node a.
            while (await client.store.get(oid)).seq < args.warm_steps:
                if a.poll() is not None or time.monotonic() > deadline:
                    result["error"] = f"node a made no progress (exit {a.poll()}): {a_lines.lines[-3:]}"
                    return result
                await asyncio.sleep(0.02)
            # Then a random moment within two renewal periods, so that the runs sample what is
            # left of the lease at the kill (2/3 TTL to one TTL: renewed every third).
            await asyncio.sleep(args.rng.uniform(0, 2 * ttl / 3))
            row = await client.store.get(oid)
            killed = time.time_ns()
            a.send_signal(signal.SIGKILL)
            b, b_lines = spawn_node(url, node_b, ttl, env)
            a.wait(timeout=30)
            seq_at_kill = row.seq
            result["lease_left_s"] = (row.lease_until - killed) / 1e9 if row.lease_until else None
            first_b = None
            while first_b is None:
                if b.poll() is not None or time.monotonic() > deadline:
                    result["error"] = f"node b committed nothing (exit {b.poll()}): {b_lines.lines[-3:]}"
                    return result
                await asyncio.sleep(0.02)
                if (await client.store.get(oid)).seq > seq_at_kill:
                    info = await client.get(oid)
                    first_b = min((e.timestamp for e in info.memory if e.origin_node == node_b), default=None)
            result["takeover_s"] = (first_b - killed) / 1e9
            started = b_lines.first(r": serving ")
            result["b_up_s"] = (started - killed) / 1e9 if started else None
            result["ok"] = True
        finally:
            stop(a)
            if b is not None:
                stop(b)
    return result


# --- 2. quarantine of a crash loop ---------------------------------------------------------

EXIT = re.compile(r"peo fleet: worker (\S+) \(pid \d+\) (.*?); restarting in ([\d.]+) s")
START = re.compile(r"peo fleet: worker (\S+) started")
LAPSE_SLACK = 0.2  # s: the claim of the bomb to its crash, at most (a node's start excluded)
SERVING = re.compile(r"peo node (\S+): serving ")


async def quarantine(args: argparse.Namespace, workdir: Path, run: int) -> dict[str, Any]:
    home = workdir / f"home-q-{run}"
    env = env_for(home)
    os.environ["PEO_HOME"] = str(home)
    url = fresh_url(args, workdir, f"quarantine-{run}")
    profile = workdir / f"node-{run}.toml"
    profile.write_text(f"max_recoveries = {args.max_recoveries}\nlease_ttl = {args.q_lease_ttl}\n")
    prefix = f"q{run}"
    result: dict[str, Any] = {"run": run, "max_recoveries": args.max_recoveries, "lease_ttl": args.q_lease_ttl,
                              "quarantined": False}
    async with peo.Client(url) as client:
        oid = await client.submit("bomb", {})
        others = [await client.submit("fine", {"steps": 3}) for _ in range(args.normal)]
        cmd = [sys.executable, "-m", "peo", "--store", url, "fleet", "--workers", "2", "--app", "healing:app",
               "--profile", str(profile), "--node-id-prefix", prefix, "--grace", "10"]
        if args.initial_backoff is not None:
            cmd += ["--initial-backoff", f"{args.initial_backoff:g}"]
        if args.max_backoff is not None:
            cmd += ["--max-backoff", f"{args.max_backoff:g}"]
        result["command"] = " ".join(cmd[1:])
        started = time.time_ns()
        fleet = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        lines = Lines(fleet.stderr)
        lines.start()
        try:
            deadline = time.monotonic() + args.q_deadline
            status = None
            while time.monotonic() < deadline:
                status = (await client.get(oid, memory=False)).status
                if status is peo.Status.QUARANTINED:
                    break
                if fleet.poll() is not None:
                    break
                await asyncio.sleep(0.02)
            at = time.time_ns()
            result["quarantined"] = status is peo.Status.QUARANTINED
            # The normal objects: they must finish (give them a moment after the quarantine).
            finished = 0
            for other in others:
                try:
                    await client.wait(other, timeout=max(1.0, deadline - time.monotonic()))
                    finished += 1
                except Exception:  # counted as not finished
                    pass
            result["normal_finished"] = f"{finished}/{len(others)}"
            result["normal_ok"] = finished == len(others)
        finally:
            stop(fleet, signal.SIGTERM)
            lines.join(timeout=5)
        exits = [(t, m) for t, line in lines.lines if (m := EXIT.search(line))]
        starts = [(t, m.group(1)) for t, line in lines.lines if (m := START.search(line))]
        serving = [(t, m.group(1)) for t, line in lines.lines if (m := SERVING.search(line))]
        crashes = [(t, m.group(1), float(m.group(3))) for t, m in exits if t <= at]
        info = await client.get(oid)
        done_at = []
        for other in others:
            o = await client.get(other)
            if o.status is peo.Status.TERMINATED and o.memory:
                done_at.append(o.memory[-1].timestamp)
        result["reason"] = info.reason
        result["restores"] = sum(1 for e in info.memory if isinstance(e.outcome, dict) and "restore" in e.outcome)
        result["crashes"] = len(crashes)
        result["restarts"] = len([s for s in starts if started < s[0] <= at]) - 2  # minus the first two starts
        if crashes:
            first = crashes[0][0]
            result["to_first_crash_s"] = (first - started) / 1e9
            result["first_crash_to_quarantine_s"] = (at - first) / 1e9 if result["quarantined"] else None
            # When the last normal object finished, from the first crash (before it: negative).
            result["normal_last_done_s"] = (max(done_at) - first) / 1e9 if done_at else None
            result.update(attribute(crashes, starts, serving, at, args.q_lease_ttl))
        result["log"] = [f"{(t - started) / 1e9:8.3f} {line}" for t, line in lines.lines]
        result["log_tail"] = [line for _, line in lines.lines[-4:]]
    return result


def attribute(crashes: list[tuple[int, str, float]], starts: list[tuple[int, str]],
              serving: list[tuple[int, str]], end: int, ttl: float) -> dict[str, Any]:
    """Split the time from the first crash to the quarantine into gaps (a crash to the next
    crash; the last one to the quarantine) and say what each waited for. After worker X
    crashes holding the bomb, the bomb is free again either when X is back (a restarted node
    drops its old leases at once: its backoff plus a node start) or when X's lease lapses; then
    the other worker Y, if it is up, claims it and crashes. The bomb dies in its first step,
    before any renewal, so its lease lapses about one TTL after the crash (the claim came a
    few tens of ms before it; ``LAPSE_SLACK``). A gap is

    * ``restart``: X was serving again before the lease could lapse, or Y was itself
      restarting and up only after the lease had lapsed (a backoff and a node start on the path);
    * ``lease``: Y was up and X was not back before the lease lapsed;
    * ``either``: the two came too close together to tell (within ``LAPSE_SLACK``).

    ``backoff_on_path_s``: of the ``restart`` gaps, the time that the worker restarted last
    in the gap spent in its backoff (from its crash to the fleet starting it again, cut to
    the gap); the rest of such a gap is starting Python and the node, claiming, the step.
    """
    on_path = 0.0
    out = {"restart": 0.0, "lease": 0.0, "either": 0.0}
    gaps = []
    for i, (t, x, delay) in enumerate(crashes):
        nxt, y = (crashes[i + 1][0], crashes[i + 1][1]) if i + 1 < len(crashes) else (end, None)
        x_ready = next((s for s, w in serving if w == x and s > t), None)
        y_ready = max((s for s, w in serving if w != x and (y is None or w == y) and s <= nxt), default=None)
        gap = (nxt - t) / 1e9
        # When X's lease lapses: the bomb dies in its first step, before any renewal, so one
        # TTL after its claim, which came a few tens of ms before the crash.
        lo, hi = t + max(ttl - LAPSE_SLACK, 0) * 1e9, t + ttl * 1e9
        back = x_ready is not None and x_ready <= nxt  # X was serving again before the next event
        free_lo, free_hi = (min(x_ready, lo), min(x_ready, hi)) if back else (lo, hi)
        y_up = y_ready if y_ready is not None and y_ready > t else t
        waited_on = None  # the worker whose restart the gap waited for
        if y_up >= free_hi:
            kind, waited_on = "restart", y  # Y's restart came last
        elif back and x_ready < lo:
            kind, waited_on = "restart", x  # X's restart freed the bomb before its lease lapsed
        elif y_up <= free_lo and (not back or x_ready >= hi):
            kind = "lease"
        else:
            kind = "either"
        out[kind] += gap
        if kind == "restart":
            # That restart's backoff is the wait on the path (Y unknown in the last gap: the
            # restart in it that came last).
            respawn = max(((s, w) for s, w in starts if t < s <= nxt and (waited_on is None or w == waited_on)),
                          default=None)
            if respawn is not None:
                crashed = max((c[0] for c in crashes if c[1] == respawn[1] and c[0] < respawn[0]), default=t)
                on_path += max(0, respawn[0] - max(crashed, t)) / 1e9
        gaps.append({"worker": x, "backoff_s": delay, "gap_s": round(gap, 3), "waited_for": kind})
    return {"gap_restart_s": out["restart"], "gap_lease_s": out["lease"], "gap_either_s": out["either"],
            "backoff_logged_s": sum(c[2] for c in crashes), "backoff_on_path_s": on_path, "gaps": gaps}


# --- main ----------------------------------------------------------------------------------


def takeover_table(results: list[dict[str, Any]], target: float) -> str:
    rows = ["| lease TTL | runs | takeover s median (min-max) | within target | lease left at kill s | node b up s |",
            "| --- | --- | --- | --- | --- | --- |"]
    for ttl in sorted({r["lease_ttl"] for r in results}, reverse=True):
        rs = [r for r in results if r["lease_ttl"] == ttl and r["ok"]]
        n = len([r for r in results if r["lease_ttl"] == ttl])
        t = [r["takeover_s"] for r in rs]
        within = sum(1 for x in t if x <= target)
        rows.append(f"| {ttl:g} s | {len(rs)}/{n} | {summary(t)} | {within}/{n} under {target:g} s "
                    f"| {summary([r['lease_left_s'] for r in rs if r.get('lease_left_s') is not None])} "
                    f"| {summary([r['b_up_s'] for r in rs if r.get('b_up_s') is not None])} |")
    return "\n".join(rows)


def quarantine_table(results: list[dict[str, Any]]) -> str:
    ok = [r for r in results if r["quarantined"]]
    q = [r["first_crash_to_quarantine_s"] for r in ok if r.get("first_crash_to_quarantine_s") is not None]
    rows = ["| max_recoveries | lease TTL | runs quarantined | first crash to quarantine s | crashes | restarts "
            "| restores | normal finished | waiting on a restart s | of it backoff s | on lease expiry s | either s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    rows.append(f"| {results[0]['max_recoveries']} | {results[0]['lease_ttl']:g} s | {len(ok)}/{len(results)} "
                f"| {summary(q)} | {summary([r.get('crashes', 0) for r in ok])} "
                f"| {summary([r.get('restarts', 0) for r in ok])} | {summary([r.get('restores', 0) for r in ok])} "
                f"| {', '.join(r.get('normal_finished', '?') for r in results)} "
                f"| {summary([r['gap_restart_s'] for r in ok if 'gap_restart_s' in r])} "
                f"| {summary([r['backoff_on_path_s'] for r in ok if 'backoff_on_path_s' in r])} "
                f"| {summary([r['gap_lease_s'] for r in ok if 'gap_lease_s' in r])} "
                f"| {summary([r['gap_either_s'] for r in ok if 'gap_either_s' in r])} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", metavar="URL", help="a PostgreSQL server to use (a fresh schema per run, dropped "
                    "afterwards); default: a temporary SQLite file per run")
    ap.add_argument("--runs", type=int, default=5, help="runs of each measurement (default 5)")
    ap.add_argument("--lease-ttl", type=float, action="append",
                    help="lease TTL(s) of the takeover runs, repeatable (default 1.5 and 0.5)")
    ap.add_argument("--target", type=float, default=2.0, help="takeover target, s (default 2)")
    ap.add_argument("--warm-steps", type=int, default=20, help="steps node a commits before the kill (default 20)")
    ap.add_argument("--seed", type=int, default=1, help="seed of the kill moments (default 1)")
    ap.add_argument("--max-recoveries", type=int, default=5, help="the fleet's max_recoveries (default 5)")
    ap.add_argument("--q-lease-ttl", type=float, default=1.5, help="the fleet's lease_ttl (default 1.5)")
    ap.add_argument("--initial-backoff", type=float, help="the fleet's --initial-backoff (default: its own, 0.5)")
    ap.add_argument("--max-backoff", type=float, help="the fleet's --max-backoff (default: its own, 30)")
    ap.add_argument("--normal", type=int, default=4, help="normal objects beside the bomb (default 4)")
    ap.add_argument("--q-deadline", type=float, default=240.0, help="seconds to wait for the quarantine")
    ap.add_argument("--skip", choices=("takeover", "quarantine"), help="leave one measurement out")
    ap.add_argument("--smoke", action="store_true", help="one quick run of each (~10 s); exit 1 if off (CI)")
    ap.add_argument("--json", metavar="FILE", help="also write every run as JSON")
    ap.add_argument("--workdir", help="where the stores and homes go (default: a temporary directory)")
    args = ap.parse_args(argv)
    ttls = args.lease_ttl or [1.5, 0.5]
    args.rng = random.Random(args.seed)
    if args.smoke:
        args.runs, ttls, args.warm_steps = 1, [0.5], 10
        args.max_recoveries, args.q_lease_ttl, args.normal, args.q_deadline = 2, 0.5, 2, 15.0
        if args.initial_backoff is None:
            args.initial_backoff = 0.1

    takeovers: list[dict[str, Any]] = []
    quarantines: list[dict[str, Any]] = []
    args.schemas = []
    try:
        with tempfile.TemporaryDirectory(prefix="peo-healing-", dir=args.workdir) as tmp:
            for run in range(args.runs):
                if args.skip != "takeover":
                    for ttl in ttls:
                        takeovers.append(asyncio.run(takeover(args, Path(tmp), ttl, run)))
                if args.skip != "quarantine":
                    quarantines.append(asyncio.run(quarantine(args, Path(tmp), run)))
    finally:
        if args.schemas:
            asyncio.run(drop_schemas(args.store, args.schemas))

    print(f"store: {args.store or 'SQLite (temporary file per run)'}; runs: {args.runs}; "
          f"python {sys.version.split()[0]}; {os.cpu_count()} CPUs")
    ok = True
    if takeovers:
        print(f"\nTakeover after SIGKILL (ticker: ~10 ms steps; node b started right after the kill; "
              f"target {args.target:g} s)")
        print(takeover_table(takeovers, args.target))
        for r in takeovers:
            if not r["ok"]:
                print(f"  run {r['run']} lease {r['lease_ttl']:g}: {r.get('error')}")
        ok &= all(r["ok"] for r in takeovers)
    if quarantines:
        backoff = args.initial_backoff if args.initial_backoff is not None else 0.5
        cap = args.max_backoff if args.max_backoff is not None else 30
        print(f"\nCrash loop to quarantine (fleet --workers 2, backoff {backoff:g} s doubling to {cap:g} s; "
              f"bomb + {args.normal} normal objects)")
        print(quarantine_table(quarantines))
        for r in quarantines:
            gaps = " ".join(f"{g['worker'][-1]}:{g['gap_s']:.2f}{g['waited_for'][0]}(b{g['backoff_s']:g})"
                            for g in r.get("gaps", []))
            last = r.get("normal_last_done_s")
            print(f"  run {r['run']}: first crash {r.get('to_first_crash_s', 0):.2f} s after the fleet started; "
                  f"last normal object done {'-' if last is None else f'{last:+.2f}'} s from it; "
                  f"gaps (worker:s waited for r=restart l=lease e=either, b=its backoff) {gaps}")
            if not r["quarantined"] or not r.get("normal_ok"):
                print(f"  run {r['run']}: quarantined={r['quarantined']} normal={r.get('normal_finished')} "
                      f"log tail: {r.get('log_tail')}")
        ok &= all(r["quarantined"] and r.get("normal_ok") for r in quarantines)
    if args.json:
        options = {k: v for k, v in vars(args).items() if k not in ("rng", "schemas")}
        Path(args.json).write_text(json.dumps({"args": options, "takeover": takeovers, "quarantine": quarantines},
                                              indent=2, default=str))
    print("\nOK" if ok else "\nFAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
