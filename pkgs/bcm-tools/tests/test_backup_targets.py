"""Backup targets on their own, local and SSH side by side: what another writer, another node or
a clock set back can do to the directory they write in. The SSH target talks to a real OpenSSH
server on loopback (sshd_loopback.py); test_backup.py runs both inside `backup watch` with real
LND.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import time
from pathlib import Path

import pytest

from bcm_tools.backup import LOCK_NAME, LocalTarget, SshOptions, Target, backup_name, backup_names, parse_target
from bcm_tools.errors import BcmError
from sshd_loopback import LoopbackSshd, backup_session_shells

ALICE = "02ab34cd56ef7890"  # node tags: the first 16 hex digits of each node's public key
BOB = "03fe98dc76ba5432"


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


def contents(node: str, i: int) -> bytes:
    return hashlib.sha256(f"{node} {i}".encode()).digest() * 20


def temporaries(directory: Path) -> list[str]:
    return [n for n in os.listdir(directory) if n.startswith(".") and n != LOCK_NAME]


def test_a_symlink_planted_at_the_temporary_name_is_not_followed(kind, sshd, directory, tmp_path):
    """Whoever can write in the target's directory plants a symlink where the next copy's
    temporary file will be, pointing at a file of the watcher's user. The copy must neither
    write through it nor rename the link into place."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"not a backup\n")
    target = open_target(kind, sshd, directory)
    try:
        target.store(ALICE, contents(ALICE, 1), 5, 1_800_000_000)
        # The next name is predictable: the node, the next number, the time given.
        name = backup_name(ALICE, 2, 1_800_000_001)
        if kind == "local":
            planted = [directory / f".{name}.tmp"]
        else:
            # The remote side's temporary name carries its session shell's PID.
            planted = [directory / f".{name}.{pid}.tmp" for pid in backup_session_shells(directory)]
        assert planted
        for link in planted:
            link.symlink_to(victim)
        assert target.store(ALICE, contents(ALICE, 2), 5, 1_800_000_001) == name
        assert victim.read_bytes() == b"not a backup\n"
        assert not (directory / name).is_symlink()
        assert (directory / name).read_bytes() == contents(ALICE, 2)
        assert not temporaries(directory)
    finally:
        target.close()


def test_a_clock_set_back_never_costs_the_backup_just_written(kind, sshd, directory):
    """The names already in the target carry times a day ahead of the writer's clock (it was
    wrong, and has been set right). The backup written now is kept, and is the newest."""
    target = open_target(kind, sshd, directory)
    try:
        now = time.time()
        ahead = [target.store(ALICE, contents(ALICE, i), 3, now + 86_400 + i) for i in range(3)]
        name = target.store(ALICE, contents(ALICE, 3), 3, now)
        assert target.names(ALICE) == [*ahead[1:], name]
        assert target.latest(ALICE) == name
        assert target.read(name) == contents(ALICE, 3)
    finally:
        target.close()


def _writer(kind: str, sshd: LoopbackSshd, directory: Path, node: str, stores: int, keep: int, out) -> None:
    """One node's writer, in a process of its own: `stores` backups, each checked right after."""
    target = open_target(kind, sshd, directory)
    failures: list[str] = []
    written: dict[str, int] = {}
    try:
        for i in range(stores):
            try:
                name = target.store(node, contents(node, i), keep, 1_800_000_000 + i)
            except BcmError as err:
                failures.append(str(err))
                continue
            written[name] = i
            if target.latest(node) != name:
                failures.append(f"{name} is not {node}'s newest right after it was written")
    except BaseException as err:  # noqa: BLE001 - reported to the test, whatever it is
        failures.append(repr(err))
    finally:
        target.close()
        out.put((node, failures, written))


@pytest.mark.parametrize("keep", [30, 1])
def test_two_nodes_writing_at_once_on_one_target_each_keep_their_own(kind, sshd, directory, keep):
    """Two nodes (two processes, each with its own connection for SSH) store 300 backups each into
    one directory at the same time. Without the target's lock, node names and sweeping only one's
    own temporaries, stores failed (a temporary swept away by the other writer, a sequence taken
    twice) and each writer's pruning removed the other's newest. Here none fails, each node ends
    with its own `keep` newest, and every file holds what its node wrote under that name."""
    stores = 300
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    writers = [
        context.Process(target=_writer, args=(kind, sshd, directory, node, stores, keep, out)) for node in (ALICE, BOB)
    ]
    for writer in writers:
        writer.start()
    results = {}
    for _ in writers:
        node, failures, written = out.get(timeout=300)
        results[node] = (failures, written)
    for writer in writers:
        writer.join(30)
        assert writer.exitcode == 0
    for node in (ALICE, BOB):
        failures, written = results[node]
        assert failures == [], f"{node}: {len(failures)} of {stores} stores failed, first: {failures[:3]}"
        assert len(written) == stores
        names = backup_names(os.listdir(directory), node)
        assert names == backup_names(list(written))[-keep:]
        for name in names:
            assert (directory / name).read_bytes() == contents(node, written[name])
    assert len(backup_names(os.listdir(directory))) == 2 * keep
    assert not temporaries(directory)
