"""bcm's Prometheus exporter: what bitcoind, LND, monerod, Tor and Fulcrum say about themselves,
one HTTP path per daemon (`/metrics/bitcoind`, `/metrics/lnd`, ...), read when Prometheus asks.

Each daemon gets its own path so one that hangs fails only its own scrape. A daemon that cannot
be reached still answers the scrape, with `bcm_up{daemon="..."} 0` and nothing else, so an
alert can tell a stopped daemon from a stopped exporter. Only read-only calls are made; the
module declares each credential with no more than that (bcm.monitoring).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from bcm_tools.errors import BcmError, UsageError

log = logging.getLogger("bcm_tools.exporter")


def gauge(name: str, documentation: str, value: float | None = None, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, documentation, labels=list(labels) if labels else None)
    if value is not None:
        family.add_metric(list(labels.values()) if labels else [], value)
    return family


class Source:
    """One daemon's metrics. `read` makes the calls and returns the families; it raises BcmError
    when the daemon cannot be asked."""

    def __init__(self, name: str, read: Callable[[], list[Metric]]):
        self.name = name
        self.read = read

    def describe(self) -> list[Metric]:
        # Registering must not call the daemon.
        return []

    def collect(self) -> Iterator[Metric]:
        try:
            families = self.read()
            up = 1
        except BcmError as err:
            log.warning("%s: %s", self.name, err)
            families, up = [], 0
        yield gauge("bcm_up", "1 if bcm-exporter could ask the daemon, 0 if not.", up, {"daemon": self.name})
        yield from families


# --- the daemons ----------------------------------------------------------------------------


def bitcoind_metrics(bitcoind: Any) -> list[Metric]:
    chain = bitcoind.chain_status()
    network = bitcoind.network_status()
    mempool = bitcoind.mempool_status()
    peers = gauge("bcm_bitcoind_peers", "Connected peers, by direction.", labels={"direction": ""})
    peers.add_metric(["in"], network.connections_in)
    peers.add_metric(["out"], network.connections_out)
    return [
        gauge("bcm_bitcoind_blocks", "Height of the best validated block.", chain.blocks),
        gauge("bcm_bitcoind_headers", "Height of the best known header.", chain.headers),
        gauge("bcm_bitcoind_verification_progress", "Estimated share of the chain verified (0-1).", chain.verificationprogress),
        gauge("bcm_bitcoind_initial_block_download", "1 while in initial block download.", int(chain.initialblockdownload)),
        gauge("bcm_bitcoind_tip_timestamp_seconds", "Block time of the best block.", chain.time),
        gauge("bcm_bitcoind_size_on_disk_bytes", "Size of the block and undo files.", chain.size_on_disk),
        peers,
        gauge("bcm_bitcoind_mempool_transactions", "Transactions in the mempool.", mempool.size),
        gauge("bcm_bitcoind_mempool_bytes", "Virtual size of the mempool's transactions.", mempool.bytes),
    ]


def lnd_metrics(lnd: Any) -> list[Metric]:
    status = lnd.node_status()
    channels = lnd.channel_balances()
    wallet = lnd.wallet_balance()
    labels = {"chan_point": "", "remote_pubkey": ""}
    per_channel = {
        "active": gauge("bcm_lnd_channel_active", "1 while the channel is active.", labels=labels),
        "capacity": gauge("bcm_lnd_channel_capacity_sat", "Channel capacity.", labels=labels),
        "local": gauge("bcm_lnd_channel_local_balance_sat", "This side's balance (outbound liquidity).", labels=labels),
        "remote": gauge("bcm_lnd_channel_remote_balance_sat", "The peer's balance (inbound liquidity).", labels=labels),
    }
    for c in channels:
        key = [c.chan_point, c.remote_pubkey]
        per_channel["active"].add_metric(key, int(c.active))
        per_channel["capacity"].add_metric(key, c.capacity)
        per_channel["local"].add_metric(key, c.local_balance)
        per_channel["remote"].add_metric(key, c.remote_balance)
    counts = gauge("bcm_lnd_channels", "Channels by state.", labels={"state": ""})
    counts.add_metric(["active"], status.num_active_channels)
    counts.add_metric(["inactive"], status.num_inactive_channels)
    counts.add_metric(["pending"], status.num_pending_channels)
    balance = gauge("bcm_lnd_wallet_balance_sat", "On-chain wallet balance.", labels={"state": ""})
    balance.add_metric(["confirmed"], wallet.confirmed)
    balance.add_metric(["unconfirmed"], wallet.unconfirmed)
    return [
        gauge("bcm_lnd_synced_to_chain", "1 when LND is synced to the chain.", int(status.synced_to_chain)),
        gauge("bcm_lnd_synced_to_graph", "1 when LND has synced the channel graph.", int(status.synced_to_graph)),
        gauge("bcm_lnd_block_height", "The chain height LND has seen.", status.block_height),
        gauge("bcm_lnd_peers", "Connected peers.", status.num_peers),
        counts,
        balance,
        *per_channel.values(),
    ]


def monerod_metrics(monerod: Any) -> list[Metric]:
    info = monerod.chain_info()
    tip = monerod.tip_timestamp()
    peers = gauge("bcm_monerod_peers", "Connected peers, by direction.", labels={"direction": ""})
    peers.add_metric(["in"], info.incoming_connections_count)
    peers.add_metric(["out"], info.outgoing_connections_count)
    return [
        gauge("bcm_monerod_height", "Blocks in the local chain.", info.height),
        gauge("bcm_monerod_target_height", "Height the peers report; 0 once synced.", info.target_height),
        gauge("bcm_monerod_synchronized", "1 when monerod considers itself synchronized.", int(info.synchronized)),
        gauge("bcm_monerod_tip_timestamp_seconds", "Time stamp of the newest block.", tip),
        gauge("bcm_monerod_txpool_transactions", "Transactions in the pool.", info.tx_pool_size),
        gauge("bcm_monerod_database_size_bytes", "Size of the LMDB database.", info.database_size),
        peers,
    ]


def tor_metrics(tor: Any) -> list[Metric]:
    boot = tor.bootstrap()
    return [
        gauge("bcm_tor_bootstrap_percent", "Tor's bootstrap progress.", boot.progress, {"tag": boot.tag}),
        gauge("bcm_tor_circuit_established", "1 when Tor has a working circuit.", int(boot.circuit_established)),
    ]


def fulcrum_metrics(electrum: Any) -> list[Metric]:
    tip = electrum.tip()
    return [gauge("bcm_fulcrum_height", "Height of the chain tip the Electrum server serves.", tip.height, {"version": tip.server_version})]


# --- serving --------------------------------------------------------------------------------


class Exporter:
    """The HTTP server: `/metrics/<daemon>` for each source."""

    def __init__(self, listen: str, sources: list[Source]):
        host, _, port = listen.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--listen must look like HOST:PORT, not {listen!r}")
        if not sources:
            raise UsageError("no daemon to export: name at least one (--bitcoind-rpc, --lnd-rpc, --monerod-rpc, --tor-control, --fulcrum)")
        self.registries: dict[str, CollectorRegistry] = {}
        for source in sources:
            registry = CollectorRegistry(auto_describe=False)
            registry.register(source)
            self.registries[source.name] = registry
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                name = self.path.split("?", 1)[0].removeprefix("/metrics/")
                if self.path.startswith("/metrics/") and name in exporter.registries:
                    body, status, kind = generate_latest(exporter.registries[name]), 200, CONTENT_TYPE_LATEST
                else:
                    paths = "".join(f"/metrics/{n}\n" for n in exporter.registries)
                    body, status, kind = paths.encode(), 404 if self.path != "/" else 200, "text/plain; charset=utf-8"
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        try:
            self.server = ThreadingHTTPServer((host.strip("[]"), int(port)), Handler)
        except OSError as err:
            raise UsageError(f"cannot listen on {listen}: {err.strerror}") from None
        self.server.daemon_threads = True

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def serve_forever(self) -> None:
        self.server.serve_forever()

    def start(self) -> threading.Thread:
        """Serves in a background thread (for tests and `status`)."""
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        return thread

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
