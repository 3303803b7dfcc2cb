"""The core is pure: importing it pulls in no I/O machinery (no event loop, no driver, no
sockets, no store, no node). Checked in a fresh interpreter so other tests cannot mask it."""

from __future__ import annotations

import json
import subprocess
import sys

CORE = ["peo.core.model", "peo.core.codec", "peo.core.crypto", "peo.core.memory", "peo.core.policy",
        "peo.core.cycle", "peo.errors"]
FORBIDDEN = ["asyncio", "aiosqlite", "asyncpg", "sqlite3", "socket", "ssl", "selectors",
             "peo.store", "peo.node", "peo.client", "peo.cli"]

PROBE = f"""
import json, sys
before = set(sys.modules)
for name in {CORE!r}:
    __import__(name)
loaded = sorted(set(sys.modules) - before)
print(json.dumps(loaded))
"""


def test_importing_the_core_loads_no_io_module() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60)
    loaded = json.loads(out.stdout)
    bad = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN)]
    assert bad == [], f"the core imported I/O modules: {bad}"
    assert "peo.core.cycle" in loaded  # the probe really imported the core
