"""The store wakes a dormant object exactly when the core says it should.

The wake rules live in :mod:`peo.core.wake`: the core applies them to an object it holds
(:func:`~peo.core.wake.trigger`, :func:`~peo.core.wake.cancel_requested`), and each store
renders them into the SQL of the transactions that write a head or deliver a signal. This
test builds random small worlds through the store's own API (a parent that goes dormant
waiting for a time, a signal and/or its children; signals, awaited or not, and children
that end or are quarantined, before and after the parent goes to sleep) and, after every
step from the parent's dormancy on, checks the store's due time against the core's
verdict on what has happened so far, at that moment (and at the end, later), on every
backend (see tests/conftest.py).

One difference is by design: a child's end wakes a parent waiting for children even if a
sibling is still live (``child_end_wakes``); the parent's node then checks and goes back to
sleep with :meth:`Store.release`. The test takes that step too, and then the verdicts must
agree exactly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Literal

import attrs
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from test_contract import LEASE, T0, head, new_object, next_entry

from peo.core.head import Head
from peo.core.model import CANCEL_SIGNAL, Action, Status
from peo.core.wake import Wake, cancel_requested, children_done, trigger
from peo.ids import new_id
from peo.store import AppendItem, Claim, NewObject, Store, open_store

AWAITED = "go"
NOW = T0 + 1_000  # the last verdict is taken then; every event happens before
FUTURE = NOW + 10**12

Fate = Literal["runnable", "dormant", "terminated", "quarantined"]


@attrs.frozen
class Signal:
    name: str


@attrs.frozen
class ChildFate:
    child: int
    fate: Fate


Event = Signal | ChildFate


@attrs.frozen
class World:
    wake: Wake  # what the parent waits for
    fates: tuple[Fate, ...]  # each child's status in the end
    before: tuple[Event, ...]  # while the parent runs, before it goes dormant
    after: tuple[Event, ...]  # once it is dormant
    release_in_append: bool  # the dormant append drops the lease (else: release() at the end)
    spawn_in_append: bool  # the dormant append creates the children (a Delegate that waits)


@st.composite
def worlds(draw: st.DrawFn) -> World:
    wake = Wake(
        # A time that comes during the run, at the end, or never.
        until=draw(st.sampled_from([None, FUTURE, NOW + 1, NOW, T0 + 3, T0 + 6, T0 + 9])),
        signal=draw(st.sampled_from([None, AWAITED])),
        children=draw(st.booleans()),
    )
    fates: list[Fate] = draw(st.lists(st.sampled_from(["runnable", "dormant", "terminated", "quarantined"]),
                                      max_size=3))
    names = draw(st.lists(st.sampled_from([AWAITED, "other", CANCEL_SIGNAL]), max_size=3))
    events: list[Event] = [ChildFate(i, f) for i, f in enumerate(fates) if f != "runnable"]
    events += [Signal(n) for n in names]
    events = draw(st.permutations(events))
    split = draw(st.integers(0, len(events)))
    before, after = events[:split], events[split:]
    spawn = draw(st.booleans())
    if spawn:  # children that do not exist yet cannot end before the parent sleeps
        after = [e for e in before if isinstance(e, ChildFate)] + after
        before = [e for e in before if not isinstance(e, ChildFate)]
    return World(wake, tuple(fates), tuple(before), tuple(after), draw(st.booleans()), spawn)


class Rig:
    """One world in the store: the parent, its children, a clock that moves by 1 ns, and
    what the core knows of it so far."""

    def __init__(self, store: Store, world: World):
        self.store = store
        self.world = world
        self.handler = f"w{new_id()}"  # claims see this world's objects only
        self.parent = new_object(handler=self.handler, due_at=T0)
        self.kids = [new_object(handler=self.handler, parent=self.parent.id, due_at=T0) for _ in world.fates]
        self.t = T0
        self.names: list[str] = []  # signals delivered so far
        self.statuses = [Status.RUNNABLE for _ in world.fates]
        self.asleep = False
        self.woken_early = False  # a child ended while the parent slept: due even if a sibling is live

    def core_due(self, now: int) -> bool:
        """The core's verdict at ``now`` on what has happened so far."""
        finished = children_done(self.statuses)
        return trigger(self.world.wake, now=now, signal_names=self.names, children_finished=finished) is not None or (
            cancel_requested(self.names)
        )

    async def store_due(self, now: int) -> bool:
        row = await self.store.get(self.parent.id)
        assert row.status is Status.DORMANT
        return row.due_at is not None and row.due_at <= now

    async def check(self, step: str, now: int | None = None) -> None:
        """The store agrees with the core at ``now`` (default: this moment), but for an
        early wake by a child's end."""
        now = self.t if now is None else now
        due, core = await self.store_due(now), self.core_due(now)
        if due and not core:
            assert self.woken_early, f"after {step}: the store woke an object the core would leave asleep"
        assert due or not core, f"after {step}: the store sleeps through a wake-up"
        if not due:
            assert (await self.store.get(self.parent.id)).due_at == self.world.wake.until, f"after {step}"

    def tick(self) -> int:
        self.t += 1
        assert self.t < NOW
        return self.t

    async def claim(self, obj: NewObject, *, now: int) -> Claim | None:
        others = [o.id for o in (self.parent, *self.kids) if o.id != obj.id]
        claims = await self.store.claim("rig", now=now, lease_ns=LEASE, limit=1, handlers=[self.handler],
                                        scopes=None, exclude=others)
        return claims[0] if claims else None

    async def write(self, obj: NewObject, claim: Claim, after: Head, action: Action, *, release: bool,
                    parent: str | None = None, children: tuple[NewObject, ...] = ()) -> None:
        """Append ``obj``'s entry 1 (every object here writes one entry after entry 0)."""
        item = AppendItem(obj.id, claim.token, next_entry(obj.entry, action), after, release=release, parent=parent,
                          children=children)
        assert await self.store.append([item], now=self.tick()) != [None]

    async def apply(self, event: Event) -> None:
        if isinstance(event, Signal):
            await self.store.signal(self.parent.id, event.name, None, now=self.tick())
            self.names.append(event.name)
            return
        kid = self.kids[event.child]
        if event.fate == "quarantined":
            await self.store.quarantine(kid.id, "rig", now=self.tick())
        else:
            claim = await self.claim(kid, now=self.tick())
            assert claim is not None, "a runnable child was not claimable"
            if event.fate == "terminated":
                await self.write(kid, claim, head("terminated", None, reason="done"), Action.TERMINATE,
                                 parent=self.parent.id, release=True)
            else:
                await self.write(kid, claim, head("dormant", None, wait_signal="never"), Action.DORMANCY,
                                 release=True)
        self.statuses[event.child] = Status(event.fate)
        if self.asleep and self.statuses[event.child].is_final and self.world.wake.children:
            self.woken_early = True

    async def run(self) -> None:
        """Build the world, checking the verdicts from the parent's dormancy on; at the end
        the parent holds no lease."""
        w = self.world
        await self.store.create([self.parent] if w.spawn_in_append else [self.parent, *self.kids])
        claim = await self.claim(self.parent, now=self.tick())
        assert claim is not None
        for event in w.before:
            await self.apply(event)
        dormant = Head(Status.DORMANT, w.wake.until, w.wake)
        await self.write(self.parent, claim, dormant, Action.DELEGATE if w.spawn_in_append else Action.DORMANCY,
                         release=w.release_in_append, children=tuple(self.kids) if w.spawn_in_append else ())
        self.asleep = True
        await self.check("the dormant append")
        for event in w.after:
            await self.apply(event)
            await self.check(repr(event))
        if not w.release_in_append:
            await self.store.release(self.parent.id, claim.token, due_at=w.wake.until, now=self.tick())
            self.woken_early = False  # the release decided afresh
            await self.check("the release")


@pytest.fixture
async def store(store_url: str) -> AsyncIterator[Store]:
    async with open_store(store_url) as s:
        yield s


def pinned(wake: Wake, fates: tuple[Fate, ...] = (), before: tuple[Event, ...] = (), after: tuple[Event, ...] = (),
           *, release_in_append: bool = True, spawn_in_append: bool = False) -> World:
    return World(wake, fates, before, after, release_in_append, spawn_in_append)


ENDED = (ChildFate(0, "terminated"), ChildFate(1, "quarantined"))


# One store for all the examples of a run (each world has objects and a handler of its own).
@settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)
@given(world=worlds())
# Each rule at least once, whatever the random worlds hit. The dormant append decides:
@example(world=pinned(Wake(signal=AWAITED), before=(Signal("other"), Signal(AWAITED))))
@example(world=pinned(Wake(until=FUTURE), before=(Signal(CANCEL_SIGNAL),)))
@example(world=pinned(Wake(children=True), ("terminated", "quarantined"), before=ENDED))
@example(world=pinned(Wake(children=True, until=T0 + 9), ("terminated", "dormant"),
                      before=(ChildFate(0, "terminated"), ChildFate(1, "dormant"))))
# A signal, a child's end, or time decides while it sleeps:
@example(world=pinned(Wake(signal=AWAITED, until=FUTURE), after=(Signal("other"), Signal(AWAITED))))
@example(world=pinned(Wake(), after=(Signal("other"), Signal(CANCEL_SIGNAL))))
@example(world=pinned(Wake(children=True), ("terminated", "quarantined"), after=ENDED, spawn_in_append=True))
@example(world=pinned(Wake(signal=AWAITED, until=T0 + 3), after=(Signal("other"),)))
# The release decides:
@example(world=pinned(Wake(signal=AWAITED, until=FUTURE), before=(Signal(AWAITED),), release_in_append=False))
@example(world=pinned(Wake(children=True), ("quarantined",), before=(ChildFate(0, "quarantined"),),
                      release_in_append=False))
@example(world=pinned(Wake(signal=AWAITED, until=FUTURE), after=(Signal("other"),), release_in_append=False))
# Woken early by a child's end (a sibling is live), then put back to sleep by a release:
@example(world=pinned(Wake(children=True, until=FUTURE), ("terminated", "runnable"), after=ENDED[:1]))
@example(world=pinned(Wake(children=True), ("quarantined", "dormant"), after=(ChildFate(0, "quarantined"),),
                      release_in_append=False))
async def test_the_store_wakes_a_dormant_object_exactly_when_the_core_says(store: Store, world: World) -> None:
    rig = Rig(store, world)
    await rig.run()
    core = rig.core_due(NOW)
    if await rig.store_due(NOW) and not core:
        # Woken early by a child's end (a sibling is still live): its node looks, finds no
        # trigger, and goes back to sleep until its time trigger.
        claim = await rig.claim(rig.parent, now=NOW)
        assert claim is not None
        await store.release(rig.parent.id, claim.token, due_at=world.wake.until, now=NOW)
        rig.woken_early = False
    await rig.check("the end", NOW)
    assert await rig.store_due(NOW) == core
    # The verdict is what claims see.
    assert (await rig.claim(rig.parent, now=NOW) is not None) == core
