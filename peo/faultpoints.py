"""Fault points: named places in the node and the stores where a test rig may inject a
crash or an error.

Inert in production: nothing here reads the environment or arms itself, and a disarmed
point costs one global check on the hot path (``if faultpoints.ARMED:``). A test, or the
chaos tool's worker processes, arms the points through :mod:`peo.testing.faults`, which
installs the handler that decides what happens at each one.

Points: ``node.after_handler`` (the side effect ran, its entry is not yet signed),
``node.after_sign`` (entry signed, nothing written), ``node.before_renew`` (lease
renewal), ``store.before_commit`` (inside the transaction, before COMMIT),
``store.after_commit`` (committed, before the caller hears of it).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["ARMED", "POINTS", "hit", "install", "uninstall"]

POINTS = (
    "node.after_handler",
    "node.after_sign",
    "node.before_renew",
    "store.before_commit",
    "store.after_commit",
)

ARMED = False
_handler: Callable[[str], None] | None = None


def install(handler: Callable[[str], None]) -> None:
    """Call ``handler(point)`` at every fault point from now on (it may raise or exit)."""
    global ARMED, _handler
    _handler = handler
    ARMED = True


def uninstall() -> None:
    global ARMED, _handler
    _handler = None
    ARMED = False


def hit(point: str) -> None:
    """Called at a fault point when ARMED."""
    handler = _handler
    if handler is not None:
        handler(point)
