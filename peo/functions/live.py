"""Live runs: a durable function's coroutine kept alive while its node holds the object.

Replaying a function from the top on every cycle costs a step in proportion to the steps
before it. While one node keeps serving an object, nothing forces that: the coroutine can
stay suspended inside ``run.step`` while the step's entry is committed, and go on when the
node asks for the next step. A :class:`LiveRun` is that suspended coroutine, and the
handler keeps one per object it serves (:class:`LiveRuns`, bounded).

A live run goes on only if the next step is exactly the one it expects: the seq right after
the entry it proposed, that entry committed as proposed (first attempt, status ok). Anything
else (another node wrote in between, the entry failed, the object slept and woke, a restart)
drops it, and the function is replayed from the top as before, which is always correct. A
run whose operation ends the cycle otherwise (a sleep, a signal wait, children, the return)
ends its coroutine: a dormant function holds no memory on any node.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..core.codec import packb
from ..core.model import Proposal, Step

if TYPE_CHECKING:
    import asyncio

# asyncio is imported where it is used: importing peo (and so its pure core) loads no event
# loop machinery (tests/core/test_purity.py).

__all__ = ["LiveRun", "LiveRuns"]

#: Live runs kept per handler (per node): each holds a suspended coroutine and its frames.
MAX_LIVE = 1024


class LiveRun:
    """One function's coroutine, run as a task, exchanging proposals and steps with the
    handler: the coroutine hands out a proposal and waits for the step after its entry."""

    def __init__(self, start: Callable[[LiveRun], Awaitable[Proposal]]):
        import asyncio

        loop = asyncio.get_running_loop()
        self._proposal: asyncio.Future[Proposal] = loop.create_future()
        self._step: asyncio.Future[Step] | None = None
        self.expected_seq: int | None = None
        self._expected_state = b""  # the packed state update of the entry it proposed
        self.task = asyncio.ensure_future(self._main(start))

    async def _main(self, start: Callable[[LiveRun], Awaitable[Proposal]]) -> None:
        import asyncio

        try:
            proposal = await start(self)  # the last proposal: the function ended its cycles
        except BaseException as exc:  # handed to the handler, which re-raises it
            if not self._proposal.done():
                self._proposal.set_exception(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        if not self._proposal.done():
            self._proposal.set_result(proposal)
        self.expected_seq = None  # finished: nothing to go on with

    async def next_proposal(self) -> Proposal:
        """What the function proposes for the current step (or how it failed)."""
        import asyncio

        try:
            # Awaited directly (no shield: one event-loop turn less per step). If the
            # handler is cancelled, so is this future, and the run with it (below): the
            # run's task is suspended meanwhile, so it never sets a result on it.
            return await self._proposal
        except asyncio.CancelledError:
            self.cancel()  # the handler was cancelled (a timeout): the run cannot go on
            raise

    async def hand_over(self, proposal: Proposal, seq: int) -> Step:
        """From inside the function: propose ``proposal`` for step ``seq`` and wait for the
        next step (after its entry is committed). Cancelled if the run is dropped."""
        import asyncio

        self._step = asyncio.get_running_loop().create_future()
        self.expected_seq = seq + 1
        self._expected_state = packb(proposal.state)
        if self._proposal.done():  # the handler waiting for it was cancelled
            raise asyncio.CancelledError
        self._proposal.set_result(proposal)
        return await self._step

    def expects(self, step: Step) -> bool:
        """Is ``step`` the one this run waits for: right after the entry it proposed, which
        was committed as proposed (a first attempt whose last entry succeeded)?"""
        if self.expected_seq is None or self._step is None or self._step.done() or self.task.done():
            return False
        if step.seq != self.expected_seq or step.attempt != 1 or step.first_seq is not None:
            return False
        last = step.memory[-1] if step.memory else None
        if last is None or last.seq != step.seq - 1 or last.outcome.get("status", "ok") != "ok":
            return False
        # The entry memory holds at that seq must be the one this run proposed, not another
        # node's (this node's commit may have failed, and the object gone on elsewhere): the
        # coroutine holds the step's result, and memory must say the same.
        return packb(last.outcome.get("state")) == self._expected_state

    def resume(self, step: Step) -> None:
        """Go on with ``step`` (:meth:`expects` said yes)."""
        assert self._step is not None
        import asyncio

        self._proposal = asyncio.get_running_loop().create_future()
        self.expected_seq = None
        self._step.set_result(step)

    def cancel(self) -> None:
        self.expected_seq = None
        if not self.task.done():
            self.task.cancel()
        # Nobody will read this run's proposal any more: no "exception never retrieved".
        self._proposal.add_done_callback(_retrieve)


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class LiveRuns:
    """The live runs of one handler on one node, by object id, oldest dropped first."""

    def __init__(self, limit: int = MAX_LIVE):
        self.limit = limit
        self._runs: collections.OrderedDict[str, LiveRun] = collections.OrderedDict()

    def take(self, step: Step) -> LiveRun | None:
        """The run waiting for ``step``, if one is; any other run of the object is dropped."""
        run = self._runs.pop(step.object_id, None)
        if run is None:
            return None
        if run.expects(step):
            return run
        run.cancel()
        return None

    def keep(self, object_id: str, run: LiveRun) -> None:
        if run.expected_seq is None:
            return
        self._runs[object_id] = run
        while len(self._runs) > self.limit:
            _, oldest = self._runs.popitem(last=False)
            oldest.cancel()

    def __len__(self) -> int:
        return len(self._runs)

    def clear(self) -> None:
        for run in self._runs.values():
            with contextlib.suppress(Exception):
                run.cancel()
        self._runs.clear()
