"""Recovery point of `bcm-tools backup watch`: how long a channel change stays unbacked-up.

For each channel change LND reports on its channel event stream (a channel pending open, which
is when LND adds it to its static channel backup, or a channel closed, when LND drops it), this
measures the time until the encrypted backup reflecting that change is durable (fsynced and
renamed into place) in each target: a local directory and a directory over SSH to a real sshd
on loopback. It also reports when each copy was read back, decrypted and verified by LND.

While a change is being measured the benchmark only reads the watcher's journal: the polling
that opening and closing a channel otherwise needs (lncli and btcctl runs every 0.2 s, each a Go
process starting on a 2-CPU machine) waits until every target holds the change.

Runs real daemons (btcd regtest, two LND nodes) built by scripts/test.d/20-daemons:

    .venv/bin/python pkgs/bcm-tools/benchmarks/backup_rpo.py [--events 20]

Prints one line per event and p50/p99 per target. Not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

from lnd_regtest import Network, stop_process, wait_for  # noqa: E402
from sshd_loopback import LoopbackSshd  # noqa: E402

from bcm_tools import age  # noqa: E402
from bcm_tools.backup import parse_target  # noqa: E402
from bcm_tools.errors import DaemonError  # noqa: E402
from bcm_tools.lnd import Lnd  # noqa: E402

WATCH_URIS = (
    "/lnrpc.Lightning/GetInfo",
    "/lnrpc.Lightning/SubscribeChannelBackups",
    "/lnrpc.Lightning/ExportAllChannelBackups",
    "/lnrpc.Lightning/VerifyChanBackup",
)


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile: with 20 samples p99 is the largest, p50 the 10th."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q * len(ordered))) - 1]


class EventRecorder(threading.Thread):
    """Records the moment each channel change arrives on LND's channel event stream."""

    KINDS = {"PENDING_OPEN_CHANNEL": "open", "CLOSED_CHANNEL": "close"}

    def __init__(self, endpoint):
        super().__init__(daemon=True)
        self.lnd = Lnd(endpoint)
        self.events: list[tuple[str, str, float]] = []
        self.ready = threading.Event()

    def run(self) -> None:
        stream = self.lnd.subscribe_channel_events()
        self.ready.set()
        try:
            for event in stream:
                now = time.time()
                if event.kind in self.KINDS and event.chan_point:
                    self.events.append((self.KINDS[event.kind], event.chan_point, now))
        except DaemonError:
            pass  # LND stopped: the end of the run, or a change that never comes says so in wait()

    def wait(self, kind: str, point: str) -> float:
        return wait_for(
            f"{kind} event for {point}",
            lambda: next((t for k, p, t in self.events if k == kind and p == point), None),
            timeout=60,
        )

    def point_of(self, kind: str, txid: str) -> str:
        return wait_for(
            f"{kind} event for {txid}",
            lambda: next((p for k, p, _ in self.events if k == kind and p.startswith(txid + ":")), None),
            timeout=60,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20, help="channel changes to measure (half opens, half closes)")
    args = parser.parse_args()
    opens = (args.events + 1) // 2

    work = Path(tempfile.mkdtemp(prefix="bcm-rpo-"))
    net = Network(work / "regtest")
    sshd = LoopbackSshd(work / "sshd")
    watcher = None
    try:
        alice, bob = net.start(["alice", "bob"])
        net.fund(alice, 20_000_000, bob)
        sshd.start()
        local = work / "bulk"
        local.mkdir()
        remote = work / "sshd" / "remote"
        remote.mkdir()
        targets = [str(local), sshd.url(remote)]
        labels = [parse_target(t).label for t in targets]

        keys = {}
        for name in ("operator", "watcher"):
            keys[name] = work / f"{name}.key"
            subprocess.run(["age-keygen", "-o", str(keys[name])], check=True, capture_output=True)
        macaroon = alice.bake_macaroon(work / "backup.macaroon", *WATCH_URIS)
        journal = work / "journal.jsonl"
        command = [
            sys.executable, "-c", "from bcm_tools.cli import main; main()", "backup", "watch",
            "--lnd-rpc", alice.rpc, "--lnd-tls-cert", str(alice.tls_cert), "--lnd-macaroon", str(macaroon),
            "-r", age.recipient_of(keys["operator"]), "--check-identity", str(keys["watcher"]),
            "--journal", str(journal), "--metrics", str(work / "lnd_backups.prom"),
            "--ssh-identity", str(sshd.client_key), "--ssh-known-hosts", str(sshd.known_hosts),
        ]
        for t in targets:
            command += ["-t", t]
        watcher = subprocess.Popen(command, stdout=(work / "watch.log").open("ab"), stderr=subprocess.STDOUT)

        recorder = EventRecorder(alice.endpoint())
        recorder.start()
        recorder.ready.wait(10)

        def entries() -> list[dict]:
            if not journal.exists():
                return []
            return [json.loads(line) for line in journal.read_text().splitlines() if line.endswith("}")]

        def wait_all(condition, since: int) -> dict[str, dict]:
            def found():
                got = {}
                for entry in entries()[since:]:
                    if entry["target"] not in got and condition(entry["chan_points"]):
                        got[entry["target"]] = entry
                return got if len(got) == len(labels) else None

            return wait_for("every target to hold the change", found, timeout=120)

        wait_all(lambda points: True, 0)
        samples: dict[str, list[float]] = {label: [] for label in labels}
        verified: dict[str, list[float]] = {label: [] for label in labels}
        # The parts of each sample: LND's channel event until the watcher has the new backup
        # from LND's backup stream (the same for every target), then the watcher's own work.
        arrived: list[float] = []
        written: dict[str, list[float]] = {label: [] for label in labels}

        def measure(kind: str, point: str, since: int) -> None:
            at = recorder.wait(kind, point)
            holds = (lambda pts: point in pts) if kind == "open" else (lambda pts: point not in pts)
            got = wait_all(holds, since)
            arrived.append(got[labels[0]]["changed_at"] - at)
            parts = []
            for label in labels:
                rpo = got[label]["durable_at"] - at
                samples[label].append(rpo)
                written[label].append(got[label]["durable_at"] - got[label]["changed_at"])
                verified[label].append(got[label]["verified_at"] - at)
                parts.append(f"{label.split(':')[0]} {rpo * 1000:7.1f} ms")
            print(f"{kind:5} {point[:16]}…  " + "  ".join(parts), flush=True)

        # Network.open_channel and close_channel, with their polling after the measurement.
        net.connect(alice, bob)
        bob_key = bob.pubkey()

        def in_mempool(txid: str | None = None) -> None:
            wait_for("the transaction in the mempool",
                     lambda: (txid in net.btcd.cli("getrawmempool")) if txid else net.btcd.cli("getrawmempool"), timeout=30)

        points = []
        for _ in range(opens):
            since = len(entries())
            txid = alice.cli("openchannel", f"--node_key={bob_key}", "--local_amt=1000000")["funding_txid"]
            point = recorder.point_of("open", txid)
            measure("open", point, since)
            points.append(point)
            in_mempool(txid)
            net.btcd.mine(6)
            wait_for(f"channel {point} active", lambda: point in alice.channel_points() and point in bob.channel_points(),
                     timeout=90)
        for point in points[: args.events - opens]:
            since = len(entries())
            txid, index = point.split(":")
            alice.cli("closechannel", f"--funding_txid={txid}", f"--output_index={index}")
            in_mempool()
            net.btcd.mine(3)  # LND drops the channel from its backup once the close confirms
            measure("close", point, since)
            wait_for(f"channel {point} closed", lambda: point not in alice.channel_points(), timeout=60)

        cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                    if ln.startswith("model name")), platform.processor())
        print(f"\n{len(samples[labels[0]])} channel changes, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} × {cpu}")
        print(f"{'target':<8} {'durable p50':>12} {'p99':>9} {'max':>9} {'mean':>9}   {'verified p50':>12} {'p99':>9}")
        for label in labels:
            s, v = samples[label], verified[label]
            print(
                f"{label.split(':')[0]:<8} {percentile(s, 0.50) * 1000:9.1f} ms {percentile(s, 0.99) * 1000:6.1f} ms"
                f" {max(s) * 1000:6.1f} ms {statistics.mean(s) * 1000:6.1f} ms"
                f"   {percentile(v, 0.50) * 1000:9.1f} ms {percentile(v, 0.99) * 1000:6.1f} ms"
            )
        print(f"\nof which: LND's backup stream behind its channel event p50 {percentile(arrived, 0.50) * 1000:.1f} ms,"
              f" p99 {percentile(arrived, 0.99) * 1000:.1f} ms; then until durable:")
        for label in labels:
            w = written[label]
            print(f"  {label.split(':')[0]:<6} p50 {percentile(w, 0.50) * 1000:.1f} ms, p99 {percentile(w, 0.99) * 1000:.1f} ms")
    finally:
        stop_process(watcher)
        sshd.stop()
        net.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
