"""`bcm-tools exporter`: Prometheus metrics of the node's daemons, one path per daemon."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from bcm_tools.errors import CredentialError, UsageError


def _read_secret(path: Path, what: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as err:
        raise CredentialError(f"cannot read {what} {path}: {err.strerror}") from None


@click.command()
@click.option("--listen", default="127.0.0.1:9120", show_default=True, help="HOST:PORT to serve /metrics/<daemon> on.")
@click.option("--bitcoind-rpc", help="bitcoind's RPC, http://HOST:PORT.")
@click.option("--bitcoind-rpc-user", help="RPC user (read-only whitelist: getblockchaininfo, getnetworkinfo, getmempoolinfo).")
@click.option("--bitcoind-rpc-password-file", type=click.Path(dir_okay=False, path_type=Path), help="File holding its password.")
@click.option("--lnd-rpc", help="LND's gRPC HOST:PORT.")
@click.option("--lnd-tls-cert", type=click.Path(dir_okay=False, path_type=Path), help="LND's tls.cert.")
@click.option("--lnd-macaroon", type=click.Path(dir_okay=False, path_type=Path),
              help="Macaroon with info:read, offchain:read and onchain:read.")
@click.option("--monerod-rpc", help="monerod's full RPC, http://HOST:PORT (loopback).")
@click.option("--tor-control", help="Tor's control port, HOST:PORT.")
@click.option("--tor-cookie", type=click.Path(dir_okay=False, path_type=Path), help="Tor's control cookie file.")
@click.option("--fulcrum", help="Fulcrum's Electrum TCP port, HOST:PORT.")
def exporter(listen: str, bitcoind_rpc: str | None, bitcoind_rpc_user: str | None, bitcoind_rpc_password_file: Path | None,
             lnd_rpc: str | None, lnd_tls_cert: Path | None, lnd_macaroon: Path | None, monerod_rpc: str | None,
             tor_control: str | None, tor_cookie: Path | None, fulcrum: str | None) -> None:
    """Serve Prometheus metrics of bitcoind, LND, monerod, Tor and Fulcrum until stopped."""
    from bcm_tools import exporter as exporters

    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    sources: list[exporters.Source] = []
    if bitcoind_rpc:
        from bcm_tools.bitcoind import Bitcoind, RpcEndpoint

        if not bitcoind_rpc_user or bitcoind_rpc_password_file is None:
            raise UsageError("--bitcoind-rpc needs --bitcoind-rpc-user and --bitcoind-rpc-password-file")
        password = _read_secret(bitcoind_rpc_password_file, "bitcoind's RPC password file")
        node = Bitcoind(RpcEndpoint.from_url(bitcoind_rpc, bitcoind_rpc_user, password))
        sources.append(exporters.Source("bitcoind", lambda: exporters.bitcoind_metrics(node)))
    if lnd_rpc:
        from bcm_tools.lnd import Endpoint, Lnd

        if lnd_tls_cert is None or lnd_macaroon is None:
            raise UsageError("--lnd-rpc needs --lnd-tls-cert and --lnd-macaroon")
        endpoint = Endpoint(rpc=lnd_rpc, tls_cert=lnd_tls_cert, macaroon=lnd_macaroon)

        def read_lnd() -> list:
            # A fresh connection per scrape: LND rewrites its certificate and macaroons on restart.
            with Lnd(endpoint) as lnd:
                return exporters.lnd_metrics(lnd)

        sources.append(exporters.Source("lnd", read_lnd))
    if monerod_rpc:
        from bcm_tools.monerod import Monerod

        monero = Monerod(monerod_rpc)
        sources.append(exporters.Source("monerod", lambda: exporters.monerod_metrics(monero)))
    if tor_control:
        from bcm_tools.tor import TorControl

        if tor_cookie is None:
            raise UsageError("--tor-control needs --tor-cookie")
        control = TorControl(tor_control, tor_cookie)
        sources.append(exporters.Source("tor", lambda: exporters.tor_metrics(control)))
    if fulcrum:
        from bcm_tools.electrum import ElectrumClient

        electrum = ElectrumClient(fulcrum)
        sources.append(exporters.Source("fulcrum", lambda: exporters.fulcrum_metrics(electrum)))
    server = exporters.Exporter(listen, sources)
    click.echo(f"serving {', '.join(f'/metrics/{s.name}' for s in sources)} on {listen}", err=True)
    server.serve_forever()
