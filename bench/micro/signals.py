"""What a signed signal costs: sealing one (the sender), checking one (the node, before
delivery), and re-checking a recorded one (an auditor). Pure CPU, no store.

    python bench/micro/signals.py [--n 20000] [--runs 5]

Prints the median of ``--runs`` runs, in microseconds per signal.
"""

from __future__ import annotations

import argparse
import statistics
import time

from peo.core import signals
from peo.core.codec import Limits
from peo.core.crypto import Keyring, SigningKey
from peo.core.memory import genesis, instantiation_outcome, make_entry
from peo.core.model import Action, Context, Intent, Signal


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=20_000, help="signals per run")
    ap.add_argument("--runs", type=int, default=5, help="runs (the median is shown)")
    args = ap.parse_args()
    key = SigningKey(bytes(range(32)))
    ring = Keyring()
    ring.trust(key.public_key)
    payload = {"approved": True, "amount": 1200, "note": "ok by ops"}
    limits = Limits(max_bytes=262_144, depth=28)
    results: dict[str, list[float]] = {"seal (sender)": [], "screen (node, per signal)": [],
                                       "verify_recorded (auditor)": []}
    for _ in range(args.runs):
        t = time.perf_counter()
        batch = [Signal("approve", payload, i, seal=signals.seal(key, "obj-1", "approve", payload, nonce=f"{i:032x}",
                                                                 sent_at=i).encode())
                 for i in range(args.n)]
        results["seal (sender)"].append((time.perf_counter() - t) / args.n * 1e6)
        t = time.perf_counter()
        for i in range(0, args.n, 64):
            _, refused = signals.screen(batch[i:i + 64], object_id="obj-1", scope="default", keyring=ring,
                                           seen=frozenset(), rules=lambda n, s: None, accept_unsigned=False,
                                           limits=limits, budget=1 << 20)
            assert not refused
        results["screen (node, per signal)"].append((time.perf_counter() - t) / args.n * 1e6)
        first = make_entry(key, seq=0, prev=genesis("obj-1"), timestamp=0, origin_node="n", policy_ref="p",
                           action=Action.INSTANTIATE, outcome=instantiation_outcome("obj-1", Intent("h"), Context()),
                           trace_id="obj-1")
        memory = [first]
        for i in range(0, args.n, 64):
            memory.append(make_entry(key, seq=len(memory), prev=memory[-1].hash, timestamp=0, origin_node="n",
                                     policy_ref="p", action=Action.EXECUTE, trace_id="obj-1",
                                     outcome={"status": "ok",
                                              "signals": [signals.recorded(s) for s in batch[i:i + 64]]}))
        t = time.perf_counter()
        assert signals.verify_recorded("obj-1", memory, ring) == []
        results["verify_recorded (auditor)"].append((time.perf_counter() - t) / args.n * 1e6)
    print(f"{'operation':<28} µs per signal (median of {args.runs})")
    for name, values in results.items():
        print(f"{name:<28} {statistics.median(values):8.1f}")


if __name__ == "__main__":
    main()
