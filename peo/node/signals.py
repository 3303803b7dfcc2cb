"""Running a node under SIGTERM and SIGINT, the same way for the CLI, the demo and the rigs.

The first signal stops the node gracefully: it stops claiming, finishes the steps in
flight, releases its leases and returns. A second one abandons the steps in flight: their
leases expire and another node redoes them under the same idempotency keys.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from . import Node

__all__ = ["serve_until_signalled"]


async def serve_until_signalled(
    node: Node, *, until_idle: bool = False, announce: Callable[[str], None] | None = None,
    on_ready: Callable[[], None] | None = None,
) -> bool:
    """Run ``node`` (until stopped, or until idle) with SIGTERM/SIGINT handled as above.

    Returns True if a second signal abandoned the steps in flight. ``announce`` is told
    what the first signal does; ``on_ready`` is called once the handlers are in place (a
    caller that says "serving" there can be signalled as soon as it is heard). Outside the
    main thread, signals are left alone.
    """
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    seen = 0

    def on_signal() -> None:
        nonlocal seen
        seen += 1
        if seen == 1:
            if announce is not None:
                announce("stopping (signal again to abandon steps in flight)")
            node.stop()
        elif task is not None:
            task.cancel()

    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            loop.add_signal_handler(sig, on_signal)
            installed.append(sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no signals
            pass
    if on_ready is not None:
        on_ready()
    try:
        if until_idle:
            await node.run_until_idle()
        else:
            await node.run()
    except asyncio.CancelledError:
        if seen < 2 or task is None:
            raise
        task.uncancel()
        return True
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
    return False
