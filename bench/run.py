#!/usr/bin/env python
"""Benchmark peo against DBOS and LangGraph: workloads W1-W5 and the limits (docs/performance.md).

    python bench/run.py                    everything, 5 interleaved runs, peers included
    python bench/run.py --smoke            tiny sizes, one run (CI sanity check; peers only if installed)
    python bench/run.py --only W1,W2 --runs 7 --no-peers
    python bench/run.py --setup            (re)create bench/.venv-peers with DBOS and LangGraph

Every measurement runs in a fresh subprocess in a fresh temporary directory: peo with this
interpreter, the peers with bench/.venv-peers/bin/python. Runs are interleaved (run 1 of every
system, then run 2, ...) so that drift on a shared machine hits all systems alike. Results go
to bench/results/<timestamp>.json; a markdown table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
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
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
WORKLOADS = BENCH / "workloads"
PEERS_PY = BENCH / ".venv-peers" / "bin" / "python"
DEFAULT_PG = "postgresql://postgres@127.0.0.1:5432/test"

# The figure compared across systems for each workload, and whether higher is better.
HEADLINE = {
    "W1": ("steps_per_s", True),
    "W1-pg": ("steps_per_s", True),
    "W2": ("steps_per_s", True),
    "W2-pg": ("steps_per_s", True),
    "W2-pg-nodes": ("steps_per_s", True),
    "W3": ("us_per_step_late", False),
    "W4": ("restart_to_done_s", False),
    "W4b": ("kill_to_done_s", False),
    "W5": ("park_s", False),
}


@dataclass(frozen=True)
class Job:
    workload: str  # W1 ... W5, limits, or a PostgreSQL variant
    system: str  # column in the table: peo, dbos, langgraph-sync, ...
    script: str  # file in bench/workloads
    argv: tuple[str, ...]
    peer: bool = False
    postgres: bool = False  # gets its own ?schema= per run
    tree: str | None = None  # run peo from this source tree (--baseline) instead of the installed one


@dataclass
class Sizes:
    w1_steps: int = 1000
    w2_objects: int = 200
    w2_steps: int = 20
    w3_entries: int = 5000
    w4_steps: int = 300
    w4_kill_at: int = 150
    w5_objects: int = 10_000
    limit_seconds: float = 2.0
    idle_seconds: float = 3.0


SMOKE = Sizes(
    w1_steps=50,
    w2_objects=10,
    w2_steps=5,
    w3_entries=200,
    w4_steps=60,
    w4_kill_at=30,
    w5_objects=200,
    limit_seconds=0.1,
    idle_seconds=0.5,
)


def jobs(s: Sizes, peers: bool, pg_url: str | None, via: str) -> list[Job]:
    w1 = ("w1", "--steps", str(s.w1_steps))
    w2 = ("w2", "--objects", str(s.w2_objects), "--steps", str(s.w2_steps))
    w3 = ("w3", "--steps", str(s.w3_entries))
    w4 = ("w4", "--steps", str(s.w4_steps), "--kill-at", str(s.w4_kill_at))
    w5 = ("w5", "--objects", str(s.w5_objects), "--idle-seconds", str(s.idle_seconds))
    nodes = ("--via", via)
    normal = ("--store", "sqlite:///peo.db?durability=normal")
    out = [
        Job("W1", "peo", "peo_wl.py", w1),
        Job("W1", "peo-normal", "peo_wl.py", (*w1, *normal)),
        Job("W1", "peo-function", "peo_wl.py", (*w1, "--form", "function")),
        Job("W2", "peo", "peo_wl.py", w2),
        Job("W2", "peo-normal", "peo_wl.py", (*w2, *normal)),
        Job("W3", "peo", "peo_wl.py", w3),
        Job("W4", "peo", "peo_wl.py", (*w4, *nodes)),
        Job("W4b", "peo", "peo_wl.py", ("w4b", "--steps", str(s.w4_steps), "--kill-at", str(s.w4_kill_at), *nodes)),
        Job("W5", "peo", "peo_wl.py", (*w5, *nodes)),
    ]
    if pg_url:
        w2n = ("w2-nodes", "--objects", str(s.w2_objects), "--steps", str(s.w2_steps), *nodes)
        out += [
            Job("W1-pg", "peo", "peo_wl.py", w1, postgres=True),
            Job("W2-pg", "peo", "peo_wl.py", w2, postgres=True),
            Job("W2-pg-nodes", "peo-1-node", "peo_wl.py", (*w2n, "--procs", "1"), postgres=True),
            Job("W2-pg-nodes", "peo-3-nodes", "peo_wl.py", (*w2n, "--procs", "3"), postgres=True),
        ]
    if peers:
        for wl, argv in (("W1", w1), ("W2", w2), ("W3", w3), ("W4", w4)):
            out.append(Job(wl, "dbos", "dbos_wl.py", argv, peer=True))
            for durability in ("sync", "async"):
                out.append(
                    Job(wl, f"langgraph-{durability}", "lg_wl.py", (*argv, "--durability", durability), peer=True)
                )
        out.append(Job("W5", "dbos", "dbos_wl.py", w5, peer=True))
        out.append(Job("W5", "langgraph-sync", "lg_wl.py", (*w5, "--durability", "sync"), peer=True))
    sec = ("--seconds", str(s.limit_seconds))
    for sync in ("FULL", "NORMAL"):
        for rows in (1, 100):
            out.append(
                Job(
                    "limits",
                    f"sqlite-wal-{sync.lower()}-{rows}row",
                    "limits.py",
                    ("sqlite", "--sync", sync, "--rows", str(rows), *sec),
                )
            )
    out.append(Job("limits", "ed25519", "limits.py", ("ed25519", *sec)))
    out.append(Job("limits", "msgpack", "limits.py", ("msgpack", *sec)))
    if pg_url:
        out.append(Job("limits", "postgres-1row", "limits.py", ("postgres", "--url", pg_url, *sec)))
    return out


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_job(job: Job, pg_url: str | None, workdir: Path, timeout: float) -> dict[str, Any]:
    python = str(PEERS_PY) if job.peer else sys.executable
    argv = list(job.argv)
    schema = None
    if job.postgres and pg_url:
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        argv += ["--store", f"{pg_url}?schema={schema}"]
    cwd = Path(tempfile.mkdtemp(prefix="peo-bench-", dir=workdir))
    path = str(WORKLOADS) if job.tree is None else f"{job.tree}{os.pathsep}{WORKLOADS}"
    env = {**os.environ, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"}
    t0 = time.perf_counter()
    # A session of its own, so that a measurement that hangs is ended with the node processes
    # it started (they share its process group).
    proc = subprocess.Popen(
        [python, str(WORKLOADS / job.script), *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        return {"error": f"timed out after {timeout} s"}
    finally:
        shutil.rmtree(cwd, ignore_errors=True)
        try:  # node processes it left behind, if any
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if schema:
            drop_schema(pg_url, schema)
    wall = time.perf_counter() - t0
    lines = stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = "\n".join(stderr.strip().splitlines()[-15:])
        return {"error": f"exit {proc.returncode}: {tail}"}
    result: dict[str, Any] = json.loads(lines[-1])
    result["wall_s"] = wall
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    ok = [r for r in runs if "error" not in r]
    out: dict[str, Any] = {"runs": len(runs), "ok": len(ok), "errors": [r["error"] for r in runs if "error" in r]}
    keys = sorted({k for r in ok for k, v in r.items() if isinstance(v, int | float) and not isinstance(v, bool)})
    for key in keys:
        values = [r[key] for r in ok if isinstance(r.get(key), int | float)]
        if values:
            out[key] = {"median": statistics.median(values), "min": min(values), "max": max(values)}
    for key in sorted({k for r in ok for k, v in r.items() if isinstance(v, bool)}):
        out[key] = all(r.get(key) for r in ok)
    return out


def ratios(summary: dict[str, dict[str, Any]]) -> dict[str, dict[str, float]]:
    """peo / peer for each workload's headline figure, from the medians of this run."""
    out: dict[str, dict[str, float]] = {}
    for workload, systems in summary.items():
        if workload not in HEADLINE or "peo" not in systems:
            continue
        key, _ = HEADLINE[workload]
        peo = systems["peo"].get(key, {}).get("median")
        for system, s in systems.items():
            peer = s.get(key, {}).get("median")
            # peers, and this tree against the baseline tree (--baseline): peo / peo@base
            if (not system.startswith("peo") or system == "peo@base") and peo and peer:
                out.setdefault(workload, {})[system] = peo / peer
    return out


def fmt(v: float) -> str:
    if float(v).is_integer() and abs(v) < 1e6:
        return f"{int(v):,}"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def table(summary: dict[str, dict[str, Any]], rat: dict[str, dict[str, float]]) -> str:
    lines = []
    for workload, systems in summary.items():
        names = list(systems)
        lines += [f"### {workload}", "", "| metric | " + " | ".join(names) + " |", "| --- |" + " --- |" * len(names)]
        metrics = sorted({k for s in systems.values() for k, v in s.items() if isinstance(v, dict | bool)})
        if workload in HEADLINE and HEADLINE[workload][0] in metrics:
            metrics.remove(HEADLINE[workload][0])
            metrics.insert(0, HEADLINE[workload][0])
        for m in metrics:
            cells = []
            for name in names:
                v = systems[name].get(m)
                if isinstance(v, bool):
                    cells.append("yes" if v else "no")
                elif isinstance(v, dict):
                    cells.append(f"{fmt(v['median'])} ({fmt(v['min'])}–{fmt(v['max'])})")
                else:
                    cells.append("–")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        for name in names:
            for err in systems[name]["errors"][:1]:
                lines.append(
                    f"\n**{name} failed** ({len(systems[name]['errors'])}x): `{err.splitlines()[-1] if err else err}`"
                )
        if workload in rat:
            key, higher = HEADLINE[workload]
            better = "higher" if higher else "lower"
            parts = ", ".join(f"{k} {v:.2f}x" for k, v in rat[workload].items())
            lines.append(f"\npeo/peer on {key} ({better} is better for peo): {parts}")
        lines.append("")
    return "\n".join(lines)


def versions(peers: bool) -> dict[str, Any]:
    info: dict[str, Any] = {
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "machine": platform.platform(),
        "cpus": os.cpu_count(),
    }
    try:
        from importlib.metadata import version

        info["peo"] = version("peo")
        info["pynacl"] = version("pynacl")
        info["msgpack"] = version("msgpack")
        info["asyncpg"] = version("asyncpg")
    except Exception as e:  # versions are informative; a missing one must not stop the run
        info["peo_error"] = repr(e)
    try:
        info["git"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=BENCH, text=True, capture_output=True
        ).stdout.strip()
    except OSError:
        pass
    if peers:
        code = (
            "import json; from importlib.metadata import version as v; print(json.dumps("
            "{n: v(n) for n in ('dbos','langgraph','langgraph-checkpoint',"
            "'langgraph-checkpoint-sqlite','sqlalchemy')}))"
        )
        out = subprocess.run([str(PEERS_PY), "-c", code], capture_output=True, text=True)
        info["peers"] = json.loads(out.stdout) if out.returncode == 0 else out.stderr
    return info


def drop_schema(url: str | None, schema: str) -> None:
    """The workload drops its schema; this catches one that was killed before it could."""
    import asyncio

    import asyncpg

    async def drop() -> None:
        conn = await asyncpg.connect(url, timeout=5)
        try:
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        finally:
            await conn.close()

    try:
        asyncio.run(drop())
    except Exception as e:  # leftovers only cost disk space; say so and go on
        log(f"could not drop schema {schema}: {e!r}")


def postgres_reachable(url: str) -> bool:
    import asyncio

    try:
        import asyncpg
    except ImportError:
        return False

    async def probe() -> None:
        conn = await asyncpg.connect(url, timeout=3)
        await conn.close()

    try:
        asyncio.run(probe())
    except Exception:
        return False
    return True


def setup() -> None:
    subprocess.run(["bash", str(BENCH / "setup.sh")], check=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--runs", type=int, default=5, help="runs per measurement (default 5)")
    p.add_argument("--only", help="comma-separated workloads, e.g. W1,W2,W1-pg,limits")
    p.add_argument(
        "--peers",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run DBOS and LangGraph (default: yes; --smoke: only if bench/.venv-peers exists)",
    )
    p.add_argument(
        "--smoke", action="store_true", help="tiny sizes, 1 run (seconds): checks that every workload still runs"
    )
    p.add_argument("--setup", action="store_true", help="create the peers' virtualenv and exit")
    p.add_argument(
        "--postgres",
        default=os.environ.get("PEO_BENCH_POSTGRES_URL", DEFAULT_PG),
        help="PostgreSQL URL for the -pg variants; 'none' to skip",
    )
    p.add_argument(
        "--via",
        choices=["cli", "lib"],
        default=None,
        help="start peo node processes with `peo node` (default, when peo.cli"
        " exists) or through the library (bench/workloads/peo_wl.py node)",
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SIZE=N",
        help="override a size, e.g. --set w5_objects=500 (see Sizes in run.py)",
    )
    p.add_argument(
        "--baseline",
        metavar="DIR",
        help="also run peo's own jobs from another source tree (e.g. a git worktree of the previous main),"
        " as systems named peo...@base, interleaved with this tree's runs",
    )
    p.add_argument("--timeout", type=float, default=900, help="seconds per measurement")
    p.add_argument("--workdir", help="where stores are created (default: system temp, on disk)")
    p.add_argument("--out", help="JSON file (default bench/results/<timestamp>.json)")
    args = p.parse_args()

    if args.setup:
        setup()
        return 0
    sizes = dataclasses.replace(SMOKE if args.smoke else Sizes())
    for item in args.set:
        name, _, value = item.partition("=")
        if name not in Sizes.__dataclass_fields__:
            p.error(f"--set: unknown size {name!r}")
        setattr(sizes, name, type(getattr(sizes, name))(value))
    runs = 1 if args.smoke else args.runs
    # A smoke run includes the peers only where their virtualenv already exists (CI's clean
    # clone has none and does not download them); a full run creates it if needed.
    peers = args.peers and (not args.smoke or PEERS_PY.exists())
    if peers and not PEERS_PY.exists():
        log("bench/.venv-peers is missing: creating it (bench/setup.sh)")
        setup()
    if args.via is None:
        args.via = "cli" if importlib.util.find_spec("peo.cli") else "lib"
        if args.via == "lib":
            log("peo.cli not found: node processes run through the library (--via lib)")
    pg_url = None if args.postgres == "none" else args.postgres
    if pg_url and not postgres_reachable(pg_url):
        log(f"PostgreSQL not reachable at {pg_url}: skipping the -pg variants")
        pg_url = None
    selected = jobs(sizes, peers, pg_url, args.via)
    if args.only:
        wanted = {w.strip().lower() for w in args.only.split(",")}
        selected = [j for j in selected if j.workload.lower() in wanted]
    if args.baseline:
        tree = str(Path(args.baseline).resolve())
        if not (Path(tree) / "peo" / "__init__.py").exists():
            p.error(f"--baseline {args.baseline}: no peo package there")
        own = [j for j in selected if not j.peer and j.script == "peo_wl.py"]
        selected += [dataclasses.replace(j, system=f"{j.system}@base", tree=tree) for j in own]
        selected.sort(key=lambda j: j.workload)  # each workload's systems side by side
    if not selected:
        log("nothing selected")
        return 2
    workdir = Path(args.workdir or tempfile.gettempdir())
    workdir.mkdir(parents=True, exist_ok=True)

    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    started = time.strftime("%Y%m%d-%H%M%S")
    for r in range(runs):
        for job in selected:
            result = run_job(job, pg_url, workdir, args.timeout)
            raw.setdefault(job.workload, {}).setdefault(job.system, []).append(result)
            if "error" in result:
                log(f"[{r + 1}/{runs}] {job.workload} {job.system}: FAILED {result['error'][-300:]}")
            else:
                key = HEADLINE.get(job.workload, ("", True))[0]
                shown = {
                    k: round(v, 4)
                    for k, v in result.items()
                    if isinstance(v, float) and (k == key or job.workload == "limits")
                }
                log(f"[{r + 1}/{runs}] {job.workload} {job.system}: {shown or result} ({result['wall_s']:.1f} s)")

    summary = {w: {s: summarize(rs) for s, rs in systems.items()} for w, systems in raw.items()}
    rat = ratios(summary)
    doc = {
        "started": started,
        "smoke": args.smoke,
        "runs": runs,
        "sizes": sizes.__dict__,
        "via": args.via,
        "postgres": pg_url,
        "versions": versions(peers),
        "summary": summary,
        "ratios_peo_over_peer": rat,
        "raw": raw,
    }
    out = Path(args.out) if args.out else BENCH / "results" / f"{started}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print(table(summary, rat))
    log(f"results: {out}")
    failed = sum(s["runs"] - s["ok"] for systems in summary.values() for s in systems.values())
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
