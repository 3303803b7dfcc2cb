"""W3b: what an object's history length costs, before signed checkpoints exist (issue 16).

For objects with 10, 1,000 and 100,000 entries (built as a node would sign them and stored
with ``Store.import_object``), measures:

* **claim and wake**: a node claims the object and runs one cycle of it (``Node.step_once``:
  read the memory, verify every entry, fold it, run the handler, append one entry), the
  median of ``--repeat`` cycles;
* **restore**: ``Client.restore`` of the object to the middle of its history (an
  operator-signed entry; the chain is verified before).

Today a claim verifies and folds the whole chain, so its cost grows with the history: the
target of issue 16 (within 1.2x from 10 to 100,000 entries) needs the checkpoints of its
item 6, not built yet. This measures where it stands.

    python bench/w3b_history.py                     # 10, 1,000, 100,000 entries, SQLite
    python bench/w3b_history.py --sizes 10,1000 --repeat 5
    python bench/w3b_history.py --smoke             # 10 and 200 entries, one cycle each (CI)
    python bench/w3b_history.py --store postgresql://postgres@127.0.0.1:5432/test
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import peo
from peo.core.head import head_of
from peo.core.memory import Fold, genesis, instantiation_outcome, make_entry
from peo.core.model import Action, Context, Entry, Intent
from peo.ids import new_id
from peo.store import NewObject
from peo.testing.cycle import claim_one

HANDLER = "tick"


def app() -> peo.App:
    ticks = peo.App()

    @ticks.handler(HANDLER)
    def tick(step: peo.Step) -> peo.Proposal:
        return peo.Continue(state={"i": step.state.get("i", 0) + 1})

    return ticks


def chain(key: peo.SigningKey, oid: str, n: int, now: int) -> list[Entry]:
    """An object of ``n`` entries: entry 0 and ``n - 1`` steps that each update the state."""
    first = make_entry(key, seq=0, prev=genesis(oid), timestamp=now, origin_node="bench", policy_ref="bench",
                       action=Action.INSTANTIATE,
                       outcome=instantiation_outcome(oid, Intent(HANDLER, {}), Context()), trace_id=oid)
    entries = [first]
    for seq in range(1, n):
        entries.append(make_entry(key, seq=seq, prev=entries[-1].hash, timestamp=now + seq, origin_node="bench",
                                  policy_ref="bench", action=Action.EXECUTE,
                                  outcome={"status": "ok", "state": {"i": seq, f"k{seq % 64}": seq}},
                                  trace_id=oid))
    return entries


async def measure(url: str, n: int, repeat: int, earlier: list[str]) -> dict[str, float]:
    """Build an object of ``n`` entries and time its cycles; ``earlier`` are the ids of the
    objects built before it (runnable too: left out of the claims)."""
    async with peo.Client(url) as client:
        oid, now = new_id(), time.time_ns()
        started = time.perf_counter()
        entries = chain(client.key, oid, n, now)
        fold = Fold.of(entries)
        obj = NewObject(oid, HANDLER, "default", "anonymous", 0, None, entries[0], now)
        await client.store.import_object(obj, entries[1:], head_of(fold, now=now), now=now)
        built = time.perf_counter() - started
        cycles = []
        node = peo.Node(client.store, app(), node_id="w3b")  # the client's open store: nothing else runs
        for _ in range(repeat):
            t0 = time.perf_counter()
            claim = await claim_one(node, oid, [*earlier, oid])
            assert claim is not None, "the object was not due"
            await node.step_once(claim)
            cycles.append(time.perf_counter() - t0)
        earlier.append(oid)
        t0 = time.perf_counter()
        await client.restore(oid, seq=n // 2, reason="w3b")
        restored = time.perf_counter() - t0
    warm = cycles[1:] or cycles
    return {"entries": n, "build_s": built, "cold_ms": cycles[0] * 1e3, "cycle_ms": statistics.median(warm) * 1e3,
            "cycle_min_ms": min(warm) * 1e3, "restore_ms": restored * 1e3}


async def main(args: argparse.Namespace) -> None:
    sizes = [10, 200] if args.smoke else [int(s) for s in args.sizes.split(",")]
    repeat = 1 if args.smoke else args.repeat
    with tempfile.TemporaryDirectory() as tmp:
        url = args.store or f"sqlite:///{Path(tmp) / 'w3b.db'}"
        built: list[str] = []
        rows = [await measure(url, n, repeat, built) for n in sizes]
    base = rows[0]["cycle_ms"]
    cold = rows[0]["cold_ms"]
    print(f"W3b on {url.split('://')[0]}: claim and wake, one cycle: the first, and the median "
          f"of the {max(repeat - 1, 1)} after it; restore to the middle")
    print("| entries | claim and wake, first | vs the smallest | later | vs the smallest | restore | build |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['entries']:,} | {r['cold_ms']:.1f} ms | {r['cold_ms'] / cold:.1f}x | {r['cycle_ms']:.2f} ms "
              f"(min {r['cycle_min_ms']:.2f}) | {r['cycle_ms'] / base:.1f}x | {r['restore_ms']:.1f} ms | "
              f"{r['build_s']:.1f} s |")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="10,1000,100000", help="history lengths, comma-separated")
    p.add_argument("--repeat", type=int, default=5, help="cycles measured per size (median)")
    p.add_argument("--store", help="a store URL (default: a temporary SQLite file)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one cycle (CI)")
    asyncio.run(main(p.parse_args()))
