"""regtest1's LND unit as the module renders it (its pre-start, start and stop commands), run
under the unit's sandbox (tests/sandbox.py) with real LND v0.20.1-beta and btcd: the snapshot
before another LND version starts, the refusal of an older one, and `bcm-tools lnd rollback`.

Simulated: the other LND *version*. One LND build exists here, so a newer release is a wrapper
put at the unit's lnd path that answers `--version` with another version string and runs the real
LND otherwise. The pre-start step really runs that binary's `--version` and compares it with the
record the previous run left in the data directory; what is not real is a database migration
between the two (the "older" LND would in fact accept the data it is refused).
Real: every command of the unit, as the lnd user under its sandbox; the channel state read from
LND over gRPC at start and stop; a channel and a payment between the unit's LND and a second LND
(carol); the refusal (exit 78, which the unit's RestartPreventExitStatus lists) and the restore.
Not real: systemd. The tests start and stop the unit through tests/sandbox.py, and the CLI test
runs `bcm-tools lnd rollback` with a `systemctl` stand-in that only records what it was asked.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
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
NEWER = "0.21.0-beta"


class UnitLnd:
    """The unit's LND as lnd_regtest.Network sees a node: lncli with the operator's macaroon."""

    name = "regtest1"
    p2p = "127.0.0.1:9735"

    def __init__(self, host: Host, lnd_bin: Path):
        self.host, self.lnd_bin = host, lnd_bin

    def cli(self, *args: str) -> Any:
        run = subprocess.run(
            [
                str(self.lnd_bin / "lncli"),
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


def lnd_package_bin(host: Host) -> Path:
    return host.store / Path(host.export["packages"]["lnd"]).name / "bin"


def install_lnd_version(host: Host, version: str | None) -> None:
    """Puts LND `version` at the unit's lnd path: the real binary for None, otherwise the real
    binary behind a wrapper that reports `version` (the simulation the module docstring names)."""
    bin_dir = lnd_package_bin(host)
    real = bin_dir / "lnd-real"
    if not real.exists():
        shutil.copy2(bin_dir / "lnd", real)
    (bin_dir / "lnd").unlink()
    if version is None:
        shutil.copy2(real, bin_dir / "lnd")
        return
    (bin_dir / "lnd").write_text(
        "#!/bin/sh\n"
        f'if [ "$1" = --version ]; then echo "lnd version {version} commit=v{version}"; exit 0; fi\n'
        f'exec {"/nix/store/" + bin_dir.parent.name}/bin/lnd-real "$@"\n'
    )
    (bin_dir / "lnd").chmod(0o555)


@pytest.fixture
def node_pair(tmp_path: Path) -> Iterator[tuple[Host, Network, Any, UnitLnd]]:
    """regtest1 (its units from the export, btcd in place of bitcoind, as in
    test_units_sandboxed.py) and carol, an LND outside the sandbox that mines and has funds."""
    daemons = require_daemons()
    missing = sandbox_tools_missing()
    if missing:
        raise RuntimeError(missing)
    if os.geteuid() != 0:
        raise RuntimeError("the sandbox launcher runs units as their own users: run the tests as root")
    export = copy.deepcopy(load_export("regtest1"))
    host = Host(export, tmp_path / "host")
    host.apply_tmpfiles()
    net_root = host.path("/var/lib/test-net")
    net_root.mkdir(parents=True)
    net = Network(net_root)
    try:
        (carol,) = net.start(["carol"])
        for directory in (net_root, net_root / "btcd"):
            directory.chmod(0o755)
        btcd = net.btcd
        host.replace_file(
            "-lnd.conf",
            lambda text: text.replace("bitcoin.node=bitcoind", "bitcoin.node=btcd")
            + f"\n[Btcd]\nbtcd.rpchost=127.0.0.1:{btcd.rpc_port}\nbtcd.rpcuser={btcd.user}\nbtcd.rpcpass={btcd.password}\n"
            "btcd.rpccert=/var/lib/test-net/btcd/rpc.cert\n",
        )
        host.start("bcm-secrets")
        host.write("/var/lib/bcm-onion/lnd", "a" * 56 + ".onion\n", mode=0o640, group="bcm-operator")
        yield host, net, carol, UnitLnd(host, Path(daemons["LND_BIN"]))
    finally:
        host.stop_all()
        net.stop()


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
    returns the main process's exit status and the unit's output."""
    running = host.start("lnd", post=False, timeout=300)
    assert running is not None
    status = running.process.wait(120)
    host.running.remove(running)
    return status, running.output()


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


def host_layout(host: Host) -> lnd_rollback.Layout:
    return lnd_rollback.Layout.of(host.path(DATA), host.path(SNAPSHOTS))


def upgrade_with_a_channel(host: Host, net: Network, carol: Any, unit: UnitLnd) -> tuple[str, lnd_rollback.SnapshotMeta]:
    """LND 0.20.1-beta with a channel from carol, then the "upgrade" to NEWER; returns the
    channel point and the snapshot the upgrade took."""
    first = start_unit(host)
    assert "no LND data in /srv/fast/lnd yet" in first
    assert lnd_rollback.read_version(host.path(DATA)).version == "0.20.1-beta"
    point = net.open_channel(carol, unit, sats=400_000)
    stop_unit(host)
    final = lnd_rollback.read_state(host.path(DATA)).last
    assert final.final and point in final.state.channels

    at_rest = tree(host.path(DATA))

    install_lnd_version(host, NEWER)
    upgraded = start_unit(host)
    (snapshot,) = lnd_rollback.list_snapshots(host_layout(host))
    assert (snapshot.version, snapshot.next_version, snapshot.method) == ("0.20.1-beta", NEWER, "copy")
    assert f"LND 0.20.1-beta last ran on /srv/fast/lnd; LND {NEWER} starts now. Snapshot of the data: {SNAPSHOTS}/{snapshot.name}" in upgraded
    copied = host.path(f"{SNAPSHOTS}/{snapshot.name}")
    # The data as the older LND left it, byte for byte, modes and owners, without its logs.
    assert tree(copied) == {k: v for k, v in at_rest.items() if not k.startswith("logs")}
    assert "data/chain/bitcoin/regtest/wallet.db" in at_rest and "logs" in at_rest
    assert point in unit.channel_points()
    return point, snapshot


def downgrade_is_refused(host: Host, snapshot: lnd_rollback.SnapshotMeta) -> None:
    install_lnd_version(host, None)
    status, output = refused_start(host)
    assert status == lnd_rollback.EXIT_REFUSED
    assert str(status) in str(host.unit("lnd")["serviceConfig"]["RestartPreventExitStatus"]).split()
    line = (
        f"LND 0.20.1-beta is older than LND {NEWER}, which last ran on /srv/fast/lnd and may have migrated its database; "
        f"not starting it. The snapshot of 0.20.1-beta's data is {SNAPSHOTS}/{snapshot.name}"
    )
    assert line in output
    assert output.rstrip().endswith("run as root: bcm-tools lnd rollback --data-dir /srv/fast/lnd")
    # Refused before LND ran: the data still says the newer version ran last.
    assert lnd_rollback.read_version(host.path(DATA)).version == NEWER


def test_upgrade_snapshots_the_data_a_downgrade_is_refused_and_rollback_restores_it_with_its_channel(node_pair):
    host, net, carol, unit = node_pair
    point, snapshot = upgrade_with_a_channel(host, net, carol, unit)
    pubkey = unit.pubkey()
    stop_unit(host)
    downgrade_is_refused(host, snapshot)

    service = SandboxUnit(host)
    result = lnd_rollback.rollback(host_layout(host), service, now=None)
    assert result.snapshot.name == snapshot.name and not result.forced and result.reasons == []
    assert service.calls == ["stop", "start"]
    assert lnd_rollback.read_version(host.path(DATA)).version == "0.20.1-beta"
    assert unit.pubkey() == pubkey
    wait_for("the restored channel", lambda: point in unit.channel_points(), timeout=60)
    # The data it replaced is kept, as the newer version left it.
    assert lnd_rollback.read_version(result.replaced).version == NEWER
    assert not (host.path(SNAPSHOTS) / lnd_rollback.REFUSAL_FILE).exists()


def systemctl_stand_in(directory: Path) -> tuple[Path, Path]:
    """A `systemctl` that answers is-active with "inactive" and records every call."""
    calls = directory / "systemctl-calls"
    script = directory / "systemctl"
    script.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n[ "$1" = is-active ] && exit 3\nexit 0\n')
    script.chmod(0o755)
    return script, calls


def test_a_payment_after_the_upgrade_makes_rollback_refuse_until_forced_with_the_alias(node_pair, tmp_path, run_cli):
    host, net, carol, unit = node_pair
    point, snapshot = upgrade_with_a_channel(host, net, carol, unit)
    invoice = unit.cli("addinvoice", "--amt=1000")["payment_request"]
    # The restarted node and carol reconnect on their own; until the link is up again a
    # payment fails without a route.
    wait_for(f"channel {point} active again", lambda: point in carol.active_channel_points(), timeout=90)
    carol.cli("payinvoice", f"--pay_req={invoice}", "--force")
    stop_unit(host)
    changes = lnd_rollback.read_state(host.path(DATA)).since[snapshot.name].changes
    assert any(c.startswith(f"channel {point}: commitment height") for c in changes), changes
    downgrade_is_refused(host, snapshot)

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
    assert lnd_rollback.read_version(host.path(DATA)).version == "0.20.1-beta"

    # systemd's part, played here: the unit starts on the restored data.
    start_unit(host)
    assert unit.pubkey() == lnd_rollback.read_state(host.path(DATA)).last.state.pubkey
