"""`bcm-tools connect WALLET --host HOST`: a wallet's connection settings, and a QR code."""

from __future__ import annotations

import sys
from pathlib import Path

import click


@click.command()
@click.argument("wallet", type=click.Choice(["sparrow", "electrum", "zeus", "feather"]))
@click.option("--host", required=True, help="The node (reached over SSH as the operator), or `localhost` with --local.")
@click.option("--local", is_flag=True, help="Run on the node itself.")
@click.option("--user", default="operator", show_default=True, help="SSH login (the operator).")
@click.option("--ssh-port", type=click.IntRange(1, 65535), help="SSH port of HOST.")
@click.option("--identity", type=click.Path(dir_okay=False, path_type=Path), help="SSH private key to log in with.")
@click.option("--known-hosts", type=click.Path(dir_okay=False, path_type=Path), help="known_hosts file holding HOST's key.")
@click.option("--qr/--no-qr", default=True, show_default=True, help="Print a QR code for the wallet to scan.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="zeus: write the lndconnect URI to this new file (mode 0600) instead of the screen.")
def connect(wallet: str, host: str, local: bool, user: str, ssh_port: int | None, identity: Path | None,
            known_hosts: Path | None, qr: bool, out: Path | None) -> None:
    """Print what WALLET needs to use HOST: sparrow and electrum (Fulcrum over Tor), zeus (LND
    over Tor, an lndconnect URI with a macaroon baked for the wallet), feather (monerod's
    restricted RPC over Tor)."""
    from bcm_tools import connect as connecting
    from bcm_tools.errors import UsageError
    from bcm_tools.status import ssh_options

    if out is not None and wallet != "zeus":
        raise UsageError("--out is for zeus's lndconnect URI; the other wallets' settings hold no secret")
    node = connecting.LocalNode() if local else connecting.SshNode(f"{user}@{host}", ssh_options(ssh_port, identity, known_hosts))
    result = connecting.connection(node, wallet)
    if result.secret:
        click.echo("The lndconnect URI below is a credential: whoever has it can spend from this node's "
                   "Lightning wallet. Scan it, do not photograph or paste it anywhere else.", err=True)
    if out is not None:
        connecting.write_secret(out, result.qr_text)
        click.echo(f"wrote the lndconnect URI to {out} (mode 0600)", err=True)
        return
    for name, value in result.fields.items():
        click.echo(f"{name}: {value}")
    if qr:
        import segno

        segno.make(result.qr_text, error="m").terminal(out=sys.stdout, compact=True)
