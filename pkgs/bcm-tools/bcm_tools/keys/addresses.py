"""Segwit addresses for single-key outputs: P2WPKH (BIP-84) and key-path-only P2TR (BIP-86)."""

from __future__ import annotations

import hashlib

from bcm_tools.keys import bech32
from bcm_tools.keys.bip32 import (
    SECP256K1_FIELD,
    SECP256K1_ORDER,
    Curve,
    DerivationError,
    decompress_point,
    hash160,
    point_add,
    scalar_base_point,
)

# Human-readable parts of segwit addresses, by bcm network name.
ADDRESS_HRP = {"mainnet": "bc", "testnet4": "tb", "signet": "tb", "regtest": "bcrt"}


def tagged_hash(tag: str, data: bytes) -> bytes:
    tag_hash = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(tag_hash + tag_hash + data).digest()


def p2wpkh_address(public_key: bytes, network: str) -> str:
    return bech32.encode_segwit_address(ADDRESS_HRP[network], 0, hash160(public_key))


def taproot_output_key(internal_key: bytes) -> bytes:
    """BIP-341/86 output key for a key-path-only spend: P + H_TapTweak(P)·G, x-only."""
    if len(internal_key) == 33:
        internal_key = internal_key[1:]
    # lift_x: the point with this x and an even y.
    point = decompress_point(Curve.SECP256K1, b"\x02" + internal_key)
    tweak = int.from_bytes(tagged_hash("TapTweak", internal_key), "big")
    if tweak >= SECP256K1_ORDER:
        raise DerivationError("taproot tweak out of range")
    tweaked = point_add(Curve.SECP256K1, point, decompress_point(Curve.SECP256K1, scalar_base_point(Curve.SECP256K1, tweak)))
    if tweaked is None:
        raise DerivationError("taproot output key is the point at infinity")
    return (tweaked[0] % SECP256K1_FIELD).to_bytes(32, "big")


def p2tr_address(public_key: bytes, network: str) -> str:
    return bech32.encode_segwit_address(ADDRESS_HRP[network], 1, taproot_output_key(public_key))
