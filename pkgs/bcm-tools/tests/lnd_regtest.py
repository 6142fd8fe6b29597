"""Real btcd (regtest) and LND daemons on 127.0.0.1 for integration tests.

The binaries and LND's gRPC stubs come from `scripts/test.d/20-daemons` and `25-lnd-stubs`,
which build them from the Go module proxy at pinned versions into $BCM_CACHE. Every process is
started here and ended here by its PID.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bcm_tools.keys.bech32 import encode_segwit_address

CACHE = Path(os.environ.get("BCM_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bcm")


def daemon_env() -> dict[str, str] | None:
    """What 20-daemons built (LND_BIN, LND_SRC, BTCD_BIN, ...), or None if it has not run."""
    env_file = CACHE / "daemons" / "current.env"
    if not env_file.is_file():
        return None
    return dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)


def stubs_dir() -> str | None:
    pointer = CACHE / "lnd-stubs" / "current"
    return pointer.read_text().strip() if pointer.is_file() else None


def require_daemons() -> dict[str, str]:
    """Fails (never skips) when the daemons are missing: scripts/test builds them."""
    env = daemon_env()
    stubs = stubs_dir()
    if env is None or stubs is None:
        raise RuntimeError(
            f"LND/btcd not built in {CACHE}: run scripts/test.d/20-daemons and 25-lnd-stubs "
            "(scripts/test runs them)"
        )
    os.environ["BCM_LND_STUBS"] = stubs
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60, interval: float = 0.2) -> Any:
    """Polls `check` until it returns something truthy; its exceptions count as 'not yet'."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
        except Exception as err:  # noqa: BLE001 - any failure means "not ready yet"
            last = err
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}" + (f": {last}" if last else ""))


def stop_process(proc: subprocess.Popen[Any] | None, timeout: float = 20) -> None:
    """Ends a process we started, by its PID: SIGTERM, then SIGKILL."""
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)


# Coinbases paid here are lost; only used to lift a fresh chain off its genesis block, which btcd
# (and so LND, waiting for its backend to be "current") treats as not yet synced.
BURN_ADDRESS = encode_segwit_address("bcrt", 0, bytes(20))


class Btcd:
    """btcd in regtest, RPC and P2P on loopback only."""

    def __init__(self, bin_dir: Path, directory: Path):
        self.bin_dir = bin_dir
        self.directory = directory
        self.rpc_port = free_port()
        self.p2p_port = free_port()
        self.user, self.password = "bcm", secrets.token_hex(8)
        self.proc: subprocess.Popen[bytes] | None = None
        self.mining_address: str | None = None

    @property
    def cert(self) -> Path:
        return self.directory / "rpc.cert"

    def start(self, mining_address: str | None = None) -> None:
        self.mining_address = mining_address
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            str(self.bin_dir / "btcd"),
            "--regtest",
            f"--datadir={self.directory / 'data'}",
            f"--logdir={self.directory / 'logs'}",
            f"--rpccert={self.cert}",
            f"--rpckey={self.directory / 'rpc.key'}",
            f"--rpclisten=127.0.0.1:{self.rpc_port}",
            f"--listen=127.0.0.1:{self.p2p_port}",
            f"--rpcuser={self.user}",
            f"--rpcpass={self.password}",
            "--txindex",
            "--nodnsseed",
            "--nobanning",
            "--debuglevel=info",
        ]
        if mining_address:
            args.append(f"--miningaddr={mining_address}")
        log = (self.directory / "btcd.out").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_for("btcd RPC", lambda: self.cli("getblockcount") is not None, timeout=60)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def cli(self, *args: str) -> Any:
        run = subprocess.run(
            [
                str(self.bin_dir / "btcctl"),
                "--regtest",
                f"--rpcserver=127.0.0.1:{self.rpc_port}",
                f"--rpccert={self.cert}",
                f"--rpcuser={self.user}",
                f"--rpcpass={self.password}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if run.returncode != 0:
            raise RuntimeError(f"btcctl {' '.join(args)}: {run.stderr.strip() or run.stdout.strip()}")
        out = run.stdout.strip()
        try:
            return json.loads(out)
        except json.JSONDecodeError:
            return out

    def mine(self, blocks: int = 1) -> list[str]:
        return self.cli("generate", str(blocks))

    def height(self) -> int:
        return int(self.cli("getblockcount"))


class LndNode:
    """One LND on loopback with btcd as its chain backend; its wallet created from a seed."""

    PASSWORD = b"bcm-test-wallet"

    def __init__(self, name: str, bin_dir: Path, directory: Path, btcd: Btcd, stubs: str):
        self.name = name
        self.bin_dir = bin_dir
        self.directory = directory
        self.btcd = btcd
        self.stubs = stubs
        self.rpc_port = free_port()
        self.p2p_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.mnemonic: list[str] | None = None
        # REST on this loopback port when set (Network(rest=True)); off otherwise.
        self.rest_port: int | None = None

    @property
    def tls_cert(self) -> Path:
        return self.directory / "tls.cert"

    @property
    def admin_macaroon(self) -> Path:
        return self.directory / "data" / "chain" / "bitcoin" / "regtest" / "admin.macaroon"

    @property
    def rpc(self) -> str:
        return f"127.0.0.1:{self.rpc_port}"

    @property
    def p2p(self) -> str:
        return f"127.0.0.1:{self.p2p_port}"

    def endpoint(self, macaroon: Path | None = None):  # -> bcm_tools.lnd.Endpoint
        from bcm_tools.lnd import Endpoint

        return Endpoint(rpc=self.rpc, tls_cert=self.tls_cert, macaroon=macaroon or self.admin_macaroon)

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        password_file = self.directory / "wallet-password"
        password_file.write_bytes(self.PASSWORD)
        args = [
            str(self.bin_dir / "lnd"),
            f"--lnddir={self.directory}",
            f"--alias={self.name}",
            "--bitcoin.regtest",
            "--bitcoin.node=btcd",
            f"--btcd.rpchost=127.0.0.1:{self.btcd.rpc_port}",
            f"--btcd.rpcuser={self.btcd.user}",
            f"--btcd.rpcpass={self.btcd.password}",
            f"--btcd.rpccert={self.btcd.cert}",
            f"--rpclisten=127.0.0.1:{self.rpc_port}",
            f"--listen=127.0.0.1:{self.p2p_port}",
            f"--restlisten=127.0.0.1:{self.rest_port}" if self.rest_port else "--norest",
            "--nobootstrap",
            "--tlsdisableautofill",
            "--trickledelay=50",
            "--maxpendingchannels=20",
            # A restarted or briefly slow btcd must not make LND shut itself down mid-test.
            "--healthcheck.chainbackend.attempts=0",
            f"--wallet-unlock-password-file={password_file}",
            "--wallet-unlock-allow-create",
            "--debuglevel=info",
        ]
        log = (self.directory / "lnd.out").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        wait_for(f"{self.name} TLS certificate", self.tls_cert.is_file, timeout=60)

    def create_wallet(self, mnemonic: list[str] | None = None, recovery_window: int = 0) -> None:
        """Creates the wallet (new seed, or `mnemonic` to restore) through the wallet unlocker."""
        from bcm_tools.lnd import Endpoint, Lnd

        unlocker = Endpoint(rpc=self.rpc, tls_cert=self.tls_cert)

        def init() -> bool:
            with Lnd(unlocker, self.stubs) as lnd:
                seed = mnemonic or lnd.gen_seed()
                lnd.init_wallet(self.PASSWORD, seed, recovery_window=recovery_window)
                self.mnemonic = seed
            return True

        wait_for(f"{self.name} wallet unlocker", init, timeout=60, interval=0.5)
        wait_for(f"{self.name} admin macaroon", self.admin_macaroon.is_file, timeout=60)
        self.wait_synced()

    def wait_synced(self, timeout: float = 120) -> None:
        height = self.btcd.height()

        def synced() -> bool:
            info = self.cli("getinfo")
            return info["synced_to_chain"] and info["block_height"] >= height

        wait_for(f"{self.name} synced to chain", synced, timeout=timeout, interval=0.5)
        # getinfo answers as soon as the RPC server is up; peers can only connect once LND's
        # own server is active, which can come later (after a restore, say).
        wait_for(f"{self.name} server active", lambda: self.cli("state")["state"] == "SERVER_ACTIVE", timeout=timeout, interval=0.5)

    def stop(self) -> None:
        stop_process(self.proc, timeout=30)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def destroy(self) -> None:
        """The disk failure: the whole LND directory is gone."""
        self.kill()
        shutil.rmtree(self.directory)

    def cli(self, *args: str) -> Any:
        run = subprocess.run(
            [
                str(self.bin_dir / "lncli"),
                "--network=regtest",
                f"--rpcserver={self.rpc}",
                f"--tlscertpath={self.tls_cert}",
                f"--macaroonpath={self.admin_macaroon}",
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if run.returncode != 0:
            raise RuntimeError(f"lncli {self.name} {' '.join(args)}: {run.stderr.strip() or run.stdout.strip()}")
        try:
            return json.loads(run.stdout) if run.stdout.strip() else None
        except json.JSONDecodeError:
            return run.stdout.strip()

    def bake_macaroon(self, path: Path, *uris: str) -> Path:
        """A macaroon allowing exactly the RPCs named (`/lnrpc.Lightning/GetInfo`, ...)."""
        self.cli("bakemacaroon", f"--save_to={path}", *(f"uri:{u}" for u in uris))
        return path

    def pubkey(self) -> str:
        return self.cli("getinfo")["identity_pubkey"]

    def new_address(self) -> str:
        return self.cli("newaddress", "p2wkh")["address"]

    def confirmed_balance(self) -> int:
        return int(self.cli("walletbalance")["confirmed_balance"])

    def channel_points(self) -> list[str]:
        return sorted(c["channel_point"] for c in self.cli("listchannels")["channels"])

    def active_channel_points(self) -> list[str]:
        return sorted(c["channel_point"] for c in self.cli("listchannels", "--active_only")["channels"])


class Network:
    """btcd plus LND nodes; B mines, so A's wallet only ever changes by its own channels."""

    def __init__(self, root: Path, rest: bool = False):
        env = require_daemons()
        self.rest = rest
        self.root = root
        self.lnd_bin = Path(env["LND_BIN"])
        self.btcd = Btcd(Path(env["BTCD_BIN"]), root / "btcd")
        self.stubs = os.environ["BCM_LND_STUBS"]
        self.nodes: list[LndNode] = []

    def node(self, name: str) -> LndNode:
        node = LndNode(name, self.lnd_bin, self.root / name, self.btcd, self.stubs)
        if self.rest:
            node.rest_port = free_port()
        self.nodes.append(node)
        return node

    def start(self, names: list[str]) -> list[LndNode]:
        # btcd can only `generate` to an address fixed at its start, and the miner's address exists
        # only once its LND runs; so btcd starts once without one, and again with it.
        self.btcd.start(mining_address=BURN_ADDRESS)
        self.btcd.mine(1)
        started = [self.node(n) for n in names]
        for n in started:
            n.start()
        for n in started:
            n.create_wallet()
        miner = started[-1]
        address = miner.new_address()
        for n in started:
            n.stop()
        self.btcd.stop()
        self.btcd.start(mining_address=address)
        for n in started:
            n.start()
        # btcd activates segwit on regtest through BIP 9 signalling: three 144-block periods.
        self.btcd.mine(500)
        for n in started:
            n.wait_synced()
        return started

    def fund(self, node: LndNode, sats: int, source: LndNode) -> None:
        source.cli("sendcoins", f"--addr={node.new_address()}", f"--amt={sats}")
        self.btcd.mine(1)
        wait_for(f"{node.name} funded", lambda: node.confirmed_balance() >= sats, timeout=60)

    def connect(self, a: LndNode, b: LndNode) -> None:
        peers = [p["pub_key"] for p in a.cli("listpeers")["peers"]]
        if b.pubkey() not in peers:
            a.cli("connect", f"{b.pubkey()}@{b.p2p}")

    def open_channel(self, a: LndNode, b: LndNode, sats: int = 500_000) -> str:
        """Opens a channel from a to b, mines it in; returns its channel point."""
        self.connect(a, b)
        opened = a.cli("openchannel", f"--node_key={b.pubkey()}", f"--local_amt={sats}")
        txid = opened["funding_txid"]

        def pending_point() -> str | None:
            for pending in a.cli("pendingchannels")["pending_open_channels"]:
                if pending["channel"]["channel_point"].startswith(txid + ":"):
                    return pending["channel"]["channel_point"]
            return None

        point = wait_for("pending channel", pending_point, timeout=30)
        wait_for("funding tx in mempool", lambda: txid in self.btcd.cli("getrawmempool"), timeout=30)
        self.btcd.mine(6)
        # Listed is not usable: a payment fails ("FAILED", no route) until both ends have
        # brought the channel's link up, which `--active_only` shows.
        wait_for(f"channel {point} active", lambda: point in a.active_channel_points() and point in b.active_channel_points(), timeout=90)
        return point

    def close_channel(self, a: LndNode, point: str) -> None:
        txid, index = point.split(":")
        a.cli("closechannel", f"--funding_txid={txid}", f"--output_index={index}")
        wait_for("closing tx in mempool", lambda: len(self.btcd.cli("getrawmempool")) > 0, timeout=30)
        self.btcd.mine(3)
        wait_for(f"channel {point} closed", lambda: point not in a.channel_points(), timeout=60)

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
        self.btcd.stop()
