"""`bcm-tools connect`: what a wallet needs to use this node, read from what the node declares.

The node's `bcm-connect-info` (modules/connect.nix) names, for each kind of wallet, the onion
service it reaches, the port, the certificate to pin and, for a Lightning wallet, the macaroon
baked for it. This module reads those files (on the node, or over SSH as the operator) and
builds the wallet's settings; it never guesses a path or a port.
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from pydantic import BaseModel, ValidationError

from bcm_tools.errors import CredentialError, DaemonError, UsageError

WALLETS = ("sparrow", "electrum", "zeus", "feather")


class ElectrumInfo(BaseModel):
    onionFile: str
    tcpPort: int
    sslPort: int
    certFile: str


class LndInfo(BaseModel):
    onionFile: str
    restPort: int
    certFile: str
    macaroonFile: str
    permissions: list[str]


class MoneroInfo(BaseModel):
    onionFile: str
    port: int


class Manifest(BaseModel):
    network: str
    electrum: ElectrumInfo | None = None
    lnd: LndInfo | None = None
    monero: MoneroInfo | None = None


class Node(Protocol):
    label: str

    def info(self) -> Manifest: ...

    def read(self, path: str) -> bytes: ...


def _manifest(raw: bytes, where: str) -> Manifest:
    try:
        return Manifest.model_validate(json.loads(raw))
    except (json.JSONDecodeError, ValidationError):
        raise DaemonError(f"{where}: bcm-connect-info printed something that is not its manifest") from None


class LocalNode:
    """The node this runs on."""

    label = "this host"

    def info(self) -> Manifest:
        try:
            run = subprocess.run(["bcm-connect-info"], capture_output=True, timeout=30)
        except FileNotFoundError:
            raise UsageError("bcm-connect-info is not installed here: enable bcm.connect on this host (it needs bcm.tor)") from None
        if run.returncode != 0:
            raise DaemonError(f"bcm-connect-info failed: {run.stderr.decode(errors='replace').strip()}")
        return _manifest(run.stdout, self.label)

    def read(self, path: str) -> bytes:
        try:
            return Path(path).read_bytes()
        except OSError as err:
            raise CredentialError(f"cannot read {path}: {err.strerror}") from None


class SshNode:
    """A node reached with `ssh` as the operator."""

    def __init__(self, destination: str, options: list[str]):
        self.label = destination
        self.args = ["ssh", "-o", "BatchMode=yes", *options, destination, "--"]

    def _run(self, command: str) -> bytes:
        try:
            run = subprocess.run([*self.args, command], capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise UsageError("ssh is not installed") from None
        if run.returncode != 0:
            error = run.stderr.decode(errors="replace").strip().splitlines()
            raise DaemonError(f"{self.label}: {command.split()[0]} failed: {error[-1] if error else f'exit {run.returncode}'}")
        return run.stdout

    def info(self) -> Manifest:
        return _manifest(self._run("bcm-connect-info"), self.label)

    def read(self, path: str) -> bytes:
        return self._run(f"cat -- {shlex.quote(path)}")


def _onion(node: Node, path: str) -> str:
    address = node.read(path).decode(errors="replace").strip()
    if not address.endswith(".onion"):
        raise DaemonError(f"{node.label}: {path} holds no onion address (has Tor started?)")
    return address


def _certificate(node: Node, path: str) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(node.read(path))
    except ValueError:
        raise DaemonError(f"{node.label}: {path} is not a PEM certificate") from None


class Connection(BaseModel):
    """What to enter in the wallet, and the text its QR code carries."""

    wallet: str
    fields: dict[str, str]
    qr_text: str
    secret: bool = False


def electrum_server(node: Node, wallet: str) -> Connection:
    manifest = node.info()
    if manifest.electrum is None:
        raise UsageError(f"{node.label} runs no Electrum server: {wallet} needs bcm.fulcrum")
    e = manifest.electrum
    onion = _onion(node, e.onionFile)
    cert = _certificate(node, e.certFile)
    fingerprint = cert.fingerprint(hashes.SHA256()).hex(":").upper()
    return Connection(
        wallet=wallet,
        fields={
            "server": f"{onion}:{e.sslPort}",
            "ssl": "yes",
            "certificate sha256": fingerprint,
            "tcp (no TLS, inside Tor)": f"{onion}:{e.tcpPort}",
            "proxy": "Tor (SOCKS5 127.0.0.1:9050 on your machine)",
        },
        # Electrum's own server notation: HOST:PORT:s for TLS.
        qr_text=f"{onion}:{e.sslPort}:s",
    )


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def zeus(node: Node) -> Connection:
    manifest = node.info()
    if manifest.lnd is None:
        raise UsageError(f"{node.label} runs no LND: zeus needs bcm.lnd")
    info = manifest.lnd
    onion = _onion(node, info.onionFile)
    cert = _certificate(node, info.certFile).public_bytes(serialization.Encoding.DER)
    macaroon = node.read(info.macaroonFile)
    uri = f"lndconnect://{onion}:{info.restPort}?cert={_b64url(cert)}&macaroon={_b64url(macaroon)}"
    return Connection(
        wallet="zeus",
        fields={"uri": uri, "permissions": " ".join(info.permissions)},
        qr_text=uri,
        secret=True,
    )


def feather(node: Node) -> Connection:
    manifest = node.info()
    if manifest.monero is None:
        raise UsageError(f"{node.label} runs no monerod: feather needs bcm.monerod")
    onion = _onion(node, manifest.monero.onionFile)
    node_address = f"{onion}:{manifest.monero.port}"
    return Connection(
        wallet="feather",
        fields={"node": node_address, "rpc": "restricted (read-only for wallets)", "proxy": "Tor"},
        qr_text=node_address,
    )


def connection(node: Node, wallet: str) -> Connection:
    if wallet in ("sparrow", "electrum"):
        return electrum_server(node, wallet)
    if wallet == "zeus":
        return zeus(node)
    if wallet == "feather":
        return feather(node)
    raise UsageError(f"unknown wallet {wallet!r}: one of {', '.join(WALLETS)}")


def write_secret(path: Path, text: str) -> None:
    """Writes `text` to a new file only its owner can read (0600)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise UsageError(f"{path} exists; choose another --out or remove it first") from None
    except OSError as err:
        raise UsageError(f"cannot write {path}: {err.strerror}") from None
    with os.fdopen(fd, "w") as out:
        os.fchmod(out.fileno(), 0o600)
        out.write(text + "\n")

