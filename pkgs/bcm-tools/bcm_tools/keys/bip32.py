"""Hierarchical deterministic keys: BIP-32 on secp256k1 and SLIP-0010 on nist256p1 and ed25519.

Derivation, validation and extended-key serialisation are the `slip10` package's (Trezor's
reference implementation of SLIP-0010, which trezorlib depends on). This module keeps what bcm
adds around it: `Node`, the plain value a key device returns; derivation paths written as
descriptors write them; and the SLIP-0132 version bytes (zpub, vpub), which `slip10` does not know.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from enum import Enum

from slip10 import HARDENED_INDEX, SLIP10, SLIP10DerivationError

from bcm_tools.errors import CredentialError

HARDENED = HARDENED_INDEX


class Curve(str, Enum):
    SECP256K1 = "secp256k1"
    NIST256P1 = "nist256p1"
    ED25519 = "ed25519"


# slip10 calls NIST P-256 by its SEC name.
_SLIP10_CURVE = {Curve.SECP256K1: "secp256k1", Curve.NIST256P1: "secp256r1", Curve.ED25519: "ed25519"}


class DerivationError(CredentialError, ValueError):
    """A path or extended key that cannot be used."""


def hash160(data: bytes) -> bytes:
    return hashlib.new("ripemd160", hashlib.sha256(data).digest()).digest()


@dataclass(frozen=True)
class Node:
    """One node of an HD tree. `private_key` is None for a public-only node."""

    curve: Curve
    depth: int
    parent_fingerprint: bytes
    child_number: int
    chain_code: bytes
    public_key: bytes
    private_key: bytes | None = None

    @property
    def fingerprint(self) -> bytes:
        return hash160(self.public_key)[:4]

    def neuter(self) -> "Node":
        return replace(self, private_key=None)


def _wallet(node: Node) -> SLIP10:
    """`node` as a slip10 object, which checks every field (a key on the curve, a master's zeros)."""
    try:
        return SLIP10(
            node.chain_code,
            privkey=node.private_key,
            pubkey=None if node.private_key is not None else node.public_key,
            fingerprint=node.parent_fingerprint,
            depth=node.depth,
            index=node.child_number,
            curve_name=_SLIP10_CURVE[node.curve],
        )
    except (ValueError, SLIP10DerivationError) as err:
        raise DerivationError(f"not a valid {node.curve.value} node: {_reason(err)}") from None


def _node(wallet: SLIP10, curve: Curve) -> Node:
    return Node(curve, wallet.depth, wallet.parent_fingerprint, wallet.index, wallet.chaincode, wallet.pubkey, wallet.privkey)


def _reason(err: Exception) -> str:
    return str(getattr(err, "message", None) or err) or err.__class__.__name__


def master_node(seed: bytes, curve: Curve = Curve.SECP256K1) -> Node:
    """The master node of `seed` (BIP-32 for secp256k1, SLIP-0010 for the other curves)."""
    return _node(SLIP10.from_seed(seed, curve_name=_SLIP10_CURVE[curve]), curve)


def derive_path(node: Node, path: list[int]) -> Node:
    """The node at `path` below `node`: private derivation if it has its private key, else public."""
    for index in path:
        if not 0 <= index < 2**32:
            raise DerivationError(f"child index {index} out of range")
        hardened = index >= HARDENED
        if node.curve is Curve.ED25519 and not hardened:
            raise DerivationError("ed25519 supports only hardened derivation")
        if node.private_key is None and hardened:
            raise DerivationError("hardened derivation needs the private key")
    if not path:
        return node
    try:
        return _node(_wallet(node).get_child_from_path(path), node.curve)
    except (ValueError, SLIP10DerivationError) as err:
        raise DerivationError(f"cannot derive {format_path(path)}: {_reason(err)}") from None


def derive_child(node: Node, index: int) -> Node:
    """Child `index` of `node`."""
    return derive_path(node, [index])


_PATH_STEP = re.compile(r"^(\d+)(['hH]?)$")


def parse_path(text: str) -> list[int]:
    """`m/84h/0h/0h/0/1` (or with ') as a list of child numbers."""
    parts = text.strip().split("/")
    if parts and parts[0] == "m":
        parts = parts[1:]
    path = []
    for part in parts:
        match = _PATH_STEP.match(part)
        if not match or int(match.group(1)) >= HARDENED:
            raise DerivationError(f"invalid derivation step {part!r} in {text!r}")
        path.append(int(match.group(1)) + (HARDENED if match.group(2) else 0))
    return path


def format_path(path: list[int], prefix: str = "m") -> str:
    """The path in descriptor style: `m/84h/0h/0h` (no prefix when `prefix` is empty)."""
    steps = [f"{i - HARDENED}h" if i >= HARDENED else str(i) for i in path]
    return "/".join(([prefix] if prefix else []) + steps)


# --- serialisation (secp256k1 only) ----------------------------------------------------------

# Version bytes of BIP-32 (xpub/xprv, tpub/tprv) and SLIP-0132 (zpub/zprv, vpub/vprv).
VERSIONS = {
    "xpub": bytes.fromhex("0488b21e"),
    "xprv": bytes.fromhex("0488ade4"),
    "tpub": bytes.fromhex("043587cf"),
    "tprv": bytes.fromhex("04358394"),
    "zpub": bytes.fromhex("04b24746"),
    "zprv": bytes.fromhex("04b2430c"),
    "vpub": bytes.fromhex("045f1cf6"),
    "vprv": bytes.fromhex("045f18bc"),
}
_PRIVATE_VERSIONS = {"xprv", "tprv", "zprv", "vprv"}


def serialize(node: Node, kind: str = "xpub") -> str:
    """Base58 extended key; `kind` picks the version bytes (xpub, tpub, xprv, zpub, ...)."""
    from trezorlib.tools import b58check_encode

    if node.curve is not Curve.SECP256K1:
        raise DerivationError("only secp256k1 keys have a BIP-32 serialization")
    private = kind in _PRIVATE_VERSIONS
    if private and node.private_key is None:
        raise DerivationError("cannot serialize a public node as a private key")
    wallet = _wallet(node)
    payload = wallet.get_xpriv_bytes() if private else wallet.get_xpub_bytes()
    # slip10 writes xpub/xprv version bytes; the rest of the 78 bytes is the same for every kind.
    return b58check_encode(VERSIONS[kind] + payload[4:])


def parse_extended_key(text: str) -> tuple[str, Node]:
    """Parse a base58 extended key; returns its kind (xpub, tprv, ...) and the node."""
    from trezorlib.tools import b58check_decode, b58check_encode

    try:
        payload = b58check_decode(text.strip())
    except ValueError:
        raise DerivationError("not a base58check string (bad character or checksum)") from None
    if len(payload) != 78:
        raise DerivationError("extended key has the wrong length")
    kinds = {v: k for k, v in VERSIONS.items()}
    kind = kinds.get(payload[:4])
    if kind is None:
        raise DerivationError("unknown extended key version")
    private = kind in _PRIVATE_VERSIONS
    # slip10 reads BIP-32 mainnet versions only, and checks everything after them.
    bip32 = b58check_encode(VERSIONS["xprv" if private else "xpub"] + payload[4:])
    try:
        wallet = SLIP10.from_xpriv(bip32) if private else SLIP10.from_xpub(bip32)
    except (ValueError, SLIP10DerivationError) as err:
        raise DerivationError(_reason(err)) from None
    return kind, _node(wallet, Curve.SECP256K1)
