"""Segwit addresses for single-key outputs: P2WPKH (BIP-84) and key-path-only P2TR (BIP-86)."""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric import ec

from bcm_tools.keys import bech32
from bcm_tools.keys.bip32 import DerivationError, hash160

_SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_SECP256K1_FIELD = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F

# Human-readable parts of segwit addresses, by bcm network name.
ADDRESS_HRP = {"mainnet": "bc", "testnet4": "tb", "signet": "tb", "regtest": "bcrt"}


def tagged_hash(tag: str, data: bytes) -> bytes:
    tag_hash = hashlib.sha256(tag.encode()).digest()
    return hashlib.sha256(tag_hash + tag_hash + data).digest()


def p2wpkh_address(public_key: bytes, network: str) -> str:
    return bech32.encode_segwit_address(ADDRESS_HRP[network], 0, hash160(public_key))


def taproot_output_key(internal_key: bytes) -> bytes:
    """BIP-341/86 output key for a key-path-only spend: P + H_TapTweak(P)·G, x-only.

    `cryptography` lifts P and multiplies G; the one point addition it does not offer is done
    here, in affine coordinates.
    """
    if len(internal_key) == 33:
        internal_key = internal_key[1:]
    tweak = int.from_bytes(tagged_hash("TapTweak", internal_key), "big")
    if not 0 < tweak < _SECP256K1_ORDER:
        raise DerivationError("taproot tweak out of range")
    try:
        # lift_x: the point with this x and an even y.
        point = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), b"\x02" + internal_key).public_numbers()
    except ValueError:
        raise DerivationError("taproot internal key is not a point on secp256k1") from None
    tweak_point = ec.derive_private_key(tweak, ec.SECP256K1()).public_key().public_numbers()
    p = _SECP256K1_FIELD
    if point.x == tweak_point.x:
        # P = ±t·G (a doubling, or infinity): no real key gets there, since t is a hash of P.
        raise DerivationError("taproot tweak cancels or doubles the internal key")
    slope = (tweak_point.y - point.y) * pow(tweak_point.x - point.x, -1, p) % p
    x = (slope * slope - point.x - tweak_point.x) % p
    return x.to_bytes(32, "big")


def p2tr_address(public_key: bytes, network: str) -> str:
    return bech32.encode_segwit_address(ADDRESS_HRP[network], 1, taproot_output_key(public_key))
