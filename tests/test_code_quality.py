"""The project's lint, format and type checks, run as part of the test suite so CI fails on a violation.

Settings live in pyproject.toml ([tool.ruff], [tool.mypy]); fix a failure with ``.venv/bin/ruff check --fix .``,
``.venv/bin/ruff format .`` or by reading mypy's message.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tool(name: str) -> str:
    found = Path(sys.executable).parent / name
    if found.exists():
        return str(found)
    on_path = shutil.which(name)
    if on_path is None:
        pytest.fail(f"{name} is not installed; it comes with the test extra (`./dev test` installs it).")
    return on_path


def _run(*command: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900, check=False)


def test_ruff_lint_passes() -> None:
    result = _run(_tool("ruff"), "check", "--no-cache", ".")
    assert result.returncode == 0, f"ruff check found problems (fix with `ruff check --fix .`):\n{result.stdout}"


def test_ruff_format_is_applied() -> None:
    result = _run(_tool("ruff"), "format", "--check", "--no-cache", ".")
    assert result.returncode == 0, f"Files need `ruff format .`:\n{result.stdout}"


def test_mypy_passes() -> None:
    result = _run(_tool("mypy"))
    assert result.returncode == 0, f"mypy found type errors:\n{result.stdout[-6000:]}"
