"""A chaos run's configuration and its report."""

from __future__ import annotations

from typing import Any

import attrs

__all__ = ["ChaosConfig", "ChaosReport"]


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
