"""The core is pure: no I/O, no clock reads, no randomness of its own.

Two checks: importing the core pulls in no I/O machinery (in a fresh interpreter, so
other tests cannot mask it), and no module of the core *names* a clock, a file, the
operating system or a random source (a scan of each module's syntax tree, so that
``time.time()`` or ``open()`` added to ``peo/core/cycle/plan.py`` fails here).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import peo.core

CORE_DIR = Path(peo.core.__file__).parent
CORE_MODULES = sorted(CORE_DIR.rglob("*.py"))

FORBIDDEN_IMPORTS = ["asyncio", "aiosqlite", "asyncpg", "sqlite3", "socket", "ssl", "selectors",
                     "peo.store", "peo.node", "peo.client", "peo.cli", "peo.config", "peo.keys", "peo.ids"]
#: Modules the core may not import at all: clocks, files, processes, randomness.
IMPURE_MODULES = {"os", "time", "random", "secrets", "uuid", "datetime", "pathlib", "shutil", "io",
                  "tempfile", "subprocess", "threading", "importlib.resources"}
#: Builtins that do I/O.
IMPURE_CALLS = {"open", "input", "print", "exec", "eval", "__import__"}

PROBE = """
import json, sys
before = set(sys.modules)
import peo.core.cycle, peo.core.head, peo.core.wake, peo.core.memory, peo.core.policy, peo.errors
loaded = sorted(set(sys.modules) - before)
print(json.dumps(loaded))
"""


def impurities(source: str) -> list[str]:
    """What in ``source`` reads a clock, touches a file or draws randomness (by name)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"import {a.name}" for a in node.names if _impure(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module and _impure(node.module):
            found.append(f"from {node.module} import ...")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in IMPURE_CALLS:
            found.append(f"{node.func.id}() at line {node.lineno}")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in ("now", "utcnow", "today")):
            found.append(f".{node.func.attr}() at line {node.lineno}")  # datetime.now() and kin
        elif isinstance(node, ast.Attribute) and node.attr in ("urandom", "time_ns", "monotonic", "perf_counter"):
            found.append(f".{node.attr} at line {node.lineno}")
        elif isinstance(node, ast.Name) and node.id in IMPURE_MODULES:
            found.append(f"{node.id} at line {node.lineno}")
    return found


def _impure(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in IMPURE_MODULES)


def test_importing_the_core_loads_no_io_module() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60)
    loaded = json.loads(out.stdout)
    bad = [m for m in loaded if any(m == f or m.startswith(f + ".") for f in FORBIDDEN_IMPORTS)]
    assert bad == [], f"the core imported I/O modules: {bad}"
    assert "peo.core.cycle" in loaded  # the probe really imported the core


@pytest.mark.parametrize("path", CORE_MODULES, ids=lambda p: str(p.relative_to(CORE_DIR)))
def test_no_core_module_reads_a_clock_a_file_or_a_random_source(path: Path) -> None:
    assert impurities(path.read_text()) == []


@pytest.mark.parametrize("snippet", [
    "import time\nnow = time.time()",
    "from time import time_ns",
    "data = open('x').read()",
    "import os\nseed = os.urandom(32)",
    "import random",
    "from datetime import datetime\nwhen = datetime.now()",
    "import secrets",
])
def test_the_scan_catches_each_kind_of_impurity(snippet: str) -> None:
    assert impurities(snippet), f"the scan missed: {snippet!r}"


def test_the_scan_covers_the_whole_core() -> None:
    names = {p.relative_to(CORE_DIR).as_posix() for p in CORE_MODULES}
    assert {"cycle/plan.py", "cycle/conclude.py", "head.py", "wake.py", "memory.py", "crypto.py",
            "policy.py"} <= names
