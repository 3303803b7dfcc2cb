"""Chaos runs: several node processes on one store, killed and paused at seeded random
moments, with a safety checker during the run and a health check after it.

``python -m peo.testing.chaos --store URL --nodes 3 --objects 60 --steps 20 --duration 30 --seed N``

What happens:

1. ``--nodes`` worker processes start (``python -m peo.testing.chaos --worker ...``: a
   :class:`~peo.node.Node` running :data:`app`), each with its own node id and key.
2. ``--objects`` objects are submitted in batches spread over the run. Each
   step of an object appends one line ``<object id>:<seq>`` (its idempotency key) to its
   process's side-effect log, then waits ``--step-ms``; every fifth step sleeps (dormancy
   and reentry) instead of continuing.
3. For ``--duration`` seconds, at seeded random intervals, a random node is killed with
   SIGKILL (and restarted under the same id after a random delay) or paused with SIGSTOP
   for longer than its lease and resumed with SIGCONT. ``--faults SPEC`` also arms fault
   points inside the nodes (``PEO_FAULTS``); a node that crashes on one is restarted.
   Meanwhile the object heads are polled: two different hashes seen at one (object, seq)
   is a fork.
4. The faults stop; every node is resumed or restarted (without ``--faults``); the run
   waits for every object to terminate.
5. The checker: every object terminated with its result (none lost); every chain verifies;
   each step recorded exactly once (contiguous seqs, each step index once); no fork (every
   head seen during the run is still the entry at its seq); every committed step's side
   effect ran, no side effect ran under a key no step committed, and duplicates stay
   within what the faults could cause (each kill, pause or crash interrupts at most one
   step per object the node held: ``faults x concurrency`` in all, ``faults`` per object);
   no node logged a bug; and the system made progress after the faults stopped.

It prints the seed, the faults injected and the figures (``--json`` for a JSON report) and
exits 1 if any invariant was violated. Replay a failure with the same ``--seed`` (the
fault schedule is the same; process timing is not, so a rare interleaving may need a few
runs).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import attrs

from ..app import App
from ..core.model import Action, Continue, Done, Proposal, Sleep, Step

__all__ = [
    "HANDLER",
    "ChaosConfig",
    "ChaosReport",
    "Fleet",
    "app",
    "check_objects",
    "main",
    "run_chaos",
    "spawn_worker",
]

log = logging.getLogger("peo.chaos")

#: The chaos workload's handler name.
HANDLER = "chaos"
#: Where the handler appends its side effects (one file per process); set by the worker.
LOG_DIR_ENV = "PEO_CHAOS_LOG_DIR"

app = App()
_log_fd: int | None = None


def _effect(key: str) -> None:
    """The step's side effect: one line in this process's log. O_APPEND writes land whole
    and survive SIGKILL (they are in the kernel once write() returns)."""
    global _log_fd
    if _log_fd is None:
        directory = Path(os.environ.get(LOG_DIR_ENV) or "chaos-effects")
        directory.mkdir(parents=True, exist_ok=True)
        _log_fd = os.open(directory / f"{os.getpid()}.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_log_fd, f"{key}\n".encode())


@app.handler(HANDLER)
async def chaos_step(step: Step) -> Proposal:
    """``goal = {"steps": S, "step_ms": M, "sleep_every": K}``: S steps, then Done(S)."""
    n = int(step.state.get("n", 0))
    _effect(step.idempotency_key)
    # The wait comes after the side effect: a kill in it leaves an effect without a commit.
    await asyncio.sleep(float(step.goal.get("step_ms", 0)) / 1000)
    if n >= int(step.goal["steps"]):
        return Done(n)
    every = int(step.goal.get("sleep_every", 0))
    if every and (n + 1) % every == 0:
        return Sleep(seconds=0.02, state={"n": n + 1})
    return Continue(state={"n": n + 1})


# -- processes --------------------------------------------------------------------------------


def spawn_worker(
    store: str,
    node_id: str,
    *,
    home: Path,
    log_dir: Path,
    lease_ttl: float = 1.0,
    concurrency: int = 4,
    until_idle: bool = False,
    faults: str | None = None,
    faults_seed: int = 0,
    output: IO[bytes] | None = None,
) -> subprocess.Popen[bytes]:
    """Start one node process running :data:`app` (``python -m peo.testing.chaos --worker``)."""
    env = {k: v for k, v in os.environ.items() if k not in ("PEO_FAULTS", "PEO_FAULTS_SEED")}
    env["PEO_HOME"] = str(home)
    env[LOG_DIR_ENV] = str(log_dir)
    if faults:
        env["PEO_FAULTS"] = faults
        env["PEO_FAULTS_SEED"] = str(faults_seed)
    cmd = [sys.executable, "-m", "peo.testing.chaos", "--worker", "--store", store, "--node-id", node_id,
           "--lease-ttl", str(lease_ttl), "--concurrency", str(concurrency)]
    if until_idle:
        cmd.append("--until-idle")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=output or subprocess.DEVNULL)


@attrs.define
class _Proc:
    node_id: str
    popen: subprocess.Popen[bytes] | None = None
    paused_until: float | None = None
    restart_at: float | None = None
    expected_exit: bool = False


class Fleet:
    """The node processes of one run. Always :meth:`close` it (kills what is left)."""

    def __init__(self, store: str, count: int, *, home: Path, log_dir: Path, lease_ttl: float, concurrency: int,
                 faults: str | None, seed: int, out_dir: Path):
        self.store, self.home, self.log_dir = store, home, log_dir
        self.lease_ttl, self.concurrency, self.faults, self.seed = lease_ttl, concurrency, faults, seed
        self.out_dir = out_dir
        self.procs = {f"n{i}": _Proc(f"n{i}") for i in range(1, count + 1)}
        self.starts = 0
        self._outputs: list[IO[bytes]] = []

    def start(self, node_id: str, *, faults: bool = True) -> None:
        proc = self.procs[node_id]
        self.starts += 1
        out = open(self.out_dir / f"{node_id}.stderr", "ab")  # noqa: SIM115 - closed in close()
        self._outputs.append(out)
        proc.popen = spawn_worker(
            self.store, node_id, home=self.home, log_dir=self.log_dir, lease_ttl=self.lease_ttl,
            concurrency=self.concurrency, faults=self.faults if faults else None,
            faults_seed=self.seed * 1000 + self.starts, output=out,
        )
        proc.paused_until = proc.restart_at = None
        proc.expected_exit = False

    def running(self) -> list[str]:
        return [n for n, p in self.procs.items() if p.popen is not None and p.popen.poll() is None
                and p.paused_until is None]

    def kill(self, node_id: str) -> None:
        proc = self.procs[node_id]
        assert proc.popen is not None
        proc.expected_exit = True
        proc.popen.send_signal(signal.SIGKILL)
        proc.popen.wait()

    def pause(self, node_id: str, until: float) -> None:
        proc = self.procs[node_id]
        assert proc.popen is not None
        proc.popen.send_signal(signal.SIGSTOP)
        proc.paused_until = until

    def resume(self, node_id: str) -> None:
        proc = self.procs[node_id]
        if proc.popen is not None and proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGCONT)
        proc.paused_until = None

    def crashed(self) -> list[str]:
        """Nodes that died without being killed by us (an armed fault point, or a bug)."""
        out = []
        for n, p in self.procs.items():
            if p.popen is not None and not p.expected_exit and p.popen.poll() is not None:
                p.expected_exit = True
                out.append(n)
        return out

    def stop_all(self, timeout: float = 15.0) -> None:
        for p in self.procs.values():
            if p.popen is not None and p.popen.poll() is None:
                p.expected_exit = True
                p.popen.send_signal(signal.SIGCONT)
                p.popen.terminate()
        for p in self.procs.values():
            if p.popen is None:
                continue
            try:
                p.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.popen.kill()
                p.popen.wait()

    def close(self) -> None:
        try:
            self.stop_all()
        finally:
            for out in self._outputs:
                out.close()


# -- checking -------------------------------------------------------------------------------


@attrs.define
class Check:
    """What the checker found for a set of objects."""

    objects: int = 0
    terminated: int = 0
    lost: list[str] = attrs.field(factory=list)  # not terminated with the expected result
    unverified: list[str] = attrs.field(factory=list)
    not_exactly_once: list[str] = attrs.field(factory=list)
    steps: int = 0  # committed handler steps
    entries: int = 0
    side_effects: int = 0
    duplicates: int = 0
    max_duplicates_per_object: int = 0
    missing_effects: list[str] = attrs.field(factory=list)  # committed step whose effect never ran
    phantom_effects: list[str] = attrs.field(factory=list)  # effect under a key no step committed
    duplicated_keys: list[str] = attrs.field(factory=list)
    violations: list[str] = attrs.field(factory=list)


def read_effects(log_dir: Path) -> Counter[str]:
    lines: Counter[str] = Counter()
    for path in sorted(log_dir.glob("*.log")):
        lines.update(line for line in path.read_text().split("\n") if line)
    return lines


async def check_objects(client: Any, ids: Sequence[str], steps: int, log_dir: Path) -> Check:
    """Check objects of the chaos workload (``steps`` steps each) and their side effects."""
    from ..errors import PeoError

    effects = read_effects(log_dir)
    by_object: dict[str, Counter[str]] = {}
    for key, n in effects.items():
        by_object.setdefault(key.rpartition(":")[0], Counter())[key] = n
    c = Check(objects=len(ids), side_effects=sum(effects.values()))
    for oid in ids:
        info = await client.get(oid)
        if info.status.value == "terminated":
            c.terminated += 1
        if info.status.value != "terminated" or info.reason != "done" or info.result != steps:
            c.lost.append(oid)
        try:
            count = await client.verify(oid)
            if count != len(info.memory) or [e.seq for e in info.memory] != list(range(count)):
                c.unverified.append(oid)
        except PeoError as exc:
            c.unverified.append(oid)
            c.violations.append(f"{oid} does not verify: {exc}")
        c.entries += len(info.memory)
        handler_entries = [
            e for e in info.memory[1:]
            if e.action in (Action.EXECUTE, Action.DORMANCY)
            or (e.action is Action.TERMINATE and e.outcome.get("reason") == "done")
        ]
        c.steps += len(handler_entries)
        indices = [e.outcome.get("state", {}).get("n") for e in handler_entries if e.action is not Action.TERMINATE]
        if info.status.value == "terminated" and sorted(indices) != list(range(1, steps + 1)):
            c.not_exactly_once.append(oid)
        committed = {f"{oid}:{e.seq}" for e in handler_entries}
        mine = by_object.get(oid, Counter())
        c.missing_effects += sorted(committed - set(mine))
        c.phantom_effects += sorted(set(mine) - committed)
        dups = sum(n - 1 for n in mine.values())
        c.duplicates += dups
        c.max_duplicates_per_object = max(c.max_duplicates_per_object, dups)
        c.duplicated_keys += sorted(k for k, n in mine.items() if n > 1)
    if c.lost:
        c.violations.append(f"{len(c.lost)} object(s) not terminated with their result: {c.lost[:5]}")
    if c.not_exactly_once:
        c.violations.append(f"steps not recorded exactly once in {c.not_exactly_once[:5]}")
    if c.missing_effects:
        c.violations.append(f"committed steps whose side effect never ran: {c.missing_effects[:5]}")
    if c.phantom_effects:
        c.violations.append(f"side effects under keys no step committed: {c.phantom_effects[:5]}")
    return c


# -- the run ----------------------------------------------------------------------------------


@attrs.frozen
class ChaosConfig:
    store: str | None = None  # None: an SQLite file in the work directory
    nodes: int = 3
    objects: int = 60
    steps: int = 20
    duration: float = 30.0  # seconds of faults
    seed: int = 0
    faults: str | None = None  # PEO_FAULTS for the nodes while faults run
    lease_ttl: float = 1.0
    concurrency: int = 4
    step_ms: float = 10.0
    sleep_every: int = 5
    fault_interval: tuple[float, float] = (0.3, 1.5)  # seconds between two faults
    settle_timeout: float = 120.0  # seconds for everything to finish once faults stop
    workdir: str | None = None


@attrs.define
class ChaosReport:
    seed: int
    store: str
    nodes: int
    objects: int
    steps_per_object: int
    duration: float
    faults_spec: str | None
    kills: int = 0
    pauses: int = 0
    crashes: int = 0  # nodes that died on an armed fault point (or a bug)
    restarts: int = 0
    head_polls: int = 0
    forks: int = 0
    steps: int = 0
    entries_during_faults: int = 0
    entries_after_faults: int = 0
    entries: int = 0
    side_effects: int = 0
    duplicates: int = 0
    duplicate_bound: int = 0
    max_duplicates_per_object: int = 0
    objects_lost: int = 0
    unverified: int = 0
    node_bugs: int = 0
    recovery_seconds: float | None = None  # faults stop -> first new commit
    settle_seconds: float | None = None  # faults stop -> every object terminated
    elapsed: float = 0.0
    workdir: str = ""
    events: list[str] = attrs.field(factory=list)
    violations: list[str] = attrs.field(factory=list)

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        lines = [
            f"peo chaos: seed {self.seed}, store {self.store}",
            f"  {self.nodes} nodes, {self.objects} objects x {self.steps_per_object} steps,"
            f" {self.duration:g} s of faults" + (f", fault points {self.faults_spec}" if self.faults_spec else ""),
            f"  faults injected: {self.kills} kills (SIGKILL), {self.pauses} pauses (SIGSTOP past the lease),"
            f" {self.crashes} crashes at fault points; {self.restarts} restarts",
            f"  steps committed: {self.steps}; entries: {self.entries} ({self.entries_during_faults} appended"
            f" during faults, {self.entries_after_faults} after)",
            f"  side effects: {self.side_effects}, duplicates: {self.duplicates} (bound {self.duplicate_bound},"
            f" at most {self.max_duplicates_per_object} for one object)",
            f"  head polls: {self.head_polls}, forks: {self.forks}, objects lost: {self.objects_lost},"
            f" chains failing verification: {self.unverified}, node bugs logged: {self.node_bugs}",
            f"  after the faults: first commit in {_secs(self.recovery_seconds)},"
            f" all objects terminated in {_secs(self.settle_seconds)}; run took {self.elapsed:.1f} s",
        ]
        if self.violations:
            lines.append("  VIOLATIONS:")
            lines += [f"    - {v}" for v in self.violations]
        else:
            lines.append("  every invariant held")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        d = attrs.asdict(self)
        d["ok"] = self.ok
        return d


def _secs(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f} s"


async def run_chaos(config: ChaosConfig) -> ChaosReport:
    """Run one chaos experiment (see the module docstring) and return its report."""
    from .._local import keyring_for
    from ..client import Client
    from ..core.crypto import SigningKey
    from ..core.policy import Policy

    started = time.monotonic()
    workdir = Path(config.workdir or tempfile.mkdtemp(prefix="peo-chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    home, log_dir = workdir / ".peo", workdir / "effects"
    log_dir.mkdir(exist_ok=True)
    url = config.store or f"sqlite:///{workdir / 'chaos.db'}"
    report = ChaosReport(config.seed, url, config.nodes, config.objects, config.steps, config.duration,
                         config.faults, workdir=str(workdir))
    rng = random.Random(config.seed)
    client_key = SigningKey.load_or_create(home / "keys" / "client.key")
    policy = attrs.evolve(Policy.default(), trust_local_keys=False)
    keyring = keyring_for(policy, client_key)
    keyring.add_directory(home / "keys")  # the nodes' keys, as they create them
    client = Client(url, key=client_key, keyring=keyring, policy=policy)
    fleet = Fleet(url, config.nodes, home=home, log_dir=log_dir, lease_ttl=config.lease_ttl,
                  concurrency=config.concurrency, faults=config.faults, seed=config.seed, out_dir=workdir)
    seen: dict[tuple[str, int], bytes] = {}
    ids: list[str] = []

    def event(text: str) -> None:
        report.events.append(f"{time.monotonic() - started:7.2f}s {text}")

    async def poll() -> int:
        """Record every head; a second hash at a seen (object, seq) is a fork."""
        total = 0
        for row in await client.store.list():
            total += row.seq
            first = seen.setdefault((row.id, row.seq), row.head)
            if first != row.head:
                report.forks += 1
                report.violations.append(f"fork: {row.id} seq {row.seq} had head {first.hex()[:16]}, now"
                                         f" {row.head.hex()[:16]}")
                seen[(row.id, row.seq)] = row.head
        report.head_polls += 1
        return total

    await client.open()
    try:
        for nid in fleet.procs:
            fleet.start(nid)
        goal = {"steps": config.steps, "step_ms": config.step_ms, "sleep_every": config.sleep_every}
        batches = max(1, min(config.objects, 10))
        sizes = [config.objects // batches + (1 if i < config.objects % batches else 0) for i in range(batches)]
        # the last batch goes in just before the faults stop, so that work is in flight then
        submit_at = [max(0.0, config.duration * i / max(1, batches - 1) - 0.1) for i in range(batches)]
        t0 = time.monotonic()
        faults_on = True

        # Submitting and polling run beside the fault loop, never inside it: a node stopped
        # with SIGSTOP inside an SQLite write transaction blocks every other writer (one
        # writer at a time) until the fault loop sends it SIGCONT.
        async def submitter() -> None:
            for at, size in zip(submit_at, sizes, strict=True):
                await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
                ids.extend(await client.submit_many(HANDLER, [goal] * size))

        async def poller() -> None:
            while faults_on:
                await poll()
                await asyncio.sleep(0.05)

        submitting = asyncio.ensure_future(submitter())
        polling = asyncio.ensure_future(poller())
        next_fault = t0 + rng.uniform(*config.fault_interval)
        # -- faults ---------------------------------------------------------------------------
        try:
            while (now := time.monotonic()) < t0 + config.duration:
                for nid, proc in fleet.procs.items():
                    if proc.paused_until is not None and now >= proc.paused_until:
                        fleet.resume(nid)
                        event(f"SIGCONT {nid}")
                    if proc.restart_at is not None and now >= proc.restart_at:
                        fleet.start(nid)
                        report.restarts += 1
                        event(f"restart {nid}")
                for nid in fleet.crashed():
                    report.crashes += 1
                    event(f"{nid} crashed (exit {fleet.procs[nid].popen.returncode})")  # type: ignore[union-attr]
                    fleet.procs[nid].restart_at = now + rng.uniform(0, config.lease_ttl)
                if now >= next_fault:
                    running = fleet.running()
                    if len(running) > 1:  # keep one node working: the run must also make progress
                        nid = rng.choice(running)
                        if rng.random() < 0.5:
                            fleet.kill(nid)
                            report.kills += 1
                            fleet.procs[nid].restart_at = now + rng.uniform(0, 2 * config.lease_ttl)
                            event(f"SIGKILL {nid}")
                        else:
                            fleet.pause(nid, now + config.lease_ttl * rng.uniform(1.5, 3.0))
                            report.pauses += 1
                            event(f"SIGSTOP {nid}")
                    next_fault = now + rng.uniform(*config.fault_interval)
                if submitting.done() and submitting.exception() is not None:
                    break  # surfaced below
                await asyncio.sleep(0.02)
        finally:
            # -- faults stop: everyone back, without fault points ------------------------------------
            for nid, proc in fleet.procs.items():
                if proc.paused_until is not None:
                    fleet.resume(nid)
            faults_on = False
            await polling
            await submitting
        report.crashes += len(fleet.crashed())
        for nid, proc in fleet.procs.items():
            if config.faults or proc.popen is None or proc.popen.poll() is not None:
                if proc.popen is not None and proc.popen.poll() is None:
                    proc.expected_exit = True
                    proc.popen.kill()
                    proc.popen.wait()
                fleet.start(nid, faults=False)
                report.restarts += 1
        event("faults stop")
        at_end = await poll()
        stopped = time.monotonic()
        deadline = stopped + config.settle_timeout
        while time.monotonic() < deadline:
            total = await poll()
            if total > at_end and report.recovery_seconds is None:
                report.recovery_seconds = time.monotonic() - stopped
            rows = await client.store.list()
            if all(r.status in ("terminated", "quarantined") for r in rows):
                report.settle_seconds = time.monotonic() - stopped
                break
            for nid in fleet.crashed():
                report.violations.append(f"{nid} died after the faults stopped")
                fleet.start(nid, faults=False)
            await asyncio.sleep(0.05)
        event("settled" if report.settle_seconds is not None else "settle timeout")
        fleet.stop_all()
        # -- the checker ---------------------------------------------------------------------------
        check = await check_objects(client, ids, config.steps, log_dir)
        report.violations += check.violations
        report.steps, report.entries = check.steps, check.entries
        report.entries_after_faults = max(0, sum(r.seq for r in await client.store.list()) - at_end)
        report.entries_during_faults = check.entries - len(ids) - report.entries_after_faults
        report.side_effects, report.duplicates = check.side_effects, check.duplicates
        report.max_duplicates_per_object = check.max_duplicates_per_object
        report.objects_lost, report.unverified = len(check.lost), len(check.unverified)
        interruptions = report.kills + report.pauses + report.crashes
        report.duplicate_bound = interruptions * config.concurrency
        if check.duplicates > report.duplicate_bound:
            report.violations.append(f"{check.duplicates} duplicated side effects, more than the"
                                     f" {report.duplicate_bound} the faults could cause")
        if check.max_duplicates_per_object > interruptions:
            report.violations.append(f"one object's side effects ran {check.max_duplicates_per_object} extra"
                                     f" times, more than the {interruptions} faults")
        for (oid, seq), head in seen.items():
            stored = await client.store.entry_hash(oid, seq)
            if stored != head:
                report.forks += 1
                report.violations.append(f"fork: the head seen at {oid} seq {seq} is not the stored entry")
        if report.settle_seconds is None:
            report.violations.append(f"no progress to completion within {config.settle_timeout:g} s after the"
                                     " faults stopped")
        for path in workdir.glob("*.stderr"):
            text = path.read_text(errors="replace")
            bugs = text.count("node_bug")
            report.node_bugs += bugs
            if bugs:
                report.violations.append(f"{path.name}: the node logged {bugs} bug(s)")
    finally:
        fleet.close()
        await client.aclose()
        report.elapsed = time.monotonic() - started
    return report


# -- command line -------------------------------------------------------------------------------


async def _worker(args: argparse.Namespace) -> int:
    from ..node import Node
    from . import faults

    faults.arm_from_environment()  # --faults travels to the workers as PEO_FAULTS
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    node = Node(args.store, app, node_id=args.node_id, concurrency=args.concurrency, lease_ttl=args.lease_ttl,
                poll_interval=0.02)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, node.stop)
    if args.until_idle:
        await node.run_until_idle()
    else:
        await node.run()
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m peo.testing.chaos",
        description="Chaos run: node processes killed and paused at seeded random moments, then checked.",
    )
    p.add_argument("--store", metavar="URL", help="store URL (default: an SQLite file in the work directory)")
    p.add_argument("--nodes", type=int, default=3, help="node processes (default 3)")
    p.add_argument("--objects", type=int, default=60, help="objects submitted (default 60)")
    p.add_argument("--steps", type=int, default=20, help="steps per object (default 20)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of faults (default 30)")
    p.add_argument("--seed", type=int, default=None, help="seed of the fault schedule (default: random, printed)")
    p.add_argument("--faults", metavar="SPEC", help="PEO_FAULTS for the nodes while faults run")
    p.add_argument("--lease-ttl", type=float, default=1.0, help="node lease time in seconds (default 1)")
    p.add_argument("--concurrency", type=int, default=4, help="objects each node holds at once (default 4)")
    p.add_argument("--step-ms", type=float, default=10.0, help="milliseconds each step takes (default 10)")
    p.add_argument("--settle-timeout", type=float, default=120.0, help="seconds to finish after faults stop")
    p.add_argument("--workdir", help="keep the store, logs and node output here (default: a temp directory)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--node-id", help=argparse.SUPPRESS)
    p.add_argument("--until-idle", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        if not args.store or not args.node_id:
            _parser().error("--worker needs --store and --node-id")
        return asyncio.run(_worker(args))
    if args.nodes < 1 or args.objects < 1 or args.steps < 1 or args.duration < 0:
        _parser().error("--nodes, --objects and --steps must be positive, --duration not negative")
    if args.faults:
        from . import faults

        try:
            faults.arm(args.faults)  # only to validate the spec here; the nodes arm it themselves
        except ValueError as exc:
            _parser().error(str(exc))
        finally:
            faults.disarm()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    config = ChaosConfig(
        store=args.store, nodes=args.nodes, objects=args.objects, steps=args.steps, duration=args.duration,
        seed=seed, faults=args.faults, lease_ttl=args.lease_ttl, concurrency=args.concurrency,
        step_ms=args.step_ms, settle_timeout=args.settle_timeout, workdir=args.workdir,
    )
    report = asyncio.run(run_chaos(config))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.summary())
        if not report.ok:
            print(f"  replay: python -m peo.testing.chaos --seed {seed} " + " ".join(_replay_args(args)))
    return 0 if report.ok else 1


def _replay_args(args: argparse.Namespace) -> list[str]:
    out = []
    for name in ("store", "nodes", "objects", "steps", "duration", "faults", "lease_ttl", "concurrency", "step_ms"):
        value = getattr(args, name)
        if value is not None:
            out += [f"--{name.replace('_', '-')}", str(value)]
    return out


if __name__ == "__main__":
    sys.exit(main())
