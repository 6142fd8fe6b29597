"""lnd-init-wallet, the ExecStartPre that makes LND's wallet before LND listens (modules/lnd.nix),
run for real: the script as the evaluation harness exported it for regtest1
(nixos-tests/eval/exported/regtest1.json), with lndinit and coreutils from this machine and the
host's paths moved into a temporary directory. The real LND then unlocks the wallet from the
password file, as the unit's lnd.conf tells it to.

lndinit comes from $LNDINIT_BIN, or from LNDINIT_BIN in the daemons' current.env. The Go module
proxy these machines use does not serve lndinit, so scripts/test.d/20-daemons builds a stand-in
(tests/lndinit_standin/main.go: lndinit's commands and flags as the module uses them, made from
LND's own aezeed and btcwallet) and the test runs against that; the flags and behaviour it
mirrors were checked once against the real lndinit v0.1.34-beta with LND v0.20.1 (set
LNDINIT_BIN to a real build to run these tests against it). LND and btcd come from
scripts/test.d/20-daemons."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from lnd_regtest import BURN_ADDRESS, Btcd, daemon_env, free_port, stop_process, wait_for

ROOT = Path(__file__).resolve().parents[3]
EXPORT = ROOT / "nixos-tests" / "eval" / "exported" / "regtest1.json"
PASSWORD = "a7" * 32  # as generated: 32 random bytes in hex, no newline

pytestmark = [pytest.mark.lnd, pytest.mark.btcd, pytest.mark.repo]


@pytest.fixture(scope="module")
def daemons() -> dict[str, Path]:
    env = daemon_env()
    if env is None:
        raise RuntimeError("LND/btcd not built: run scripts/test.d/20-daemons (scripts/test runs it)")
    lndinit = os.environ.get("LNDINIT_BIN") or env.get("LNDINIT_BIN")
    if not lndinit or not (Path(lndinit) / "lndinit").is_file():
        raise RuntimeError("no lndinit: scripts/test.d/20-daemons builds the stand-in, or set LNDINIT_BIN")
    return {"lnd": Path(env["LND_BIN"]), "btcd": Path(env["BTCD_BIN"]), "lndinit": Path(lndinit)}


@pytest.fixture(scope="module")
def export() -> dict:
    return json.loads(EXPORT.read_text())


def exported_file(export: dict, suffix: str) -> str:
    (text,) = [text for path, text in export["files"].items() if path.endswith(suffix)]
    return text


class Moved:
    """The host's paths the script touches (fast tier, secrets), moved under `root`."""

    def __init__(self, export: dict, root: Path):
        self.moves = {
            export["bcm"]["storage"]["fast"]: root / "fast",
            export["bcm"]["secretsDir"]: root / "secrets",
        }

    def path(self, host_path: str) -> Path:
        for prefix, moved in self.moves.items():
            if host_path.startswith(prefix + "/"):
                return moved / host_path[len(prefix) + 1 :]
        raise ValueError(host_path)

    def localize(self, text: str, export: dict, lndinit_bin: Path) -> str:
        packages = export["packages"]
        text = text.replace(f"{packages['lndinit']}/bin/lndinit", str(lndinit_bin / "lndinit"))
        text = text.replace(f"{packages['coreutils']}/bin", str(Path(shutil.which("mv")).parent))
        for prefix, moved in self.moves.items():
            text = text.replace(prefix + "/", f"{moved}/")
        return text


@pytest.fixture
def node(export, daemons, tmp_path):
    """The exported init script, localized, with the paths it uses and what LND needs to start."""
    unit = export["units"]["lnd"]
    (script_path,) = [p.lstrip("+-!@:") for p in unit["serviceConfig"]["ExecStartPre"] if p.endswith("-lnd-init-wallet")]
    host = Moved(export, tmp_path)
    conf = exported_file(export, "-lnd.conf").splitlines()
    (password_line,) = [line for line in conf if line.startswith("wallet-unlock-password-file=")]
    # Where the script looks for the wallet is where LND will (networkDir).
    network_dir = re.search(r"(/[^\s\"]+)/wallet\.db", export["files"][script_path]).group(1)
    script = host.localize(export["files"][script_path], export, daemons["lndinit"])
    assert "/nix/store" not in script.split("\n", 1)[1], script
    # The unit's lnd.conf unlocks with the very file the script makes the wallet with.
    password_file = host.path(password_line.split("=", 1)[1])
    assert f"--file.wallet-password={password_file}" in script
    # What ExecStartPre's root steps leave: LND's data directory and the generated password.
    lnd_dir = host.path(export["users"]["lnd"]["home"])
    lnd_dir.mkdir(parents=True, mode=0o750)
    password_file.parent.mkdir(parents=True)
    password_file.write_text(PASSWORD)
    password_file.chmod(0o600)
    (tmp_path / "lnd-init-wallet").write_text(script)
    return {
        "script": tmp_path / "lnd-init-wallet",
        "lnd_dir": lnd_dir,
        "network_dir": host.path(network_dir),
        "seed": lnd_dir / "seed-mnemonic",
        "password": password_file,
    }


def run_script(node) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(node["script"])], capture_output=True, text=True, timeout=120, check=False)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Lnd:
    """LND on loopback over the test's data directory, unlocking from the password file."""

    def __init__(self, bin_dir: Path, lnd_dir: Path, network_dir: Path, password_file: Path, btcd: Btcd):
        self.bin_dir, self.lnd_dir, self.network_dir = bin_dir, lnd_dir, network_dir
        self.rpc = f"127.0.0.1:{free_port()}"
        self.log = lnd_dir.parent / "lnd.out"
        args = [
            str(bin_dir / "lnd"),
            # data/ under dataDir, as the module's datadir: the wallet is looked for in networkDir.
            f"--lnddir={lnd_dir}",
            "--bitcoin.regtest",
            "--bitcoin.node=btcd",
            f"--btcd.rpchost=127.0.0.1:{btcd.rpc_port}",
            f"--btcd.rpcuser={btcd.user}",
            f"--btcd.rpcpass={btcd.password}",
            f"--btcd.rpccert={btcd.cert}",
            f"--rpclisten={self.rpc}",
            f"--listen=127.0.0.1:{free_port()}",
            "--norest",
            "--nobootstrap",
            "--tlsdisableautofill",
            "--healthcheck.chainbackend.attempts=0",
            f"--wallet-unlock-password-file={password_file}",
        ]
        self.proc = subprocess.Popen(args, stdout=self.log.open("ab"), stderr=subprocess.STDOUT)

    def cli(self, *args: str):
        run = subprocess.run(
            [
                str(self.bin_dir / "lncli"),
                "--network=regtest",
                f"--rpcserver={self.rpc}",
                f"--tlscertpath={self.lnd_dir / 'tls.cert'}",
                f"--macaroonpath={self.network_dir / 'admin.macaroon'}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if run.returncode != 0:
            raise RuntimeError(run.stderr.strip())
        return json.loads(run.stdout)

    def getinfo(self) -> dict:
        return wait_for("LND getinfo", lambda: self.cli("getinfo"), timeout=120, interval=0.5)

    def stop(self) -> None:
        stop_process(self.proc, timeout=30)


@pytest.fixture
def btcd(daemons, tmp_path):
    chain = Btcd(daemons["btcd"], tmp_path / "btcd")
    chain.start(mining_address=BURN_ADDRESS)
    chain.mine(1)
    yield chain
    chain.stop()


def test_the_exported_script_makes_a_wallet_lnd_unlocks_and_never_touches_it_again(node, daemons, btcd):
    first = run_script(node)
    assert first.returncode == 0, first.stderr
    words = node["seed"].read_text().split(" ")
    assert len(words) == 24 and oct(node["seed"].stat().st_mode & 0o777) == "0o600"
    wallet = node["network_dir"] / "wallet.db"
    assert sorted(p.name for p in node["network_dir"].iterdir()) == ["wallet.db"]
    # LND bakes its own macaroons at the first unlock; nothing made them before.
    assert not (node["network_dir"] / "admin.macaroon").exists()

    lnd = Lnd(daemons["lnd"], node["lnd_dir"], node["network_dir"], node["password"], btcd)
    try:
        info = lnd.getinfo()
        assert info["block_height"] == 1
    finally:
        lnd.stop()
    assert (node["network_dir"] / "admin.macaroon").is_file()

    # Every later start: the wallet is left alone, even with the seed moved offline after its
    # backup, and even with a password that does not open it...
    unlocked = digest(wallet)
    node["seed"].unlink()
    node["password"].write_text("not-the-wallet-password")
    again = run_script(node)
    assert again.returncode == 0, again.stderr
    assert digest(wallet) == unlocked and not node["seed"].exists()

    # ...which LND then refuses, saying why, instead of offering to make a new wallet.
    refused = Lnd(daemons["lnd"], node["lnd_dir"], node["network_dir"], node["password"], btcd)
    assert refused.proc.wait(120) != 0
    assert "error unlocking wallet with password from file" in refused.log.read_text()
    assert digest(wallet) == unlocked


def test_a_testnet_wallet_serves_another_test_network(node, daemons, btcd, tmp_path):
    """On signet and testnet4, which lndinit does not know, the module asks for a testnet wallet.
    Shown here on regtest, the test network this machine can mine: LND opens a testnet wallet
    with the node key the regtest wallet from the same seed has, syncs it from its birthday
    instead of testnet's genesis block, and sees its coins."""
    assert run_script(node).returncode == 0
    lnd = Lnd(daemons["lnd"], node["lnd_dir"], node["network_dir"], node["password"], btcd)
    try:
        node_key = lnd.getinfo()["identity_pubkey"]
    finally:
        lnd.stop()

    other_dir = tmp_path / "testnet-wallet" / "lnd"
    network_dir = other_dir / "data" / "chain" / "bitcoin" / "regtest"
    made = subprocess.run(
        [
            str(daemons["lndinit"] / "lndinit"),
            "init-wallet",
            "--network=testnet",
            "--secret-source=file",
            f"--file.seed={node['seed']}",
            f"--file.wallet-password={node['password']}",
            "--init-type=file",
            f"--init-file.output-wallet-dir={network_dir}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    lnd = Lnd(daemons["lnd"], other_dir, network_dir, node["password"], btcd)
    try:
        assert lnd.getinfo()["identity_pubkey"] == node_key
        address = lnd.cli("newaddress", "p2wkh")["address"]
        btcd.stop()
        btcd.start(mining_address=address)
        btcd.mine(101)
        wait_for(
            "the coinbase in the testnet wallet",
            lambda: int(lnd.cli("walletbalance")["confirmed_balance"]) > 0,
            timeout=120,
            interval=1,
        )
    finally:
        lnd.stop()
