"""`trezor watch-only` at the message level, against a FAKE bitcoind on loopback.

There is no bitcoind on these machines (Debian does not package it), so a small HTTP server on
127.0.0.1 stands in for its JSON-RPC interface: it records every request exactly as bitcoind
would receive it (path, Basic auth, method, params) and answers with bitcoind's documented reply
shapes. The assertions are about those requests. The VM test vm-storage-fault
(nixos-tests/storage-fault.nix) runs the command against a real bitcoind, where KVM is; it has
not been run on the machines these tests run on.
"""

from __future__ import annotations

import base64
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from trezorlib.tools import b58check_decode, b58check_encode, descriptor_checksum

from bcm_tools.bitcoind import Bitcoind, RpcEndpoint
from bcm_tools.devices.trezor import TrezorDevice
from bcm_tools.errors import DaemonError, UsageError
from bcm_tools.watch_only import import_watch_only
from fake_trezor import FakeTrezorTransport

VECTORS = Path(__file__).parent / "vectors"
BIP84 = json.loads((VECTORS / "bip84.json").read_text())
BIP86 = json.loads((VECTORS / "bip86.json").read_text())
ABANDON = BIP84["mnemonic"]
BIRTHDAY_TIME = 1_700_000_000
# bitcoind's createwallet parameters, in positional order (python-bitcoinrpc sends positions).
CREATEWALLET_PARAMS = ["wallet_name", "disable_private_keys", "blank", "passphrase", "avoid_reuse", "descriptors", "load_on_startup"]


class FakeBitcoind(ThreadingHTTPServer):
    """Records JSON-RPC requests; answers like bitcoind. `overrides` maps a method to a reply
    (a result, or {"error": {...}})."""

    def __init__(self, chain: str = "main") -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.chain = chain
        self.requests: list[dict] = []
        self.overrides: dict[str, object] = {}
        self.wallets: list[str] = []
        self.password = "s3cret"

    def answer(self, path: str, method: str, params: list) -> dict:
        if method in self.overrides:
            reply = self.overrides[method]
            return reply if isinstance(reply, dict) and "error" in reply else {"result": reply, "error": None}
        results = {
            "getblockchaininfo": lambda: {"chain": self.chain, "blocks": 200},
            "getblockcount": lambda: 200,
            "getblockhash": lambda: f"{params[0]:064x}",
            "getblockheader": lambda: {"hash": params[0], "time": BIRTHDAY_TIME, "height": 123},
            "createwallet": lambda: {"name": params[0], "warnings": []},
            "listwallets": lambda: self.wallets,
            "importdescriptors": lambda: [{"success": True} for _ in params[0]],
        }
        if method not in results:
            return {"result": None, "error": {"code": -32601, "message": "Method not found"}}
        return {"result": results[method](), "error": None}

    def calls(self, method: str) -> list[dict]:
        return [r for r in self.requests if r["method"] == method]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FakeBitcoind

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = base64.b64decode(self.headers["Authorization"].split()[1]).decode()
        self.server.requests.append({"path": self.path, "auth": auth, "method": body["method"], "params": body["params"]})
        if auth != f"alice:{self.server.password}":
            self.send_response(401)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            return
        reply = self.server.answer(self.path, body["method"], body["params"])
        payload = json.dumps({**reply, "id": body["id"]}).encode()
        self.send_response(500 if reply.get("error") else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def bitcoind():
    server = FakeBitcoind()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def words(tmp_path):
    path = tmp_path / "words.txt"
    path.write_text(ABANDON + "\n")
    return path


def watch_only(run_cli, bitcoind, words, *extra, password="s3cret"):
    return run_cli(
        "trezor", "watch-only", "--host", "btc1", "--device", f"mnemonic:{words}",
        "--rpc-url", bitcoind.url, "--rpc-user", "alice", "--rpc-password", password, *extra,
    )


def test_imports_bip84_and_bip86_descriptors_into_a_blank_watch_only_wallet(run_cli, bitcoind, words):
    result = watch_only(run_cli, bitcoind, words, "--birthday", "123")
    assert result.returncode == 0, result.stderr
    wallet = "btc1-insecure-mnemonic-0"

    assert [r["method"] for r in bitcoind.requests] == [
        "getblockchaininfo", "getblockhash", "getblockheader", "createwallet", "importdescriptors",
    ]
    assert bitcoind.calls("getblockhash")[0]["params"] == [123]
    create = dict(zip(CREATEWALLET_PARAMS, bitcoind.calls("createwallet")[0]["params"]))
    assert create == {
        "wallet_name": wallet, "disable_private_keys": True, "blank": True, "passphrase": "",
        "avoid_reuse": False, "descriptors": True, "load_on_startup": True,
    }
    imported = bitcoind.calls("importdescriptors")[0]
    assert imported["path"] == f"/wallet/{wallet}"
    requests = imported["params"][0]
    assert [(r["internal"], r["active"], r["timestamp"], r["range"]) for r in requests] == [
        (False, True, BIRTHDAY_TIME, [0, 999]), (True, True, BIRTHDAY_TIME, [0, 999]),
    ] * 2
    # BIP-84's account key is published as a zpub (SLIP-0132); descriptors take it as an xpub.
    bip84_xpub = b58check_encode(bytes.fromhex("0488b21e") + b58check_decode(BIP84["account_zpub"])[4:])
    bodies = [
        f"wpkh([73c5da0a/84h/0h/0h]{bip84_xpub}/0/*)",
        f"wpkh([73c5da0a/84h/0h/0h]{bip84_xpub}/1/*)",
        f"tr([73c5da0a/86h/0h/0h]{BIP86['account_xpub']}/0/*)",
        f"tr([73c5da0a/86h/0h/0h]{BIP86['account_xpub']}/1/*)",
    ]
    # Checksums from trezorlib's BIP-380 implementation, not from bcm_tools.
    assert [r["desc"] for r in requests] == [f"{body}#{descriptor_checksum(body)}" for body in bodies]
    assert "prv" not in json.dumps(bitcoind.requests)  # no private key ever leaves the device

    # The first receive addresses printed for comparison on the device are BIP-84/86's own.
    assert BIP84["addresses"][0]["address"] in result.stdout
    assert BIP86["addresses"][0]["address"] in result.stdout
    assert "INSECURE" in result.stderr


def test_regtest_uses_test_coin_type_and_tpub(run_cli, bitcoind, words):
    bitcoind.chain = "regtest"
    result = watch_only(run_cli, bitcoind, words, "--network", "regtest")
    assert result.returncode == 0, result.stderr
    assert [r["method"] for r in bitcoind.requests][:3] == ["getblockchaininfo", "getblockcount", "getblockhash"]
    descs = [r["desc"] for r in bitcoind.calls("importdescriptors")[0]["params"][0]]
    assert all("/1h/0h]tpub" in d for d in descs)
    assert "bcrt1q" in result.stdout and "bcrt1p" in result.stdout


def test_existing_watch_only_wallet_is_reused(run_cli, bitcoind, words):
    bitcoind.overrides["createwallet"] = {"error": {"code": -4, "message": "Wallet file verification failed. Failed to create database path. Database already exists."}}
    bitcoind.overrides["getwalletinfo"] = {"private_keys_enabled": False, "descriptors": True}
    bitcoind.wallets.append("btc1-insecure-mnemonic-0")
    result = watch_only(run_cli, bitcoind, words, "--birthday", "1")
    assert result.returncode == 0, result.stderr
    assert "already existed" in result.stdout
    assert bitcoind.calls("getwalletinfo")[0]["path"] == "/wallet/btc1-insecure-mnemonic-0"


def test_existing_wallet_with_private_keys_is_refused(run_cli, bitcoind, words):
    bitcoind.overrides["createwallet"] = {"error": {"code": -4, "message": "Database already exists."}}
    bitcoind.overrides["getwalletinfo"] = {"private_keys_enabled": True, "descriptors": True}
    bitcoind.wallets.append("btc1-insecure-mnemonic-0")
    result = watch_only(run_cli, bitcoind, words, "--birthday", "1")
    assert result.returncode == DaemonError.exit_code
    assert "not a watch-only descriptor wallet" in result.stderr
    assert not bitcoind.calls("importdescriptors")


@pytest.mark.parametrize(
    "setup, message, code",
    [
        (lambda b: setattr(b, "chain", "test"), "bitcoind runs chain 'test' but --network is 'mainnet'", UsageError.exit_code),
        (lambda b: b.overrides.update(importdescriptors=[{"success": False, "error": {"code": -5, "message": "Invalid descriptor"}}] * 4), "bitcoind refused descriptor wpkh(", DaemonError.exit_code),
        (lambda b: b.overrides.update(getblockhash={"error": {"code": -8, "message": "Block height out of range"}}), "getblockhash failed: Block height out of range (code -8)", DaemonError.exit_code),
        (lambda b: b.overrides.update(getblockheader={"hash": "00", "height": 1}), "unexpected getblockheader reply (time: Field required)", DaemonError.exit_code),
    ],
    ids=["wrong-chain", "import-refused", "birthday-beyond-tip", "malformed-reply"],
)
def test_bitcoind_errors_are_one_line(run_cli, bitcoind, words, setup, message, code):
    setup(bitcoind)
    result = watch_only(run_cli, bitcoind, words, "--birthday", "999999")
    assert result.returncode == code
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("warning: INSECURE") and message in lines[1]
    assert "Traceback" not in result.stderr and "s3cret" not in result.stderr


def test_wrong_rpc_password(run_cli, bitcoind, words):
    result = watch_only(run_cli, bitcoind, words, password="wrong")
    assert result.returncode == DaemonError.exit_code
    assert result.stderr.strip().splitlines()[-1] == f"error: bitcoind at 127.0.0.1:{bitcoind.server_address[1]} rejected the RPC user or password"


@pytest.mark.parametrize("password", ["pa/ss", "pa#ss", "pa?ss", "p@ss:w%2Fd"])
def test_rpc_password_is_sent_as_given_whatever_it_holds(run_cli, bitcoind, words, password):
    """`/`, `#` and `?` end a URL's authority; the password must still reach bitcoind unchanged."""
    bitcoind.password = password
    result = watch_only(run_cli, bitcoind, words, "--birthday", "1", password=password)
    assert result.returncode == 0, result.stderr
    assert {r["auth"] for r in bitcoind.requests} == {f"alice:{password}"}


def test_rpc_credentials_in_the_url_are_percent_decoded(run_cli, bitcoind, words):
    bitcoind.password = "pa/ss#1"
    port = bitcoind.server_address[1]
    result = run_cli("trezor", "watch-only", "--host", "btc1", "--device", f"mnemonic:{words}", "--birthday", "1",
                     "--rpc-url", f"http://alice:pa%2Fss%231@127.0.0.1:{port}")
    assert result.returncode == 0, result.stderr
    assert {r["auth"] for r in bitcoind.requests} == {"alice:pa/ss#1"}


def test_bitcoind_not_running(run_cli, words):
    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = run_cli("trezor", "watch-only", "--host", "btc1", "--device", f"mnemonic:{words}",
                     "--rpc-url", f"http://127.0.0.1:{port}", "--rpc-user", "a", "--rpc-password", "b")
    assert result.returncode == DaemonError.exit_code
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: cannot reach bitcoind at 127.0.0.1:{port}")


def test_trezor_device_through_the_same_import(bitcoind):
    """The Trezor path: account xpubs come from GetPublicKey requests on the (fake) session."""
    transport = FakeTrezorTransport(ABANDON)
    device = TrezorDevice(transport=transport)
    node = Bitcoind(RpcEndpoint.from_url(bitcoind.url, "alice", "s3cret"))
    with device:
        result = import_watch_only(device, node, network="mainnet", account=0, wallet="w", birthday_height=5)
    assert [a.first_address for a in result.accounts] == [BIP84["addresses"][0]["address"], BIP86["addresses"][0]["address"]]
    paths = [list(m.address_n) for m in transport.received if hasattr(m, "address_n")]
    assert [0x80000054, 0x80000000, 0x80000000] in paths and [0x80000056, 0x80000000, 0x80000000] in paths
    assert not transport.is_open()
