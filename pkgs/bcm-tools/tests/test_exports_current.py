"""The committed unit exports (nixos-tests/eval/exported/) are what the modules render today.

The sandbox tests start real daemons from those files, and CI cannot evaluate the modules (no
nixpkgs lib there), so each export records a digest of the Nix sources it was made from. A module
edited without running `nixos-tests/eval/export` fails here, in CI, not silently."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
EXPORT_SCRIPT = ROOT / "nixos-tests" / "eval" / "export"

pytestmark = pytest.mark.repo


def load_export_script():
    loader = importlib.machinery.SourceFileLoader("bcm_eval_export", str(EXPORT_SCRIPT))
    spec = importlib.util.spec_from_loader("bcm_eval_export", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


EXPORT = load_export_script()


@pytest.mark.parametrize("host", sorted(EXPORT.HOSTS))
def test_export_matches_the_nix_sources(host):
    exported = json.loads((EXPORT.OUT / f"{host}.json").read_text())
    assert exported["sources_sha256"] == EXPORT.sources_digest(EXPORT.HOSTS[host]), (
        f"nixos-tests/eval/exported/{host}.json is stale: the modules, the host or the harness changed "
        "since it was written; run NIXPKGS_LIB=<nixpkgs lib> nixos-tests/eval/export"
    )


def test_digest_notices_a_module_change(tmp_path, monkeypatch):
    """The staleness check would catch an edit: the digest moves when one module byte does."""
    host = EXPORT.HOSTS["regtest1"]
    before = EXPORT.sources_digest(host)
    module = ROOT / "modules" / "lnd.nix"
    original = module.read_bytes()
    shadow = tmp_path / "lnd.nix"
    shadow.write_bytes(original + b"\n")
    real_read_bytes = Path.read_bytes
    monkeypatch.setattr(Path, "read_bytes", lambda p: real_read_bytes(shadow if p == module else p))
    assert EXPORT.sources_digest(host) != before
