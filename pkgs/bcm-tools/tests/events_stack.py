"""Processes the event-bridge tests start on 127.0.0.1: monerod in regtest and the bridge itself
(`bcm-tools events bridge`, a real subprocess, so it can be killed with SIGKILL). Kafka is
kafka_broker.py's. Every process is started here and ended here by its PID."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

from lnd_regtest import free_port, stop_process, wait_for

# A mainnet-format address that monerod's regtest accepts for coinbase outputs.
MONERO_ADDRESS = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A"


class Monerod:
    """monerod from Debian's package, regtest, offline, difficulty 1, ZMQ JSON publisher."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.rpc_port = free_port()
        self.zmq_port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"

    @property
    def zmq_url(self) -> str:
        return f"tcp://127.0.0.1:{self.zmq_port}"

    def start(self) -> None:
        binary = shutil.which("monerod") or "/usr/bin/monerod"
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [
            binary, "--regtest", "--offline", "--fixed-difficulty=1", "--keep-fakechain", "--non-interactive", "--no-igd",
            f"--data-dir={self.directory}", "--rpc-bind-ip=127.0.0.1", f"--rpc-bind-port={self.rpc_port}",
            "--p2p-bind-ip=127.0.0.1", f"--p2p-bind-port={free_port()}", f"--zmq-rpc-bind-port={free_port()}",
            f"--zmq-pub={self.zmq_url}", "--log-level=0",
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=(self.directory / "monerod.out").open("ab"), stderr=subprocess.STDOUT)
        wait_for("monerod RPC", lambda: self.rpc("get_block_count")["count"] >= 1, timeout=120, interval=0.5)

    def stop(self) -> None:
        stop_process(self.proc, timeout=60)
        self.proc = None

    def rpc(self, method: str, **params: Any) -> Any:
        body = json.dumps({"jsonrpc": "2.0", "id": "0", "method": method, "params": params}).encode()
        with urllib.request.urlopen(urllib.request.Request(f"{self.rpc_url}/json_rpc", body), timeout=300) as reply:
            answer = json.load(reply)
        if "error" in answer:
            raise RuntimeError(f"monerod {method}: {answer['error']}")
        return answer["result"]

    def other(self, path: str, **params: Any) -> Any:
        with urllib.request.urlopen(urllib.request.Request(f"{self.rpc_url}{path}", json.dumps(params).encode()), timeout=300) as reply:
            return json.load(reply)

    def mine(self, blocks: int) -> list[str]:
        return self.rpc("generateblocks", amount_of_blocks=blocks, wallet_address=MONERO_ADDRESS)["blocks"]

    def height(self) -> int:
        """Height of the newest block."""
        return self.rpc("get_block_count")["count"] - 1

    def hash_at(self, height: int) -> str:
        return self.rpc("get_block_header_by_height", height=height)["block_header"]["hash"]

    def pop(self, blocks: int) -> None:
        reply = self.other("/pop_blocks", nblocks=blocks)
        assert reply.get("status") == "OK", reply


class Bridge:
    """`bcm-tools events bridge` as its own process. Every one started is stopped by
    `stop_all`, which the tests' autouse fixture calls, also after a failed assertion."""

    started: list[Bridge] = []

    def __init__(self, directory: Path, args: list[str], env: dict[str, str] | None = None):
        self.directory = directory
        self.args = args
        self.env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = directory / "bridge.log"
        self.metrics_port = free_port()

    def start(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        argv = [sys.executable, "-c", "from bcm_tools.cli import main; main()", "events", "bridge", *self.args, f"--metrics=127.0.0.1:{self.metrics_port}"]
        self.proc = subprocess.Popen(argv, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env})
        Bridge.started.append(self)
        wait_for("the bridge's metrics", lambda: self.metrics() is not None, timeout=60)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def metrics(self) -> dict[str, float]:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"the bridge exited with {self.proc.returncode}:\n{self.output()[-4000:]}")
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        values = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                values[name] = float(value)
        return values

    def metric(self, name: str) -> float:
        return self.metrics().get(name, 0.0)

    def stop(self) -> int | None:
        stop_process(self.proc, timeout=60)
        code = self.proc.returncode if self.proc is not None else None
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None


def stop_all_bridges() -> None:
    for bridge in Bridge.started:
        bridge.stop()
    Bridge.started.clear()
