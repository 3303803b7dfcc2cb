"""Arming the runtime's fault points (:mod:`peo.faultpoints`) from a test or the chaos tool.

A spec can travel to child processes in the environment; a process arms itself from it only
when it asks to (:func:`arm_from_environment`, which the chaos worker calls), never on import.

``PEO_FAULTS="point=action[@probability][#max_hits][,point=action...]"`` with
``PEO_FAULTS_SEED=N`` arms them; ``#max_hits`` lets a point fire at most that many times
(an in-process test injects one error, then watches the recovery). Actions: ``crash``
(the process dies at once with ``os._exit(137)``, as under kill -9), ``raise`` (a
:class:`FaultInjected` error is raised at the point). Disarmed, a point costs one global
boolean check (``if faultpoints.ARMED:``) on the hot path.

Points: ``node.after_sign`` (entry signed, nothing written), ``store.before_commit``
(inside the transaction, before COMMIT), ``store.after_commit`` (committed, before the
caller hears of it: with ``raise`` this is the "commit succeeded but the caller saw an
error" fault), ``node.before_renew`` (lease renewal), ``node.after_handler`` (the side
effect ran, its entry is not yet signed).
"""

from __future__ import annotations

import os
import random

from .. import faultpoints
from ..errors import StoreError
from ..faultpoints import POINTS

__all__ = ["POINTS", "FaultInjected", "arm", "arm_from_environment", "disarm", "hits"]


class FaultInjected(StoreError):
    """An injected failure (retryable: the caller must cope as with a real one)."""


_plan: dict[str, tuple[str, float, int | None]] = {}
_rng = random.Random(0)
hits: dict[str, int] = {}  # fired faults per point, since the process started
_fired: dict[str, int] = {}  # fired faults per point, since the last arm()


def arm(spec: str, seed: int = 0) -> None:
    """Arm fault points from a spec string (the format of ``PEO_FAULTS``)."""
    plan: dict[str, tuple[str, float, int | None]] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        point, _, rest = part.partition("=")
        rest, _, limit = rest.partition("#")
        action, _, prob = rest.partition("@")
        if point not in POINTS:
            raise ValueError(f"unknown fault point {point!r}; known: {', '.join(POINTS)}")
        if action not in ("crash", "raise"):
            raise ValueError(f"unknown fault action {action!r} (crash or raise)")
        try:
            probability = float(prob) if prob else 1.0
            max_hits = int(limit) if limit else None
        except ValueError:
            raise ValueError(f"bad fault spec {part!r}: probability is a number, max hits an integer") from None
        plan[point] = (action, probability, max_hits)
    _plan.clear()
    _fired.clear()
    _plan.update(plan)
    _rng.seed(seed)
    if plan:
        faultpoints.install(_hit)
    else:
        faultpoints.uninstall()


def disarm() -> None:
    _plan.clear()
    faultpoints.uninstall()


def arm_from_environment() -> None:
    """Arm from ``PEO_FAULTS`` / ``PEO_FAULTS_SEED`` if set (a worker process of a test rig)."""
    spec = os.environ.get("PEO_FAULTS")
    if spec:
        arm(spec, int(os.environ.get("PEO_FAULTS_SEED", "0")))


def _hit(point: str) -> None:
    """Installed at the fault points while armed: maybe crash or raise, as planned."""
    planned = _plan.get(point)
    if planned is None:
        return
    action, probability, max_hits = planned
    if max_hits is not None and _fired.get(point, 0) >= max_hits:
        return
    if _rng.random() >= probability:
        return
    hits[point] = hits.get(point, 0) + 1
    _fired[point] = _fired.get(point, 0) + 1
    if action == "crash":
        os._exit(137)
    raise FaultInjected(f"injected fault at {point}")

