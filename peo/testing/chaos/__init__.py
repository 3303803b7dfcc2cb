"""Chaos runs: several node processes on one store, killed and paused at seeded random
moments, with a safety checker during the run and a health check after it.

``python -m peo.testing.chaos --store URL --nodes 3 --objects 60 --steps 20 --duration 30 --seed N``

What happens:

1. ``--nodes`` worker processes start (``python -m peo.testing.chaos --worker ...``: a
   :class:`~peo.node.Node` running :data:`app`), each with its own node id and key.
2. ``--objects`` objects are submitted in batches spread over the run. Each
   step of an object appends one line ``<object id>:<seq>`` (its idempotency key) to its
   process's side-effect log, then waits ``--step-ms``; every fifth step sleeps (dormancy
   and reentry) instead of continuing.
3. For ``--duration`` seconds, at seeded random intervals, a random node is killed with
   SIGKILL (and restarted under the same id after a random delay) or paused with SIGSTOP
   for longer than its lease and resumed with SIGCONT. ``--faults SPEC`` also arms fault
   points inside the nodes (``PEO_FAULTS``); a node that crashes on one is restarted.
   Meanwhile the object heads are polled: two different hashes seen at one (object, seq)
   is a fork.
4. The faults stop; every node is resumed or restarted (without ``--faults``); the run
   waits for every object to terminate.
5. The checker: every object terminated with its result (none lost); every chain verifies;
   each step recorded exactly once (contiguous seqs, each step index once); no fork (every
   head seen during the run is still the entry at its seq); every committed step's side
   effect ran, no side effect ran under a key no step committed, and duplicates stay
   within what the faults could cause (each kill, pause or crash interrupts at most one
   step per object the node held: ``faults x concurrency`` in all, ``faults`` per object);
   no node logged a bug; and the system made progress after the faults stopped.

It prints the seed, the faults injected and the figures (``--json`` for a JSON report) and
exits 1 if any invariant was violated. Replay a failure with the same ``--seed`` (the
fault schedule is the same; process timing is not, so a rare interleaving may need a few
runs).

Modules: :mod:`.workload` (the handler and its side-effect log), :mod:`.fleet` (the node
processes), :mod:`.run` (one run), :mod:`.checker`, :mod:`.report`, :mod:`.cli`.
"""

from __future__ import annotations

from .checker import Check, check_objects, read_effects
from .cli import main
from .fleet import PEO_ROOT, Fleet, spawn_worker
from .report import ChaosConfig, ChaosReport
from .run import run_chaos
from .workload import HANDLER, LOG_DIR_ENV, app

__all__ = [
    "HANDLER",
    "LOG_DIR_ENV",
    "PEO_ROOT",
    "ChaosConfig",
    "ChaosReport",
    "Check",
    "Fleet",
    "app",
    "check_objects",
    "main",
    "read_effects",
    "run_chaos",
    "spawn_worker",
]
