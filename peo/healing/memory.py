"""The memory budget ("RAM semaphore"): admit objects while memory has room, shed the
lowest-priority ones when it has not.

A node with a limit (``--memory-limit SIZE``, ``memory_limit`` in a profile, or the cgroup
v2 ``memory.max`` of its process) keeps two watermarks: **high** is the limit itself and
**low** is :data:`LOW_FRACTION` of it.

- *Admission* (the claim loop): an object is started or resumed only while the measured
  memory, plus what running objects reserved and have not used yet, plus the new object's
  reserve stays under the low watermark. The reserve of an object is what its handler
  declares (``@app.handler("x", memory="200MiB")``), else the largest footprint the node has
  observed per object of that handler, else :data:`DEFAULT_RESERVE`. A node holding
  nothing always admits one object, so that it never starves.
- *Shedding* (a step boundary): above the high watermark, the lowest-priority running
  objects (ties: the most recently started) are chosen until their reserves cover the
  excess over the low watermark; each one's worker appends a signed ``shed`` dormancy
  (reason ``memory``, due again after :data:`SHED_DELAY_S`) instead of running its next
  step, and any node with headroom takes it up. The last running object is never shed.

Memory is measured as the process's resident set (``VmRSS``) for an explicit limit, and as
the cgroup's working set (``memory.current`` minus ``inactive_file``) for one taken from
the cgroup. Everything here is cheap to skip: with no limit the node has no budget at all.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import re
import resource
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from ..core.cycle import Decision, shed
from ..errors import UsageError

if TYPE_CHECKING:
    from ..app import App

__all__ = [
    "DEFAULT_RESERVE", "LEARN_SAMPLES", "LOW_FRACTION", "SAMPLE_INTERVAL_S", "SHED_DELAY_S", "MemoryBudget",
    "budget_for", "cgroup_limit", "cgroup_working_set", "format_size", "parse_limit", "parse_size", "rss_bytes",
]

log = logging.getLogger("peo.node")

MiB = 1 << 20
#: The low watermark as a fraction of the limit (the high watermark is the limit).
LOW_FRACTION = 0.85
#: The reserve of an object whose handler declares none and whose kind the node has not seen yet.
DEFAULT_RESERVE = 8 * MiB
#: A shed object is due again this long after it was shed (seconds).
SHED_DELAY_S = 1.0
#: How often the node samples its memory while a budget is on (seconds).
SAMPLE_INTERVAL_S = 0.02
#: A handler's reserve is learned this many samples after its first object started on the node.
LEARN_SAMPLES = 3

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*$")
_UNITS = {
    "": 1, "b": 1,
    "k": 1 << 10, "kib": 1 << 10, "kb": 10**3,
    "m": 1 << 20, "mib": 1 << 20, "mb": 10**6,
    "g": 1 << 30, "gib": 1 << 30, "gb": 10**9,
    "t": 1 << 40, "tib": 1 << 40, "tb": 10**12,
}
_OFF = ("off", "none", "unlimited")


def parse_size(text: str | int, what: str = "memory size") -> int:
    """Bytes from ``400MiB``, ``2GiB``, ``512M`` (K/M/G/T and KiB.. are powers of 1024, KB/MB/GB
    powers of 1000), ``1e9`` or a plain number of bytes. A UsageError says what is wrong."""
    if isinstance(text, bool) or not isinstance(text, int | str):
        raise UsageError(f"{what} must be a size such as '400MiB', not {type(text).__name__}")
    if isinstance(text, int):
        value: float = text
    else:
        m = _SIZE.match(text)
        unit = _UNITS.get(m.group(2).lower()) if m else None
        if m is None or unit is None:
            raise UsageError(f"{what} {text!r} is not a size: use bytes or a unit, e.g. 400MiB, 2GiB, 512M, 1e9")
        value = float(m.group(1)) * unit
    if not math.isfinite(value) or value < 1:
        raise UsageError(f"{what} {text!r} must be at least one byte")
    return int(value)


def format_size(n: float) -> str:
    """``n`` bytes for a log line: ``412.3MiB``."""
    for unit, size in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1 << 10)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return f"{int(n)}B"


def _cgroup_dir(proc_cgroup: Path, root: Path) -> Path | None:
    """The cgroup v2 directory of this process (the ``0::/path`` line), if any."""
    try:
        lines = proc_cgroup.read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("0::"):
            return root / line[3:].lstrip("/")
    return None


def cgroup_limit(*, proc_cgroup: Path = Path("/proc/self/cgroup"),
                 root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """The cgroup v2 ``memory.max`` of this process, or None (no v2 cgroup, or ``max``)."""
    where = _cgroup_dir(proc_cgroup, root)
    if where is None:
        return None
    try:
        text = (where / "memory.max").read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def cgroup_working_set(*, proc_cgroup: Path = Path("/proc/self/cgroup"),
                       root: Path = Path("/sys/fs/cgroup")) -> Callable[[], int]:
    """A probe of the cgroup's working set: ``memory.current`` less ``inactive_file`` (the
    page cache the kernel reclaims first; the file-backed SQLite pages would otherwise look
    like memory in use)."""
    where = _cgroup_dir(proc_cgroup, root) or root
    current, stat = where / "memory.current", where / "memory.stat"

    def probe() -> int:
        used = int(current.read_text())
        try:
            for line in stat.read_text().splitlines():
                if line.startswith("inactive_file "):
                    return max(used - int(line.split()[1]), 0)
        except (OSError, ValueError):
            pass
        return used

    return probe


def rss_bytes(pid: int | str = "self") -> int:
    """The resident set of a process (``VmRSS`` in ``/proc/PID/status``, else ``statm``)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # no /proc (not Linux): the peak, the best this process can tell
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def parse_limit(setting: str | int | None, *, proc_cgroup: Path = Path("/proc/self/cgroup"),
                root: Path = Path("/sys/fs/cgroup")) -> tuple[int | None, str]:
    """A ``memory_limit`` setting as (bytes or None, where it came from). ``None`` and
    ``auto`` take the cgroup v2 ``memory.max`` when one is set, ``off`` turns the budget off;
    anything else is a size (:func:`parse_size`)."""
    if isinstance(setting, str) and setting.strip().lower() in _OFF:
        return None, "off"
    if setting is None or (isinstance(setting, str) and setting.strip().lower() == "auto"):
        limit = cgroup_limit(proc_cgroup=proc_cgroup, root=root)
        return limit, "cgroup" if limit is not None else "off"
    return parse_size(setting, "memory limit"), "setting"


@attrs.define
class _Running:
    handler: str
    priority: int
    reserve: int
    order: int  # when it started, to break ties: the most recently started is shed first


class MemoryBudget:
    """The memory budget of one node (see the module's docstring).

    ``probe`` returns the memory in use now, in bytes; ``declared`` maps handlers to the
    reserves they declare. Call :meth:`sample` (the node does, every
    :data:`SAMPLE_INTERVAL_S`, in :meth:`monitor`) to measure; :meth:`room` and
    :meth:`admit` to admit; :meth:`reserve` and :meth:`release` around an object's stay;
    :meth:`chosen` at a step boundary and :meth:`shed` to shed."""

    def __init__(self, limit: int, probe: Callable[[], int], *, declared: dict[str, int] | None = None,
                 low_fraction: float = LOW_FRACTION, default_reserve: int = DEFAULT_RESERVE,
                 shed_delay: float = SHED_DELAY_S, source: str = "setting"):
        if not 0 < low_fraction <= 1:
            raise UsageError("the low watermark must be a fraction of the limit in (0, 1]")
        self.limit = self.high = int(limit)
        self.low = int(limit * low_fraction)
        self.probe = probe
        self.source = source
        self.declared = dict(declared or {})
        self.default_reserve = default_reserve
        self.shed_delay_ns = int(shed_delay * 1e9)
        self.estimates: dict[str, int] = {}  # handler -> largest footprint per object observed
        self.samples = 0
        self.first_seen: dict[str, int] = {}  # handler -> the sample count when its first object started
        self.running: dict[str, _Running] = {}
        self.reserved = 0
        self.measured = self.baseline = self._read()
        self.peak = self.measured
        self.to_shed: set[str] = set()
        self.stats: dict[str, int] = {}  # the node's stats: "sheds" is counted there too
        self.sheds = 0
        self.throttled = 0  # claim rounds the budget cut short
        self._order = itertools.count()

    def __repr__(self) -> str:
        return (f"MemoryBudget(limit={format_size(self.limit)}, low={format_size(self.low)}, "
                f"measured={format_size(self.measured)}, reserved={format_size(self.reserved)})")

    def count_into(self, stats: dict[str, int]) -> None:
        """Count sheds in the node's ``stats`` too (``stats["sheds"]``)."""
        stats.setdefault("sheds", 0)
        self.stats = stats

    def _read(self) -> int:
        try:
            return int(self.probe())
        except (OSError, ValueError) as exc:  # keep the last figure: a failed read is not headroom
            log.warning("memory_probe_failed error=%s", exc)
            return getattr(self, "measured", 0)

    # -- measuring ------------------------------------------------------------------------

    def sample(self) -> int:
        """Measure now; learn the footprint per object of the handlers running; when above the
        high watermark, choose what to shed. Returns the measured bytes."""
        m = self.measured = self._read()
        self.peak = max(self.peak, m)
        self.samples += 1
        if not self.running:
            self.baseline = m  # what the node uses holding nothing (the allocator may keep some)
            return m
        used = max(m - self.baseline, 0)
        # Growth shared out in proportion to the reserves: a handler's estimate is the
        # largest share one of its objects has been seen to take.
        for r in self.running.values():
            share = used * r.reserve // max(self.reserved, 1)
            if share > self.estimates.get(r.handler, 0):
                self.estimates[r.handler] = share
        if m > self.high and not self.to_shed:
            self.to_shed.update(self.pick_to_shed([(oid, r.priority) for oid, r in self.running.items()]))
        return m

    async def monitor(self, interval: float = SAMPLE_INTERVAL_S) -> None:
        """Sample forever (the node runs this in its task group while a budget is on)."""
        import asyncio  # here: importing peo (app.py parses sizes) loads no event loop

        while True:
            try:
                self.sample()
            except Exception as exc:  # never take the node down: the next sample may work
                log.warning("memory_sample_failed error=%s: %s", type(exc).__name__, exc)
            await asyncio.sleep(interval)

    def over_high(self) -> bool:
        return self.measured > self.high

    def accounted(self) -> int:
        """Measured memory plus what running objects reserved and have not used yet."""
        return max(self.measured, self.baseline + self.reserved)

    # -- admission ------------------------------------------------------------------------

    def reserve_for(self, handler: str) -> int:
        declared = self.declared.get(handler)
        if declared is not None:
            return declared
        if not self.learned(handler):
            return self.default_reserve
        return max(self.estimates.get(handler, 0), MiB)

    def admit(self, reserve: int) -> bool:
        """May an object reserving ``reserve`` bytes start now? Always when nothing runs."""
        return not self.running or self.accounted() + reserve <= self.low

    def learned(self, handler: str) -> bool:
        """Does the node know the reserve of ``handler``'s objects: declared, or observed by
        :data:`LEARN_SAMPLES` samples since its first object started here? (A handler whose
        objects ended before a sample saw them is learned as small.)"""
        if handler in self.declared:
            return True
        first = self.first_seen.get(handler)
        return first is not None and self.samples - first >= LEARN_SAMPLES

    def admission(self, handlers: Iterable[str], want: int) -> list[tuple[list[str], int]]:
        """What the claim loop may claim now (measured afresh), as (handlers, how many)
        groups: of the handlers whose reserve is known, as many as fit under the low
        watermark with the largest of their reserves; of the others (slow start), one at a
        time, and none while an object of one of them is still being observed."""
        self.sample()
        handlers = list(handlers)
        known = [h for h in handlers if self.learned(h)]
        new = [h for h in handlers if not self.learned(h)]
        free = self.low - self.accounted()
        n = 0
        if known:
            largest = max(self.reserve_for(h) for h in known)
            n = min(max(int(free // largest), 0) if largest > 0 else want, want)
        learning = any(not self.learned(r.handler) for r in self.running.values())
        m = int(bool(new) and n < want and not learning and free >= self.default_reserve)
        if not self.running and n + m == 0:
            n, m = (1, 0) if known else (0, 1)  # a node holding nothing always admits one
        if n + m < want:
            self.throttled += 1
        return [(hs, k) for hs, k in ((known, n), (new, m)) if k > 0]

    def room(self, handlers: Iterable[str], want: int) -> int:
        """How many of ``want`` objects of any of ``handlers`` may start now (:meth:`admission`)."""
        return sum(k for _, k in self.admission(handlers, want))

    def reserve(self, object_id: str, handler: str, priority: int) -> None:
        """``object_id`` starts on this node (its reserve counts until :meth:`release`)."""
        self.release(object_id)
        r = _Running(handler, priority, self.reserve_for(handler), next(self._order))
        self.first_seen.setdefault(handler, self.samples)
        self.running[object_id] = r
        self.reserved += r.reserve

    def release(self, object_id: str) -> None:
        """``object_id`` left this node (finished, dormant, shed, lost)."""
        r = self.running.pop(object_id, None)
        if r is not None:
            self.reserved -= r.reserve
        self.to_shed.discard(object_id)

    def released(self, object_id: str) -> Callable[[object], None]:
        """A done-callback for the task serving ``object_id``: :meth:`release` it."""
        return lambda _: self.release(object_id)

    # -- shedding -------------------------------------------------------------------------

    def pick_to_shed(self, running: list[tuple[str, int]]) -> list[str]:
        """Whom to shed, from ``running`` (id, priority): lowest priority first, ties the most
        recently started, until what they hold (their reserves, or the footprint observed for
        their handler if larger) covers the excess over the low watermark; at least one, never
        all of them."""
        order = {oid: r.order for oid, r in self.running.items()}
        ranked = sorted(running, key=lambda p: (p[1], -order.get(p[0], -1)))
        excess = self.measured - self.low
        picked: list[str] = []
        freed = 0
        for oid, _ in ranked[: max(len(ranked) - 1, 0)]:
            if picked and freed >= excess:
                break
            picked.append(oid)
            r = self.running.get(oid)  # what it frees: its reserve, or more if more was seen
            freed += max(r.reserve, self.estimates.get(r.handler, 0)) if r is not None else self.default_reserve
        return picked

    def chosen(self, object_id: str) -> bool:
        """Shed ``object_id`` at this step boundary? (One set lookup on the step path.)"""
        return object_id in self.to_shed

    def shed(self, object_id: str, now: int) -> Decision:
        """The decision that sheds ``object_id`` (logged and counted here; the worker
        appends it like any other decision)."""
        r = self.running.get(object_id)
        self.to_shed.discard(object_id)
        self.sheds += 1
        self.stats["sheds"] = self.stats.get("sheds", 0) + 1
        log.warning("object_shed id=%s priority=%s rss=%d limit=%d reason=memory wakes_in=%gs", object_id,
                    r.priority if r is not None else "?", self.measured, self.limit, self.shed_delay_ns / 1e9)
        return shed("memory", until=now + self.shed_delay_ns)


def budget_for(setting: str | int | None, app: App, *, probe: Callable[[], int] | None = None,
               **options: Any) -> MemoryBudget | None:
    """The budget a node with this ``memory_limit`` setting and app has (None: no limit).
    ``probe`` replaces the measurement (tests pass a fake one). A malformed setting raises a
    :class:`~peo.errors.UsageError`."""
    limit, source = parse_limit(setting)
    if limit is None:
        return None
    if probe is None:
        probe = cgroup_working_set() if source == "cgroup" else rss_bytes
    declared = {name: h.memory for name, h in app.handlers.items() if h.memory is not None}
    budget = MemoryBudget(limit, probe, declared=declared, source=source, **options)
    log.info("memory_budget limit=%d low=%d source=%s measured=%d", budget.limit, budget.low, source,
             budget.measured)
    return budget
