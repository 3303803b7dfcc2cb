"""The durable function example in docs/concepts.md runs exactly as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_durable_function_example_runs_as_written(tmp_path: Path) -> None:
    text = (REPO / "docs" / "concepts.md").read_text()
    section = text.split("## Durable functions", 1)[1].split("\n## ", 1)[0]
    [example] = [b for b in re.findall(r"```python\n(.*?)```", section, re.S) if "@app.function" in b]
    (tmp_path / "example.py").write_text(example)
    env = {k: v for k, v in os.environ.items() if k not in ("PEO_STORE", "PEO_FAULTS")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    result = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "{'pages': ['bees/a', 'bees/b'], 'approved': True}"
