"""Operator secrets in `secrets/*.age`, readable by the hosts and by the operator's key device.

Layout of a bcm repository, as far as secrets go:

    secrets/operator.pub                  the operator's age recipient (`secrets init`)
    secrets/NAME.age                      one secret, a plain age file (agenix's format)
    hosts/HOST/ssh_host_ed25519_key.pub   a host's SSH host key, which age takes as a recipient

Every secret is encrypted to the operator and to every host that has a host key, so adding a
host is `rekey`. The operator's identity is derived on the device (see keys/operator.py) and
only ever held in memory; a host decrypts with its SSH host key at activation
(modules/secrets.nix). Files are replaced atomically: a failed command leaves the old file.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bcm_tools import age
from bcm_tools.devices.base import KeyDevice
from bcm_tools.errors import BackupError, CredentialError, SecretError
from bcm_tools.keys.operator import operator_age_identity, operator_age_recipient

SECRET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
HOST_KEY_FILE = "ssh_host_ed25519_key.pub"
OPERATOR_RECIPIENT_FILE = "operator.pub"


@dataclass(frozen=True)
class SecretsRepo:
    """A bcm repository checkout, seen from its secrets."""

    root: Path

    @property
    def secrets_dir(self) -> Path:
        return self.root / "secrets"

    @property
    def operator_file(self) -> Path:
        return self.secrets_dir / OPERATOR_RECIPIENT_FILE

    def secret_path(self, name: str) -> Path:
        name = name.removesuffix(".age")
        if not SECRET_NAME.match(name):
            raise SecretError(f"secret name {name!r} must be letters, digits, '.', '_' or '-'")
        return self.secrets_dir / f"{name}.age"

    def secret_names(self) -> list[str]:
        return sorted(p.name.removesuffix(".age") for p in self.secrets_dir.glob("*.age"))

    def host_keys(self) -> dict[str, str]:
        """Each host's SSH host public key, from hosts/HOST/ssh_host_ed25519_key.pub."""
        keys = {}
        for path in sorted((self.root / "hosts").glob(f"*/{HOST_KEY_FILE}")):
            line = path.read_text().strip()
            parts = line.split()
            if len(parts) < 2 or parts[0] != "ssh-ed25519":
                raise SecretError(f"{path}: expected one 'ssh-ed25519 AAAA...' line")
            keys[path.parent.name] = f"{parts[0]} {parts[1]}"
        return keys

    def operator_recipient(self) -> str:
        try:
            lines = self.operator_file.read_text().splitlines()
        except FileNotFoundError:
            raise SecretError(f"{self.operator_file} is missing: run `bcm-tools secrets init --device ...` first") from None
        keys = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
        if len(keys) != 1 or not keys[0].startswith("age1"):
            raise SecretError(f"{self.operator_file}: expected exactly one 'age1...' recipient line")
        return keys[0]

    def recipients(self) -> list[str]:
        """Operator first, then hosts: everyone a secret is encrypted to."""
        return [self.operator_recipient(), *self.host_keys().values()]


def init_operator(repo: SecretsRepo, device: KeyDevice) -> str:
    """Derive the operator's recipient on the device and record it in secrets/operator.pub."""
    recipient = operator_age_recipient(device)
    warning = "# INSECURE: derived from software keys, not a hardware wallet.\n" if device.insecure else ""
    text = (
        f"# bcm operator age recipient, derived on: {device.label}\n"
        f"{warning}"
        "# Its identity is re-derived on the device for each decryption; see docs/trezor.md.\n"
        f"{recipient}\n"
    )
    repo.secrets_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(repo.operator_file, text.encode(), mode=0o644)
    return recipient


def encrypt_secret(repo: SecretsRepo, name: str, plaintext: bytes) -> Path:
    """Encrypt `plaintext` to the operator and every host; atomically (re)write secrets/NAME.age."""
    path = repo.secret_path(name)
    ciphertext = age.encrypt(plaintext, repo.recipients())
    repo.secrets_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(path, ciphertext, mode=0o644)
    return path


def decrypt_secret(repo: SecretsRepo, name: str, device: KeyDevice) -> bytes:
    """Decrypt secrets/NAME.age with the operator identity derived on `device`."""
    path = repo.secret_path(name)
    try:
        ciphertext = path.read_bytes()
    except FileNotFoundError:
        raise SecretError(f"{_shown(repo, path)} does not exist") from None
    with age.identity_in_memory(operator_age_identity(device)) as identity:
        return _decrypt(repo, path, ciphertext, identity, device)


def _decrypt(repo: SecretsRepo, path: Path, ciphertext: bytes, identity: str, device: KeyDevice) -> bytes:
    shown = _shown(repo, path)
    try:
        return age.decrypt(ciphertext, [identity], source=shown)
    except CredentialError as err:
        if "not encrypted to" in str(err):
            raise CredentialError(
                f"{shown} is not encrypted to the operator key of {device.label} "
                "(wrong mnemonic, passphrase or device?)"
            ) from None
        raise
    except BackupError as err:
        raise SecretError(str(err)) from None


def rekey(repo: SecretsRepo, device: KeyDevice, names: list[str] | None = None) -> list[Path]:
    """Re-encrypt secrets to the current operator and hosts. All are decrypted before any is
    written, so a secret that cannot be opened leaves every file as it was."""
    names = names or repo.secret_names()
    recipients = repo.recipients()
    plaintexts = []
    with age.identity_in_memory(operator_age_identity(device)) as identity:
        for name in names:
            path = repo.secret_path(name)
            if not path.exists():
                raise SecretError(f"{_shown(repo, path)} does not exist")
            plaintexts.append((path, _decrypt(repo, path, path.read_bytes(), identity, device)))
    ciphertexts = [(path, age.encrypt(plain, recipients)) for path, plain in plaintexts]
    for path, ciphertext in ciphertexts:
        _write_atomic(path, ciphertext, mode=0o644)
    return [path for path, _ in ciphertexts]


def edit_secret(
    repo: SecretsRepo, name: str, device: KeyDevice, editor: Callable[[Path], None] | None = None
) -> bool:
    """Open the secret (or an empty file for a new one) in an editor; re-encrypt if it changed.

    The plaintext lives only in a private directory in memory-backed storage where there is one,
    and is overwritten before removal. Returns whether the secret was written.
    """
    path = repo.secret_path(name)
    old = decrypt_secret(repo, name, device) if path.exists() else None
    recipients = repo.recipients()  # fail on a missing recipient before the user types anything
    with age.private_dir() as workdir:
        plain = workdir / path.name.removesuffix(".age")
        plain.touch(mode=0o600)
        plain.write_bytes(old or b"")
        try:
            (editor or _run_editor)(plain)
            new = plain.read_bytes()
        finally:
            _shred(plain)
    if old is not None and new == old:
        return False
    if old is None and not new.strip():
        return False
    _write_atomic(path, age.encrypt(new, recipients), mode=0o644)
    return True


def write_private(path: Path, data: bytes) -> None:
    """Write decrypted plaintext for the operator: owner-only, replaced atomically."""
    _write_atomic(path, data, mode=0o600)


def _run_editor(path: Path) -> None:
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    try:
        result = subprocess.run([*editor.split(), str(path)], check=False)
    except OSError as err:
        raise SecretError(f"cannot start editor {editor!r}: {err.strerror}; secret left unchanged") from None
    if result.returncode != 0:
        raise SecretError(f"editor {editor!r} exited with status {result.returncode}; secret left unchanged")


def _shown(repo: SecretsRepo, path: Path) -> str:
    try:
        return str(path.relative_to(repo.root))
    except ValueError:
        return str(path)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write beside the target, fsync, then rename over it: readers see old or new, never half."""
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise SecretError(f"cannot write {path}: {err.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _shred(path: Path) -> None:
    if path.exists():
        size = path.stat().st_size
        with open(path, "r+b") as handle:
            handle.write(b"\0" * size)
            handle.flush()
            os.fsync(handle.fileno())
        path.unlink()


