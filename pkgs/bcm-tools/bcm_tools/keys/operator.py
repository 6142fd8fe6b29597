"""The operator's keys, derived from their key device: SSH identity, secrets identity, wallets.

Everything the operator holds comes from one seed on one device, each through a documented,
fixed derivation, so a replacement Trezor restored from the same words gives the same keys:

- SSH: the SLIP-0013 identity `ssh://USER@HOST` (index 0), exactly as trezor-agent derives it.
- Secrets: SLIP-0011 CipherKeyValue on secp256k1 at `OPERATOR_AGE_PATH`, key name
  `OPERATOR_AGE_KEY_NAME`, value `OPERATOR_AGE_VALUE`, encrypting with confirmation required in
  both directions; the 32-byte result is an X25519 age identity. The device shows the key name
  and waits for a button press each time it is derived.
- Wallets: BIP-84 and BIP-86 account xpubs, made into descriptors for a watch-only wallet.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import x25519

from bcm_tools.devices.base import KeyDevice, open_device
from bcm_tools.errors import UsageError
from bcm_tools.keys import bech32
from bcm_tools.keys.bip32 import HARDENED, Curve
from bcm_tools.keys.descriptors import AccountKey, ScriptKind, account_path
from bcm_tools.keys.slip13 import identity_path, openssh_public_key, ssh_identity_uri, ssh_key_comment

OPERATOR_AGE_PATH = [HARDENED | 10011, HARDENED | 0]
OPERATOR_AGE_KEY_NAME = "Unlock bcm operator secrets?"
OPERATOR_AGE_VALUE = hashlib.sha256(b"bcm operator age identity v1").digest()


def ssh_public_key(device: KeyDevice, identity: str, curve: str = "ed25519") -> str:
    """The `authorized_keys` line trezor-agent would offer for `identity` (`USER@HOST`).

    Raises UsageError for a malformed identity or curve, CredentialError if the device fails.
    """
    if curve not in (Curve.ED25519.value, Curve.NIST256P1.value):
        raise UsageError(f"SSH keys are ed25519 or nist256p1, not {curve!r}")
    curve_enum = Curve(curve)
    try:
        uri = ssh_identity_uri(identity)
    except ValueError as err:
        raise UsageError(str(err)) from None
    public_key = device.public_key(identity_path(uri, 0), curve_enum)
    return openssh_public_key(curve_enum, public_key, ssh_key_comment(uri, curve_enum))


def ssh_public_key_for(device_spec: str, identity: str, curve: str = "ed25519") -> str:
    """`ssh_public_key` for a `--device` value (`trezor` or `mnemonic:PATH`)."""
    with open_device(device_spec) as device:
        return ssh_public_key(device, identity, curve)


def _age_secret(device: KeyDevice) -> bytes:
    return device.cipher_key_value(
        OPERATOR_AGE_PATH,
        OPERATOR_AGE_KEY_NAME,
        OPERATOR_AGE_VALUE,
        encrypt=True,
        ask_on_encrypt=True,
        ask_on_decrypt=True,
    )


def age_identity_from_secret(secret: bytes) -> str:
    """An X25519 secret as an age identity string (`AGE-SECRET-KEY-1...`)."""
    return bech32.encode("age-secret-key-", bech32.convert_bits(secret, 8, 5, pad=True), bech32.Encoding.BECH32).upper()


def age_recipient_from_secret(secret: bytes) -> str:
    """The age recipient (`age1...`) of an X25519 secret."""
    public = (
        x25519.X25519PrivateKey.from_private_bytes(secret)
        .public_key()
        .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    )
    return bech32.encode("age", bech32.convert_bits(public, 8, 5, pad=True), bech32.Encoding.BECH32)


def operator_age_identity(device: KeyDevice) -> str:
    """The operator's age identity; on a Trezor this asks for a button press."""
    return age_identity_from_secret(_age_secret(device))


def operator_age_recipient(device: KeyDevice) -> str:
    """The operator's age recipient; on a Trezor this asks for a button press."""
    return age_recipient_from_secret(_age_secret(device))


def account_keys(
    device: KeyDevice, network: str, account: int, kinds: tuple[ScriptKind, ...] = (ScriptKind.WPKH, ScriptKind.TR)
) -> list[AccountKey]:
    """The device's account xpubs for each script kind, with their origin."""
    fingerprint = device.master_fingerprint()
    keys = []
    for kind in kinds:
        path = account_path(kind, network, account)
        keys.append(AccountKey(kind, network, fingerprint, path, device.public_node(path)))
    return keys
