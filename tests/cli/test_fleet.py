"""``peo fleet`` and its supervisor (self-healing tier 1, restart in place).

The restart policy and the supervisor run with a fake clock, a fake sleep and fake worker
processes; the end-to-end tests start ``python -m peo fleet`` on a temporary SQLite store
and read its log. No assertion is on wall time: each deadline only turns a hang into a
failure.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from clirun import run

import peo
from peo.cli.fleet import node_argv
from peo.cli.parser import build_parser
from peo.healing.supervisor import Backoff, RestartPolicy, Supervisor, describe_exit

DEADLINE = 60.0  # seconds; against hangs only

# -- the restart policy, with a fake clock ------------------------------------------------


def test_backoff_doubles_up_to_the_maximum() -> None:
    b = Backoff(initial=0.5, maximum=30.0)
    assert [b.delay(n) for n in range(1, 10)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert b.delay(10_000) == 30.0  # no overflow in a very long loop
    with pytest.raises(ValueError):
        Backoff(initial=5, maximum=1)


def test_a_crash_loop_backs_off_and_a_worker_that_stayed_up_starts_over() -> None:
    policy = RestartPolicy(Backoff(initial=0.5, maximum=4.0, reset_after=60.0))
    now = 0.0
    delays = []
    for _ in range(6):  # crashes a second after each start
        policy.started(now)
        now += 1.0
        delays.append(policy.exited(1, now))
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    policy.started(now)
    now += 59.0  # not quite long enough to count as healthy
    assert policy.exited(-9, now) == 4.0
    policy.started(now)
    now += 60.0  # up for reset_after: this crash is a first one again
    assert policy.exited(-9, now) == 0.5
    assert (policy.failures, policy.restarts) == (1, 8)


def test_a_worker_that_exits_0_is_not_restarted() -> None:
    policy = RestartPolicy()
    policy.started(0.0)
    assert policy.exited(0, 0.1) is None
    assert policy.restarts == 0


def test_exit_statuses_read_as_words() -> None:
    assert describe_exit(-signal.SIGKILL) == "killed by SIGKILL"
    assert describe_exit(3) == "exited with status 3"


# -- the supervisor, with fake processes --------------------------------------------------


class FakeProc:
    """A worker that exits with ``code`` when told to (or on a signal it does not ignore)."""

    pids = iter(range(1000, 100_000))

    def __init__(self, code: int | None = None, *, ignore_term: bool = False) -> None:
        self.pid = next(self.pids)
        self.returncode: int | None = None
        self.signals: list[int] = []
        self.ignore_term = ignore_term
        self._done = asyncio.Event()
        if code is not None:
            self.exit(code)

    def exit(self, code: int) -> None:
        if self.returncode is None:
            self.returncode = code
            self._done.set()

    async def wait(self) -> int:
        await self._done.wait()
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        self.signals.append(sig)
        if not self.ignore_term:
            self.exit(0)

    def kill(self) -> None:
        self.signals.append(signal.SIGKILL)
        self.exit(-signal.SIGKILL)


class Rig:
    """A supervisor with a scripted spawner, a fake clock and a sleep that only records."""

    def __init__(self, script: dict[str, list[Callable[[], FakeProc]]], **kw: float) -> None:
        self.script = script
        self.spawned: dict[str, list[FakeProc]] = {name: [] for name in script}
        self.slept: list[float] = []
        self.lines: list[str] = []
        self.now = 0.0
        self.sup = Supervisor(list(script), self.spawn, backoff=Backoff(initial=0.5, maximum=2.0),
                              clock=lambda: self.now, sleep=self.sleep, log=self.lines.append, **kw)

    async def spawn(self, name: str) -> FakeProc:
        make = self.script[name].pop(0) if self.script[name] else (lambda: FakeProc())
        proc = make()
        self.spawned[name].append(proc)
        return proc

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


async def test_the_supervisor_restarts_crashes_with_backoff_until_a_clean_exit() -> None:
    rig = Rig({"w-1": [lambda: FakeProc(1), lambda: FakeProc(-signal.SIGKILL), lambda: FakeProc(1),
                       lambda: FakeProc(1), lambda: FakeProc(0)],
               "w-2": [lambda: FakeProc(0)]})
    assert await asyncio.wait_for(rig.sup.run(), DEADLINE) == 0
    assert rig.slept == [0.5, 1.0, 2.0, 2.0]
    assert len(rig.spawned["w-1"]) == 5 and len(rig.spawned["w-2"]) == 1
    assert any("killed by SIGKILL; restarting in 1 s" in line for line in rig.lines)
    assert any("w-2" in line and "not restarted" in line for line in rig.lines)


async def test_stop_terminates_the_workers_then_kills_the_ones_that_stay() -> None:
    stubborn = FakeProc(ignore_term=True)
    rig = Rig({"w-1": [lambda: FakeProc()], "w-2": [lambda: stubborn]}, grace=7.0)
    task = asyncio.create_task(rig.sup.run())
    while len(rig.sup.live()) < 2:
        await asyncio.sleep(0)
    rig.sup.stop()
    assert await asyncio.wait_for(task, DEADLINE) == 0
    polite = rig.spawned["w-1"][0]
    assert polite.signals == [signal.SIGTERM] and polite.returncode == 0
    assert stubborn.signals == [signal.SIGTERM, signal.SIGKILL]
    assert rig.slept == [7.0]  # the grace period; nothing was restarted
    assert [len(p) for p in rig.spawned.values()] == [1, 1]


async def test_stop_during_a_backoff_starts_nothing_new() -> None:
    rig = Rig({"w-1": [lambda: FakeProc(1)]})
    gate = asyncio.Event()

    async def slow_sleep(seconds: float) -> None:
        rig.slept.append(seconds)
        await gate.wait()

    rig.sup._sleep = slow_sleep
    task = asyncio.create_task(rig.sup.run())
    while not rig.slept:
        await asyncio.sleep(0)
    rig.sup.stop()
    gate.set()
    assert await asyncio.wait_for(task, DEADLINE) == 0
    assert len(rig.spawned["w-1"]) == 1


# -- the command line ---------------------------------------------------------------------


def test_node_options_pass_through_as_typed_with_one_node_id_per_worker() -> None:
    args = build_parser().parse_args(
        ["--store", "sqlite:///x.db", "fleet", "--workers", "2", "--app", "m:app", "--lease-ttl", "0.50",
         "--until-idle", "--concurrency", "3", "--node-id-prefix", "web"])
    assert node_argv(args, "web-2")[1:] == [
        "-m", "peo", "--store", "sqlite:///x.db", "node", "--app", "m:app", "--concurrency", "3",
        "--lease-ttl", "0.50", "--until-idle", "--node-id", "web-2"]


@pytest.mark.parametrize(("argv", "message"), [
    (["--workers", "0", "--app", "m:app"], "--workers: '0' must be at least 1"),
    (["--workers", "x", "--app", "m:app"], "--workers: 'x' is not an integer"),
    (["--workers", "5000", "--app", "m:app"], "at most 1024 worker processes"),
    (["--app", "m:app"], "the following arguments are required: --workers"),
    (["--workers", "2", "--app", "m:app", "--bogus"], "unrecognized arguments: --bogus"),
    (["--workers", "2", "--app", "m:app", "--lease-ttl", "-1"], "must be a positive number of seconds"),
    (["--workers", "2"], "give --app MODULE:ATTR or --profile FILE"),
    (["--workers", "2", "--app", "m:app", "--node-id-prefix", "a b"], "--node-id-prefix 'a b'"),
    (["--workers", "2", "--app", "m:app", "--initial-backoff", "5", "--max-backoff", "1"],
     "--max-backoff 1 is shorter"),
])
def test_bad_input_is_a_clear_error(capsys: pytest.CaptureFixture[str], argv: list[str], message: str) -> None:
    code, _, err = run(capsys, "fleet", *argv)
    assert code == 2 and message in err and err.startswith("peo: error:"), err


def test_help_explains_the_fleet(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "fleet", "--help")
    assert code == 0
    for word in ("--workers", "--node-id-prefix", "restarted", "SIGTERM", "--app", "--until-idle", "--grace"):
        assert word in out


# -- end to end: python -m peo fleet ------------------------------------------------------

APP = '''
import peo

app = peo.App()


@app.handler("hello")
def hello(step: peo.Step) -> peo.Proposal:
    return peo.Done(f"hello, {step.goal['name']}")
'''

STARTED = re.compile(r"worker (\S+) started \(pid (\d+)\)")
RESTART = re.compile(r"worker (\S+) \(pid (\d+)\) (.+); restarting in ([0-9.]+) s")


def start_fleet(url: str, cwd: Path, *argv: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = cwd / "fleet.err"
    with log.open("wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "peo", "--store", url, "fleet", *argv],
                                cwd=cwd, stdout=subprocess.DEVNULL, stderr=err)
    return proc, log


async def wait_for(predicate: Callable[[], bool], what: str, fleet: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + DEADLINE
    while not predicate():
        if fleet.poll() is not None:
            raise AssertionError(f"the fleet exited ({fleet.returncode}) waiting for {what}:\n{log.read_text()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {DEADLINE:g} s:\n{log.read_text()}")
        await asyncio.sleep(0.05)


def alive(pid: int) -> bool:
    """Running (a zombie left to a PID 1 that does not reap counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True
    return "\nState:\tZ" not in status


def stop(fleet: subprocess.Popen[bytes]) -> None:
    if fleet.poll() is None:
        fleet.kill()
    fleet.wait(timeout=DEADLINE)


async def test_a_killed_worker_is_restarted_and_sigterm_stops_the_fleet_cleanly(
    sqlite_url: str, tmp_path: Path
) -> None:
    (tmp_path / "fleetapp.py").write_text(APP)
    fleet, log = start_fleet(sqlite_url, tmp_path, "--workers", "2", "--app", "fleetapp:app",
                             "--node-id-prefix", "w", "--lease-ttl", "0.5")
    try:
        serving = re.compile(r"peo node (w-\d): serving")
        await wait_for(lambda: len(set(serving.findall(log.read_text()))) == 2, "two serving workers", fleet, log)
        pids = dict(STARTED.findall(log.read_text()))
        victim = int(pids["w-1"])
        os.kill(victim, signal.SIGKILL)
        await wait_for(lambda: len(STARTED.findall(log.read_text())) == 3, "a restart of w-1", fleet, log)
        restarts = RESTART.findall(log.read_text())
        assert restarts == [("w-1", str(victim), "killed by SIGKILL", "0.5")]
        started = STARTED.findall(log.read_text())
        assert started[-1][0] == "w-1" and int(started[-1][1]) != victim
        async with peo.Client(sqlite_url) as client:
            oid = await client.submit("hello", {"name": "fleet"})
            assert await client.wait(oid, timeout=DEADLINE) == "hello, fleet"
        # the restarted w-1 serving too (a SIGTERM before that would simply kill it: nothing is in flight)
        await wait_for(lambda: len(serving.findall(log.read_text())) == 3, "w-1 serving again", fleet, log)
        workers = [int(pid) for _, pid in STARTED.findall(log.read_text())]
        fleet.send_signal(signal.SIGTERM)
        assert fleet.wait(timeout=DEADLINE) == 0, log.read_text()
        assert not [pid for pid in workers if alive(pid)]
        text = log.read_text()
        assert "Traceback" not in text
        assert text.count("exited with status 0") == 2 and "stopping 2 worker(s)" in text
    finally:
        stop(fleet)


async def test_a_worker_that_crashes_at_start_is_restarted_with_growing_delays(
    sqlite_url: str, tmp_path: Path
) -> None:
    (tmp_path / "brokenapp.py").write_text("raise RuntimeError('broken at import')\n")
    fleet, log = start_fleet(sqlite_url, tmp_path, "--workers", "1", "--app", "brokenapp:app",
                             "--node-id-prefix", "b", "--initial-backoff", "0.05", "--max-backoff", "0.2")
    try:
        await wait_for(lambda: len(RESTART.findall(log.read_text())) >= 5, "five restarts", fleet, log)
        restarts = RESTART.findall(log.read_text())[:5]
        assert [float(delay) for *_, delay in restarts] == [0.05, 0.1, 0.2, 0.2, 0.2]
        assert {(name, why) for name, _, why, _ in restarts} == {("b-1", "exited with status 2")}
        assert "importing module 'brokenapp' failed: RuntimeError: broken at import" in log.read_text()
        assert fleet.poll() is None  # the supervisor keeps running
        fleet.send_signal(signal.SIGTERM)
        assert fleet.wait(timeout=DEADLINE) == 0, log.read_text()
        assert "Traceback" not in log.read_text()
    finally:
        stop(fleet)


async def test_until_idle_workers_exit_0_and_so_does_the_fleet(sqlite_url: str, tmp_path: Path) -> None:
    (tmp_path / "fleetapp.py").write_text(APP)
    fleet, log = start_fleet(sqlite_url, tmp_path, "--workers", "2", "--app", "fleetapp:app", "--until-idle")
    try:
        assert fleet.wait(timeout=DEADLINE) == 0, log.read_text()
        text = log.read_text()
        assert text.count("exited with status 0; not restarted") == 2 and "every worker exited 0" in text
    finally:
        stop(fleet)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
async def test_workers_stop_when_the_fleet_itself_is_killed(sqlite_url: str, tmp_path: Path) -> None:
    (tmp_path / "fleetapp.py").write_text(APP)
    fleet, log = start_fleet(sqlite_url, tmp_path, "--workers", "2", "--app", "fleetapp:app", "--node-id-prefix", "o")
    try:
        serving = re.compile(r"peo node (o-\d): serving")
        await wait_for(lambda: len(set(serving.findall(log.read_text()))) == 2, "two serving workers", fleet, log)
        workers = [int(pid) for _, pid in STARTED.findall(log.read_text())]
        fleet.send_signal(signal.SIGKILL)
        assert fleet.wait(timeout=DEADLINE) == -signal.SIGKILL
        deadline = time.monotonic() + DEADLINE
        while [pid for pid in workers if alive(pid)]:  # each got SIGTERM and stops gracefully
            assert time.monotonic() < deadline, f"orphaned workers still running:\n{log.read_text()}"
            await asyncio.sleep(0.05)
        assert log.read_text().count("stopped after") == 2
    finally:
        stop(fleet)
