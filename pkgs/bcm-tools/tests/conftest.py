"""Fixtures shared by every test module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Test helpers (spec builders, daemon fixtures) live beside the tests, not in the package.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture
def run_cli():
    """Runs the installed `bcm-tools` entry point as a user would, in a subprocess."""

    def run(*args: str, cwd: Path | None = None, input: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", "from bcm_tools.cli import main; main()", *args],
            capture_output=True,
            text=True,
            cwd=cwd,
            input=input,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            timeout=120,
        )

    return run
