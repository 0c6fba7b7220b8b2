"""The code is lint-clean: ``ruff check`` with the project's configuration ([tool.ruff] in
pyproject.toml: pycodestyle and pyflakes, 120 columns) finds nothing in src, tests, scripts or
benchmarks."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import pytest

ROOT = Path(__file__).resolve().parents[1]
PATHS = ["src", "tests", "scripts", "benchmarks"]


def _ruff_command() -> Optional[List[str]]:
    """How to run the ruff of this interpreter's environment: its package, else the binary beside
    the interpreter; None when neither is installed."""
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    for name in ("ruff", "ruff.exe"):
        binary = Path(sys.executable).parent / name
        if binary.is_file():
            return [str(binary)]
    return None


def test_ruff_check_is_clean():
    command = _ruff_command()
    if command is None:
        pytest.skip("ruff is not installed in this environment (pip install -e '.[test]' installs it)")
    # --no-cache: leave no .ruff_cache in the checkout.
    done = subprocess.run([*command, "check", "--no-cache", "--output-format", "concise", *PATHS],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"ruff check found problems:\n{done.stdout}{done.stderr}"
