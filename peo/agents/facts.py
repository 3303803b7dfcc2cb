"""Long-term facts for code: :class:`Facts`, what an agent's ``recall``, ``remember`` and
``forget`` control tools do, for durable functions and handlers.

The facts belong to an *identity* (``Context.identity``), not to one object: every object of
that identity reads and writes the same facts (the ``facts`` table, :mod:`peo.store.facts`).
Reading or writing them is I/O, so in a durable function call these inside ``run.step`` to
have the answer recorded (a re-run then returns the recorded answer, and does not write
again)::

    @app.function("note")
    async def note(run: peo.Run, **goal):
        facts = Facts(run.step_now.store, run.step_now.context.identity)
        await run.step(facts.remember, "customer.plan", "enterprise", name="remember")
        found = await run.step(facts.recall_data, "plan", name="recall")
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING, Any

from ..errors import UsageError

if TYPE_CHECKING:  # not at import: the store is I/O, and importing peo loads the agent loop
    from ..store.facts import Fact

__all__ = ["MAX_KEY_CHARS", "MAX_VALUE_CHARS", "Facts", "fact_data"]

MAX_KEY_CHARS = 200
MAX_VALUE_CHARS = 4000


def fact_data(fact: Fact) -> dict[str, Any]:
    """A fact as plain data (what a step records and the model is shown)."""
    return {"key": fact.key, "value": fact.value, "version": fact.version}


def _key(key: Any) -> str:
    if not isinstance(key, str) or not key.strip():
        raise UsageError("a fact's key must be a non-empty string")
    if len(key) > MAX_KEY_CHARS:
        raise UsageError(f"a fact's key must be at most {MAX_KEY_CHARS} characters")
    return key.strip()


def _value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, default=str)
    if len(text) > MAX_VALUE_CHARS:
        raise UsageError(f"a fact's value must be at most {MAX_VALUE_CHARS} characters")
    return text


class Facts:
    """The long-term facts of one identity in one store. ``object_id`` and ``seq`` (the
    writer, recorded with each version) are optional."""

    def __init__(self, store: Any, identity: str, *, object_id: str | None = None, seq: int | None = None):
        if store is None:
            raise UsageError("long-term facts need a store: run this on a node (the step's store), or pass one")
        if not isinstance(identity, str) or not identity:
            raise UsageError("long-term facts belong to an identity: a non-empty string")
        self.store, self.identity, self.object_id, self.seq = store, identity, object_id, seq

    async def remember(self, key: str, value: Any) -> int:
        """Make ``value`` (a string, or JSON data stored as its JSON) the latest version of
        ``key``; its version (unchanged if the latest already held that value)."""
        version: int = await self.store.put_fact(self.identity, _key(key), _value(value), object_id=self.object_id,
                                                 seq=self.seq, now=time.time_ns())
        return version

    async def forget(self, key: str) -> int | None:
        """Tombstone ``key`` (its history is kept): the tombstone's version, None if the key
        had no live version."""
        version: int | None = await self.store.forget_fact(self.identity, _key(key), object_id=self.object_id,
                                                           seq=self.seq, now=time.time_ns())
        return version

    async def recall(self, query: str, *, limit: int = 5) -> list[Fact]:
        """The live facts best matching any word of ``query`` (full-text search)."""
        found: list[Fact] = await self.store.recall(self.identity, str(query), limit=limit)
        return found

    async def recall_data(self, query: str, *, limit: int = 5) -> list[dict[str, Any]]:
        """:meth:`recall` as plain data (a step's result must be)."""
        return [fact_data(f) for f in await self.recall(query, limit=limit)]

    async def all(self) -> list[Fact]:
        """Every live fact of the identity (the latest version of each key), by key."""
        found: list[Fact] = await self.store.facts(self.identity)
        return found

    async def history(self, key: str) -> list[Fact]:
        """Every version of ``key``, tombstones included, oldest first."""
        found: list[Fact] = await self.store.fact_history(self.identity, _key(key))
        return found
