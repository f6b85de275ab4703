"""ruff (pyproject's ``[tool.ruff]``) is part of the suite: a change that
breaks the lint fails ``make test`` like any other regression."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_is_clean(tmp_path: Path) -> None:
    pytest.importorskip("ruff", reason="ruff is a dev dependency: pip install -e '.[dev]'")
    result = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "src", "tests"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
