"""Every marker pyproject.toml declares selects at least one test.

`scripts/test -m NAME` must never be a silent no-op, and the README's list of markers must not
name a daemon no test starts. The suite is collected once, in a separate pytest process, and the
markers its tests carry are compared with the declared ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent

# Runs in the child: collect every test (run none) and write the marker names they carry.
_COLLECT = """
import json, sys
import pytest

class Markers:
    def __init__(self):
        self.used = set()

    def pytest_collection_finish(self, session):
        for item in session.items:
            self.used.update(mark.name for mark in item.iter_markers())

plugin = Markers()
code = pytest.main(["--collect-only", "-q", "-p", "no:cacheprovider", "tests"], plugins=[plugin])
with open(sys.argv[1], "w") as out:
    json.dump(sorted(plugin.used), out)
sys.exit(code)
"""


def declared_markers() -> list[str]:
    ini = tomllib.loads((PACKAGE / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    return [line.split(":", 1)[0].strip() for line in ini["markers"]]


def test_every_declared_marker_selects_a_test(tmp_path):
    out = tmp_path / "markers.json"
    collected = subprocess.run(
        [sys.executable, "-c", _COLLECT, str(out)], cwd=PACKAGE, capture_output=True, text=True, timeout=300
    )
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    used = set(json.loads(out.read_text()))
    unused = [name for name in declared_markers() if name not in used]
    assert unused == [], f"declared in pyproject.toml but carried by no test: {unused}"
