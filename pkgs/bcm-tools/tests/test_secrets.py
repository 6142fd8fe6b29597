"""Operator secrets through real age, in both directions, with host keys made by ssh-keygen.

The operator side uses the insecure mnemonic device (it derives the same identity a Trezor
loaded with the same words would, see test_devices.py); the host side is the `age` CLI
decrypting with an OpenSSH host key, as the NixOS activation script does.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bcm_tools.errors import CredentialError, SecretError

ABANDON = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about"
OTHER = "legal winner thank year wave sausage worth useful legal winner thank yellow"


def host_key(repo: Path, name: str = "btc1") -> Path:
    """Where a test host's private key lives: outside the repository, as on a real host."""
    return repo.parent / "host-keys" / name / "ssh_host_ed25519_key"


def add_host(repo: Path, name: str) -> Path:
    """A host directory with an ed25519 host key pair from ssh-keygen; returns the private key."""
    keydir = host_key(repo, name).parent
    keydir.mkdir(parents=True)
    key = keydir / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"root@{name}", "-f", str(key)], check=True)
    (repo / "hosts" / name).mkdir(parents=True)
    (repo / "hosts" / name / "ssh_host_ed25519_key.pub").write_text(Path(f"{key}.pub").read_text())
    return key


@pytest.fixture
def repo(tmp_path, run_cli):
    root = tmp_path / "repo"
    root.mkdir()
    (tmp_path / "operator.words").write_text(ABANDON + "\n")
    (tmp_path / "other.words").write_text(OTHER + "\n")
    add_host(root, "btc1")
    result = run_cli("secrets", "init", "--repo", str(root), "--device", f"mnemonic:{tmp_path / 'operator.words'}")
    assert result.returncode == 0, result.stderr
    assert "INSECURE" in (root / "secrets" / "operator.pub").read_text()
    return root


def device(repo: Path, who: str = "operator") -> str:
    return f"mnemonic:{repo.parent / (who + '.words')}"


def age_decrypt(identity: Path, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["age", "--decrypt", "-i", str(identity), str(path)], capture_output=True, check=False)


def snapshot(repo: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((repo / "secrets").iterdir())}


def test_round_trip_host_decrypts_with_its_ssh_key_and_operator_with_device(repo, run_cli):
    secret = b"user=backup\npassword=correct horse battery staple\n"
    result = run_cli("secrets", "encrypt", "backup-target", "--repo", str(repo), input=secret.decode())
    assert result.returncode == 0, result.stderr
    path = repo / "secrets" / "backup-target.age"
    assert path.read_bytes().startswith(b"age-encryption.org/v1\n")
    # The host, with nothing but its ssh host key and the age CLI:
    host_side = age_decrypt(host_key(repo), path)
    assert host_side.returncode == 0, host_side.stderr
    assert host_side.stdout == secret
    # The operator, through the device:
    operator_side = run_cli("secrets", "decrypt", "backup-target", "--repo", str(repo), "--device", device(repo))
    assert operator_side.returncode == 0, operator_side.stderr
    assert operator_side.stdout == secret.decode()
    assert "INSECURE" in operator_side.stderr


def test_a_file_made_by_the_age_cli_opens_with_the_device(repo, run_cli):
    """The other direction: age itself encrypts to the recipients in the repo."""
    recipients = ["-R", str(repo / "secrets" / "operator.pub"), "-R", str(repo / "hosts" / "btc1" / "ssh_host_ed25519_key.pub")]
    subprocess.run(["age", "--encrypt", *recipients, "-o", str(repo / "secrets" / "by-age.age")], input=b"made by age\n", check=True)
    result = run_cli("secrets", "decrypt", "by-age", "--repo", str(repo), "--device", device(repo), "--output", str(repo.parent / "out"))
    assert result.returncode == 0, result.stderr
    assert (repo.parent / "out").read_bytes() == b"made by age\n"
    assert (repo.parent / "out").stat().st_mode & 0o777 == 0o600


def test_wrong_mnemonic_is_one_line_and_changes_nothing(repo, run_cli):
    run_cli("secrets", "encrypt", "s", "--repo", str(repo), input="x")
    before = snapshot(repo)
    for command in (["decrypt", "s"], ["rekey"], ["edit", "s"]):
        result = run_cli("secrets", *command, "--repo", str(repo), "--device", device(repo, "other"))
        assert result.returncode == CredentialError.exit_code, command
        lines = result.stderr.strip().splitlines()
        assert lines[-1] == (
            "error: secrets/s.age is not encrypted to the operator key of INSECURE software keys from "
            f"{repo.parent / 'other.words'} (wrong mnemonic, passphrase or device?)"
        )
        assert len(lines) == 2 and "INSECURE" in lines[0]  # the warning, then the error
        assert result.stdout == ""
    assert snapshot(repo) == before


def test_wrong_passphrase_is_refused(repo, run_cli):
    run_cli("secrets", "encrypt", "s", "--repo", str(repo), input="x")
    env_before = os.environ.get("BCM_MNEMONIC_PASSPHRASE")
    os.environ["BCM_MNEMONIC_PASSPHRASE"] = "not the passphrase"
    try:
        result = run_cli("secrets", "decrypt", "s", "--repo", str(repo), "--device", device(repo))
    finally:
        if env_before is None:
            del os.environ["BCM_MNEMONIC_PASSPHRASE"]
        else:
            os.environ["BCM_MNEMONIC_PASSPHRASE"] = env_before
    assert result.returncode == CredentialError.exit_code
    assert "wrong mnemonic, passphrase or device?" in result.stderr and "Traceback" not in result.stderr


def test_file_encrypted_to_other_keys(repo, run_cli, tmp_path):
    stranger = tmp_path / "stranger.key"
    subprocess.run(["age-keygen", "-o", str(stranger)], capture_output=True, check=True)
    subprocess.run(["age", "--encrypt", "-i", str(stranger), "-o", str(repo / "secrets" / "foreign.age")], input=b"not yours", check=True)
    result = run_cli("secrets", "decrypt", "foreign", "--repo", str(repo), "--device", device(repo))
    assert result.returncode == CredentialError.exit_code
    assert "secrets/foreign.age is not encrypted to the operator key" in result.stderr


def test_truncated_file(repo, run_cli):
    run_cli("secrets", "encrypt", "s", "--repo", str(repo), input="some secret value")
    path = repo / "secrets" / "s.age"
    path.write_bytes(path.read_bytes()[:-10])
    result = run_cli("secrets", "decrypt", "s", "--repo", str(repo), "--device", device(repo))
    assert result.returncode == SecretError.exit_code
    assert "secrets/s.age is truncated or damaged" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 2


def test_rekey_adds_a_new_host_and_fails_whole(repo, run_cli):
    run_cli("secrets", "encrypt", "a", "--repo", str(repo), input="alpha")
    run_cli("secrets", "encrypt", "b", "--repo", str(repo), input="bravo")
    btc2 = add_host(repo, "btc2")
    assert age_decrypt(btc2, repo / "secrets" / "a.age").returncode != 0
    # One secret nobody here can open: the rekey must stop before writing any file.
    (repo / "secrets" / "z.age").write_bytes(
        subprocess.run(["age", "--encrypt", "-r", "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"], input=b"z", capture_output=True, check=True).stdout
    )
    before = snapshot(repo)
    failed = run_cli("secrets", "rekey", "--repo", str(repo), "--device", device(repo))
    assert failed.returncode == CredentialError.exit_code and "secrets/z.age" in failed.stderr
    assert snapshot(repo) == before
    (repo / "secrets" / "z.age").unlink()
    done = run_cli("secrets", "rekey", "--repo", str(repo), "--device", device(repo))
    assert done.returncode == 0, done.stderr
    assert age_decrypt(btc2, repo / "secrets" / "a.age").stdout == b"alpha"
    assert age_decrypt(host_key(repo), repo / "secrets" / "b.age").stdout == b"bravo"


def test_edit_creates_changes_and_survives_a_failing_editor(repo, run_cli, tmp_path):
    editor = tmp_path / "editor.py"
    editor.write_text("import sys\nopen(sys.argv[1], 'a').write('line\\n')\n")
    env = os.environ.copy()
    os.environ["EDITOR"] = f"{sys.executable} {editor}"
    try:
        created = run_cli("secrets", "edit", "notes", "--repo", str(repo), "--device", device(repo))
        assert created.returncode == 0, created.stderr
        changed = run_cli("secrets", "edit", "notes", "--repo", str(repo), "--device", device(repo))
        assert changed.returncode == 0 and "updated" in changed.stdout
        assert age_decrypt(host_key(repo), repo / "secrets" / "notes.age").stdout == b"line\nline\n"
        before = snapshot(repo)
        os.environ["EDITOR"] = "false"
        failed = run_cli("secrets", "edit", "notes", "--repo", str(repo), "--device", device(repo))
        assert failed.returncode == SecretError.exit_code and "left unchanged" in failed.stderr
        assert snapshot(repo) == before
    finally:
        os.environ.clear()
        os.environ.update(env)


def test_missing_operator_recipient_and_bad_names(tmp_path, run_cli):
    (tmp_path / "secrets").mkdir()
    result = run_cli("secrets", "encrypt", "x", "--repo", str(tmp_path), input="x")
    assert result.returncode == SecretError.exit_code and "secrets init" in result.stderr
    assert not list((tmp_path / "secrets").iterdir())
    bad = run_cli("secrets", "encrypt", "../escape", "--repo", str(tmp_path), input="x")
    assert bad.returncode == SecretError.exit_code and "secret name" in bad.stderr


@pytest.mark.repo
def test_example_secret_in_the_repository_decrypts_with_the_committed_test_host_key():
    """secrets/example.age is encrypted to the example operator (the BIP-39 test mnemonic) and
    to a throwaway host key committed under tests/material as TEST MATERIAL ONLY."""
    from bcm_tools.devices.mnemonic import MnemonicDevice
    from bcm_tools.secrets import SecretsRepo, decrypt_secret

    root = Path(__file__).resolve().parents[3]
    example = root / "secrets" / "example.age"
    host_key = Path(__file__).parent / "material" / "example-host" / "ssh_host_ed25519_key"
    host_side = age_decrypt(host_key, example)
    assert host_side.returncode == 0, host_side.stderr
    assert host_side.stdout.startswith(b"# bcm example secret")
    operator_side = decrypt_secret(SecretsRepo(root), "example", MnemonicDevice(ABANDON))
    assert operator_side == host_side.stdout


def test_unwritable_output_and_missing_editor_are_one_line(repo, run_cli):
    run_cli("secrets", "encrypt", "s", "--repo", str(repo), input="x")
    before = snapshot(repo)
    result = run_cli("secrets", "decrypt", "s", "--repo", str(repo), "--device", device(repo),
                     "--output", str(repo.parent / "no-such-dir" / "out"))
    assert result.returncode == SecretError.exit_code and "cannot write" in result.stderr
    env = os.environ.copy()
    os.environ["EDITOR"] = "/nonexistent/editor"
    try:
        result = run_cli("secrets", "edit", "s", "--repo", str(repo), "--device", device(repo))
    finally:
        os.environ.clear()
        os.environ.update(env)
    assert result.returncode == SecretError.exit_code and "cannot start editor" in result.stderr
    assert "Traceback" not in result.stderr
    assert snapshot(repo) == before
