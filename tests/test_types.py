"""The type check is part of the suite: ``mypy --strict`` (pyproject's
``[tool.mypy]``) over ``src/mqbroker`` must stay clean, so a change that
breaks a type fails ``make test`` like any other regression.

mypy runs in a subprocess: in-process it raises the interpreter's recursion
limit, which changes what later tests of deeply nested input see."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_strict_is_clean(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "mypy",
            "--config-file", str(ROOT / "pyproject.toml"),
            "--cache-dir", str(tmp_path / "mypy-cache"),
            str(ROOT / "src" / "mqbroker"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
