"""The worker: one held object, cycle after cycle, until it is no longer runnable here.

For each cycle: verify (once, on claim), :func:`~peo.core.cycle.plan`, run the handler if
the plan says so and :func:`~peo.core.cycle.conclude` its proposal, then carry out the
Decision in one place (:meth:`Worker.append`): sign the entry, fold it, derive the head
(:func:`~peo.core.head.head_of`), turn the effects into the store's AppendItem and commit.
A worker keeps its object while it stays runnable, so a chain of steps costs one claim.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from .. import faultpoints
from ..core.cycle import RUN_HANDLER, Child, Consume, Decision, Release, Spawn, conclude, plan
from ..core.head import head_of
from ..core.memory import Fold, genesis, instantiation_outcome, make_entry, verify_chain
from ..core.model import LIVE_STATUSES, Action, Delegate, Entry, Signal, Status, Step
from ..errors import CodecError, IntegrityError, LeaseLostError, StoreError
from ..healing.isolation import run_isolated
from ..healing.tiers import Healer
from ..ids import new_id
from ..store import AppendItem, Claim, NewObject
from ..tracebacks import traceback_without
from .intake import Intake
from .leases import Held
from .lineage import Lineage

if TYPE_CHECKING:
    from .node import Node

__all__ = ["Worker"]

log = logging.getLogger("peo.node")

# Frames left out of a handler's traceback: the node calling it, and the event loop or the
# thread pool in between (a handler's own frames, even in peo/demo.py, stay).
_PLUMBING = tuple(
    str(Path(str(m.__file__)).resolve().parent) + os.sep
    for m in (asyncio, concurrent.futures, sys.modules[__package__])
)


def handler_traceback(exc: BaseException) -> str:
    """The traceback of a handler's exception, without the frames of peo itself (the
    node's own call into the handler says nothing about the handler's bug)."""
    return traceback_without(exc, _PLUMBING)


#: The error class of a failed step the node recorded for its own unexpected error.
NODE_ERROR = "NodeError"


class NodeError(Exception):
    """The node could not serve an object (recorded as a failed step of class node_error)."""


@attrs.define
class _Serving:
    """What a worker has loaded so far (for the unexpected-error rule)."""

    fold: Fold | None = None


def row_disagreement(claim: Claim, fold: Fold) -> str | None:
    """What the claimed row says that its verified chain does not, if anything: the row is
    a cache anyone with store access can edit, and a node runs what the chain says or
    nothing (a finished object's row set back to runnable, another handler or scope)."""
    if fold.status not in LIVE_STATUSES:
        return f"the row says the object is live but its chain ended at seq {fold.seq} ({fold.status})"
    c, ctx = claim, fold.context
    for what, row, chain in (("handler", c.handler, fold.intent.handler), ("trust scope", c.scope, ctx.trust_scope),
                             ("priority", c.priority, ctx.priority), ("parent", c.parent, ctx.parent),
                             ("status", c.status, fold.status)):
        if row != chain:
            return f"the row's {what} {row!r} is not the chain's {chain!r}"
    return None


class Worker:
    """Runs the cycles of the objects a node holds (one call of :meth:`work` per claim)."""

    def __init__(self, node: Node):
        self.node = node
        self.intake = Intake(node)
        self.lineage = Lineage(node)
        self.healer = Healer(node, self)
        self.pool: concurrent.futures.ThreadPoolExecutor | None = None  # for sync handlers

    async def work(self, claim: Claim, rows: list[tuple[bytes, bytes]] | None = None, *, once: bool = False) -> None:
        """Serve ``claim`` until the object leaves this node (``once``: after one entry)."""
        node = self.node
        held = node.leases.held[claim.id]
        serving = _Serving()
        try:
            await self._serve(claim, held, rows, once, serving)
        except LeaseLostError:
            held.released = True  # not ours any more: nothing to release
        except StoreError as exc:
            log.warning("object_abandoned id=%s error=%s", claim.id, exc)
        except Exception as exc:
            await self._unexpected(claim, held, serving.fold, exc)
        finally:
            if not held.released:
                with contextlib.suppress(Exception):
                    now = node.clock()
                    await asyncio.shield(node.store.release(claim.id, held.token, due_at=now, now=now))
            node.leases.drop(claim.id)
            node.wake_claimer()

    async def _unexpected(self, claim: Claim, held: Held, fold: Fold | None, exc: Exception) -> None:
        """One rule for an exception the node did not expect while serving an object: the
        first time, a failed step is recorded (it backs off and counts toward the failure
        threshold, like any failed step); when it repeats, or cannot be recorded, the object
        is quarantined with the reason. Never released as due at once: that would loop."""
        node, oid = self.node, claim.id
        log.error("node_error id=%s error=%s: %s", oid, type(exc).__name__, exc,
                  exc_info=(type(exc), exc, exc.__traceback__))
        node.stats["node_errors"] = node.stats.get("node_errors", 0) + 1
        what = f"{type(exc).__name__}: {exc}"[:500]
        if fold is not None and fold.status is Status.RUNNABLE and not held.released \
                and not (fold.consecutive_failures and fold.last_error_class == NODE_ERROR) and not held.lost:
            try:
                failure = NodeError(f"the node could not serve this object: {what}")
                decision = conclude(fold, node.policy, failure, now=node.clock(), latency_ns=0)
                if await self.append(held, fold, [], decision, ()) is not None:
                    held.released = True  # the failure entry released it (dormant, backing off)
                    return
            except Exception as again:
                what = f"{what}; recording it failed: {type(again).__name__}: {again}"[:500]
        try:
            await node.store.quarantine(oid, f"node error: {what}", now=node.clock())
            node.stats["quarantined"] += 1
            log.error("object_quarantined id=%s reason=node error: %s", oid, what)
            held.released = True
        except Exception as failed:
            log.warning("quarantine_failed id=%s error=%s", oid, failed)
            with contextlib.suppress(Exception):
                later = node.clock() + 10 * node.lease_ns
                await node.store.release(oid, held.token, due_at=later, now=node.clock())
                held.released = True

    async def _load(self, claim: Claim, held: Held,
                    rows: list[tuple[bytes, bytes]] | None) -> tuple[list[Entry], Fold] | None:
        """The verified memory of ``claim`` and its fold, or None once it was quarantined."""
        node, oid = self.node, claim.id
        try:
            if rows is None:
                rows = await node.store.entries(oid)
            _, memory = verify_chain(oid, rows, node.keyring)
            if not memory or memory[-1].seq != claim.seq or memory[-1].hash != claim.head:
                last = memory[-1].seq if memory else -1
                raise IntegrityError(
                    f"the head (seq {claim.seq}) does not match the memory (which ends at seq {last})",
                    object_id=oid, seq=claim.seq,
                )
            fold = Fold.of(memory)  # an entry 0 whose intent or context does not structure fails here
            disagreement = row_disagreement(claim, fold)
            if disagreement:
                raise IntegrityError(disagreement, object_id=oid, seq=fold.seq)
        except (IntegrityError, CodecError) as exc:
            log.error("object_quarantined id=%s reason=%s", oid, exc)
            node.stats["quarantined"] += 1
            await node.store.quarantine(oid, f"verification failed: {exc}", now=node.clock())
            held.released = True
            return None
        return memory, fold

    async def _serve(self, claim: Claim, held: Held, rows: list[tuple[bytes, bytes]] | None, once: bool,
                     serving: _Serving) -> None:
        node, oid = self.node, claim.id
        loaded = await self._load(claim, held, rows)
        if loaded is None:
            return
        memory, fold = loaded
        if fold.deleted:
            # An operator deleted it (peo rm): its row is never due, so only a row that
            # disagrees (edited, or imported without its deletion) gets here. Let go without
            # acting, and not due at once (the store keeps a row marked deleted never due).
            log.info("object_deleted id=%s", oid)
            await node.store.release(oid, held.token, due_at=node.clock() + 10 * node.lease_ns, now=node.clock())
            held.released = True
            return
        serving.fold = fold
        refusal = node.policy.accepts(fold.intent, fold.context, signer=memory[0].signer)
        if refusal is not None:
            log.info("object_refused id=%s reason=%s", oid, refusal)
            # Put it back for a node whose policy accepts it; not due at once, or this node
            # would claim it again straight away.
            later = node.clock() + 10 * node.lease_ns
            await node.store.release(oid, held.token, due_at=later, now=node.clock())
            held.released = True
            return
        # Tiers 3 and 4 (peo.healing.tiers): a restore, or a quarantine, first.
        if self.healer.needed(claim, fold) and not await self.healer.recover(claim, held, fold, memory):
            return
        inbox = claim.inbox
        while True:
            if held.lost:
                raise LeaseLostError(f"lease on {oid} lost")
            signals: Sequence[Signal] = await self.intake.signals(fold) if inbox else ()
            finished = False
            if fold.status is Status.DORMANT and fold.wake.children:
                finished = await self.lineage.children_done(fold)
            now = node.clock()
            decided = plan(fold, node.policy, now=now, signals=signals, children_done=finished)
            if decided is RUN_HANDLER and node.memory is not None and node.memory.chosen(oid):
                decided = node.memory.shed(oid, now)  # memory budget: shed at this step boundary
            if isinstance(decided, Release):
                await node.store.release(oid, held.token, due_at=decided.due_at, now=now)
                held.released = True
                return
            if decided is RUN_HANDLER and fold.class_streak and self.healer.failing(fold):
                # Tier 3 or 4 for a step that keeps failing with one error class.
                if not await self.healer.recover(claim, held, fold, memory, failing=True):
                    return
                continue
            decision = await self.step(fold, memory, signals) if decided is RUN_HANDLER else decided
            assert isinstance(decision, Decision)
            if held.lost:
                raise LeaseLostError(f"lease on {oid} lost")
            left = await self.append(held, fold, memory, decision, signals)
            if left is None:
                node.stats["conflicts"] += 1
                held.released = True
                return
            node.stats["steps"] += 1
            inbox = left
            if fold.status is not Status.RUNNABLE:
                held.released = True
                return
            if once or node.stopping:
                await node.store.release(oid, held.token, due_at=node.clock(), now=node.clock())
                held.released = True
                return

    async def step(self, fold: Fold, memory: list[Entry], signals: Sequence[Signal]) -> Decision:
        """Run one handler step and conclude its proposal (or the exception it raised)."""
        node = self.node
        handler = node.app.handlers[fold.intent.handler]
        children, failed_children = await self.lineage.results(fold) if fold.children else ({}, {})
        step = Step(
            object_id=fold.object_id,
            seq=fold.seq + 1,
            intent=fold.intent,
            context=fold.context,
            state=fold.state_view(),
            memory=memory,
            signals=(*fold.pending_signals, *signals),
            children=children,
            failed_children=failed_children,
            attempt=fold.consecutive_failures + 1,
            cannot_do=frozenset(fold.cannot_do),
            first_seq=fold.attempt_seq,
            policy=node.policy,
            store=node.store,
        )
        timeout = handler.timeout or node.policy.handler_timeout
        started = time.perf_counter_ns()
        proposal: object
        tb: str | None = None
        # asyncio.timeout, not wait_for: no extra task per step on the hot path.
        limit = asyncio.timeout(timeout)
        try:
            async with limit:
                if handler.isolation is not None:  # a child process the node can kill
                    limit.reschedule(None)  # run_isolated keeps the time, and kills
                    proposal = await run_isolated(handler.fn, step, timeout=timeout, memory_limit=handler.memory)
                elif handler.is_async:
                    proposal = await handler.fn(step)
                else:
                    proposal = await asyncio.get_running_loop().run_in_executor(self.pool, handler.fn, step)
        except Exception as exc:  # a handler's failure is data for the cycle, not a crash
            if isinstance(exc, TimeoutError) and limit.expired():
                proposal = TimeoutError(f"the handler did not finish within {timeout:g} s")
            else:  # including a TimeoutError of the handler's own (a tool timed out): it says where
                proposal, tb = exc, handler_traceback(exc)
        latency = time.perf_counter_ns() - started
        if faultpoints.ARMED:
            faultpoints.hit("node.after_handler")
        child_ids: list[str] = []
        descendants = None
        if isinstance(proposal, Delegate):
            child_ids = [new_id() for _ in proposal.children]
            # The policy's total of descendants per root object (one indexed count, only
            # when a step delegates).
            descendants = await node.store.count_descendants(fold.context.root or fold.object_id)
        decision = conclude(fold, node.policy, proposal, now=node.clock(), latency_ns=latency,
                            signals=signals, child_ids=child_ids, traceback=tb, retry=handler.retry,
                            descendants=descendants)
        error = decision.outcome.get("error")
        if error is not None:
            # One line per failed step, so that a failing handler shows on the node's stderr.
            log.warning("step_failed id=%s seq=%d handler=%s attempt=%d error=%s: %s then=%s",
                        fold.object_id, fold.seq + 1, fold.intent.handler, step.attempt, error["class"],
                        error["message"][:300], decision.outcome.get("reason") or decision.action)
        return decision

    async def append(self, held: Held, fold: Fold, memory: list[Entry], decision: Decision,
                     signals: Sequence[Signal]) -> int | None:
        """Carry out ``decision``: sign its entry, fold it, commit it with its effects.
        Returns the signals left in the inbox, or None if another writer won the seq."""
        node = self.node
        try:
            entry = self._sign(fold, decision)
        except CodecError as exc:
            # The proposal passed the policy but its entry as a whole would break the
            # record limits (e.g. a state and a result each just under the limit):
            # record a failed step instead, which is small: without the signals, which
            # stay in the inbox for the next attempt (they may be what made it too large).
            if fold.status is not Status.RUNNABLE:
                raise
            decision = conclude(fold, node.policy, exc, now=node.clock(), latency_ns=0)
            entry = self._sign(fold, decision)
        if faultpoints.ARMED:
            faultpoints.hit("node.after_sign")
        parent = fold.context.parent
        # Folded before the commit, so the head comes from the one head function. If the
        # commit does not happen the worker stops serving the object and drops this fold.
        fold.apply(entry)
        now = node.clock()
        consumed: tuple[int, ...] = ()
        children: tuple[NewObject, ...] = ()
        for effect in decision.effects:
            if isinstance(effect, Consume):
                consumed = effect.ids
            elif isinstance(effect, Spawn):
                children = tuple(self._child(c, now) for c in effect.children)
        item = AppendItem(object_id=fold.object_id, token=held.token, entry=entry, head=head_of(fold, now=now),
                          consumed=consumed, children=children, release=fold.status is not Status.RUNNABLE,
                          parent=parent, max_descendants=node.policy.max_descendants if children else None)
        left = await node.commits.commit(item)
        if left is not None:
            memory.append(entry)
            held.progress_at = now  # its lease is renewed while it makes progress (leases.py)
        elif children:
            # Not written: another writer won the seq, or (while this step counted) other
            # delegations filled the tree to the policy's total. Let go at once, so that
            # the step runs again and counts again (fenced: a no-op if the lease is gone).
            with contextlib.suppress(Exception):
                await node.store.release(fold.object_id, held.token, due_at=now, now=node.clock())
        return left

    def _sign(self, fold: Fold, d: Decision) -> Entry:
        node = self.node
        return make_entry(
            node.key, seq=fold.seq + 1, prev=fold.hash, timestamp=node.clock(), origin_node=node.node_id,
            policy_ref=node.policy.ref, action=d.action, outcome=d.outcome, trace_id=fold.object_id,
        )

    def _child(self, child: Child, now: int) -> NewObject:
        node = self.node
        entry0 = make_entry(
            node.key, seq=0, prev=genesis(child.id), timestamp=now, origin_node=node.node_id,
            policy_ref=node.policy.ref, action=Action.INSTANTIATE,
            outcome=instantiation_outcome(child.id, child.intent, child.context), trace_id=child.id,
        )
        return NewObject(
            id=child.id, handler=child.intent.handler, scope=child.context.trust_scope,
            identity=child.context.identity, priority=child.context.priority, parent=child.context.parent,
            entry=entry0, due_at=now, labels=child.context.labels, root=child.context.root,
        )

