"""Encryption to age recipients, through the `age` command (https://age-encryption.org).

The one place bcm-tools runs `age`. Recipients are public keys (`age1…`, `ssh-ed25519 …`,
plugin recipients such as a hardware key's) or files holding them; identities are files.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from bcm_tools.errors import BackupError, CredentialError, UsageError

AGE = os.environ.get("BCM_AGE", "age")


def _recipient_args(recipients: Sequence[str]) -> list[str]:
    if not recipients:
        raise UsageError("no age recipients given: a backup nobody can decrypt is useless")
    args: list[str] = []
    for recipient in recipients:
        recipient = recipient.strip()
        if recipient.startswith(("age1", "ssh-")):
            args += ["-r", recipient]
        elif Path(recipient).is_file():
            args += ["-R", recipient]
        else:
            raise UsageError(f"age recipient {recipient!r} is neither a public key nor a readable file")
    return args


def _stderr_line(stderr: bytes) -> str:
    """age's own error line, without the 'report unexpected errors' footer."""
    lines = [ln for ln in stderr.decode(errors="replace").splitlines() if "report unexpected" not in ln]
    text = " ".join(ln.strip() for ln in lines if ln.strip())
    return text.removeprefix("age: error: ").removeprefix("age: ")


def check_recipients(recipients: Sequence[str]) -> None:
    """Fails now, with age's reason, if any recipient is malformed (rather than at the first backup)."""
    encrypt(b"", recipients)


def encrypt(plaintext: bytes, recipients: Sequence[str]) -> bytes:
    run = subprocess.run(
        [AGE, "--encrypt", *_recipient_args(recipients)], input=plaintext, capture_output=True, check=False
    )
    if run.returncode != 0:
        raise CredentialError(f"age could not encrypt: {_stderr_line(run.stderr)}")
    return run.stdout


def decrypt(ciphertext: bytes, identities: Sequence[str | os.PathLike[str]], source: str = "input") -> bytes:
    """Decrypts with the first identity that matches; says which of wrong key/damaged file it was."""
    if not identities:
        raise UsageError("no age identity given to decrypt with")
    args: list[str] = []
    for identity in identities:
        if not Path(identity).is_file():
            raise CredentialError(f"age identity file {identity} does not exist")
        args += ["-i", str(identity)]
    run = subprocess.run([AGE, "--decrypt", *args], input=ciphertext, capture_output=True, check=False)
    if run.returncode == 0:
        return run.stdout
    reason = _stderr_line(run.stderr)
    if "no identity matched" in reason:
        raise CredentialError(f"{source} is not encrypted to the given identity (wrong key?)")
    if "reading" in reason and ("identity" in reason or "identities" in reason):
        raise CredentialError(f"unusable age identity: {reason}")
    if "EOF" in reason or "failed to read" in reason or "authenticate payload" in reason:
        raise BackupError(f"{source} is truncated or damaged: age says {reason}")
    raise BackupError(f"{source} cannot be decrypted: age says {reason}")


def recipient_of(identity: str | os.PathLike[str]) -> str:
    """The public recipient of an age identity file (`age-keygen -y`)."""
    run = subprocess.run([AGE + "-keygen", "-y", str(identity)], capture_output=True, check=False)
    if run.returncode != 0:
        raise CredentialError(f"cannot read age identity {identity}: {_stderr_line(run.stderr)}")
    return run.stdout.decode().strip().splitlines()[0]


@contextmanager
def identity_in_memory(identity: str) -> Iterator[str]:
    """A path `age -i` can read `identity` from, without the key touching a disk.

    On Linux an anonymous in-memory file (memfd) that age opens through /proc; elsewhere a 0600
    file in a private temporary directory, removed at once afterwards.
    """
    data = (identity.strip() + "\n").encode()
    if hasattr(os, "memfd_create") and os.path.isdir(f"/proc/{os.getpid()}/fd"):
        fd = os.memfd_create("bcm-age-identity", os.MFD_CLOEXEC)
        try:
            os.write(fd, data)
            yield f"/proc/{os.getpid()}/fd/{fd}"
        finally:
            os.close(fd)
        return
    with private_dir() as directory:
        path = directory / "identity"
        path.touch(mode=0o600)
        path.write_bytes(data)
        yield str(path)


@contextmanager
def private_dir() -> Iterator[Path]:
    """A 0700 temporary directory for plaintext, in memory where the system offers one
    ($XDG_RUNTIME_DIR or /dev/shm), removed afterwards."""
    base = os.environ.get("XDG_RUNTIME_DIR")
    if not base or not os.path.isdir(base):
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    with tempfile.TemporaryDirectory(prefix="bcm-", dir=base) as name:
        os.chmod(name, 0o700)
        yield Path(name)
