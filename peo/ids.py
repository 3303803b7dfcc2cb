"""Object ids: UUIDv7 strings, so ids sort by creation time (shell: reads clock and
randomness, which the core never does)."""

from __future__ import annotations

import os
import threading
import time

__all__ = ["new_id"]

_lock = threading.Lock()
_last_ms = 0
_counter = 0


def new_id() -> str:
    """A UUIDv7: 48-bit millisecond timestamp, then 74 bits that start random and count
    up within one millisecond, so ids from one process are strictly increasing."""
    global _last_ms, _counter
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            _counter += 1
        else:
            _counter = int.from_bytes(os.urandom(10), "big") >> 7  # 73 bits: room to count
        _last_ms = ms
        rand = _counter & ((1 << 74) - 1)
    rand_a, rand_b = rand >> 62, rand & ((1 << 62) - 1)
    value = (ms << 80) | (0x7 << 76) | (rand_a << 64) | (0x2 << 62) | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
