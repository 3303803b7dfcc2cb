"""``python -m peo.testing.chaos``: the command line, and the worker process it starts."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
from collections.abc import Sequence

from .. import faults
from .report import ChaosConfig
from .run import run_chaos
from .workload import app

__all__ = ["main"]


async def _worker(args: argparse.Namespace) -> int:
    from ...node import Node
    from ...node.signals import serve_until_signalled

    faults.arm_from_environment()  # --faults travels to the workers as PEO_FAULTS
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    node = Node(args.store, app, node_id=args.node_id, concurrency=args.concurrency, lease_ttl=args.lease_ttl,
                poll_interval=0.02)
    await serve_until_signalled(node, until_idle=args.until_idle)  # SIGTERM: stop gracefully
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m peo.testing.chaos",
        description="Chaos run: node processes killed and paused at seeded random moments, then checked.",
    )
    p.add_argument("--store", metavar="URL", help="store URL (default: an SQLite file in the work directory)")
    p.add_argument("--nodes", type=int, default=3, help="node processes (default 3)")
    p.add_argument("--objects", type=int, default=60, help="objects submitted (default 60)")
    p.add_argument("--steps", type=int, default=20, help="steps per object (default 20)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of faults (default 30)")
    p.add_argument("--seed", type=int, default=None, help="seed of the fault schedule (default: random, printed)")
    p.add_argument("--faults", metavar="SPEC", help="PEO_FAULTS for the nodes while faults run")
    p.add_argument("--lease-ttl", type=float, default=1.0, help="node lease time in seconds (default 1)")
    p.add_argument("--concurrency", type=int, default=4, help="objects each node holds at once (default 4)")
    p.add_argument("--step-ms", type=float, default=10.0, help="milliseconds each step takes (default 10)")
    p.add_argument("--settle-timeout", type=float, default=120.0, help="seconds to finish after faults stop")
    p.add_argument("--workdir", help="keep the store, logs and node output here (default: a temp directory)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--node-id", help=argparse.SUPPRESS)
    p.add_argument("--until-idle", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        if not args.store or not args.node_id:
            _parser().error("--worker needs --store and --node-id")
        return asyncio.run(_worker(args))
    if args.nodes < 1 or args.objects < 1 or args.steps < 1 or args.duration < 0:
        _parser().error("--nodes, --objects and --steps must be positive, --duration not negative")
    if args.faults:
        try:
            faults.arm(args.faults)  # only to validate the spec here; the nodes arm it themselves
        except ValueError as exc:
            _parser().error(str(exc))
        finally:
            faults.disarm()
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    config = ChaosConfig(
        store=args.store, nodes=args.nodes, objects=args.objects, steps=args.steps, duration=args.duration,
        seed=seed, faults=args.faults, lease_ttl=args.lease_ttl, concurrency=args.concurrency,
        step_ms=args.step_ms, settle_timeout=args.settle_timeout, workdir=args.workdir,
    )
    report = asyncio.run(run_chaos(config))
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.summary())
        if not report.ok:
            print(f"  replay: python -m peo.testing.chaos --seed {seed} " + " ".join(_replay_args(args)))
    return 0 if report.ok else 1


def _replay_args(args: argparse.Namespace) -> list[str]:
    out = []
    for name in ("store", "nodes", "objects", "steps", "duration", "faults", "lease_ttl", "concurrency", "step_ms"):
        value = getattr(args, name)
        if value is not None:
            out += [f"--{name.replace('_', '-')}", str(value)]
    return out
