"""The rooms of the house: the runtime never imports the test rigs, and fault points are
inert unless a rig arms them (nothing reads the environment at import)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import json, sys
import peo.node, peo.store, peo.client, peo.cli, peo.demo
from peo import faultpoints
print(json.dumps({"rigs": sorted(m for m in sys.modules if m.startswith("peo.testing")),
                  "armed": faultpoints.ARMED}))
"""


def test_the_runtime_imports_no_test_rig_and_ignores_fault_specs_in_the_environment() -> None:
    env = {**os.environ, "PEO_FAULTS": "node.after_sign=crash", "PEO_FAULTS_SEED": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=60,
                         env=env)
    assert json.loads(out.stdout) == {"rigs": [], "armed": False}
