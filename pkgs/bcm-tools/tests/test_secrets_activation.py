"""The host side of operator secrets, run for real: the activation script modules/secrets.nix
generates for the example host, as the evaluation harness exported it
(nixos-tests/eval/exported/secrets-example.json, kept current by test_exports_current.py), is
executed with bash against the real age CLI, with only its absolute paths moved into a temporary
directory (/run, the host key, the store path of the secret, the stub age binary)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
MATERIAL = Path(__file__).parent / "material" / "example-host"
EXPORT = ROOT / "nixos-tests" / "eval" / "exported" / "secrets-example.json"

pytestmark = pytest.mark.repo


@pytest.fixture(scope="module")
def script_text() -> str:
    return json.loads(EXPORT.read_text())["activationScripts"]["bcmSecrets"]["text"]


def localize(text: str, tmp: Path, secret_file: Path, owner: str) -> str:
    """Point the script's absolute paths into `tmp`; everything else runs as generated."""
    text = re.sub(r"/nix/store/[0-9a-z]{32}-example\.age", str(secret_file), text)
    text = re.sub(r"/nix/store/0{32}-age/bin/age", shutil.which("age") or "age", text)
    text = text.replace("/etc/ssh/ssh_host_ed25519_key", str(tmp / "ssh_host_ed25519_key"))
    text = text.replace("/run/bcm-secrets", str(tmp / "run" / "bcm-secrets"))
    return re.sub(r"(decrypt example \S+) operator root ", rf"\1 {owner} {owner} ", text)


def run(text: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", text], capture_output=True, text=True, check=False)


@pytest.fixture
def host(tmp_path):
    (tmp_path / "run").mkdir()
    shutil.copy(MATERIAL / "ssh_host_ed25519_key", tmp_path / "ssh_host_ed25519_key")
    shutil.copy(ROOT / "secrets" / "example.age", tmp_path / "example.age")
    return tmp_path


def test_activation_decrypts_the_example_secret_with_owner_and_mode(script_text, host):
    owner = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    if os.geteuid() != 0:
        pytest.skip("chown to the declared owner needs root (the activation script runs as root)")
    script = localize(script_text, host, host / "example.age", owner)
    assert str(host / "example.age") in script and "--decrypt" in script
    result = run(script)
    assert result.returncode == 0, result.stderr
    decrypted = host / "run" / "bcm-secrets" / "example"
    assert decrypted.read_text().startswith("# bcm example secret")
    assert oct(decrypted.stat().st_mode & 0o777) == "0o400"
    assert (host / "run" / "bcm-secrets").is_symlink()
    first_generation = os.readlink(host / "run" / "bcm-secrets")

    # A second activation makes a new generation and drops the old one.
    assert run(script).returncode == 0
    assert os.readlink(host / "run" / "bcm-secrets") != first_generation
    assert not Path(first_generation).exists()

    # A secret that no longer decrypts keeps its last good copy; the failure is reported.
    (host / "example.age").write_bytes(b"age-encryption.org/v1\n-> X25519 broken\n")
    failed = run(script)
    assert "cannot decrypt" in failed.stderr
    assert (host / "run" / "bcm-secrets" / "example").read_text().startswith("# bcm example secret")


def test_activation_without_a_host_key_decrypts_nothing(script_text, host):
    (host / "ssh_host_ed25519_key").unlink()
    result = run(localize(script_text, host, host / "example.age", "root"))
    assert result.returncode == 0
    assert "no identity" in result.stderr
    assert not (host / "run" / "bcm-secrets").exists()
