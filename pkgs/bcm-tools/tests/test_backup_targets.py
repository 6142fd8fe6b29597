"""Backup targets on their own, local and SSH side by side: what another process can do to the
directory they write in. The SSH target talks to a real OpenSSH server on loopback
(sshd_loopback.py); test_backup.py runs both inside `backup watch` with real LND.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from bcm_tools.backup import LocalTarget, SshOptions, Target, backup_name, parse_target
from sshd_loopback import LoopbackSshd, backup_session_shells


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = LoopbackSshd(tmp_path_factory.mktemp("sshd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["local", "ssh"])
def kind(request) -> str:
    return request.param


@pytest.fixture
def directory(kind, sshd, tmp_path, request) -> Path:
    if kind == "local":
        path = tmp_path / "bulk"
    else:
        path = sshd.directory / f"remote-{request.node.name}"
    path.mkdir()
    return path


def open_target(kind: str, sshd: LoopbackSshd, directory: Path) -> Target:
    if kind == "local":
        return LocalTarget(directory)
    return parse_target(sshd.url(directory), SshOptions(identity=sshd.client_key, known_hosts=sshd.known_hosts))


def contents(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * 20


def test_a_symlink_planted_at_the_temporary_name_is_not_followed(kind, sshd, directory, tmp_path):
    """Whoever can write in the target's directory plants a symlink where the next copy's
    temporary file will be, pointing at a file of the watcher's user. The copy must neither
    write through it nor rename the link into place."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"not a backup\n")
    target = open_target(kind, sshd, directory)
    try:
        first = backup_name(1_800_000_000)
        target.store(first, contents(1), keep=5)
        name = backup_name(1_800_000_001)
        if kind == "local":
            planted = [directory / f".{name}.tmp"]
        else:
            # The remote side's temporary name carries its session shell's PID.
            planted = [directory / f".{name}.{pid}.tmp" for pid in backup_session_shells(directory)]
        assert planted
        for link in planted:
            link.symlink_to(victim)
        target.store(name, contents(2), keep=5)
        assert victim.read_bytes() == b"not a backup\n"
        assert not (directory / name).is_symlink()
        assert (directory / name).read_bytes() == contents(2)
    finally:
        target.close()
