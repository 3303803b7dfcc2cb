"""Tier 1 of self-healing, restart in place: run worker node processes and restart a dead
one with crash-loop backoff (``peo fleet``; docs/operations.md).

:class:`RestartPolicy` is the decision for one worker: a worker that exits 0 is done; any
other exit (a crash, SIGKILL, ``os._exit``, a configuration that fails at start) is
restarted after a delay that doubles from ``Backoff.initial`` up to ``Backoff.maximum``,
and starts again from ``initial`` once the worker had stayed up for ``Backoff.reset_after``
seconds. :class:`Supervisor` runs the workers with an injected spawner, clock and sleep,
so that the tests drive it without time passing; :class:`SubprocessSpawner` is the real
spawner (asyncio subprocesses).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Backoff", "RestartPolicy", "SubprocessSpawner", "Supervisor", "WorkerProcess", "describe_exit"]


@dataclass(frozen=True)
class Backoff:
    """Crash-loop backoff: ``initial`` seconds, times ``factor`` per failure in a row, at
    most ``maximum``; a worker that stayed up ``reset_after`` seconds starts over."""

    initial: float = 0.5
    factor: float = 2.0
    maximum: float = 30.0
    reset_after: float = 60.0

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.maximum) or self.factor < 1 or self.reset_after <= 0:
            raise ValueError(f"bad backoff {self}")

    def delay(self, failures: int) -> float:
        """The delay before the restart that follows ``failures`` quick failures in a row (>= 1)."""
        exponent = min(max(failures - 1, 0), 64)  # no float overflow, however long the loop
        return min(self.initial * self.factor**exponent, self.maximum)


class RestartPolicy:
    """Whether and when to restart one worker after it exits (fed the clock's readings)."""

    def __init__(self, backoff: Backoff | None = None) -> None:
        self.backoff = backoff or Backoff()
        self.failures = 0  # quick failures in a row
        self.restarts = 0  # restarts in all
        self._started_at: float | None = None

    def started(self, now: float) -> None:
        self._started_at = now

    def exited(self, code: int, now: float) -> float | None:
        """The delay before the restart, or None when the worker is not to be restarted
        (it exited 0)."""
        started, self._started_at = self._started_at, None
        if code == 0:
            return None
        if started is not None and now - started >= self.backoff.reset_after:
            self.failures = 0  # it had been healthy: this is a new failure, not a loop
        self.failures += 1
        self.restarts += 1
        return self.backoff.delay(self.failures)


class WorkerProcess(Protocol):
    """What the supervisor needs of a worker process (an ``asyncio.subprocess.Process`` fits)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


Spawner = Callable[[str], Awaitable[WorkerProcess]]


def describe_exit(code: int) -> str:
    """``exited with status 1`` or ``killed by SIGKILL`` (asyncio gives -N for signal N)."""
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with status {code}"


class Supervisor:
    """Run one worker per name in ``names`` and keep each running (see the module's doc).

    :meth:`run` returns 0 once every worker has exited 0, or once :meth:`stop` was called
    and the workers are gone: each live worker gets SIGTERM, and SIGKILL if it is still
    there ``grace`` seconds later. Calling :meth:`stop` again sends SIGTERM again (a node
    then abandons the steps in flight)."""

    def __init__(self, names: Sequence[str], spawn: Spawner, *, backoff: Backoff | None = None,
                 grace: float = 30.0, clock: Callable[[], float] | None = None,
                 sleep: Callable[[float], Awaitable[None]] | None = None,
                 log: Callable[[str], None] | None = None) -> None:
        if not names or len(set(names)) != len(names):
            raise ValueError("the worker names must be distinct, and there must be at least one")
        self.names = list(names)
        self.policies = {name: RestartPolicy(backoff) for name in self.names}
        self.procs: dict[str, WorkerProcess] = {}
        self.grace = grace
        self._spawn = spawn
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self._sleep = sleep or asyncio.sleep
        self._log = log or (lambda line: print(f"peo fleet: {line}", file=sys.stderr, flush=True))
        self._stopping = asyncio.Event()
        self._stops = 0

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def stop(self) -> None:
        """Stop the workers gracefully (SIGTERM now, SIGKILL after the grace period)."""
        self._stops += 1
        if self._stops == 1:
            self._log(f"stopping {len(self.live())} worker(s): SIGTERM, SIGKILL after {self.grace:g} s")
        self._stopping.set()
        for proc in self.live():
            self._signal(proc, signal.SIGTERM)

    def live(self) -> list[WorkerProcess]:
        return [p for p in self.procs.values() if p.returncode is None]

    async def run(self) -> int:
        reaper = asyncio.create_task(self._reap_after_stop())
        try:
            async with asyncio.TaskGroup() as group:
                for name in self.names:
                    group.create_task(self._keep(name))
        finally:
            reaper.cancel()
            for proc in self.live():  # only if run() itself was cancelled: leave nothing behind
                self._kill(proc)
        if not self.stopping:
            self._log("every worker exited 0")
        return 0

    async def _keep(self, name: str) -> None:
        """Run worker ``name`` until it exits 0 or the supervisor stops."""
        policy = self.policies[name]
        while not self.stopping:
            try:
                proc = await self._spawn(name)
            except OSError as exc:  # the interpreter could not be started: a crash like any other
                self._log(f"worker {name} could not be started: {exc}")
                code, pid = 127, None
            else:
                self.procs[name] = proc
                policy.started(self._clock())
                self._log(f"worker {name} started (pid {proc.pid})")
                if self.stopping:  # stop() came while it was being spawned
                    self._signal(proc, signal.SIGTERM)
                code, pid = await proc.wait(), proc.pid
            which = f"worker {name}" + (f" (pid {pid})" if pid is not None else "")
            if self.stopping:
                self._log(f"{which} {describe_exit(code)}")
                return
            delay = policy.exited(code, self._clock())
            if delay is None:
                self._log(f"{which} {describe_exit(code)}; not restarted")
                return
            self._log(f"{which} {describe_exit(code)}; restarting in {delay:g} s "
                      f"(failure {policy.failures} in a row, restart {policy.restarts})")
            await self._sleep_unless_stopped(delay)

    async def _sleep_unless_stopped(self, delay: float) -> None:
        nap = asyncio.ensure_future(self._sleep(delay))
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({nap, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            nap.cancel()
            stop.cancel()

    async def _reap_after_stop(self) -> None:
        await self._stopping.wait()
        await self._sleep(self.grace)
        for proc in self.live():
            self._log(f"worker pid {proc.pid} still running {self.grace:g} s after SIGTERM: SIGKILL")
            self._kill(proc)

    def _signal(self, proc: WorkerProcess, sig: int) -> None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:  # it exited in the meantime
            pass

    def _kill(self, proc: WorkerProcess) -> None:
        try:
            proc.kill()
        except ProcessLookupError:
            pass


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the worker gets SIGTERM when the supervisor dies (even by SIGKILL), so that a
    restarted supervisor never runs beside an orphan holding the same node id."""
    import ctypes

    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the supervisor died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


class SubprocessSpawner:
    """Start a worker as ``argv_for(name)`` in an asyncio subprocess: stdin from /dev/null,
    stdout and stderr shared with the supervisor, in a process group of its own (a Ctrl-C
    in a terminal reaches the supervisor only, which stops the workers once)."""

    def __init__(self, argv_for: Callable[[str], Sequence[str]], *, env: dict[str, str] | None = None) -> None:
        self.argv_for = argv_for
        self.env = env

    async def __call__(self, name: str) -> WorkerProcess:
        argv = list(self.argv_for(name))
        linux = sys.platform.startswith("linux")
        return await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, env=self.env, process_group=0,
            preexec_fn=_die_with_parent if linux else None,
        )
