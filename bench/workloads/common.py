"""Helpers shared by every workload script, whichever interpreter runs it.

Standard library only: the peers' virtualenv and peo's interpreter both import this file.
Each workload script prints progress to stderr and exactly one JSON object, its figures, as
the last line of stdout; bench/run.py collects those lines.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

# A ~256-byte dict (256 bytes as compact JSON), the payload every step records in all systems.
PAYLOAD: dict[str, Any] = {
    "role": "assistant",
    "tool": "search",
    "args": {"query": "durable execution benchmark", "top_k": 5},
    "tokens": 187,
    "ok": True,
    "note": "x" * 130,
}

# Fixed width, so that the parent can count side-effect lines from the file size alone:
# "step pid\n", the pid telling which node process ran the step.
LINE_WIDTH = 15


def log(*parts: object) -> None:
    print(*parts, file=sys.stderr, flush=True)


def emit(result: dict[str, Any]) -> None:
    result.setdefault("peak_rss_mb", peak_rss_mb())
    print(json.dumps(result), flush=True)


def peak_rss_mb() -> float | None:
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss across execve, so a child would report
    # its parent's peak if that were larger.
    return process_hwm_mb(os.getpid())


def process_hwm_mb(pid: int) -> float | None:
    """Peak RSS of another live process (VmHWM), for node processes we start and stop."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def store_bytes(db: str) -> int:
    """Bytes of an SQLite store on disk, after folding its WAL back into the database file.

    Without the checkpoint a WAL that has not yet been recycled (up to ~4 MB by default) would
    be counted as store size.
    """
    if not os.path.exists(db):
        return 0
    with sqlite3.connect(db, timeout=30) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return sum(os.path.getsize(p) for p in (db, f"{db}-wal", f"{db}-journal") if os.path.exists(p))


def side_effect(path: str, n: int) -> None:
    # One write(2) per line: a kill -9 after it returns cannot lose the line (page cache).
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{n:06d} {os.getpid():07d}\n".encode())
    finally:
        os.close(fd)


def count_lines(path: str) -> int:
    try:
        return os.stat(path).st_size // LINE_WIDTH
    except FileNotFoundError:
        return 0


def audit_side_effects(path: str, steps: int) -> dict[str, int]:
    """Duplicated and lost steps from the side-effect file of a crash workload."""
    seen = Counter(int(line.split()[0]) for line in Path(path).read_text().splitlines())
    return {
        "lines": sum(seen.values()),
        "duplicated": sum(c - 1 for c in seen.values() if c > 1),
        "lost": sum(1 for n in range(steps) if n not in seen),
    }


def wait_for_lines(path: str, target: int, proc: subprocess.Popen[bytes], limit: float) -> int:
    """Poll the side-effect file until it holds `target` lines; returns the count seen."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        n = count_lines(path)
        if n >= target:
            return n
        if proc.poll() is not None:
            raise RuntimeError(
                f"the node exited (code {proc.returncode}) after {n} lines,"
                f" before the {target} at which it was to be killed"
            )
        time.sleep(0.0002)
    raise TimeoutError(f"{path}: fewer than {target} lines after {limit} s")


def last_line_pid(path: str) -> int:
    with open(path, "rb") as f:
        f.seek(-LINE_WIDTH, os.SEEK_END)
        return int(f.read().split()[1])


def kill9(proc: subprocess.Popen[bytes]) -> float:
    """SIGKILL a child and reap it; returns the monotonic time of the kill."""
    t = time.monotonic()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return t


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def percentile_window(times: list[float], start: int, count: int) -> float:
    """Median seconds between consecutive step starts in times[start:start+count+1]."""
    window = times[start : start + count + 1]
    deltas = sorted(b - a for a, b in itertools.pairwise(window))
    return deltas[len(deltas) // 2]


def w3_result(times: list[float], entries: int) -> dict[str, Any]:
    """W3 figures from the start times of each step of one long-running object."""
    window = min(50, max(5, entries // 20))
    early = percentile_window(times, 10, window)
    late = percentile_window(times, len(times) - window - 1, window)
    return {
        "entries": entries,
        "us_per_step_at_10": round(early * 1e6, 1),
        "us_per_step_late": round(late * 1e6, 1),
        "late_over_early": round(late / early, 3),
    }
