"""`bcm-tools trezor`: the operator's SSH key and watch-only wallets from their key device."""

from __future__ import annotations

import click

from bcm_tools.devices.base import KeyDevice, open_device

DEVICE_HELP = "Key device: 'trezor', or 'mnemonic:PATH' for INSECURE software keys from a BIP-39 file."

device_option = click.option("--device", "device_spec", default="trezor", show_default=True, envvar="BCM_DEVICE", help=DEVICE_HELP)


def open_announced(device_spec: str) -> KeyDevice:
    """Open the device, and say so loudly when it is the insecure software stand-in."""
    device = open_device(device_spec)
    if device.insecure:
        click.echo(f"warning: {device.label}: for regtest and tests, not for real funds", err=True)
    return device


@click.group()
def trezor() -> None:
    """The operator's keys from their Trezor (or an insecure mnemonic file)."""


@trezor.command("ssh-pubkey")
@click.option("--identity", required=True, help="USER@HOST, as you will pass it to trezor-agent.")
@click.option("--curve", type=click.Choice(["ed25519", "nist256p1"]), default="ed25519", show_default=True)
@device_option
def ssh_pubkey(identity: str, curve: str, device_spec: str) -> None:
    """Print the OpenSSH public key trezor-agent uses for IDENTITY (SLIP-0013)."""
    from bcm_tools.keys.operator import ssh_public_key

    with open_announced(device_spec) as device:
        line = ssh_public_key(device, identity, curve)
    click.echo(line)


@trezor.command("watch-only")
@click.option("--host", required=True, help="Host whose bitcoind gets the wallet (names the wallet).")
@click.option("--network", type=click.Choice(["mainnet", "testnet4", "signet", "regtest"]), default="mainnet", show_default=True)
@click.option("--account", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True, help="BIP-44 account number.")
@click.option("--kind", "kinds", type=click.Choice(["wpkh", "tr"]), multiple=True, help="Account kinds (default: wpkh and tr, i.e. BIP-84 and BIP-86).")
@click.option("--birthday", type=click.IntRange(min=0), default=None, help="Block height of the wallet's first transaction; the rescan starts there (default: the current tip).")
@click.option("--wallet", default=None, help="Wallet name on bitcoind (default: HOST-trezor-ACCOUNT).")
@click.option("--rpc-url", envvar="BCM_BITCOIND_RPC_URL", default=None, help="http://HOST:PORT of bitcoind's RPC, e.g. an `ssh -L` tunnel (default: 127.0.0.1 and the network's port).")
@click.option("--rpc-user", envvar="BCM_BITCOIND_RPC_USER", default=None)
@click.option("--rpc-password", envvar="BCM_BITCOIND_RPC_PASSWORD", default=None)
@click.option("--rpc-cookie", type=click.Path(dir_okay=False), default=None, help="bitcoind's .cookie file instead of user and password.")
@device_option
def watch_only(
    host: str,
    network: str,
    account: int,
    kinds: tuple[str, ...],
    birthday: int | None,
    wallet: str | None,
    rpc_url: str | None,
    rpc_user: str | None,
    rpc_password: str | None,
    rpc_cookie: str | None,
    device_spec: str,
) -> None:
    """Import the device's account xpubs into a private-key-free wallet on HOST's bitcoind."""
    from bcm_tools.bitcoind import DEFAULT_RPC_PORT, Bitcoind, RpcEndpoint
    from bcm_tools.keys.descriptors import ScriptKind
    from bcm_tools.watch_only import default_wallet_name, import_watch_only

    url = rpc_url or f"http://127.0.0.1:{DEFAULT_RPC_PORT[network]}"
    endpoint = RpcEndpoint.from_cookie(url, rpc_cookie) if rpc_cookie else RpcEndpoint.from_url(url, rpc_user, rpc_password)
    chosen = tuple(ScriptKind(k) for k in kinds) or (ScriptKind.WPKH, ScriptKind.TR)
    with open_announced(device_spec) as device:
        result = import_watch_only(
            device,
            Bitcoind(endpoint),
            network=network,
            account=account,
            wallet=wallet or default_wallet_name(host, device, account),
            birthday_height=birthday,
            kinds=chosen,
        )
        label = device.label
    state = "created" if result.created else "already existed"
    click.echo(f"wallet {result.wallet} ({state}, watch-only) on {host}, rescanning from block {result.birthday_height}")
    for imported in result.accounts:
        click.echo(f"{imported.kind.value}  receive: {imported.receive_descriptor}")
        click.echo(f"{' ' * len(imported.kind.value)}  change:  {imported.change_descriptor}")
        click.echo(f"{' ' * len(imported.kind.value)}  first receive address: {imported.first_address}")
    click.echo(f"Check that {label} shows the same first receive addresses before you use them.")
