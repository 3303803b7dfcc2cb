"""The node processes of a chaos run: starting, killing, pausing and restarting them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import IO

import attrs

import peo

from .workload import LOG_DIR_ENV

__all__ = ["PEO_ROOT", "Fleet", "spawn_worker"]

#: The directory that holds the ``peo`` package this process runs: first on each worker's
#: PYTHONPATH, so that a worker never imports a stale copy installed elsewhere.
PEO_ROOT = str(Path(peo.__file__).resolve().parent.parent)


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
    # The child runs the same peo as this process, never another copy installed elsewhere.
    existing = env.get("PYTHONPATH")
    env["PYTHONPATH"] = PEO_ROOT + (os.pathsep + existing if existing else "")
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
