"""One chaos run: start the fleet, submit, inject faults, stop them, settle, check."""

from __future__ import annotations

import asyncio
import random
import tempfile
import time
from pathlib import Path

import attrs

from ... import keys
from ...client import Client
from ...config import default_policy
from ...core.wake import children_done
from ...keys import keyring_for
from .checker import check_objects
from .fleet import Fleet
from .report import ChaosConfig, ChaosReport
from .workload import HANDLER

__all__ = ["run_chaos"]


async def run_chaos(config: ChaosConfig) -> ChaosReport:
    """Run one chaos experiment (see :mod:`peo.testing.chaos`) and return its report."""
    run = _Run(config)
    await run.client.open()
    try:
        for nid in run.fleet.procs:
            run.fleet.start(nid)
        await run.faults()
        run.stop_faults()
        at_end = await run.settle()
        run.fleet.stop_all()
        await run.check(at_end)
    finally:
        run.fleet.close()
        await run.client.aclose()
        run.report.elapsed = time.monotonic() - run.started
    return run.report


class _Run:
    """The state of one run: its fleet, its client, the heads seen and the objects submitted."""

    def __init__(self, config: ChaosConfig):
        self.config = config
        self.started = time.monotonic()
        self.workdir = Path(config.workdir or tempfile.mkdtemp(prefix="peo-chaos-"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        home, self.log_dir = self.workdir / ".peo", self.workdir / "effects"
        self.log_dir.mkdir(exist_ok=True)
        url = config.store or f"sqlite:///{self.workdir / 'chaos.db'}"
        self.report = ChaosReport(config.seed, url, config.nodes, config.objects, config.steps, config.duration,
                                  config.faults, workdir=str(self.workdir))
        self.rng = random.Random(config.seed)
        client_key = keys.load_or_create(home / "keys" / "client.key")
        policy = attrs.evolve(default_policy(), trust_local_keys=False)
        keyring = keyring_for(policy, client_key)
        keys.add_directory(keyring, home / "keys")  # the nodes' keys, as they create them
        self.client = Client(url, key=client_key, keyring=keyring, policy=policy)
        self.fleet = Fleet(url, config.nodes, home=home, log_dir=self.log_dir, lease_ttl=config.lease_ttl,
                           concurrency=config.concurrency, faults=config.faults, seed=config.seed,
                           out_dir=self.workdir)
        self.seen: dict[tuple[str, int], bytes] = {}
        self.ids: list[str] = []
        self.faults_on = True

    def event(self, text: str) -> None:
        self.report.events.append(f"{time.monotonic() - self.started:7.2f}s {text}")

    async def poll(self) -> int:
        """Record every head; a second hash at a seen (object, seq) is a fork."""
        report = self.report
        total = 0
        for row in await self.client.store.list():
            total += row.seq
            first = self.seen.setdefault((row.id, row.seq), row.head)
            if first != row.head:
                report.forks += 1
                report.violations.append(f"fork: {row.id} seq {row.seq} had head {first.hex()[:16]}, now"
                                         f" {row.head.hex()[:16]}")
                self.seen[(row.id, row.seq)] = row.head
        report.head_polls += 1
        return total

    # -- faults ---------------------------------------------------------------------------------

    async def faults(self) -> None:
        """Submit in batches and poll heads while killing and pausing nodes for ``duration``."""
        config = self.config
        goal = {"steps": config.steps, "step_ms": config.step_ms, "sleep_every": config.sleep_every}
        batches = max(1, min(config.objects, 10))
        sizes = [config.objects // batches + (1 if i < config.objects % batches else 0) for i in range(batches)]
        # the last batch goes in just before the faults stop, so that work is in flight then
        submit_at = [max(0.0, config.duration * i / max(1, batches - 1) - 0.1) for i in range(batches)]
        t0 = time.monotonic()

        # Submitting and polling run beside the fault loop, never inside it: a node stopped
        # with SIGSTOP inside an SQLite write transaction blocks every other writer (one
        # writer at a time) until the fault loop sends it SIGCONT.
        async def submitter() -> None:
            for at, size in zip(submit_at, sizes, strict=True):
                await asyncio.sleep(max(0.0, t0 + at - time.monotonic()))
                self.ids.extend(await self.client.submit_many(HANDLER, [goal] * size))

        async def poller() -> None:
            while self.faults_on:
                await self.poll()
                await asyncio.sleep(0.05)

        submitting = asyncio.ensure_future(submitter())
        polling = asyncio.ensure_future(poller())
        next_fault = t0 + self.rng.uniform(*config.fault_interval)
        try:
            while (now := time.monotonic()) < t0 + config.duration:
                self._tend(now)
                if now >= next_fault:
                    self._inject(now)
                    next_fault = now + self.rng.uniform(*config.fault_interval)
                if submitting.done() and submitting.exception() is not None:
                    break  # surfaced below
                await asyncio.sleep(0.02)
        finally:
            # -- faults stop: everyone back, without fault points ------------------------------------
            for nid, proc in self.fleet.procs.items():
                if proc.paused_until is not None:
                    self.fleet.resume(nid)
            self.faults_on = False
            await polling
            await submitting

    def _tend(self, now: float) -> None:
        """Resume paused nodes and restart dead ones when their time has come."""
        fleet, report = self.fleet, self.report
        for nid, proc in fleet.procs.items():
            if proc.paused_until is not None and now >= proc.paused_until:
                fleet.resume(nid)
                self.event(f"SIGCONT {nid}")
            if proc.restart_at is not None and now >= proc.restart_at:
                fleet.start(nid)
                report.restarts += 1
                self.event(f"restart {nid}")
        for nid in fleet.crashed():
            report.crashes += 1
            self.event(f"{nid} crashed (exit {fleet.procs[nid].popen.returncode})")  # type: ignore[union-attr]
            fleet.procs[nid].restart_at = now + self.rng.uniform(0, self.config.lease_ttl)

    def _inject(self, now: float) -> None:
        """Kill or pause one running node (never the last one: the run must also make progress)."""
        fleet, report, rng, lease_ttl = self.fleet, self.report, self.rng, self.config.lease_ttl
        running = fleet.running()
        if len(running) <= 1:
            return
        nid = rng.choice(running)
        if rng.random() < 0.5:
            fleet.kill(nid)
            report.kills += 1
            fleet.procs[nid].restart_at = now + rng.uniform(0, 2 * lease_ttl)
            self.event(f"SIGKILL {nid}")
        else:
            fleet.pause(nid, now + lease_ttl * rng.uniform(1.5, 3.0))
            report.pauses += 1
            self.event(f"SIGSTOP {nid}")

    def stop_faults(self) -> None:
        """Every node dead (or running with fault points) is started again without them."""
        fleet = self.fleet
        self.report.crashes += len(fleet.crashed())
        for nid, proc in fleet.procs.items():
            if self.config.faults or proc.popen is None or proc.popen.poll() is not None:
                if proc.popen is not None and proc.popen.poll() is None:
                    proc.expected_exit = True
                    proc.popen.kill()
                    proc.popen.wait()
                fleet.start(nid, faults=False)
                self.report.restarts += 1
        self.event("faults stop")

    async def settle(self) -> int:
        """Wait until every object has ended; returns the entry count when the faults stopped."""
        report = self.report
        at_end = await self.poll()
        stopped = time.monotonic()
        deadline = stopped + self.config.settle_timeout
        while time.monotonic() < deadline:
            total = await self.poll()
            if total > at_end and report.recovery_seconds is None:
                report.recovery_seconds = time.monotonic() - stopped
            rows = await self.client.store.list()
            if children_done(r.status for r in rows):
                report.settle_seconds = time.monotonic() - stopped
                break
            for nid in self.fleet.crashed():
                report.violations.append(f"{nid} died after the faults stopped")
                self.fleet.start(nid, faults=False)
            await asyncio.sleep(0.05)
        self.event("settled" if report.settle_seconds is not None else "settle timeout")
        return at_end

    # -- the checker -------------------------------------------------------------------------------

    async def check(self, at_end: int) -> None:
        config, report = self.config, self.report
        check = await check_objects(self.client, self.ids, config.steps, self.log_dir)
        report.violations += check.violations
        report.steps, report.entries = check.steps, check.entries
        report.entries_after_faults = max(0, sum(r.seq for r in await self.client.store.list()) - at_end)
        report.entries_during_faults = check.entries - len(self.ids) - report.entries_after_faults
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
        for (oid, seq), head in self.seen.items():
            stored = await self.client.store.entry_hash(oid, seq)
            if stored != head:
                report.forks += 1
                report.violations.append(f"fork: the head seen at {oid} seq {seq} is not the stored entry")
        if report.settle_seconds is None:
            report.violations.append(f"no progress to completion within {config.settle_timeout:g} s after the"
                                     " faults stopped")
        for path in self.workdir.glob("*.stderr"):
            text = path.read_text(errors="replace")
            bugs = text.count("node_bug")
            report.node_bugs += bugs
            if bugs:
                report.violations.append(f"{path.name}: the node logged {bugs} bug(s)")
