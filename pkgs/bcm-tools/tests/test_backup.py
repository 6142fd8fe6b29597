"""Channel backups against real daemons: btcd in regtest, two LND nodes, a loopback sshd.

Every test here talks to real processes on 127.0.0.1 (see lnd_regtest.py and sshd_loopback.py);
`bcm-tools backup watch` runs as its own process, as it would under systemd.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bcm_tools import age
from bcm_tools import backup as backup_module
from bcm_tools.backup import LocalTarget, SshOptions, node_tag, parse_target
from bcm_tools.lnd import Lnd
from lnd_regtest import LndNode, Network, stop_process, wait_for
from sshd_loopback import LoopbackSshd, backup_connections

pytestmark = [pytest.mark.lnd, pytest.mark.btcd]

# The RPCs `backup watch` makes, and nothing else; the NixOS module bakes the same set.
WATCH_URIS = (
    "/lnrpc.Lightning/GetInfo",
    "/lnrpc.Lightning/SubscribeChannelBackups",
    "/lnrpc.Lightning/ExportAllChannelBackups",
    "/lnrpc.Lightning/VerifyChanBackup",
)
CLI = [sys.executable, "-c", "from bcm_tools.cli import main; main()"]


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    net = Network(tmp_path_factory.mktemp("regtest"))
    try:
        alice, bob = net.start(["alice", "bob"])
        net.fund(alice, 5_000_000, bob)
        yield net
    finally:
        net.stop()


@pytest.fixture(scope="module")
def alice(network) -> LndNode:
    return network.nodes[0]


@pytest.fixture(scope="module")
def bob(network) -> LndNode:
    return network.nodes[1]


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> dict[str, Path]:
    """age identities: the operator's, a second recipient's, the watcher's own, and a stranger's."""
    directory = tmp_path_factory.mktemp("age")
    out = {}
    for name in ("operator", "second", "watcher", "stranger"):
        out[name] = directory / f"{name}.key"
        subprocess.run(["age-keygen", "-o", str(out[name])], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = LoopbackSshd(tmp_path_factory.mktemp("sshd"), holdable_sync=True)
    server.start()
    try:
        yield server
    finally:
        server.stop()


class Watch:
    """`bcm-tools backup watch` as a child process, read through its journal and metrics."""

    def __init__(self, directory: Path, node: LndNode, targets: list[str], keys: dict[str, Path],
                 sshd: LoopbackSshd | None, extra: list[str] = (), wrapper: list[str] = (),
                 clock_ahead: float = 0):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.journal = directory / "journal.jsonl"
        self.log = directory / "watch.log"
        macaroon = directory / "backup.macaroon"
        if not macaroon.exists():
            node.bake_macaroon(macaroon, *WATCH_URIS)
        cli = CLI
        if clock_ahead:
            # The watcher's wall clock (time.time) runs ahead by this much; nothing else changes.
            cli = [sys.executable, "-c", f"import time; now = time.time; time.time = lambda: now() + {clock_ahead!r}; "
                   "from bcm_tools.cli import main; main()"]
        args = [
            *wrapper, *cli, "backup", "watch",
            "--lnd-rpc", node.rpc, "--lnd-tls-cert", str(node.tls_cert), "--lnd-macaroon", str(macaroon),
            "-r", age.recipient_of(keys["operator"]), "-r", age.recipient_of(keys["second"]),
            "--journal", str(self.journal), "--retry-max", "2", *extra,
        ]
        for target in targets:
            args += ["-t", target]
        if sshd is not None:
            args += ["--ssh-identity", str(sshd.client_key), "--ssh-known-hosts", str(sshd.known_hosts)]
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONDONTWRITEBYTECODE": "1"}
        self.proc = subprocess.Popen(args, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=env)

    def entries(self) -> list[dict]:
        if not self.journal.exists():
            return []
        return [json.loads(line) for line in self.journal.read_text().splitlines() if line.endswith("}")]

    def files(self, target: str) -> list[str]:
        """The files the journal says this watcher made durable in `target`."""
        return [entry["file"] for entry in self.entries() if entry["target"] == target]

    def mark(self) -> int:
        """A point in the journal; `wait_durable(..., since=mark)` ignores what came before."""
        return len(self.entries())

    def wait_durable(self, target: str, chan_points: list[str], timeout: float = 60, since: int = 0) -> dict:
        """The first journal entry (from `since` on) saying `target` holds exactly `chan_points`."""

        def found():
            if self.proc.poll() is not None:
                raise AssertionError(f"watcher exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            for entry in self.entries()[since:]:
                if entry["target"] == target and sorted(entry["chan_points"]) == sorted(chan_points):
                    return entry
            return None

        try:
            return wait_for(f"{target} to hold {len(chan_points)} channels", found, timeout=timeout)
        except TimeoutError:
            log = self.log.read_text()[-3000:]
            raise AssertionError(f"{target} never got {chan_points}; watcher log:\n{log}") from None

    def stop(self) -> None:
        stop_process(self.proc)


def check_latest(target_spec: str, sshd: LoopbackSshd | None, keys: dict[str, Path], node: LndNode,
                 chan_points: list[str]) -> str:
    """The newest file of `node` in the target decrypts with each recipient's key and LND verifies it."""
    ssh = SshOptions(identity=sshd.client_key, known_hosts=sshd.known_hosts) if sshd else None
    target = parse_target(target_spec, ssh)
    name = target.latest(node_tag(node.pubkey()))
    assert name is not None, f"{target_spec} holds no backup"
    data = target.read(name)
    with Lnd(node.endpoint()) as lnd:
        for who in ("operator", "second"):
            plain = age.decrypt(data, [keys[who]])
            assert sorted(lnd.verify_multi(plain)) == sorted(chan_points)
    return name


def test_every_open_and_close_lands_encrypted_and_verified_in_every_target(
    network, alice, bob, keys, sshd, tmp_path
):
    local = tmp_path / "bulk"
    local.mkdir()
    remote = sshd.directory / "remote-1"
    remote.mkdir()
    targets = [str(local), sshd.url(remote)]
    labels = [parse_target(t).label for t in targets]
    metrics = tmp_path / "lnd_backup.prom"
    watch = Watch(tmp_path / "watch", alice, targets, keys, sshd,
                  extra=["--keep", "3", "--metrics", str(metrics), "--check-identity", str(keys["watcher"])])
    try:
        expected = alice.channel_points()
        for label in labels:
            watch.wait_durable(label, expected)
        steps = [("open", None), ("open", None), ("close", 0), ("open", None), ("close", 1)]
        opened: list[str] = []
        for action, which in steps:
            mark = watch.mark()
            if action == "open":
                opened.append(network.open_channel(alice, bob))
            else:
                network.close_channel(alice, opened[which])
            expected = alice.channel_points()
            for label, spec in zip(labels, targets, strict=True):
                watch.wait_durable(label, expected, since=mark)
                check_latest(spec, sshd, keys, alice, expected)
        # --keep 3: older versions are pruned, newest kept, names carry their time.
        for spec in targets:
            names = parse_target(spec, SshOptions(identity=sshd.client_key, known_hosts=sshd.known_hosts)).names()
            assert len(names) == 3
        prom = metrics.read_text()
        for label in labels:
            assert f'bcm_lnd_backup_channels{{target="{label}"}} {len(expected)}' in prom
            assert f'bcm_lnd_backup_last_success_timestamp_seconds{{target="{label}"}}' in prom
            assert f'bcm_lnd_backup_failures_total{{target="{label}"}} 0' in prom
        assert f"bcm_lnd_backup_lnd_channels {len(expected)}\n" in prom
    finally:
        watch.stop()


def test_a_target_that_goes_away_is_retried_and_catches_up_without_holding_up_the_other(
    network, alice, bob, keys, sshd, tmp_path
):
    local = tmp_path / "bulk"
    local.mkdir()
    remote = sshd.directory / "remote-2"
    remote.mkdir()
    targets = [str(local), sshd.url(remote)]
    local_label, ssh_label = (parse_target(t).label for t in targets)
    metrics = tmp_path / "lnd_backup.prom"
    watch = Watch(tmp_path / "watch", alice, targets, keys, sshd, extra=["--metrics", str(metrics)])
    try:
        before = alice.channel_points()
        watch.wait_durable(local_label, before)
        watch.wait_durable(ssh_label, before)

        # The SSH host goes down; the local disk keeps getting backups meanwhile.
        sshd.stop()
        mark = watch.mark()
        point = network.open_channel(alice, bob)
        now = alice.channel_points()
        watch.wait_durable(local_label, now, timeout=30, since=mark)
        wait_for("a failed SSH attempt in metrics",
                 lambda: f'bcm_lnd_backup_failures_total{{target="{ssh_label}"}} 0' not in metrics.read_text())
        assert not any(e["target"] == ssh_label and sorted(e["chan_points"]) == now for e in watch.entries())
        sshd.start()
        watch.wait_durable(ssh_label, now, timeout=60, since=mark)
        check_latest(targets[1], sshd, keys, alice, now)

        # The bulk disk goes away (unmounted: its directory is gone); the SSH host carries on.
        away = tmp_path / "bulk-unmounted"
        local.rename(away)
        mark = watch.mark()
        network.close_channel(alice, point)
        after = alice.channel_points()
        watch.wait_durable(ssh_label, after, timeout=30, since=mark)
        wait_for("a failed local attempt in metrics",
                 lambda: f'bcm_lnd_backup_failures_total{{target="{local_label}"}} 0' not in metrics.read_text())
        assert not local.exists(), "the watcher must not create a missing target directory"
        away.rename(local)
        watch.wait_durable(local_label, after, timeout=60, since=mark)
        check_latest(targets[0], None, keys, alice, after)
    finally:
        watch.stop()


def test_one_ssh_connection_carries_every_change_and_a_lost_one_is_made_again(
    network, alice, bob, keys, sshd, tmp_path
):
    """Many channel changes go to the SSH target over the one connection the watcher opened.
    Killing that connection in the middle of a copy (uploaded, not yet renamed) leaves the
    previous remote backup as it was; the target shows as behind until the watcher has
    connected again and the copy is durable; the next change lands over the new connection."""
    remote = sshd.directory / "remote-reuse"
    remote.mkdir()
    target = sshd.url(remote)
    label = parse_target(target).label
    metrics = tmp_path / "lnd_backup.prom"
    logins = sshd.logins()
    watch = Watch(tmp_path / "watch", alice, [target], keys, sshd,
                  extra=["--metrics", str(metrics), "--check-identity", str(keys["watcher"])])

    def on_disk() -> dict[str, bytes]:
        return {name: (remote / name).read_bytes() for name in backup_module.backup_names(os.listdir(remote))}

    def behind() -> str:
        return f'bcm_lnd_backup_behind{{target="{label}"}} 1' in metrics.read_text()

    try:
        watch.wait_durable(label, alice.channel_points())
        opened: list[str] = []
        for action in ("open", "open", "close", "open", "close"):
            mark = watch.mark()
            if action == "open":
                opened.append(network.open_channel(alice, bob))
            else:
                network.close_channel(alice, opened.pop(0))
            watch.wait_durable(label, alice.channel_points(), since=mark)
        assert sshd.logins() - logins == 1, "six backups, each written and read back, over one connection"

        before = on_disk()
        mark = watch.mark()
        with sshd.hold_sync():
            opened.append(network.open_channel(alice, bob))
            now = alice.channel_points()
            wait_for("the upload to arrive", lambda: [n for n in os.listdir(remote) if n.endswith(".tmp")], timeout=30)
            (connection,) = backup_connections(watch.proc.pid)
            os.kill(connection, signal.SIGKILL)
            wait_for("the failed copy in metrics",
                     lambda: f'bcm_lnd_backup_failures_total{{target="{label}"}} 0' not in metrics.read_text())
            assert behind()
            assert on_disk() == before
            assert not any(e["target"] == label and sorted(e["chan_points"]) == sorted(now) for e in watch.entries()[mark:])
        watch.wait_durable(label, now, since=mark)
        wait_for("the target no longer behind", lambda: not behind(), timeout=10)
        assert all(on_disk()[name] == data for name, data in before.items())
        assert sshd.logins() - logins == 2

        mark = watch.mark()
        network.close_channel(alice, opened.pop(0))
        watch.wait_durable(label, alice.channel_points(), since=mark)
        assert sshd.logins() - logins == 2, "the next change goes over the new connection"
        check_latest(target, sshd, keys, alice, alice.channel_points())
    finally:
        watch.stop()


def test_two_nodes_sharing_targets_each_keep_their_own_newest(network, alice, bob, keys, sshd, tmp_path):
    """alice's and bob's watchers write to the same local and SSH directories, and a channel
    between them changes both nodes' backups at once. Each file names its node; each node keeps
    its own `--keep 2` newest, and its newest is its own current backup."""
    local = tmp_path / "shared"
    local.mkdir()
    remote = sshd.directory / "remote-shared"
    remote.mkdir()
    targets = [str(local), sshd.url(remote)]
    labels = [parse_target(t).label for t in targets]
    ssh = SshOptions(identity=sshd.client_key, known_hosts=sshd.known_hosts)
    watches = {node: Watch(tmp_path / node.name, node, targets, keys, sshd, extra=["--keep", "2"]) for node in (alice, bob)}
    try:
        for node, watch in watches.items():
            for label in labels:
                watch.wait_durable(label, node.channel_points())
        for _ in range(2):
            marks = {node: watch.mark() for node, watch in watches.items()}
            network.open_channel(alice, bob)
            for node, watch in watches.items():
                now = node.channel_points()
                for label, spec in zip(labels, targets, strict=True):
                    entry = watch.wait_durable(label, now, since=marks[node])
                    assert entry["node"] == node.pubkey()
                    assert check_latest(spec, sshd, keys, node, now) in watch.files(label)
        for spec in targets:
            target = parse_target(spec, ssh)
            mine = {node: target.names(node_tag(node.pubkey())) for node in (alice, bob)}
            assert all(len(names) == 2 for names in mine.values()), mine
            assert sorted(target.names()) == sorted(mine[alice] + mine[bob])
    finally:
        for watch in watches.values():
            watch.stop()


def test_a_clock_behind_the_names_in_the_target_never_costs_the_new_backup(
    network, alice, bob, keys, sshd, tmp_path
):
    """A watcher whose clock ran a day ahead filled the targets; the clock is then set right (a
    reboot, NTP), so the names already there are in the watcher's future. What it writes now must
    stay, be the newest, and be in the target whenever the journal says it is durable."""
    local = tmp_path / "bulk"
    local.mkdir()
    remote = sshd.directory / "remote-clock"
    remote.mkdir()
    targets = [str(local), sshd.url(remote)]
    labels = [parse_target(t).label for t in targets]
    ssh = SshOptions(identity=sshd.client_key, known_hosts=sshd.known_hosts)
    ahead = Watch(tmp_path / "ahead", alice, targets, keys, sshd, extra=["--keep", "1"], clock_ahead=86_400)
    try:
        for label in labels:
            ahead.wait_durable(label, alice.channel_points())
    finally:
        ahead.stop()

    watch = Watch(tmp_path / "watch", alice, targets, keys, sshd, extra=["--keep", "1"])
    try:
        for label, spec in zip(labels, targets, strict=True):
            entry = watch.wait_durable(label, alice.channel_points())
            assert entry["file"] in parse_target(spec, ssh).names(), f"{label}: journalled durable, then pruned"
        mark = watch.mark()
        network.open_channel(alice, bob)
        now = alice.channel_points()
        for label, spec in zip(labels, targets, strict=True):
            watch.wait_durable(label, now, since=mark)
            assert check_latest(spec, sshd, keys, alice, now) in watch.files(label)
    finally:
        watch.stop()


def test_a_journal_that_cannot_be_written_stops_nothing(network, alice, bob, keys, tmp_path):
    """The journal cannot be opened (its directory is missing: a disk not mounted). The target's
    worker logs it, counts it in the metrics and carries on: the next change still lands, and the
    entries it could not write are written once the journal can be, in order, none lost."""
    local = tmp_path / "bulk"
    local.mkdir()
    label = parse_target(str(local)).label
    metrics = tmp_path / "lnd_backup.prom"
    journal_disk = tmp_path / "journal-disk"
    (tmp_path / "watch").mkdir()
    (tmp_path / "watch" / "journal.jsonl").symlink_to(journal_disk / "journal.jsonl")
    before = alice.channel_points()
    watch = Watch(tmp_path / "watch", alice, [str(local)], keys, None, extra=["--metrics", str(metrics)])
    try:
        wait_for("the first copy", lambda: LocalTarget(local).names(), timeout=60)
        wait_for("the journal failure in metrics",
                 lambda: "bcm_lnd_backup_journal_failures_total 0" not in metrics.read_text()
                 and "bcm_lnd_backup_journal_failures_total" in metrics.read_text(), timeout=30)
        journal_disk.mkdir()
        first = watch.wait_durable(label, before, timeout=30)
        assert first["file"] in LocalTarget(local).names()

        point = network.open_channel(alice, bob)
        now = alice.channel_points()
        assert point in now
        second = watch.wait_durable(label, now, timeout=60)
        assert watch.entries().index(first) < watch.entries().index(second)
        check_latest(str(local), None, keys, alice, now)
        assert watch.proc.poll() is None
    finally:
        watch.stop()


def test_kill_9_during_a_write_leaves_the_previous_backup_intact(network, alice, bob, keys, tmp_path):
    """strace kills the watcher with SIGKILL at the exact moment it renames its second backup
    into place: the new file is fully written to its temporary name, the old one untouched."""
    local = tmp_path / "bulk"
    local.mkdir()
    target = str(local)
    label = parse_target(target).label
    renames = "rename,renameat,renameat2"
    # Only the target worker thread renames (no --metrics); strace counts calls per thread.
    wrapper = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={renames}",
               "-e", f"inject={renames}:signal=KILL:when=2"]
    before = alice.channel_points()
    watch = Watch(tmp_path / "watch", alice, [target], keys, None, wrapper=wrapper)
    try:
        watch.wait_durable(label, before)
        first = LocalTarget(local).names()
        assert len(first) == 1
        point = network.open_channel(alice, bob)
        wait_for("the watcher to die", lambda: watch.proc.poll() is not None, timeout=60)
        leftovers = [p.name for p in local.iterdir() if p.name.endswith(".tmp")]
        assert leftovers, "the kill should have hit with the new backup still under its temporary name"
        assert LocalTarget(local).names() == first
        check_latest(target, None, keys, alice, before)
    finally:
        watch.stop()

    # Started again, it writes the current state and sweeps the leftover.
    again = Watch(tmp_path / "watch-again", alice, [target], keys, None)
    try:
        now = alice.channel_points()
        assert point in now
        again.wait_durable(label, now)
        check_latest(target, None, keys, alice, now)
        assert not [p for p in local.iterdir() if p.name.endswith(".tmp")]
    finally:
        again.stop()


def test_sigterm_during_a_copy_finishes_it_records_it_and_exits_0(network, alice, bob, keys, tmp_path):
    """strace sends SIGTERM, as systemd's stop would, at the moment the watcher renames its
    second backup into place. The watcher finishes that copy, records it in the journal and
    exits 0: no temporary file is left, and the journal names exactly the files the target holds."""
    local = tmp_path / "bulk"
    local.mkdir()
    target = str(local)
    label = parse_target(target).label
    renames = "rename,renameat,renameat2"
    # Only the target worker thread renames (no --metrics); strace counts calls per thread.
    wrapper = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", f"trace={renames}",
               "-e", f"inject={renames}:signal=TERM:when=2"]
    watch = Watch(tmp_path / "watch", alice, [target], keys, None, wrapper=wrapper)
    try:
        watch.wait_durable(label, alice.channel_points())
        network.open_channel(alice, bob)
        wait_for("the watcher to stop", lambda: watch.proc.poll() is not None, timeout=60)
        log = watch.log.read_text()
        assert watch.proc.returncode == 0, log
        assert "Traceback" not in log
        assert not [p.name for p in local.iterdir() if p.name.endswith(".tmp")]
        entries = watch.entries()
        assert len(entries) >= 2, "the copy under way when the signal came is finished and recorded"
        assert sorted(e["file"] for e in entries) == LocalTarget(local).names()
        check_latest(target, None, keys, alice, entries[-1]["chan_points"])
    finally:
        watch.stop()


def test_sigterm_while_an_ssh_copy_hangs_cuts_it_off_whole_and_exits_0(network, alice, bob, keys, sshd, tmp_path):
    """The SSH target's remote `sync` hangs with a copy uploaded but not renamed, and the watcher
    is told to stop. It waits a while for the copy, then cuts the connection and exits 0. The
    journal names only files the target holds; the remote side either finishes the cut-off
    copy whole or drops it, and leaves no temporary file."""
    remote = sshd.directory / "remote-sigterm"
    remote.mkdir()
    target = sshd.url(remote)
    label = parse_target(target).label
    watch = Watch(tmp_path / "watch", alice, [target], keys, sshd)
    try:
        watch.wait_durable(label, alice.channel_points())
        with sshd.hold_sync():
            network.open_channel(alice, bob)
            wait_for("the upload to arrive", lambda: [n for n in os.listdir(remote) if n.endswith(".tmp")], timeout=30)
            os.kill(watch.proc.pid, signal.SIGTERM)
            wait_for("the watcher to stop", lambda: watch.proc.poll() is not None, timeout=40)
            log = watch.log.read_text()
            assert watch.proc.returncode == 0, log
            assert "Traceback" not in log
            on_disk = backup_module.backup_names(os.listdir(remote))
            entries = watch.entries()
            assert len(entries) == 1 and entries[0]["file"] in on_disk
        wait_for("no temporary file left", lambda: not [n for n in os.listdir(remote) if n.endswith(".tmp")], timeout=20)
        with Lnd(alice.endpoint()) as lnd:
            for name in backup_module.backup_names(os.listdir(remote)):
                lnd.verify_multi(age.decrypt((remote / name).read_bytes(), [keys["operator"]]))
    finally:
        watch.stop()


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=120)


def lnd_args(node: LndNode) -> list[str]:
    return ["--lnd-rpc", node.rpc, "--lnd-tls-cert", str(node.tls_cert), "--lnd-macaroon", str(node.admin_macaroon)]


@pytest.fixture(scope="module")
def alice_backup(network, alice, bob, keys, tmp_path_factory) -> Path:
    """A current encrypted backup of alice holding at least one channel."""
    if not alice.channel_points():
        network.open_channel(alice, bob)
    directory = tmp_path_factory.mktemp("alice-backup")
    with Lnd(alice.endpoint()) as lnd:
        plain = lnd.export_all_channel_backups()
    path = directory / "channel-backup.age"
    path.write_bytes(age.encrypt(plain.packed, [age.recipient_of(keys["operator"])]))
    return path


def test_verify_reports_the_channels_of_a_good_backup(alice, keys, alice_backup):
    run = run_cli("backup", "verify", str(alice_backup), "-i", str(keys["operator"]), *lnd_args(alice))
    assert run.returncode == 0, run.stderr
    assert f"for node {alice.pubkey()}" in run.stdout
    for point in alice.channel_points():
        assert point in run.stdout


@pytest.mark.parametrize("command", ["verify", "restore"])
def test_wrong_key_is_one_clear_line(command, alice, keys, alice_backup):
    run = run_cli("backup", command, str(alice_backup), "-i", str(keys["stranger"]), *lnd_args(alice))
    assert run.returncode == 4
    assert run.stderr.strip().splitlines() == [f"error: {alice_backup} is not encrypted to the given identity (wrong key?)"]


@pytest.mark.parametrize("command", ["verify", "restore"])
def test_truncated_file_is_one_clear_line(command, alice, keys, alice_backup, tmp_path):
    data = alice_backup.read_bytes()
    for cut in (len(data) - 10, len(data) // 2, 20):
        short = tmp_path / f"short-{cut}.age"
        short.write_bytes(data[:cut])
        run = run_cli("backup", command, str(short), "-i", str(keys["operator"]), *lnd_args(alice))
        assert run.returncode == 5, run.stderr
        lines = run.stderr.strip().splitlines()
        assert len(lines) == 1 and "truncated or damaged" in lines[0] and "Traceback" not in run.stderr


@pytest.mark.parametrize("command", ["verify", "restore"])
def test_backup_of_another_node_is_refused_and_nothing_restored(command, bob, keys, alice_backup):
    before = bob.cli("pendingchannels")
    run = run_cli("backup", command, str(alice_backup), "-i", str(keys["operator"]), *lnd_args(bob))
    assert run.returncode == 5
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and "made by another node" in lines[0]
    assert bob.cli("pendingchannels") == before


def test_verify_with_the_operator_key_derived_on_a_device(alice, tmp_path):
    """The operator's Trezor-derived age key, here from the insecure mnemonic stand-in device."""
    from bcm_tools.devices.mnemonic import MnemonicDevice
    from bcm_tools.keys.operator import operator_age_recipient

    words = tmp_path / "operator.mnemonic"
    words.write_text("abandon " * 11 + "about\n")
    other = tmp_path / "other.mnemonic"
    other.write_text("zoo " * 11 + "wrong\n")
    with MnemonicDevice.from_file(words) as device:
        recipient = operator_age_recipient(device)
    with Lnd(alice.endpoint()) as lnd:
        packed = lnd.export_all_channel_backups().packed
    backup = tmp_path / "channel-backup.age"
    backup.write_bytes(age.encrypt(packed, [recipient]))

    run = run_cli("backup", "verify", str(backup), "--device", f"mnemonic:{words}", *lnd_args(alice))
    assert run.returncode == 0, run.stderr
    assert f"for node {alice.pubkey()}" in run.stdout

    run = run_cli("backup", "verify", str(backup), "--device", f"mnemonic:{other}", *lnd_args(alice))
    assert run.returncode == 4
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {backup} is not encrypted to the operator key of {MnemonicDevice.from_file(other).label} (wrong key?)"]
    assert "Traceback" not in run.stderr


def test_dead_lnd_is_one_clear_line(alice, keys, alice_backup, tmp_path):
    args = ["--lnd-rpc", "127.0.0.1:9", "--lnd-tls-cert", str(alice.tls_cert), "--lnd-macaroon", str(alice.admin_macaroon)]
    run = run_cli("backup", "verify", str(alice_backup), "-i", str(keys["operator"]), *args)
    assert run.returncode == 3
    assert len(run.stderr.strip().splitlines()) == 1 and "unreachable" in run.stderr


def test_disaster_drill_restore_from_seed_and_backup_brings_the_funds_back(network, bob, keys, tmp_path):
    """carol has a channel with bob; her disk dies. From her seed and the newest encrypted backup
    she gets a new node, asks bob to force-close, and her channel balance returns on chain."""
    carol = network.node("carol")
    carol.start()
    carol.create_wallet()
    seed = list(carol.mnemonic)
    network.fund(carol, 1_000_000, bob)
    capacity = 600_000
    point = network.open_channel(carol, bob, sats=capacity)
    on_chain_before = carol.confirmed_balance()
    pubkey = carol.pubkey()

    bulk = tmp_path / "bulk"
    bulk.mkdir()
    watch = Watch(tmp_path / "watch", carol, [str(bulk)], keys, None)
    try:
        watch.wait_durable(f"local:{bulk}", [point])
    finally:
        watch.stop()
    newest = bulk / LocalTarget(bulk).latest(node_tag(pubkey))

    carol.destroy()
    reborn = LndNode("carol", carol.bin_dir, carol.directory, network.btcd, network.stubs)
    network.nodes.append(reborn)
    reborn.start()
    reborn.create_wallet(mnemonic=seed, recovery_window=200)
    assert reborn.pubkey() == pubkey, "the same seed must give back the same node identity"
    wait_for("carol's on-chain change rediscovered", lambda: reborn.confirmed_balance() == on_chain_before, timeout=120)

    run = run_cli("backup", "restore", str(newest), "-i", str(keys["operator"]), *lnd_args(reborn))
    assert run.returncode == 0, run.stderr
    assert point in run.stdout

    def bob_force_closed() -> bool:
        pending = bob.cli("pendingchannels")
        closing = pending["waiting_close_channels"] + pending["pending_force_closing_channels"]
        return any(c["channel"]["channel_point"] == point for c in closing) or point not in bob.channel_points()

    wait_for("bob to force-close the channel", bob_force_closed, timeout=120)

    def funds_back() -> bool:
        network.btcd.mine(1)
        return reborn.confirmed_balance() >= on_chain_before + capacity * 0.9

    wait_for("carol's channel funds back in her wallet", funds_back, timeout=180, interval=2)

    # LND lists the channel as closed only once its contract resolvers finish, which can come a
    # few blocks after the sweep that already paid the funds back.
    def listed_closed() -> bool:
        network.btcd.mine(1)
        return any(c["channel_point"] == point for c in reborn.cli("closedchannels")["channels"])

    wait_for("the restored channel listed as closed", listed_closed, timeout=120, interval=2)
