"""``python -m peo.testing``: the long form of the model-based resumption tests."""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m peo.testing``: the long form of the model-based resumption tests."""
    import argparse
    import logging

    from ._hypothesis import HealthCheck, Settings
    from .machine import run_resumption_tests

    p = argparse.ArgumentParser(prog="python -m peo.testing",
                                description="Run the resumption state machine on the scripted handler.")
    p.add_argument("--examples", type=int, default=500, help="hypothesis examples (default 500)")
    p.add_argument("--steps", type=int, default=40, help="rules per example (default 40)")
    p.add_argument("--objects", type=int, default=4, help="objects per example (default 4)")
    p.add_argument("--postgres", metavar="URL", help="run on PostgreSQL (a fresh schema per example)")
    p.add_argument("--seed", type=int, help="hypothesis seed, to replay a run")
    args = p.parse_args(argv)

    logging.getLogger("peo.node").setLevel(logging.ERROR)  # the injected faults log warnings by design
    chosen = Settings(max_examples=args.examples, stateful_step_count=args.steps, deadline=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much], database=None)
    started = time.monotonic()
    run_resumption_tests(postgres_url=args.postgres, max_objects=args.objects, settings=chosen, seed=args.seed)
    print(f"resumption machine: {args.examples} examples x up to {args.steps} steps passed"
          f" in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
