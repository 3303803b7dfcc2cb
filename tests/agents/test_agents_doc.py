"""Every complete program in docs/agents.md runs as written and prints what the page says
(offline: they talk to peo.testing.FakeLLMServer); every other Python block compiles."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("openai")

REPO = Path(__file__).resolve().parents[2]
GUIDE = (REPO / "docs" / "agents.md").read_text()
BLOCKS = [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```\n", GUIDE, re.S | re.M)]


def _examples() -> dict[str, tuple[str, str]]:
    found: dict[str, tuple[str, str]] = {}
    for i, (lang, text) in enumerate(BLOCKS):
        if lang != "python" or "asyncio.run(main())" not in text:
            continue
        [name, *_] = re.findall(r'app\.(?:agent\(\s*|function\()"([^"]+)"', text)
        after = GUIDE.split(text, 1)[1]
        assert after.lstrip("`\n").startswith("It prints:"), f"example {name!r}: no 'It prints:' after it"
        lang_out, printed = BLOCKS[i + 1]
        assert lang_out == "", f"example {name!r}: its output block has a language"
        found[name] = (text, printed)
    return found


EXAMPLES = _examples()


def test_the_guide_has_the_examples_it_promises() -> None:
    assert set(EXAMPLES) == {"researcher", "mailer", "onboard"}


def test_every_python_fragment_is_valid_python() -> None:
    for lang, text in BLOCKS:
        if lang == "python":
            compile(text, "docs/agents.md", "exec", flags=ast.PyCF_ALLOW_TOP_LEVEL_AWAIT)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_each_complete_example_runs_as_written(tmp_path: Path, name: str) -> None:
    program, printed = EXAMPLES[name]
    (tmp_path / "example.py").write_text(program)
    env = {k: v for k, v in os.environ.items() if k not in ("PEO_STORE", "PEO_FAULTS")}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    result = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout == printed
