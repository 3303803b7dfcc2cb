"""The node: a stateless worker that claims due objects, runs cycles, appends signed
entries and releases them. It is assembled from parts, one job each:

- :mod:`.claims`: lease due objects while there is room, nap until more may be due;
- :mod:`.leases`: what the node holds, renewing it, taking back its own after a restart;
- :mod:`.worker`: the cycles of one held object, and carrying out each Decision;
- :mod:`.commit`: the group commit that makes many workers' entries durable together.

Structure (asyncio, structured concurrency): one TaskGroup holds the claim loop, the lease
renewer, one worker task per held object and the group-commit flusher.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from ..app import App
from ..config import NodeSettings, resolve_policy
from ..core.crypto import Keyring, SigningKey
from ..core.policy import Policy
from ..errors import UsageError
from ..healing.memory import budget_for
from ..keys import keyring_for, load_key
from ..store import Claim, Store, open_store
from .claims import Claimer
from .commit import GroupCommit
from .leases import Leases, open_with_retry
from .worker import Worker

__all__ = ["Node"]


class Node:
    """A stateless worker node.

    ``Node(store, app)`` with the store's URL (or an open :class:`~peo.store.Store`) and
    the :class:`~peo.App` whose handlers it runs. Settings come from ``settings`` (a
    :class:`~peo.config.NodeSettings`, e.g. from a profile) and keyword options on top:
    ``node_id``, ``concurrency``, ``lease_ttl`` (seconds: a crashed node's objects are taken
    over after it; leases are renewed every third of it), ``poll_interval``,
    ``idle_horizon``. ``policy`` is a :class:`~peo.Policy` or a policy file, ``key`` a
    signing key or key file, ``clock`` the node's only clock (ns since the epoch; tests
    pass a fake one). ``memory_limit`` (a setting: ``"400MiB"``, ``"auto"``, ``"off"``) turns
    on the memory budget (:mod:`peo.healing.memory`).

    Run it with ``await node.run()`` (until :meth:`stop`), ``await node.run_until_idle()``,
    or in the background with ``async with node: ...`` (stopped gracefully on exit).
    """

    def __init__(
        self,
        store: str | Store,
        app: App,
        settings: NodeSettings | None = None,
        *,
        policy: Policy | str | os.PathLike[str] | None = None,
        key: SigningKey | str | os.PathLike[str] | None = None,
        keyring: Keyring | None = None,
        clock: Callable[[], int] = time.time_ns,
        memory_probe: Callable[[], int] | None = None,
        **options: Any,
    ):
        if not isinstance(app, App):
            raise UsageError("Node needs a peo.App with the handlers it can run")
        self.settings = (settings if settings is not None else NodeSettings()).with_options(**options)
        # The memory budget (peo.healing.memory): None without a limit, and then free.
        # ``memory_probe`` replaces the measurement (bytes in use; tests pass a fake one).
        self.memory = budget_for(self.settings.memory_limit, app, probe=memory_probe)
        self.store = open_store(store) if isinstance(store, str) else store
        self._owns_store = isinstance(store, str)
        self.app = app
        self.node_id = self.settings.node_id or f"{socket.gethostname()}-{os.getpid()}"
        #: What this node says about itself when it registers (peo nodes): e.g. that it runs
        #: on the known-good copy of a configuration file that went bad (peo.healing.config).
        self.notes: str | None = None
        self.lease_ns = int(self.settings.lease_ttl * 1e9)
        self.idle_horizon_ns = int(self.settings.idle_horizon * 1e9)
        self.policy = resolve_policy(policy if policy is not None else self.settings.policy)
        self.key = load_key(key if key is not None else self.settings.key_file, "node", self.store.url)
        self.keyring = keyring if keyring is not None else keyring_for(self.policy, self.key, store=self.store.url)
        self.clock = clock
        self.stats = {"steps": 0, "claims": 0, "quarantined": 0, "conflicts": 0, "commits": 0}
        if self.memory is not None:
            self.memory.count_into(self.stats)  # "sheds"
        # After run_until_idle(): why objects were left behind (this node cannot serve them) -> how many.
        self.left_behind: dict[str, int] = {}
        self.leases = Leases(self.store, self.node_id, self.lease_ns, clock)
        self.leases.patience = self._patience
        self.commits = GroupCommit(self.store, clock, self.stats)
        self.worker = Worker(self)
        self.claimer = Claimer(self)
        self._stopping = asyncio.Event()
        self._workers: set[asyncio.Task[None]] = set()
        self._background: asyncio.Task[None] | None = None

    # Read-only views kept for callers of the first API.
    @property
    def concurrency(self) -> int:
        return self.settings.concurrency

    @property
    def lease_ttl(self) -> float:
        return self.settings.lease_ttl

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    # -- lifecycle ----------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; finish the steps in flight; release leases; return from run()."""
        self._stopping.set()
        self.claimer.wake.set()

    async def shutdown(self) -> None:
        """Stop and wait until the node has released everything (see :meth:`stop`)."""
        self.stop()
        task, self._background = self._background, None
        if task is not None:
            await task

    async def __aenter__(self) -> Node:
        """Serve in the background until the ``async with`` block ends."""
        self._background = asyncio.ensure_future(self.run())
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def run(self) -> None:
        """Run until :meth:`stop` is called."""
        await self._run(until_idle=False)

    async def run_until_idle(self) -> None:
        """Run until no object is runnable, leased, or due within ``idle_horizon``."""
        await self._run(until_idle=True)

    async def step_once(self, claim: Claim) -> None:
        """Run exactly one cycle of an object this node has just claimed (``claim`` from
        ``store.claim(...)``): at most one entry is appended, then the object is released.
        For test rigs that interleave nodes cycle by cycle."""
        self.leases.hold(claim)
        async with self._parts():
            await self.worker.work(claim, once=True)

    def wake_claimer(self) -> None:
        """A worker freed room: let the claim loop look again at once."""
        self.claimer.wake.set()

    def track(self, worker: asyncio.Task[None]) -> None:
        self._workers.add(worker)
        worker.add_done_callback(self._workers.discard)

    def _parts(self) -> _Parts:
        return _Parts(self)

    async def _run(self, *, until_idle: bool) -> None:
        self._stopping.clear()
        if self._owns_store and not await open_with_retry(self.store, self._stopping):
            return  # stopped before the store could be opened
        try:
            await self.leases.drop_own()
            async with self._parts() as tg:
                renewer = tg.create_task(self.leases.renew_forever())
                alerts = self._alert_sender(tg)
                sampler = tg.create_task(self.memory.monitor()) if self.memory is not None else None
                try:
                    await self.claimer.run(tg, until_idle=until_idle)
                    self._stopping.set()
                    # Keep renewing while the steps in flight finish: a lease must not
                    # lapse during a graceful stop.
                    if self._workers:
                        await asyncio.wait(set(self._workers))
                finally:
                    self._stopping.set()
                    renewer.cancel()
                    if alerts is not None:
                        alerts.cancel()
                    if sampler is not None:
                        sampler.cancel()
        finally:
            agents = sys.modules.get("peo.agents.model")  # the agent layer's model clients, if it ran
            if agents is not None:
                await agents.close_clients()
            if self._owns_store:
                await self.store.aclose()


    def _patience(self, handler: str) -> int | None:
        """How long an object of ``handler`` may be held without progress (ns): its step's
        timeout (the handler's, else the policy's), plus two lease periods."""
        registered = self.app.handlers.get(handler)
        timeout = (registered.timeout if registered is not None else None) or self.policy.handler_timeout
        return int(timeout * 1e9) + 2 * self.lease_ns

    def _alert_sender(self, tg: asyncio.TaskGroup) -> asyncio.Task[None] | None:
        """Deliver (and retry) the alerts of quarantines, if this node has sinks."""
        if not (self.settings.alert_command or self.settings.alert_webhook):
            return None
        from ..healing.alerts import AlertSender

        sender = AlertSender(node_id=self.node_id)
        return tg.create_task(sender.run_forever(self.store, self.settings, clock=self.clock))


class _Parts:
    """The node's TaskGroup, group-commit flusher and thread pool for one run (or one
    :meth:`Node.step_once`); sync handlers run in the pool."""

    def __init__(self, node: Node):
        self.node = node
        self.tg = asyncio.TaskGroup()
        self.flusher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> asyncio.TaskGroup:
        node = self.node
        node.worker.pool = concurrent.futures.ThreadPoolExecutor(
            node.settings.concurrency, thread_name_prefix="peo-handler")
        await self.tg.__aenter__()
        node.commits.reset()
        self.flusher = self.tg.create_task(node.commits.run())
        return self.tg

    async def __aexit__(self, *exc: Any) -> None:
        node = self.node
        try:
            # Every worker has finished by now (or is being cancelled): nothing is queued.
            if self.flusher is not None:
                self.flusher.cancel()
            await self.tg.__aexit__(*exc)
        finally:
            if node.worker.pool is not None:
                node.worker.pool.shutdown(wait=False, cancel_futures=True)
                node.worker.pool = None
