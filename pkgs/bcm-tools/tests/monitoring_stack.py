"""A monitored node on 127.0.0.1, built from what bcm.monitoring renders for the monitoring
fixture host (nixos-tests/eval/exported/monitoring.json).

Real here: btcd and two LND nodes with a channel between them (lnd_regtest.py), monerod in
regtest, Tor (offline: `DisableNetwork 1`, so it never bootstraps), the channel-backup watcher
writing its textfile metrics, Debian's node exporter, `bcm-tools exporter`, and Debian's
Prometheus, each started from the exported command lines and files.

Stand-ins, because no real one runs here: bitcoind (`FakeBitcoind`, answering only the calls
the rendered `rpcwhitelist` gives the monitoring user, with the reply shapes of Bitcoin Core's
RPC documentation) and Fulcrum (`FakeElectrum`, the two Electrum protocol calls the exporter
makes). Kafka has no binary here either: its scrape job is dropped.

What the tests change in the rendered configuration, because they must: every address becomes
a free loopback port; file paths move into the test's directory; the scrape and evaluation
interval drops from 30 s to 1 s so that data arrives within a test; the storage tiers are
tmpfs mounts at /srv/fast and /srv/bulk inside the node exporter's own mount namespace
(bubblewrap), so its filesystem collector sees tiers under the mount points the rules name.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from lnd_regtest import free_port, stop_process, wait_for
from sandbox import load_export

CLI = [sys.executable, "-c", "from bcm_tools.cli import main; main()"]
MONERO_ADDRESS = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A"


# --- the export ------------------------------------------------------------------------------


class Rendered:
    """The monitoring host's export: files by name, unit command lines as argument lists."""

    def __init__(self) -> None:
        self.data = load_export("monitoring")

    def file(self, suffix: str) -> str:
        found = [text for path, text in self.data["files"].items() if path.endswith(suffix)]
        assert len(found) == 1, f"{suffix}: {len(found)} rendered files"
        return found[0]

    def argv(self, unit: str) -> list[str]:
        """ExecStart split as systemd would (nixpkgs writes it over several `\\`-continued lines)."""
        return shlex.split(self.data["units"][unit]["serviceConfig"]["ExecStart"].replace("\\\n", " "))

    def flags(self, unit: str) -> dict[str, str]:
        """`--flag=value` and `--flag value` arguments of a unit's command line."""
        out: dict[str, str] = {}
        args = self.argv(unit)[1:]
        i = 0
        while i < len(args):
            arg = args[i]
            if "=" in arg:
                key, value = arg.split("=", 1)
            elif i + 1 < len(args) and not args[i + 1].startswith("--"):
                key, value = arg, args[i + 1]
                i += 1
            else:
                key, value = arg, ""
            out.setdefault(key, value)
            i += 1
        return out

    def whitelist(self, user: str) -> list[str]:
        for line in self.file("bitcoin.conf").splitlines():
            if line.startswith(f"rpcwhitelist={user}:"):
                return line.split(":", 1)[1].split(",")
        raise AssertionError(f"no rpcwhitelist for {user} in bitcoin.conf")

    def macaroon_permissions(self, name: str) -> list[str]:
        for line in self.file("lnd-post-start").splitlines():
            if f"--save_to=/run/lnd/{name}.macaroon" in line:
                return shlex.split(line.split(f"/run/lnd/{name}.macaroon", 1)[1])
        raise AssertionError(f"lnd-post-start bakes no {name} macaroon")


# --- stand-ins --------------------------------------------------------------------------------


class FakeBitcoind(ThreadingHTTPServer):
    """A STAND-IN for bitcoind's JSON-RPC (there is no bitcoind here). It refuses every method
    outside `whitelist` with HTTP 403, as bitcoind's rpcwhitelist does, and answers the others
    with the fields Bitcoin Core documents for them."""

    def __init__(self, user: str, password: str, whitelist: list[str]) -> None:
        super().__init__(("127.0.0.1", 0), _BitcoindHandler)
        self.user, self.password, self.whitelist = user, password, set(whitelist)
        self.blocks, self.headers = 840_000, 840_002
        self.refused: list[str] = []

    def answer(self, method: str) -> Any:
        return {
            "getblockchaininfo": {
                "chain": "regtest", "blocks": self.blocks, "headers": self.headers, "bestblockhash": "00" * 32,
                "difficulty": 1.0, "time": int(time.time()) - 300, "mediantime": int(time.time()) - 3000,
                "verificationprogress": 0.9999, "initialblockdownload": False, "chainwork": "00" * 32,
                "size_on_disk": 650_000_000_000, "pruned": False, "warnings": [],
            },
            "getnetworkinfo": {"version": 310000, "connections": 10, "connections_in": 2, "connections_out": 8, "networkactive": True},
            "getmempoolinfo": {"loaded": True, "size": 1234, "bytes": 567_890, "usage": 2_000_000},
        }[method]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _BitcoindHandler(BaseHTTPRequestHandler):
    server: FakeBitcoind

    def do_POST(self) -> None:  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        auth = base64.b64decode(self.headers.get("Authorization", "Basic ").split()[1]).decode()
        if auth != f"{self.server.user}:{self.server.password}":
            self._send(401, b"")
            return
        if body["method"] not in self.server.whitelist:
            self.server.refused.append(body["method"])
            self._send(403, b"")
            return
        self._send(200, json.dumps({"result": self.server.answer(body["method"]), "error": None, "id": body["id"]}).encode())

    def _send(self, status: int, payload: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


class FakeElectrum:
    """A STAND-IN for Fulcrum (no binary here): answers `server.version` and
    `blockchain.headers.subscribe` with the shapes of the Electrum protocol 1.4."""

    def __init__(self, height: int) -> None:
        self.height = height
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._client, args=(conn,), daemon=True).start()

    def _client(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rwb") as stream:
            for line in stream:
                request = json.loads(line)
                result: Any = {
                    "server.version": ["Fulcrum 2.1.0", "1.4"],
                    "blockchain.headers.subscribe": {"height": self.height, "hex": "00" * 80},
                }[request["method"]]
                stream.write(json.dumps({"jsonrpc": "2.0", "id": request["id"], "result": result}).encode() + b"\n")
                stream.flush()

    def stop(self) -> None:
        self.sock.close()


# --- real daemons -------------------------------------------------------------------------------


def http_json(url: str, body: Any = None, timeout: float = 60) -> Any:
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=timeout) as reply:
        return json.load(reply)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Process:
    def __init__(self, name: str, args: list[str], directory: Path, env: dict[str, str] | None = None, umask: int | None = None):
        self.name = name
        self.log = directory / f"{name}.log"
        preexec = (lambda: os.umask(umask)) if umask is not None else None
        self.proc = subprocess.Popen(args, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env=env, preexec_fn=preexec)

    def wait_port(self, port: int, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"{self.name} exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            return port_open(port)

        wait_for(f"{self.name} on port {port}", ready, timeout=timeout)

    def stop(self) -> None:
        stop_process(self.proc)


def start_monerod(directory: Path) -> tuple[Process, int]:
    rpc, p2p, zmq = free_port(), free_port(), free_port()
    monerod = Process("monerod", [
        shutil.which("monerod") or "monerod", "--regtest", "--offline", "--fixed-difficulty=1", "--non-interactive",
        f"--data-dir={directory / 'monerod'}", "--rpc-bind-ip=127.0.0.1", f"--rpc-bind-port={rpc}",
        "--p2p-bind-ip=127.0.0.1", f"--p2p-bind-port={p2p}", f"--zmq-rpc-bind-port={zmq}", "--no-igd", "--log-level=0",
    ], directory)
    monerod.wait_port(rpc)
    mined = http_json(f"http://127.0.0.1:{rpc}/json_rpc", {"jsonrpc": "2.0", "id": "0", "method": "generateblocks",
                                                           "params": {"amount_of_blocks": 3, "wallet_address": MONERO_ADDRESS}}, timeout=300)
    assert "error" not in mined, mined
    return monerod, rpc


def start_tor(directory: Path, rendered: Rendered, onions: dict[str, int] | None = None) -> tuple[Process, int, Path]:
    """Tor offline, with the control settings the module renders (port and cookie path moved),
    and an onion service for each of `onions` (name -> local port), which Tor creates offline."""
    control = free_port()
    cookie = directory / "tor-control.authcookie"
    settings = [line for line in rendered.file("torrc-settings").splitlines() if line.startswith(("ControlPort", "Cookie"))]
    assert {line.split()[0] for line in settings} == {"ControlPort", "CookieAuthentication", "CookieAuthFile", "CookieAuthFileGroupReadable"}
    moved = [
        f"ControlPort 127.0.0.1:{control}" if line.startswith("ControlPort ")
        else f"CookieAuthFile {cookie}" if line.startswith("CookieAuthFile ")
        else line
        for line in settings
    ]
    torrc = directory / "torrc"
    services = []
    for name, port in (onions or {}).items():
        services += [f"HiddenServiceDir {directory / 'tor' / 'onion' / name}", f"HiddenServicePort {port} 127.0.0.1:{port}"]
    torrc.write_text("\n".join([f"DataDirectory {directory / 'tor'}", "SOCKSPort 0", "DisableNetwork 1", "Log notice stdout", *moved, *services]) + "\n")
    (directory / "tor" / "onion").mkdir(mode=0o700, parents=True, exist_ok=True)
    tor = Process("tor", [shutil.which("tor") or "/usr/sbin/tor", "-f", str(torrc)], directory)
    tor.wait_port(control)
    wait_for("Tor's control cookie", cookie.is_file)
    return tor, control, cookie


# --- the whole node -----------------------------------------------------------------------------


class Stack:
    """Everything above, started in order; `stop()` ends each process it started, by PID."""

    SCRAPE_INTERVAL = "1s"

    def __init__(self, root: Path, network: Any) -> None:
        self.root = root
        self.rendered = Rendered()
        self.processes: list[Process] = []
        self.network = network
        self.alice, self.bob = network.nodes[0], network.nodes[1]
        self.fakes: list[Any] = []

    def start(self) -> None:
        r = self.rendered
        # Real LND with a channel, and the monitoring macaroon baked with the rendered permissions.
        self.channel = self.network.open_channel(self.alice, self.bob, 1_000_000)
        self.macaroon = self.root / "monitoring.macaroon"
        self.alice.cli("bakemacaroon", f"--save_to={self.macaroon}", *r.macaroon_permissions("monitoring"))

        # The backup watcher, writing its textfile metrics where the node exporter reads them.
        self.textfile_dir = self.root / "textfile"
        self.textfile_dir.mkdir()
        identity = self.root / "backup.key"
        subprocess.run(["age-keygen", "-o", str(identity)], check=True, capture_output=True)
        self.backup_target = self.root / "backups"
        self.backup_target.mkdir()
        self.watch = self._spawn("backup-watch", [
            *CLI, "backup", "watch", "--lnd-rpc", self.alice.rpc, "--lnd-tls-cert", str(self.alice.tls_cert),
            "--lnd-macaroon", str(self.alice.admin_macaroon), "-r", _recipient(identity),
            "-t", str(self.backup_target), "--metrics", str(self.textfile_dir / "lnd_backups.prom"),
        ], umask=0o077)  # the unit's UMask (hardening.strict)
        wait_for("the backup watcher's metrics", lambda: "bcm_lnd_backup_last_success_timestamp_seconds{" in _read(self.textfile_dir / "lnd_backups.prom"), timeout=60)

        self.monerod, self.monerod_rpc = start_monerod(self.root)
        self.processes.append(self.monerod)
        # The onion services `bcm-tools connect` names (modules/connect.nix), on the test's ports.
        self.manifest = json.loads(r.file("bcm-connect.json"))
        onions = {"lnd-rest": self.alice.rest_port, "fulcrum": 50002, "monerod-rpc": self.monerod_rpc}
        self.tor, self.tor_control, self.tor_cookie = start_tor(self.root, r, onions)
        for name in onions:
            wait_for(f"the {name} onion address", (self.root / "tor" / "onion" / name / "hostname").is_file)
        self.processes.append(self.tor)

        password = "monitoring-password"
        self.bitcoind = FakeBitcoind("monitoring", password, r.whitelist("monitoring"))
        threading.Thread(target=self.bitcoind.serve_forever, daemon=True).start()
        self.fakes.append(self.bitcoind)
        (self.root / "bitcoind-password").write_text(password)
        self.electrum = FakeElectrum(height=840_000)
        self.fakes.append(self.electrum)

        self.ports = {name: free_port() for name in ("node", "exporter", "prometheus")}
        self._start_node_exporter()
        self._start_exporter()
        self._start_prometheus()

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None = None, umask: int | None = None) -> Process:
        process = Process(name, args, self.root, env=env, umask=umask)
        self.processes.append(process)
        return process

    def _start_node_exporter(self) -> None:
        args = self.rendered.argv("prometheus-node-exporter")[1:]
        moved = []
        for arg in args:
            if arg.startswith("--collector.textfile.directory="):
                arg = f"--collector.textfile.directory={self.textfile_dir}"
            elif arg.startswith("127.0.0.1:"):  # the value of --web.listen-address
                arg = f"127.0.0.1:{self.ports['node']}"
            moved.append(arg)
        # The tiers: 64 MiB tmpfs mounts at the rendered mount points, in a mount namespace of the
        # exporter's own; the fast one filled to 95 %.
        bwrap = ["bwrap", "--dev-bind", "/", "/", "--tmpfs", "/srv", "--size", str(64 << 20), "--tmpfs", "/srv/fast",
                 "--size", str(64 << 20), "--tmpfs", "/srv/bulk", "--unshare-pid", "--proc", "/proc", "--die-with-parent"]
        fill = f"head -c {61 << 20} /dev/zero > /srv/fast/filler && exec {shlex.quote(shutil.which('prometheus-node-exporter') or 'prometheus-node-exporter')} {shlex.join(moved)}"
        self.node_exporter = self._spawn("node-exporter", [*bwrap, "sh", "-c", fill])
        self.node_exporter.wait_port(self.ports["node"])

    def _start_exporter(self) -> None:
        flags = self.rendered.flags("bcm-exporter")
        assert set(flags) == {"exporter", "--listen", "--bitcoind-rpc", "--bitcoind-rpc-user", "--bitcoind-rpc-password-file", "--lnd-rpc",
                              "--lnd-tls-cert", "--lnd-macaroon", "--monerod-rpc", "--tor-control", "--tor-cookie", "--fulcrum"}, flags
        args = [
            "exporter", f"--listen=127.0.0.1:{self.ports['exporter']}",
            f"--bitcoind-rpc={self.bitcoind.url}", f"--bitcoind-rpc-user={flags['--bitcoind-rpc-user']}",
            f"--bitcoind-rpc-password-file={self.root / 'bitcoind-password'}",
            f"--lnd-rpc={self.alice.rpc}", f"--lnd-tls-cert={self.alice.tls_cert}", f"--lnd-macaroon={self.macaroon}",
            f"--monerod-rpc=http://127.0.0.1:{self.monerod_rpc}", f"--tor-control=127.0.0.1:{self.tor_control}",
            f"--tor-cookie={self.tor_cookie}", f"--fulcrum=127.0.0.1:{self.electrum.port}",
        ]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.exporter = self._spawn("bcm-exporter", [*CLI, *args], env=env)
        self.exporter.wait_port(self.ports["exporter"])

    def prometheus_config(self) -> dict:
        """The rendered prometheus.yml with the test's ports, paths and interval."""
        config = json.loads(self.rendered.file("prometheus.yml"))
        rules = self.root / "bcm-alerts.rules.yml"
        rules.write_text(self.rendered.file("bcm-alerts.rules.yml"))
        assert len(config["rule_files"]) == 1 and config["rule_files"][0].endswith("-bcm-alerts.rules.yml")
        config["rule_files"] = [str(rules)]
        config["global"] = {**config["global"], "scrape_interval": self.SCRAPE_INTERVAL, "evaluation_interval": self.SCRAPE_INTERVAL}
        port_of = {"9090": self.ports["prometheus"], "9100": self.ports["node"], "9120": self.ports["exporter"]}
        jobs = []
        for job in config["scrape_configs"]:
            if job["job_name"] == "kafka":
                continue  # no Kafka here
            for group in job["static_configs"]:
                group["targets"] = [f"127.0.0.1:{port_of[t.rsplit(':', 1)[1]]}" for t in group["targets"]]
            jobs.append(job)
        config["scrape_configs"] = jobs
        config["alerting"] = {"alertmanagers": []}  # no Alertmanager started here
        return config

    def _start_prometheus(self) -> None:
        flags = self.rendered.flags("prometheus")
        config = self.root / "prometheus.yml"
        config.write_text(json.dumps(self.prometheus_config()))
        args = [
            shutil.which("prometheus") or "prometheus", f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{self.ports['prometheus']}",
            f"--storage.tsdb.path={self.root / 'prometheus-data'}",
            f"--storage.tsdb.retention.time={flags['--storage.tsdb.retention.time']}",
        ]
        self.prometheus = self._spawn("prometheus", args)
        self.prometheus.wait_port(self.ports["prometheus"])

    @property
    def prometheus_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['prometheus']}"

    def query(self, expr: str) -> list[dict]:
        reply = http_json(f"{self.prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
        assert reply["status"] == "success", reply
        return reply["data"]["result"]

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        for fake in self.fakes:
            if isinstance(fake, ThreadingHTTPServer):
                fake.shutdown()
                fake.server_close()
            else:
                fake.stop()


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def _recipient(identity: Path) -> str:
    from bcm_tools import age

    return age.recipient_of(identity)


def onion_of(stack: Stack, name: str) -> str:
    return (stack.root / "tor" / "onion" / name / "hostname").read_text().strip()


def connect_info(stack: Stack, directory: Path) -> Path:
    """A `bcm-connect-info` printing the rendered manifest with the test's files and ports in
    place of the node's: the onion address files Tor wrote, alice's certificate and REST port, a
    wallet macaroon baked with the rendered permissions, a certificate made the way
    fulcrum-prepare makes Fulcrum's. Returns the directory to put first on PATH."""
    manifest = json.loads(json.dumps(stack.manifest))
    rendered = stack.rendered
    macaroon = directory / "wallet.macaroon"
    stack.alice.cli("bakemacaroon", f"--save_to={macaroon}", *rendered.macaroon_permissions("wallet"))
    assert manifest["lnd"]["permissions"] == rendered.macaroon_permissions("wallet")
    fulcrum_cert = directory / "fulcrum-tls.cert"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(directory / "fulcrum.key"),
                    "-out", str(fulcrum_cert), "-days", "3650", "-subj", "/CN=bcm-fulcrum"], check=True, capture_output=True)
    onion = lambda name: str(stack.root / "tor" / "onion" / name / "hostname")  # noqa: E731
    manifest["lnd"].update(onionFile=onion("lnd-rest"), restPort=stack.alice.rest_port, certFile=str(stack.alice.tls_cert),
                           macaroonFile=str(macaroon))
    manifest["electrum"].update(onionFile=onion("fulcrum"), certFile=str(fulcrum_cert))
    manifest["monero"].update(onionFile=onion("monerod-rpc"))
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    data = directory / "manifest.json"
    data.write_text(json.dumps(manifest))
    script = bin_dir / "bcm-connect-info"
    script.write_text(f"#!/bin/sh\nexec cat {shlex.quote(str(data))}\n")
    script.chmod(0o755)
    return bin_dir
