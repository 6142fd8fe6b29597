"""regtest1's LND unit as the module renders it (its pre-start, start and stop commands), run
under the unit's sandbox (tests/sandbox.py) with two real LND releases and btcd: the snapshot
before another LND version starts, the refusal of an older one, and `bcm-tools lnd rollback`.

The two releases are built by scripts/test.d/20-daemons from the Go module proxy: LND v0.18.5-beta
(LND_OLD_BIN), whose channel database stops at migration 31, and v0.20.1-beta (LND_BIN), which
migrates it to 33 (`dbVersions` in channeldb/db.go; the tests read both numbers from the module
sources the binaries were built from). So the upgrade really migrates the node's database, and
0.18.5 really refuses the migrated one: LND's own "Refusing to revert from db_version=33 to
lower version=31", which the unit's pre-start step heads off with its one line.
The wallet is made by the unit's lnd-init-wallet step with the lndinit stand-in, which is built
against v0.20.1-beta's btcwallet; v0.18.5-beta opens it (the two btcwallets have the same
waddrmgr and wtxmgr schema versions), as it would one the real lndinit made.

Real: every command of the unit, as the lnd user under its sandbox; each LND's `--version`, which
the pre-start step compares with the record the previous run left in the data directory; the
channel-database migration and LND's refusal; the channel state read from LND over gRPC at start
and stop; a channel and a payment between the unit's LND and a second LND (carol, v0.20.1-beta);
the refusal (exit 78, which the unit's RestartPreventExitStatus lists) and the restore.
Not real: how a version is installed. NixOS would point the unit at another store path; here the
lnd package's one store path gets the other release's lnd and lncli copied in (the pre-start step
goes by what the binary reports, not by its path). And systemd: the tests start and stop the unit
through tests/sandbox.py, and the CLI test runs `bcm-tools lnd rollback` with a `systemctl`
stand-in that only records what it was asked.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from lnd_regtest import Network, require_daemons, wait_for
from sandbox import Host, load_export, sandbox_tools_missing

from bcm_tools import lnd_rollback

pytestmark = [pytest.mark.sandbox, pytest.mark.repo, pytest.mark.lnd, pytest.mark.btcd]

DATA = "/srv/fast/lnd"
SNAPSHOTS = "/srv/fast/lnd-snapshots"
OPERATOR_MACAROON = "/var/lib/bcm-secrets/lnd-macaroons/operator.macaroon"
BTCD_CERT = "/var/lib/test-net/btcd/rpc.cert"


def db_migrations(src: Path) -> tuple[int, ...]:
    """The mandatory channel-database migrations of an LND source tree: each `number:` in
    channeldb/db.go's dbVersions list (the optional migrations follow it)."""
    text = (src / "channeldb" / "db.go").read_text()
    start = text.index("dbVersions = []mandatoryVersion{")
    end = text.index("optionalVersions = []optionalVersion{", start)
    return tuple(int(n) for n in re.findall(r"\bnumber:\s*(\d+),", text[start:end]))


@dataclass(frozen=True)
class Release:
    """One LND build of 20-daemons: its version as `lnd --version` says it, its lnd and lncli,
    and its channel-database migrations."""

    version: str
    bin: Path
    migrations: tuple[int, ...]

    @property
    def db_version(self) -> int:
        return max(self.migrations)

    @classmethod
    def built(cls, prefix: str) -> Release:
        daemons = require_daemons()
        if f"{prefix}_BIN" not in daemons:
            raise RuntimeError(f"{prefix}_BIN not in current.env: run scripts/test.d/20-daemons")
        bin_dir = Path(daemons[f"{prefix}_BIN"])
        return cls(lnd_rollback.installed_version(bin_dir / "lnd"), bin_dir, db_migrations(Path(daemons[f"{prefix}_SRC"])))


def lnd_package_bin(host: Host) -> Path:
    return host.store / Path(host.export["packages"]["lnd"]).name / "bin"


def install(host: Host, release: Release) -> None:
    """Puts `release`'s lnd and lncli in the unit's lnd package (see the module docstring)."""
    for program in ("lnd", "lncli"):
        target = lnd_package_bin(host) / program
        target.unlink(missing_ok=True)
        shutil.copy2(release.bin / program, target)


class UnitLnd:
    """The unit's LND as lnd_regtest.Network sees a node: the installed lncli with the
    operator's macaroon."""

    name = "regtest1"
    p2p = "127.0.0.1:9735"

    def __init__(self, host: Host):
        self.host = host

    def cli(self, *args: str) -> Any:
        run = subprocess.run(
            [
                str(lnd_package_bin(self.host) / "lncli"),
                "--network=regtest",
                "--rpcserver=127.0.0.1:10009",
                f"--tlscertpath={self.host.path('/srv/fast/lnd-tls/tls.cert')}",
                f"--macaroonpath={self.host.path(OPERATOR_MACAROON)}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if run.returncode != 0:
            raise RuntimeError(f"lncli regtest1 {' '.join(args)}: {run.stderr.strip()}")
        return json.loads(run.stdout)

    def pubkey(self) -> str:
        return self.cli("getinfo")["identity_pubkey"]

    def channel_points(self) -> list[str]:
        return sorted(c["channel_point"] for c in self.cli("listchannels")["channels"])

    def active_channel_points(self) -> list[str]:
        return sorted(c["channel_point"] for c in self.cli("listchannels", "--active_only")["channels"])


class SandboxUnit:
    """The lnd unit as `rollback` stops and starts it, run by tests/sandbox.py instead of systemd."""

    def __init__(self, host: Host):
        self.host = host
        self.calls: list[str] = []

    def is_active(self) -> bool:
        return any(r.unit == "lnd" and r.process.poll() is None for r in self.host.running)

    def stop(self) -> None:
        self.calls.append("stop")
        for running in [r for r in self.host.running if r.unit == "lnd"]:
            self.host.stop(running)

    def start(self) -> None:
        self.calls.append("start")
        self.host.start("lnd", timeout=300)


@pytest.fixture(scope="module")
def releases() -> tuple[Release, Release]:
    """(older, newer), and the newer one migrates the older one's channel database further."""
    old, new = Release.built("LND_OLD"), Release.built("LND")
    assert lnd_rollback.compare_versions(old.version, new.version) == -1, (old, new)
    assert new.db_version > old.db_version, (old, new)
    return old, new


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> Iterator[tuple[Network, Any]]:
    """btcd and carol, an LND (v0.20.1-beta) outside the sandbox that mines and has funds;
    shared by the tests here, each of which opens its own channel to a node of its own."""
    require_daemons()
    missing = sandbox_tools_missing()
    if missing:
        raise RuntimeError(missing)
    if os.geteuid() != 0:
        raise RuntimeError("the sandbox launcher runs units as their own users: run the tests as root")
    net = Network(tmp_path_factory.mktemp("chain"))
    try:
        (carol,) = net.start(["carol"])
        yield net, carol
    finally:
        net.stop()


@pytest.fixture
def node_pair(chain, tmp_path: Path) -> Iterator[tuple[Host, Network, Any, UnitLnd]]:
    """regtest1 (its units from the export, btcd in place of bitcoind, as in
    test_units_sandboxed.py) beside the shared chain and carol."""
    net, carol = chain
    export = copy.deepcopy(load_export("regtest1"))
    host = Host(export, tmp_path / "host")
    host.apply_tmpfiles()
    try:
        btcd = net.btcd
        cert = host.path(BTCD_CERT)
        cert.parent.mkdir(parents=True)
        shutil.copyfile(btcd.cert, cert)
        for path in (cert.parent.parent, cert.parent, cert):
            path.chmod(0o755 if path.is_dir() else 0o644)
        host.replace_file(
            "-lnd.conf",
            lambda text: text.replace("bitcoin.node=bitcoind", "bitcoin.node=btcd")
            + f"\n[Btcd]\nbtcd.rpchost=127.0.0.1:{btcd.rpc_port}\nbtcd.rpcuser={btcd.user}\nbtcd.rpcpass={btcd.password}\n"
            f"btcd.rpccert={BTCD_CERT}\n",
        )
        host.start("bcm-secrets")
        host.write("/var/lib/bcm-onion/lnd", "a" * 56 + ".onion\n", mode=0o640, group="bcm-operator")
        yield host, net, carol, UnitLnd(host)
    finally:
        host.stop_all()


def start_unit(host: Host) -> str:
    """Starts the lnd unit and waits for it as systemd would; returns what its steps printed."""
    log = host.root / "lnd.log"
    before = log.stat().st_size if log.exists() else 0
    host.start("lnd", timeout=300)
    return log.read_bytes()[before:].decode(errors="replace")


def stop_unit(host: Host) -> None:
    for running in [r for r in host.running if r.unit == "lnd"]:
        host.stop(running)


def refused_start(host: Host) -> tuple[int, str]:
    """Starts the unit without ExecStartPost (systemd kills it when the main process exits) and
    returns the main process's exit status and what this start printed."""
    log = host.root / "lnd.log"
    before = log.stat().st_size if log.exists() else 0
    running = host.start("lnd", post=False, timeout=300)
    assert running is not None
    status = running.process.wait(120)
    host.running.remove(running)
    return status, log.read_bytes()[before:].decode(errors="replace")


def tree(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Each path under root: mode, owner, group and the file's bytes (sha256) or link target."""
    import hashlib

    found = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            what = "-> " + os.readlink(path)
        elif path.is_file():
            what = hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            what = "dir"
        found[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, what)
    return found


def reconnect(net: Network, carol: Any, unit: UnitLnd) -> None:
    """carol connects to the restarted node. She would by herself, but LND doubles the delay
    before it dials a peer again after every short-lived connection (each start of the unit
    here is one), and once waited over 90 s; the node's own dials to carol would go through
    Tor (tor.active), which does not run here."""
    wait_for("carol connected to regtest1", lambda: net.connect(carol, unit) or True, timeout=60, interval=1)


def host_layout(host: Host) -> lnd_rollback.Layout:
    return lnd_rollback.Layout.of(host.path(DATA), host.path(SNAPSHOTS))


def upgrade_with_a_channel(host: Host, net: Network, carol: Any, unit: UnitLnd, old: Release, new: Release) -> tuple[str, lnd_rollback.SnapshotMeta]:
    """The node on the older LND with a channel from carol, then upgraded to the newer one,
    which migrates its channel database; returns the channel point and the upgrade's snapshot."""
    install(host, old)
    first = start_unit(host)
    assert "no LND data in /srv/fast/lnd yet" in first
    assert lnd_rollback.read_version(host.path(DATA)).version == old.version
    assert f"latest_version={old.db_version}, db_version={old.db_version}" in first
    point = net.open_channel(carol, unit, sats=400_000)
    stop_unit(host)
    final = lnd_rollback.read_state(host.path(DATA)).last
    assert final.final and final.version == old.version and point in final.state.channels

    at_rest = tree(host.path(DATA))

    install(host, new)
    upgraded = start_unit(host)
    (snapshot,) = lnd_rollback.list_snapshots(host_layout(host))
    assert (snapshot.version, snapshot.next_version, snapshot.method) == (old.version, new.version, "copy")
    assert f"LND {old.version} last ran on /srv/fast/lnd; LND {new.version} starts now. Snapshot of the data: {SNAPSHOTS}/{snapshot.name}" in upgraded
    # LND's own account of the migration it ran on the data, after the snapshot was taken.
    assert f"latest_version={new.db_version}, db_version={old.db_version}" in upgraded
    assert upgraded.index(f"Snapshot of the data: {SNAPSHOTS}/{snapshot.name}") < upgraded.index("Performing database schema migration")
    for number in [n for n in new.migrations if n > old.db_version]:
        assert f"Applying migration #{number}" in upgraded
    copied = host.path(f"{SNAPSHOTS}/{snapshot.name}")
    # The data as the older LND left it, byte for byte, modes and owners, without its logs.
    assert tree(copied) == {k: v for k, v in at_rest.items() if not k.startswith("logs")}
    assert "data/chain/bitcoin/regtest/wallet.db" in at_rest and "logs" in at_rest
    assert point in unit.channel_points()
    return point, snapshot


def downgrade_is_refused(host: Host, snapshot: lnd_rollback.SnapshotMeta, old: Release, new: Release) -> None:
    """The older LND is refused by the unit with its one line, before LND runs; and LND
    itself, started on the migrated data without that step, refuses the database."""
    install(host, old)
    status, output = refused_start(host)
    assert status == lnd_rollback.EXIT_REFUSED
    assert str(status) in str(host.unit("lnd")["serviceConfig"]["RestartPreventExitStatus"]).split()
    line = (
        f"LND {old.version} is older than LND {new.version}, which last ran on /srv/fast/lnd and may have migrated its database; "
        f"not starting it. The snapshot of {old.version}'s data is {SNAPSHOTS}/{snapshot.name}"
    )
    assert line in output
    assert output.rstrip().endswith("run as root: bcm-tools lnd rollback --data-dir /srv/fast/lnd")
    # Refused before LND ran: LND printed nothing, and the data still says the newer version ran last.
    assert "Checking for schema update" not in output
    assert lnd_rollback.read_version(host.path(DATA)).version == new.version

    # What the step heads off: the same unit without it starts the older LND, which stops on
    # the database the newer one migrated (channeldb.syncVersions, ErrDBReversion) and exits 1;
    # systemd would restart it every 10 s.
    pre = host.unit("lnd")["serviceConfig"]["ExecStartPre"]
    host.unit("lnd")["serviceConfig"]["ExecStartPre"] = [line for line in pre if " lnd prepare-start " not in line]
    assert len(host.unit("lnd")["serviceConfig"]["ExecStartPre"]) == len(pre) - 1
    try:
        status, output = refused_start(host)
    finally:
        host.unit("lnd")["serviceConfig"]["ExecStartPre"] = pre
    assert status == 1, output[-3000:]
    assert f"Version: {old.version}" in output
    assert f"Refusing to revert from db_version={new.db_version} to lower version={old.db_version}" in output
    assert "unable to open databases: unable to open graph DB: channel db cannot revert to prior version" in output
    assert lnd_rollback.read_version(host.path(DATA)).version == new.version


def test_upgrade_snapshots_the_data_a_downgrade_is_refused_and_rollback_restores_it_with_its_channel(node_pair, releases):
    host, net, carol, unit = node_pair
    old, new = releases
    point, snapshot = upgrade_with_a_channel(host, net, carol, unit, old, new)
    pubkey = unit.pubkey()
    stop_unit(host)
    downgrade_is_refused(host, snapshot, old, new)

    service = SandboxUnit(host)
    result = lnd_rollback.rollback(host_layout(host), service, now=None)
    assert result.snapshot.name == snapshot.name and not result.forced and result.reasons == []
    assert service.calls == ["stop", "start"]
    assert lnd_rollback.read_version(host.path(DATA)).version == old.version
    assert unit.cli("getinfo")["version"].startswith(old.version)
    assert unit.pubkey() == pubkey
    # The older LND runs on its own database again, and the channel carries a payment.
    assert f"latest_version={old.db_version}, db_version={old.db_version}" in (host.root / "lnd.log").read_text(errors="replace").rsplit("Version: ", 1)[1]
    reconnect(net, carol, unit)
    wait_for(f"channel {point} active again", lambda: point in unit.active_channel_points() and point in carol.active_channel_points(), timeout=90)
    restored_invoice = unit.cli("addinvoice", "--amt=1000")["payment_request"]
    # LND may still refuse for a moment after both ends list the channel active (no local
    # balance until channel_reestablish is done); a refused payment is simply tried again.
    wait_for("carol's payment", lambda: carol.cli("payinvoice", f"--pay_req={restored_invoice}", "--force"), timeout=60, interval=1)
    assert any(c["channel_point"] == point and int(c["remote_balance"]) > 0 for c in unit.cli("listchannels")["channels"])
    # The data it replaced is kept, as the newer version left it.
    assert lnd_rollback.read_version(result.replaced).version == new.version
    assert not (host.path(SNAPSHOTS) / lnd_rollback.REFUSAL_FILE).exists()


def systemctl_stand_in(directory: Path) -> tuple[Path, Path]:
    """A `systemctl` that answers is-active with "inactive" and records every call."""
    calls = directory / "systemctl-calls"
    script = directory / "systemctl"
    script.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n[ "$1" = is-active ] && exit 3\nexit 0\n')
    script.chmod(0o755)
    return script, calls


def test_a_payment_after_the_upgrade_makes_rollback_refuse_until_forced_with_the_alias(node_pair, releases, tmp_path):
    host, net, carol, unit = node_pair
    old, new = releases
    point, snapshot = upgrade_with_a_channel(host, net, carol, unit, old, new)
    invoice = unit.cli("addinvoice", "--amt=1000")["payment_request"]
    # Until the link is up again a payment fails without a route.
    reconnect(net, carol, unit)
    wait_for(f"channel {point} active again", lambda: point in unit.active_channel_points() and point in carol.active_channel_points(), timeout=90)
    wait_for("carol's payment", lambda: carol.cli("payinvoice", f"--pay_req={invoice}", "--force"), timeout=60, interval=1)
    stop_unit(host)
    changes = lnd_rollback.read_state(host.path(DATA)).since[snapshot.name].changes
    assert any(c.startswith(f"channel {point}: commitment height") for c in changes), changes
    downgrade_is_refused(host, snapshot, old, new)

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _, calls = systemctl_stand_in(bin_dir)
    env_path = f"{bin_dir}:{os.environ['PATH']}"

    def rollback(*args: str, typed: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", "from bcm_tools.cli import main; main()", "lnd", "rollback", f"--data-dir={host.path(DATA)}", *args],
            capture_output=True, text=True, input=typed, env={**os.environ, "PATH": env_path}, timeout=120,
        )  # fmt: skip

    before = lnd_rollback.read_version(host.path(DATA))
    refused = rollback()
    assert refused.returncode == 7, refused.stderr
    assert "Traceback" not in refused.stderr
    lines = refused.stderr.splitlines()
    assert lines[0].startswith(f"error: rollback to {snapshot.name} refused: the channels may have moved since it was taken")
    assert any(line.startswith(f"  channel {point}: commitment height") for line in lines)
    assert any(line.startswith("note: recover from the static channel backup instead") and "bcm-tools backup restore" in line for line in lines)
    assert lnd_rollback.read_version(host.path(DATA)) == before

    wrong = rollback("--force", typed="carol\n")
    assert wrong.returncode == 7 and "the confirmation did not match the node's alias 'regtest1'" in wrong.stderr
    assert lnd_rollback.read_version(host.path(DATA)) == before

    forced = rollback("--force", typed="regtest1\n")
    assert forced.returncode == 0, forced.stderr
    assert f"restored {host.path(SNAPSHOTS)}/{snapshot.name}" in forced.stdout and "(forced)" in forced.stdout
    assert calls.read_text().splitlines()[-1] == "start lnd.service"
    assert lnd_rollback.read_version(host.path(DATA)).version == old.version

    # systemd's part, played here: the older LND starts on the restored data, whose channel
    # state is older than carol's. Here carol is honest and online, so LND's own data-loss
    # protection finds that out as soon as the two meet, and the channel is lost to a close
    # from carol's side: what the refusal was for.
    restarted = start_unit(host)
    assert f"Version: {old.version}" in restarted
    assert unit.pubkey() == lnd_rollback.read_state(host.path(DATA)).last.state.pubkey
    reconnect(net, carol, unit)
    log = host.root / "lnd.log"
    wait_for(
        "LND to find its restored channel state behind carol's",
        lambda: re.search(rf"ChannelPoint\({re.escape(point)}\) with CommitPoint\([0-9a-f]+\) had possible local commitment state data loss", log.read_text(errors="replace")),
        timeout=90,
    )
