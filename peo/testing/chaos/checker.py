"""The chaos checker: every object of the workload terminated with its result, verifies,
recorded each step once, and its side effects match its committed steps."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from ...core.model import Action
from ...errors import PeoError

__all__ = ["Check", "check_objects", "read_effects"]


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
    """Every side effect the workload's processes logged under ``log_dir``, counted by key."""
    lines: Counter[str] = Counter()
    for path in sorted(log_dir.glob("*.log")):
        lines.update(line for line in path.read_text().split("\n") if line)
    return lines


async def check_objects(client: Any, ids: Sequence[str], steps: int, log_dir: Path) -> Check:
    """Check objects of the chaos workload (``steps`` steps each) and their side effects."""
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
