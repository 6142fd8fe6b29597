"""The SSH backup target against a real OpenSSH server on loopback (sshd_loopback.py): one
connection for many copies, a connection lost between copies and in the middle of one, and host
keys that do not match. test_backup.py runs the same target inside `backup watch` with real LND.
"""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from bcm_tools.backup import SshOptions, SshTarget, backup_names, parse_target
from bcm_tools.errors import TargetError
from lnd_regtest import wait_for
from sshd_loopback import LoopbackSshd, backup_connections


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = LoopbackSshd(tmp_path_factory.mktemp("sshd"), holdable_sync=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def remote(sshd, request) -> Path:
    directory = sshd.directory / f"remote-{request.node.name}"
    directory.mkdir()
    return directory


def connect(sshd: LoopbackSshd, remote: Path, known_hosts: Path | None = None) -> SshTarget:
    target = parse_target(sshd.url(remote), SshOptions(identity=sshd.client_key, known_hosts=known_hosts or sshd.known_hosts))
    assert isinstance(target, SshTarget)
    return target


NODE = "02ab34cd56ef7890"  # the tag of the node whose backups these are


def contents(i: int) -> bytes:
    return hashlib.sha256(str(i).encode()).digest() * 20


def store(target: SshTarget, i: int, keep: int = 5) -> tuple[str, bytes]:
    """Stores the i-th backup; returns the name the target gave it, and its contents."""
    data = contents(i)
    return target.store(NODE, data, keep, 1_800_000_000 + i), data


def on_disk(remote: Path) -> dict[str, bytes]:
    """What the remote directory holds, read from the remote host's own filesystem."""
    return {name: (remote / name).read_bytes() for name in backup_names(os.listdir(remote))}


def leftovers(remote: Path) -> list[str]:
    return [n for n in os.listdir(remote) if n.endswith(".tmp")]


def test_many_copies_go_over_one_connection(sshd, remote):
    logins = sshd.logins()
    target = connect(sshd, remote)
    try:
        stored = []
        for i in range(40):
            name, data = store(target, i, keep=50)
            assert target.read(name) == data
            stored.append(name)
        assert target.names() == stored
        assert target.names(NODE) == stored and target.latest(NODE) == stored[-1]
        assert sshd.logins() - logins == 1, "every store, read and listing should share the first connection"
        assert len(backup_connections(os.getpid())) == 1
    finally:
        target.close()
    # Closing ends the connection; nothing stays behind on either side.
    wait_for("the connection to end", lambda: not sshd.connections() and not backup_connections(os.getpid()), timeout=10)


def test_a_dropped_connection_is_made_again_at_the_next_copy(sshd, remote):
    logins = sshd.logins()
    target = connect(sshd, remote)
    try:
        first = store(target, 1)
        sshd.drop_connections()  # as a network outage or a restart of the remote host would
        # Our ssh notices and exits. (A copy sent before it has noticed fails and is retried by
        # the target's worker, as when the connection is killed in the middle of a copy.)
        wait_for("our end to notice", lambda: target._session.proc.poll() is not None, timeout=10)
        second = store(target, 2)
        assert on_disk(remote) == dict([first, second])
        assert sshd.logins() - logins == 2
    finally:
        target.close()


def test_a_connection_killed_mid_copy_leaves_the_previous_copy_and_the_next_one_lands(sshd, remote):
    """The connection dies after the upload, before the rename: the copy fails, the previous one
    is untouched, and the next attempt connects again and lands."""
    logins = sshd.logins()
    target = connect(sshd, remote)
    try:
        first = store(target, 1)
        failed: list[BaseException] = []

        def store_second() -> None:
            try:
                store(target, 2)
            except TargetError as err:
                failed.append(err)

        with sshd.hold_sync():
            writer = threading.Thread(target=store_second)
            writer.start()
            wait_for("the upload to arrive", lambda: leftovers(remote), timeout=20)
            (connection,) = backup_connections(os.getpid())
            os.kill(connection, signal.SIGKILL)
            writer.join(timeout=30)
            assert not writer.is_alive()
            assert failed and "connection lost" in str(failed[0]), failed
            assert on_disk(remote) == dict([first])
        # The cut-off copy on the remote side may still complete its rename now; it was checked
        # whole before. Either way the retry lands, newest, and nothing is left half-written.
        second = store(target, 2)
        assert target.latest(NODE) == second[0]
        assert set(on_disk(remote).values()) == {first[1], second[1]}
        assert target.read(second[0]) == second[1]
        wait_for("no temporary files left", lambda: not leftovers(remote), timeout=10)
        assert sshd.logins() - logins == 2
    finally:
        target.close()


def test_an_upload_cut_short_never_replaces_a_good_remote_copy(sshd, remote):
    """Our side dies mid-upload. The session reads exactly the size announced and ends, storing
    nothing, when the bytes stop short; and the store itself checks the upload against its
    SHA-256, so a short file never replaces a good one whatever brings it."""
    target = connect(sshd, remote)
    try:
        first = store(target, 1)
        full = contents(2)
        half = full[: len(full) // 2]
        session = target._session
        request = f"store {NODE} 20270115T080002Z {hashlib.sha256(full).hexdigest()} 5"
        status, _, err = session.request(f"{request} {len(half)}", half)
        assert status == 6 and b"upload arrived incomplete" in err
        assert on_disk(remote) == dict([first])

        with session.lock:
            session._write(f"{request} {len(full)}\n".encode() + half, time.monotonic() + 10)
            session._stop()  # as our process dying would: end of input, half-way through
        assert on_disk(remote) == dict([first])
        assert target.read(first[0]) == first[1]
        assert not leftovers(remote)
    finally:
        target.close()


def test_a_changed_host_key_is_refused(tmp_path):
    server = LoopbackSshd(tmp_path / "sshd")
    server.start()
    remote = tmp_path / "sshd" / "remote"
    remote.mkdir()
    target = connect(server, remote)
    try:
        first = store(target, 1)
        # The host comes back with another key: reinstalled, or someone else answering its address.
        server.stop()
        server.new_host_key()
        server.start()
        for attempt in range(2):
            with pytest.raises(TargetError, match="cannot connect: its host key is not the one in known_hosts \\(Host key verification failed.\\)"):
                store(target, 2 + attempt)
        assert on_disk(remote) == dict([first])
        assert server.logins() == 1
    finally:
        try:
            target.close()
        finally:
            server.stop()


def test_an_unknown_host_is_not_trusted_on_first_use(sshd, remote, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    logins = sshd.logins()
    target = connect(sshd, remote, known_hosts=empty)
    try:
        with pytest.raises(TargetError, match=r"cannot connect: known_hosts has no key for it \(Host key verification failed.\)"):
            store(target, 1)
        assert empty.read_text() == ""
        assert on_disk(remote) == {}
        assert sshd.logins() == logins
    finally:
        target.close()
