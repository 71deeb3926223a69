"""Every ``python`` block of the README runs, against the real daemon, as a script of
its own (each is self-checking: its asserts are the test)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import Daemon

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"^```python\n(.*?)^```$", README.read_text(), flags=re.S | re.M)


def test_the_readme_has_its_examples() -> None:
    assert len(BLOCKS) >= 5
    text = README.read_text()
    assert "never per worker" in text  # the owner-token rule


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(daemon: Daemon, index: int, tmp_path: Path) -> None:
    script = tmp_path / f"readme_{index}.py"
    script.write_text(BLOCKS[index])
    env = {**os.environ, "ONCELY_URL": daemon.url}
    done = subprocess.run(
        [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, f"README block {index} failed:\n{done.stdout}\n{done.stderr}"
