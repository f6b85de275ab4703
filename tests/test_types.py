"""The type check is part of the suite: ``mypy --strict`` (pyproject's
``[tool.mypy]``) over ``src/mqbroker`` must stay clean, so a change that
breaks a type fails ``make test`` like any other regression."""

from __future__ import annotations

from pathlib import Path

from mypy import api

ROOT = Path(__file__).resolve().parent.parent


def test_mypy_strict_is_clean(tmp_path: Path) -> None:
    stdout, stderr, status = api.run(
        [
            "--config-file", str(ROOT / "pyproject.toml"),
            "--cache-dir", str(tmp_path / "mypy-cache"),
            str(ROOT / "src" / "mqbroker"),
        ]
    )
    assert status == 0, stdout + stderr
