"""Watch-only wallets: the node follows the operator's hardware-wallet accounts, holding no key.

The device gives account xpubs (BIP-84 and BIP-86 by default); they become ranged descriptors
with origin info and checksums, imported into a blank descriptor wallet created with private
keys disabled. The rescan starts at the wallet's birthday block, so it stays short.
"""

from __future__ import annotations

from dataclasses import dataclass

from bcm_tools.bitcoind import CHAIN_OF_NETWORK, Bitcoind
from bcm_tools.devices.base import KeyDevice
from bcm_tools.errors import UsageError
from bcm_tools.keys.descriptors import ScriptKind
from bcm_tools.keys.operator import account_keys

# Addresses per descriptor that bitcoind derives and watches ahead of use.
DESCRIPTOR_RANGE = [0, 999]


@dataclass(frozen=True)
class ImportedAccount:
    kind: ScriptKind
    receive_descriptor: str
    change_descriptor: str
    first_address: str


@dataclass(frozen=True)
class WatchOnlyResult:
    wallet: str
    created: bool
    birthday_height: int
    timestamp: int
    accounts: list[ImportedAccount]


def default_wallet_name(host: str, device: KeyDevice, account: int) -> str:
    kind = "insecure-mnemonic" if device.insecure else "trezor"
    return f"{host}-{kind}-{account}"


def import_watch_only(
    device: KeyDevice,
    node: Bitcoind,
    *,
    network: str,
    account: int,
    wallet: str,
    birthday_height: int | None,
    kinds: tuple[ScriptKind, ...] = (ScriptKind.WPKH, ScriptKind.TR),
) -> WatchOnlyResult:
    """Import the device's accounts into a watch-only wallet on `node`."""
    chain = node.chain()
    if chain != CHAIN_OF_NETWORK[network]:
        raise UsageError(f"bitcoind runs chain {chain!r} but --network is {network!r}")
    height = node.tip_height() if birthday_height is None else birthday_height
    if height < 0:
        raise UsageError("--birthday must be a block height, 0 or more")
    timestamp = node.block_time(height)

    keys = account_keys(device, network, account, kinds)
    accounts = [
        ImportedAccount(key.kind, key.descriptor(0), key.descriptor(1), key.address(0, 0)) for key in keys
    ]
    requests = []
    for imported in accounts:
        for desc, internal in ((imported.receive_descriptor, False), (imported.change_descriptor, True)):
            requests.append(
                {"desc": desc, "timestamp": timestamp, "active": True, "internal": internal, "range": DESCRIPTOR_RANGE}
            )
    created = node.create_watch_only_wallet(wallet)
    node.import_descriptors(wallet, requests)
    return WatchOnlyResult(wallet, created, height, timestamp, accounts)
