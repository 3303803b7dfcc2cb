"""The node: claims due objects, runs cycles, appends signed entries, releases.

Structure (asyncio, structured concurrency): one TaskGroup holds the claim loop, the lease
renewer and one worker task per held object. A worker keeps its object while it stays
runnable, so a chain of steps costs one claim, not one per step. Appends from all
workers that are ready at the same moment go to the store in one transaction (group
commit); a worker learns that its step is durable only when that transaction commits.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence
from typing import Any

import attrs

from .. import faultpoints
from .._local import keyring_for, load_key
from ..app import App
from ..core.codec import packb, unpackb
from ..core.crypto import Keyring, SigningKey
from ..core.cycle import RUN_HANDLER, Child, Decision, Release, conclude, plan
from ..core.memory import Fold, genesis, instantiation_outcome, make_entry, verify_chain
from ..core.model import Action, Delegate, Entry, Signal, Status, Step
from ..core.policy import Policy
from ..errors import CodecError, IntegrityError, LeaseLostError, StoreError, UsageError
from ..ids import new_id
from ..store import AppendItem, NewObject, Store, make_store
from ..store._base import Claim

__all__ = ["Node"]

log = logging.getLogger("peo.node")

# A batch of claims whose memories hold at most this many entries in all is loaded at once.
_PREFETCH_ROWS = 4096


def _retrieve(task: asyncio.Future[Any]) -> None:
    """Mark a helper task's outcome as seen (no 'exception was never retrieved' noise)."""
    if not task.cancelled():
        task.exception()


@attrs.define
class _Held:
    claim: Claim
    token: int
    lost: bool = False
    released: bool = False


class Node:
    """A stateless worker. See the module docstring for how it runs.

    ``lease_ttl`` (seconds) bounds how long a crashed node's objects stay stuck before
    another node takes them over; the node renews its leases every third of it.
    """

    def __init__(
        self,
        store: str | Store,
        app: App,
        *,
        node_id: str | None = None,
        concurrency: int = 32,
        lease_ttl: float = 1.5,
        policy: Policy | str | os.PathLike[str] | None = None,
        key: SigningKey | str | os.PathLike[str] | None = None,
        keyring: Keyring | None = None,
        poll_interval: float = 0.05,
        idle_horizon: float = 5.0,
        clock: Callable[[], int] = time.time_ns,
    ):
        if not isinstance(app, App):
            raise UsageError("Node needs a peo.App with the handlers it can run")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise UsageError("concurrency must be a positive integer")
        if not lease_ttl > 0 or not poll_interval > 0:
            raise UsageError("lease_ttl and poll_interval must be positive")
        self.store = make_store(store) if isinstance(store, str) else store
        self._owns_store = isinstance(store, str)
        self.app = app
        self.node_id = node_id or f"{socket.gethostname()}-{os.getpid()}"
        self.concurrency = concurrency
        self.lease_ns = int(lease_ttl * 1e9)
        self.lease_ttl = lease_ttl
        if policy is None:
            self.policy = Policy.default()
        elif isinstance(policy, Policy):
            self.policy = policy
        else:
            self.policy = Policy.load(policy)
        self.key = load_key(key, "node")
        self.keyring = keyring if keyring is not None else keyring_for(self.policy, self.key)
        self.poll_interval = poll_interval
        # The node's only clock (ns since the epoch): injectable so tests can move time.
        self.clock = clock
        self.idle_horizon_ns = int(idle_horizon * 1e9)
        self._held: dict[str, _Held] = {}
        self._workers: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._pending: list[tuple[AppendItem, asyncio.Future[int | None]]] = []
        self._flushing = False
        self._flush_task: asyncio.Future[None] | None = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.stats = {"steps": 0, "claims": 0, "quarantined": 0, "conflicts": 0, "commits": 0}

    # -- lifecycle ----------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming; finish the steps in flight; release leases; return from run()."""
        self._stopping.set()
        self._wake.set()

    async def run(self) -> None:
        """Run until :meth:`stop` is called."""
        await self._run(until_idle=False)

    async def run_until_idle(self) -> None:
        """Run until no object is runnable, leased, or due within ``idle_horizon``."""
        await self._run(until_idle=True)

    async def _run(self, *, until_idle: bool) -> None:
        self._stopping.clear()
        if self._owns_store and not await self._open_store():
            return  # stopped before the store could be opened
        self._pool = concurrent.futures.ThreadPoolExecutor(self.concurrency, thread_name_prefix="peo-handler")
        try:
            await self._drop_own_leases()
            async with asyncio.TaskGroup() as tg:
                renewer = tg.create_task(self._renew_loop())
                try:
                    await self._claim_loop(tg, until_idle=until_idle)
                    self._stopping.set()
                    # Keep renewing while the steps in flight finish: a lease must not
                    # lapse during a graceful stop.
                    if self._workers:
                        await asyncio.wait(set(self._workers))
                finally:
                    self._stopping.set()
                    renewer.cancel()
        finally:
            self._pool.shutdown(wait=False, cancel_futures=True)
            if self._owns_store:
                await self.store.aclose()

    async def _open_store(self) -> bool:
        """Open the store, retrying while the failure may pass (a database locked by another
        process, a server not up yet); False if stop() came first. Anything else raises."""
        delay = 0.05
        while True:
            try:
                await self.store.open()
                return True
            except StoreError as exc:
                if not exc.retryable:
                    raise
                log.warning("store_open_failed error=%s retry_in=%.2fs", exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                return False
            delay = min(delay * 2, 2.0)

    async def _drop_own_leases(self) -> None:
        """Leases still held under our node id are from a previous run of this node (it
        crashed): drop them so their objects resume at once instead of after the TTL.
        Only an optimisation: if the store fails here, the leases simply expire."""
        for attempt in range(3):
            try:
                await self.store.drop_leases(self.node_id)
                return
            except StoreError as exc:
                log.warning("drop_leases_failed attempt=%d error=%s", attempt + 1, exc)
                await asyncio.sleep(0.05 * 2**attempt)

    async def _claim_loop(self, tg: asyncio.TaskGroup, *, until_idle: bool) -> None:
        handlers = sorted(h for h in self.app.handlers if self.policy.accepts_handler(h))
        scopes = self.policy.scope_filter()
        idle_checks = 0
        while not self._stopping.is_set():
            now = self.clock()
            room = self.concurrency - len(self._held)
            claims: list[Claim] = []
            if room > 0 and handlers:
                try:
                    claims = await self.store.claim(
                        self.node_id, now=now, lease_ns=self.lease_ns, limit=room, handlers=handlers,
                        scopes=scopes, exclude=tuple(self._held),
                    )
                except StoreError as exc:
                    log.warning("claim_failed error=%s", exc)
                    await asyncio.sleep(self.poll_interval)
                    continue
            for claim in claims:  # held (and so renewed) from here on
                self._held[claim.id] = _Held(claim, claim.token)
                self.stats["claims"] += 1
            memories: dict[str, list[tuple[bytes, bytes]]] = {}
            if claims and sum(c.seq + 1 for c in claims) <= _PREFETCH_ROWS:
                # Short memories of a batch of claims are read in one query, not one each.
                with contextlib.suppress(StoreError):  # then each worker reads its own
                    memories = await self.store.entries_of([c.id for c in claims])
            for claim in claims:
                worker = tg.create_task(self._work(claim, memories.get(claim.id)))
                self._workers.add(worker)
                worker.add_done_callback(self._workers.discard)
            if claims:
                idle_checks = 0
                continue
            if until_idle and not self._held:
                try:
                    busy = await self.store.busy(now=now + self.idle_horizon_ns)
                except StoreError:
                    busy = True
                if not busy:
                    idle_checks += 1
                    if idle_checks >= 2:  # twice in a row: nothing committed in between
                        return
                    continue
            idle_checks = 0
            await self._nap(now)

    async def _nap(self, now: int) -> None:
        """Sleep until a worker frees room, the next object is due, or a poll interval."""
        delay = self.poll_interval
        with contextlib.suppress(StoreError):
            due = await self.store.next_due()
            if due is not None and due > now:
                delay = min(delay, max((due - now) / 1e9, 0.001))
        self._wake.clear()
        waiter = asyncio.ensure_future(self.store.wait_for_work(delay))
        woken = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({waiter, woken}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # Cancel the helpers without awaiting them: awaiting here could swallow a
            # cancellation of *this* task (e.g. a second SIGTERM) and the node would not stop.
            for t in (waiter, woken):
                t.cancel()
                t.add_done_callback(_retrieve)

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.lease_ttl / 3)
            if not self._held:
                continue
            if faultpoints.ARMED:
                faultpoints.hit("node.before_renew")
            leases = {oid: h.token for oid, h in self._held.items() if not h.released}
            try:
                lost = await self.store.renew(self.node_id, leases, until=self.clock() + self.lease_ns)
            except StoreError as exc:
                log.warning("renew_failed error=%s", exc)
                continue
            for oid in lost:
                h = self._held.get(oid)
                if h is not None:
                    h.lost = True

    # -- one held object ----------------------------------------------------------------

    async def _work(self, claim: Claim, rows: list[tuple[bytes, bytes]] | None = None) -> None:
        held = self._held[claim.id]
        try:
            await self._serve(claim, held, rows)
        except LeaseLostError:
            held.released = True  # not ours any more: nothing to release
        except StoreError as exc:
            log.warning("object_abandoned id=%s error=%s", claim.id, exc)
        except Exception:
            log.exception("node_bug id=%s", claim.id)
        finally:
            if not held.released:
                with contextlib.suppress(Exception):
                    now = self.clock()
                    await asyncio.shield(self.store.release(claim.id, held.token, due_at=now, now=now))
            self._held.pop(claim.id, None)
            self._wake.set()

    async def _serve(self, claim: Claim, held: _Held, rows: list[tuple[bytes, bytes]] | None) -> None:
        oid = claim.id
        try:
            if rows is None:
                rows = await self.store.entries(oid)
            _, memory = verify_chain(oid, rows, self.keyring)
            if not memory or memory[-1].seq != claim.seq or memory[-1].hash != claim.head:
                last = memory[-1].seq if memory else -1
                raise IntegrityError(
                    f"the head (seq {claim.seq}) does not match the memory (which ends at seq {last})",
                    object_id=oid, seq=claim.seq,
                )
            fold = Fold.of(memory)
        except (IntegrityError, CodecError) as exc:
            log.error("object_quarantined id=%s reason=%s", oid, exc)
            self.stats["quarantined"] += 1
            await self.store.quarantine(oid, f"verification failed: {exc}", now=self.clock())
            held.released = True
            return
        refusal = self.policy.accepts(fold.intent, fold.context)
        if refusal is not None:
            log.info("object_refused id=%s reason=%s", oid, refusal)
            # Put it back for a node whose policy accepts it; not due at once, or this node
            # would claim it again straight away.
            later = self.clock() + 10 * self.lease_ns
            await self.store.release(oid, held.token, due_at=later, now=self.clock())
            held.released = True
            return
        inbox = claim.inbox
        while True:
            if held.lost:
                raise LeaseLostError(f"lease on {oid} lost")
            signals: Sequence[Signal] = await self.store.inbox(oid) if inbox else ()
            children_done = False
            if fold.status is Status.DORMANT and (fold.wait or {}).get("children"):
                kids = await self.store.list(parent=oid)
                children_done = all(k.status in ("terminated", "quarantined") for k in kids)
            now = self.clock()
            decided = plan(fold, self.policy, now=now, signals=signals, children_done=children_done)
            if isinstance(decided, Release):
                await self.store.release(oid, held.token, due_at=decided.due_at, now=now)
                held.released = True
                return
            if decided is RUN_HANDLER:
                decision = await self._step(fold, memory, signals)
            else:
                assert isinstance(decided, Decision)
                decision = decided
            if held.lost:
                raise LeaseLostError(f"lease on {oid} lost")
            try:
                entry, result = await self._append(oid, held, fold, decision)
            except CodecError as exc:
                # The proposal passed the policy but its entry as a whole would break the
                # record limits (e.g. a state and a result each just under the limit):
                # record a failed step instead, which is small.
                decision = conclude(fold, self.policy, exc, now=self.clock(), latency_ns=0, signals=signals)
                entry, result = await self._append(oid, held, fold, decision)
            if result is None:
                self.stats["conflicts"] += 1
                held.released = True
                return
            fold.apply(entry)
            memory.append(entry)
            self.stats["steps"] += 1
            inbox = result
            if decision.status is not Status.RUNNABLE:
                held.released = True
                return
            if self._stopping.is_set():
                await self.store.release(oid, held.token, due_at=self.clock(), now=self.clock())
                held.released = True
                return

    async def _step(self, fold: Fold, memory: list[Entry], signals: Sequence[Signal]) -> Decision:
        handler = self.app.handlers[fold.intent.handler]
        children: dict[str, Any] = {}
        if fold.children:
            for row in await self.store.list(parent=fold.object_id):
                if row.status == "terminated" and row.result is not None:
                    try:
                        children[row.id] = unpackb(row.result)
                    except CodecError:
                        children[row.id] = None
                elif row.status == "terminated":
                    children[row.id] = None
        step = Step(
            object_id=fold.object_id,
            seq=fold.seq + 1,
            intent=fold.intent,
            context=fold.context,
            state=fold.state_view(),
            memory=memory,
            signals=(*fold.pending_signals, *signals),
            children=children,
            attempt=fold.consecutive_failures + 1,
            cannot_do=frozenset(fold.cannot_do),
        )
        timeout = handler.timeout or self.policy.handler_timeout
        started = time.perf_counter_ns()
        proposal: object
        try:
            # asyncio.timeout, not wait_for: no extra task per step on the hot path.
            async with asyncio.timeout(timeout):
                if handler.is_async:
                    proposal = await handler.fn(step)
                else:
                    proposal = await asyncio.get_running_loop().run_in_executor(self._pool, handler.fn, step)
        except Exception as exc:  # a handler's failure is data for the cycle, not a crash
            proposal = exc
        latency = time.perf_counter_ns() - started
        if faultpoints.ARMED:
            faultpoints.hit("node.after_handler")
        child_ids = [new_id() for _ in proposal.children] if isinstance(proposal, Delegate) else []
        return conclude(fold, self.policy, proposal, now=self.clock(), latency_ns=latency,
                        signals=signals, child_ids=child_ids)

    async def _append(self, oid: str, held: _Held, fold: Fold, d: Decision) -> tuple[Entry, int | None]:
        now = self.clock()
        entry = make_entry(
            self.key, seq=fold.seq + 1, prev=fold.hash, timestamp=now, origin_node=self.node_id,
            policy_ref=self.policy.ref, action=d.action, outcome=d.outcome, trace_id=oid,
        )
        if faultpoints.ARMED:
            faultpoints.hit("node.after_sign")
        children = tuple(self._child(c, now) for c in d.children)
        result = None
        if d.action is Action.TERMINATE:
            result = packb(d.outcome.get("result"))
        item = AppendItem(
            object_id=oid, token=held.token, entry=entry, status=str(d.status),
            due_at=now if d.status is Status.RUNNABLE else d.due_at, wait_signal=d.wait_signal,
            wait_children=d.wait_children, consumed=d.consumed, children=children, result=result,
            reason=d.outcome.get("reason") if d.action is Action.TERMINATE else None,
            release=d.status is not Status.RUNNABLE, parent=fold.context.parent,
        )
        return entry, await self._commit(item)

    def _child(self, child: Child, now: int) -> NewObject:
        entry0 = make_entry(
            self.key, seq=0, prev=genesis(child.id), timestamp=now, origin_node=self.node_id,
            policy_ref=self.policy.ref, action=Action.INSTANTIATE,
            outcome=instantiation_outcome(child.id, child.intent, child.context), trace_id=child.id,
        )
        return NewObject(
            id=child.id, handler=child.intent.handler, scope=child.context.trust_scope,
            identity=child.context.identity, priority=child.context.priority, parent=child.context.parent,
            entry=entry0, due_at=now,
        )

    # -- group commit -------------------------------------------------------------------

    async def _commit(self, item: AppendItem) -> int | None:
        """Queue ``item`` for the next group commit and wait until it is durable.

        If the store fails with an unknown outcome, re-read the entry at that seq: if it
        is ours (same hash) the commit happened; if there is none, try again; if another
        entry is there, we lost the object.
        """
        for attempt in range(8):
            fut: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
            self._pending.append((item, fut))
            if not self._flushing:
                self._flushing = True
                asyncio.get_running_loop().call_soon(self._start_flush)
            try:
                return await fut
            except StoreError as exc:
                if isinstance(exc, LeaseLostError):
                    raise
                await asyncio.sleep(min(0.05 * 2**attempt, 1.0))
                try:
                    stored = await self.store.entry_hash(item.object_id, item.entry.seq)
                except StoreError:
                    continue
                if stored == item.entry.hash:
                    return 1  # ours committed; re-read the inbox to be safe
                if stored is not None:
                    return None
        raise StoreError(f"could not append to {item.object_id} after repeated store failures")

    def _start_flush(self) -> None:
        self._flush_task = asyncio.ensure_future(self._flush())

    async def _flush(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    results = await self.store.append([i for i, _ in batch], now=self.clock())
                    self.stats["commits"] += 1
                except BaseException as exc:
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(exc if isinstance(exc, StoreError) else StoreError(str(exc)))
                    if not isinstance(exc, Exception):
                        raise
                    continue
                for (_, fut), res in zip(batch, results, strict=True):
                    if not fut.done():
                        fut.set_result(res)
        finally:
            self._flushing = False
