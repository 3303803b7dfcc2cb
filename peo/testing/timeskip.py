"""A time-skipping test environment: run durable functions (and plain handlers) in-process
on a temporary SQLite store with a fake clock, so that a three-day ``run.sleep`` or signal
timeout takes no wall time, and a node can be made to crash after any entry.

::

    async with FunctionEnv(app) as env:
        oid = await env.submit("research", topic="bees")
        await env.run_until_waiting(oid)     # serve until it is dormant (or has ended)
        env.advance(days=3)                  # the fake clock jumps: timers are due now
        await env.signal(oid, "approve", True)
        env.crash_after(seq=4)               # the node dies right after committing entry 4
        result = await env.result(oid)       # serve (skipping time) until it ends

How it is built: one :class:`~peo.Node` at a time serves the store with ``clock=env.clock``
(a :class:`~peo.testing.FakeClock`) and ``idle_horizon=0``, so ``run_until_idle`` returns as
soon as nothing is due at the fake now; :meth:`FunctionEnv.result` then moves the clock to
the store's next due time and serves again. A crash is simulated by cutting the node off
from the store right after the commit (every later call of its connection fails, as for a
dead process: no lease is released), dropping the function coroutines it kept alive, and
stopping it; the next serve starts a new node under a new id, moves the clock past the dead
node's leases, and that node takes the objects over, replaying each function from its
memory. See docs/testing.md.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import attrs

from .. import keys
from ..app import App
from ..client import Client
from ..client.reads import summary
from ..core.crypto import Keyring
from ..core.model import LIVE_STATUSES, ObjectSummary, Status
from ..core.policy import Policy
from ..errors import StoreError, UsageError
from ..node import Node
from ..store import AppendItem, Store, open_store
from .clock import FakeClock

__all__ = ["Crash", "FunctionEnv", "StuckError"]

#: Seconds in a day, for ``timeout=3 * DAY`` and the like.
DAY = 86_400.0


class StuckError(AssertionError):
    """The object cannot end however far the clock moves (it waits for a signal nobody
    sends, or no handler of the app serves it), or it did not end within the allowed number
    of clock jumps. An AssertionError: in a test this is a failed expectation."""


@attrs.frozen
class Crash:
    """A crash that :meth:`FunctionEnv.crash_after` injected: ``node_id`` died right after
    committing entry ``seq`` of ``object_id``."""

    node_id: str
    object_id: str
    seq: int


@attrs.define
class _Fault:
    seq: int
    object_id: str | None

    def matches(self, item: AppendItem) -> bool:
        return item.entry.seq == self.seq and self.object_id in (None, item.object_id)


@attrs.define(eq=False)
class _Process:
    """One node "process": the node, its own store connection (as a separate process would
    have), the task serving it, and whether it died."""

    node: Node
    store: Store
    task: asyncio.Future[None] | None = None
    dead: bool = False


class FunctionEnv:
    """Run ``app``'s durable functions and handlers on a temporary store with a fake clock.

    ``FunctionEnv(app, policy=None, concurrency=32, lease_ttl=1.5, store=None)``; use it as
    ``async with FunctionEnv(app) as env: ...`` (the store is created on entry and deleted on
    exit). ``store=URL`` runs on that store instead (say, a PostgreSQL schema of its own), which
    the env leaves in place.
    ``env.clock`` is the fake clock every node of the env uses, ``env.client`` a
    :class:`~peo.Client` of the same store (to read memories: ``await
    env.client.get(oid)``), ``env.crashes`` the crashes injected so far.

    Nothing runs in the background: objects move only while :meth:`serve`,
    :meth:`run_until_waiting` or :meth:`result` is awaited, so a test sees each state in turn.
    """

    def __init__(self, app: App, *, policy: Policy | None = None, concurrency: int = 32,
                 lease_ttl: float = 1.5, store: str | None = None) -> None:
        if not isinstance(app, App):
            raise UsageError("FunctionEnv needs a peo.App")
        if store is not None and not isinstance(store, str):
            raise UsageError("FunctionEnv's store= must be a store URL (sqlite:///... or postgresql://...)")
        self._given_url = store
        self.app = app
        self.clock = FakeClock()
        self.policy = policy
        self.concurrency = concurrency
        self.lease_ttl = lease_ttl
        self.crashes: list[Crash] = []
        self._faults: list[_Fault] = []
        # In-memory keys trusted by one keyring: an env never reads or writes the user's
        # key directory ($PEO_HOME), and every node's entries verify with the client.
        self.keyring = Keyring()
        self._client_key = keys.generate()
        self.keyring.trust(self._client_key.public_key)
        self._directory: str | None = None
        self.url = ""  # the temporary store's URL, once entered
        self._store: Store | None = None
        self._client: Client | None = None
        self._process: _Process | None = None
        self._nodes = 0

    # -- lifecycle ------------------------------------------------------------------------

    async def __aenter__(self) -> FunctionEnv:
        if self._given_url is not None:
            self.url = self._given_url
        else:
            self._directory = tempfile.mkdtemp(prefix="peo-env-")
            # durability=normal: the env simulates crashed processes, not lost power: no fsync.
            self.url = f"sqlite:///{os.path.join(self._directory, 'peo.db')}?durability=normal"
        try:
            self._store = open_store(self.url)
            await self._store.open()
            self._client = Client(self._store, key=self._client_key, keyring=self.keyring, policy=self.policy)
        except BaseException:
            await self.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the node, close every connection and delete the store."""
        process, self._process = self._process, None
        try:
            if process is not None:
                await self._stop(process)
            self._forget_live_runs()
            if self._store is not None:
                await self._store.aclose()
        finally:
            self._store = self._client = None
            if self._directory is not None:
                shutil.rmtree(self._directory, ignore_errors=True)
                self._directory = None

    @property
    def client(self) -> Client:
        if self._client is None:
            raise _outside()
        return self._client

    @property
    def store(self) -> Store:
        """The env's own connection to its store (the nodes have theirs)."""
        return self.client.store

    @property
    def node(self) -> Node | None:
        """The node that serves next (None before the first serve and after a crash)."""
        return self._process.node if self._process is not None and not self._process.dead else None

    # -- what a test does -------------------------------------------------------------------

    async def submit(self, handler: str, /, **goal: Any) -> str:
        """Create an object for ``handler`` with ``goal``; returns its id (nothing runs yet).
        For submit options (labels, priority, retry...), use ``env.client.submit``."""
        return await self.client.submit(handler, goal)

    async def signal(self, object_id: str, name: str, payload: Any = None) -> None:
        """Send a signal, signed by the env's client (it is delivered on the next serve)."""
        await self.client.signal(object_id, name, payload)

    def advance(self, seconds: float = 0.0, *, minutes: float = 0.0, hours: float = 0.0, days: float = 0.0) -> None:
        """Move the fake clock forward: sleeps and signal timeouts that fall due in that time
        fire on the next serve. Call it between serves: a jump while a node holds objects
        would expire its leases before its (wall-clock) renewal comes round."""
        self.clock.advance(seconds + 60 * minutes + 3600 * hours + DAY * days)

    def crash_after(self, seq: int, *, object_id: str | None = None) -> None:
        """Arm a crash: the node that commits entry ``seq`` of any object (or of ``object_id``)
        dies right after the commit. No worker of it learns of the commit or starts another
        step, and nothing it does later reaches the store (it releases nothing: its leases
        stay behind). Steps of other objects in flight at that instant are lost, as in a
        real crash: they run again on the next node. The serve goes on with a new node
        that takes the objects over once the dead node's leases expire (the fake clock is
        moved past them). Fires once; each call arms one more. ``env.crashes`` lists those
        that fired: assert on it, or a crash armed past the end of a function goes
        unnoticed."""
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 1:
            raise UsageError("crash_after needs the seq of an entry a node writes (1 or more; "
                             "entry 0 is written by submit)")
        self._faults.append(_Fault(seq, object_id))

    async def serve(self) -> None:
        """Serve until nothing is due at the fake clock's now (the clock is not moved, except
        past a crashed node's leases). Runs every object of the store, children included."""
        while True:
            process = await self._live_process()
            process.task = asyncio.ensure_future(process.node.run_until_idle())
            try:
                await asyncio.wait({process.task})
            except BaseException:
                # The test was cancelled (an asyncio.wait_for guard): stop the node with it
                # (gracefully: it releases what it holds); the next serve starts a new one.
                await self._stop(process)
                process.dead = True
                self._forget_live_runs()
                raise
            if process.dead:  # crash_after fired: a new node takes over
                await self._stop(process)
                continue
            process.task.result()  # the node's own error, if any
            return

    async def run_until_waiting(self, object_id: str) -> ObjectSummary:
        """Serve until nothing is due now, and return the object's summary: it is then dormant
        (sleeping, waiting for a signal or for its children) or has ended. The clock does
        not move: call :meth:`advance` to let a sleep or a timeout pass."""
        await self.serve()
        info = await self.summary(object_id)
        if info.status in (Status.RUNNABLE, Status.RUNNING):
            raise StuckError(f"object {object_id} is runnable but was not served: {self._why_not_served()}")
        return info

    async def result(self, object_id: str, *, max_jumps: int = 1000) -> Any:
        """Serve until the object ends and return its result; raise
        :class:`~peo.ObjectFailedError` if it ended without one (failed, cancelled, cut off).

        Whenever nothing is due now, the fake clock jumps to the next due time in the store
        (a sleep's end, a timeout, a retry's backoff), at most ``max_jumps`` times. Raises
        :class:`StuckError` if the object can never end on its own (it waits for a signal
        without a timeout: send it first) or did not end within ``max_jumps`` jumps."""
        for _ in range(max_jumps + 1):
            await self.serve()
            info = await self.summary(object_id)
            if info.status.is_final:
                # Ended: the client reads the result from the signed terminate entry at once.
                return await self.client.wait(object_id, timeout=30)
            due = await self.store.next_due()
            if due is None:
                raise StuckError(f"object {object_id} cannot end: {_waits_for(info)}, and no timer is set")
            if due <= self.clock():
                # Due now yet not served: the node cannot serve it, or it fell due after the
                # node went idle (then the next serve runs it).
                why = self._why_not_served()
                if why:
                    raise StuckError(f"object {object_id} cannot end: {_waits_for(info)}; "
                                     f"something due is not served: {why}")
                continue
            self.clock.advance_to(due)
        raise StuckError(f"object {object_id} did not end within {max_jumps} jumps of the clock "
                         f"({_waits_for(await self.summary(object_id))})")

    async def summary(self, object_id: str) -> ObjectSummary:
        """The object's head as of the fake now (status, what it waits for, due time)."""
        return summary(await self.store.get(object_id), self.clock())

    # -- nodes ------------------------------------------------------------------------------

    async def _live_process(self) -> _Process:
        """The node that serves now: the current one, or a new one (first serve, after a crash)."""
        if self._process is not None and not self._process.dead:
            return self._process
        if self._store is None:
            raise _outside()
        if self._process is not None:
            await self._outlive_leases()
        self._nodes += 1
        key = keys.generate()
        self.keyring.trust(key.public_key)  # shared with the client and every node of the env
        store = open_store(self.url)
        await store.open()
        process = _Process(Node(store, self.app, node_id=f"env-node-{self._nodes}", concurrency=self.concurrency,
                                lease_ttl=self.lease_ttl, idle_horizon=0, policy=self.policy, key=key,
                                keyring=self.keyring, clock=self.clock), store)
        self._mortal(process)
        self._process = process
        return process

    def _mortal(self, process: _Process) -> None:
        """Route every call of the node's store connection through a check: once the node is
        dead, nothing it does reaches the store (as for a killed process, whose lease stays
        behind); after each append, an armed crash may fire."""
        store = process.store
        for name, _ in inspect.getmembers(type(store), inspect.iscoroutinefunction):
            if name.startswith("_") or name in ("open", "aclose"):
                continue
            setattr(store, name, self._guarded(process, name, getattr(store, name)))

    def _guarded(self, process: _Process, name: str,
                 call: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def guarded(*args: Any, **kwargs: Any) -> Any:
            if process.dead:
                raise StoreError(f"node {process.node.node_id} crashed (FunctionEnv.crash_after): "
                                 "nothing it does reaches the store", retryable=False)
            result = await call(*args, **kwargs)
            if name == "append" and self._faults:
                await self._maybe_crash(process, args[0], result)
            return result

        return guarded

    async def _maybe_crash(self, process: _Process, items: Sequence[AppendItem],
                           results: Sequence[int | None]) -> None:
        """If an armed crash matches an entry that was just committed, the node dies here."""
        for item, committed in zip(items, results, strict=True):
            fault = next((f for f in self._faults if committed is not None and f.matches(item)), None)
            if fault is None:
                continue
            self._faults.remove(fault)
            self.crashes.append(Crash(process.node.node_id, item.object_id, item.entry.seq))
            # Dead from this instant: the flag is set before any other task of the node
            # runs, so no worker learns of this commit, none runs another step, and every
            # later store call (the graceful release included) fails.
            process.dead = True
            self._forget_live_runs()
            assert process.task is not None
            process.task.cancel()
            # Never returns: this (flusher) task is cancelled with the node.
            await asyncio.get_running_loop().create_future()

    def _forget_live_runs(self) -> None:
        """A node's process is gone: so are the function coroutines it kept alive between
        steps. They live with the app's handlers (``handler.live_runs``), which every node
        of this process shares, so without this the next node would go on with the dead
        node's coroutine instead of replaying the function from its memory, as a node
        taking over from a crashed process must."""
        for handler in self.app.handlers.values():
            live_runs = getattr(handler.fn, "live_runs", None)
            if live_runs is not None:
                live_runs.clear()

    async def _stop(self, process: _Process) -> None:
        task = process.task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task})
        if task is not None and task.done() and not task.cancelled():
            task.exception()  # seen: a dead node's error is not reported as unretrieved
        await process.store.aclose()

    async def _outlive_leases(self) -> None:
        """Before a new node starts after another died: move the clock past the leases the
        dead node left behind (no node runs now, so every live lease is one of those), as a
        fleet waits for them to expire before taking the objects over."""
        now = self.clock()
        until = [row.lease_until for row in await self.store.list()
                 if row.status in LIVE_STATUSES and row.lease_until is not None and row.lease_until >= now]
        if until:
            self.clock.advance_to(max(until) + 1)

    def _why_not_served(self) -> str:
        node = self.node
        left = node.left_behind if node is not None else {}
        return "; ".join(f"{n} object(s): {why}" for why, n in left.items())


def _outside() -> UsageError:
    return UsageError("use the FunctionEnv in `async with FunctionEnv(app) as env:`")


def _waits_for(info: ObjectSummary) -> str:
    if info.waiting_for is not None:
        return f"it waits for the signal {info.waiting_for!r} (send it with env.signal)"
    if info.waits_for_children:
        return "it waits for its children"
    return f"it is {info.status}"
