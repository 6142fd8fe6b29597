"""Hierarchical deterministic keys: BIP-32 on secp256k1 and SLIP-0010 on nist256p1 and ed25519.

Private derivation works on all three curves (ed25519 only hardened, as SLIP-0010 demands);
public derivation from an extended public key works on secp256k1, which is what a
watch-only wallet needs. Scalar multiplication comes from `cryptography`; the single point
addition that public derivation and the taproot tweak need is done here in affine
coordinates, since `cryptography` does not expose it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, replace
from enum import Enum

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

HARDENED = 0x80000000


class Curve(str, Enum):
    SECP256K1 = "secp256k1"
    NIST256P1 = "nist256p1"
    ED25519 = "ed25519"


# (HMAC key of the master node, group order n, field prime p, curve b, cryptography curve)
_WEIERSTRASS = {
    Curve.SECP256K1: (
        b"Bitcoin seed",
        0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141,
        0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEFFFFFC2F,
        7,
        ec.SECP256K1(),
    ),
    Curve.NIST256P1: (
        b"Nist256p1 seed",
        0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
        0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF,
        0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B,
        ec.SECP256R1(),
    ),
}
_ED25519_SEED = b"ed25519 seed"

SECP256K1_ORDER = _WEIERSTRASS[Curve.SECP256K1][1]
SECP256K1_FIELD = _WEIERSTRASS[Curve.SECP256K1][2]

Point = tuple[int, int] | None  # None is the point at infinity


class DerivationError(ValueError):
    """A path or extended key that cannot be used."""


def hash160(data: bytes) -> bytes:
    return hashlib.new("ripemd160", hashlib.sha256(data).digest()).digest()


# --- secp256k1 / nist256p1 point arithmetic -------------------------------------------------


def scalar_base_point(curve: Curve, scalar: int) -> bytes:
    """scalar·G as a 33-byte compressed point."""
    key = ec.derive_private_key(scalar, _WEIERSTRASS[curve][4])
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint
    )


def decompress_point(curve: Curve, data: bytes) -> tuple[int, int]:
    """Parse a 33-byte compressed SEC1 point; raise DerivationError if it is not on the curve."""
    _, _, p, b, _ = _WEIERSTRASS[curve]
    if len(data) != 33 or data[0] not in (2, 3):
        raise DerivationError("not a compressed public key")
    x = int.from_bytes(data[1:], "big")
    a = -3 if curve is Curve.NIST256P1 else 0
    rhs = (pow(x, 3, p) + a * x + b) % p
    y = _sqrt_mod(rhs, p)
    if y is None or x >= p:
        raise DerivationError("public key is not a point on the curve")
    if y & 1 != data[0] & 1:
        y = p - y
    return x, y


def _sqrt_mod(value: int, p: int) -> int | None:
    # Both field primes used here are 3 mod 4, so the square root is one exponentiation.
    root = pow(value, (p + 1) // 4, p)
    return root if root * root % p == value % p else None


def compress_point(point: tuple[int, int]) -> bytes:
    x, y = point
    return bytes([2 + (y & 1)]) + x.to_bytes(32, "big")


def point_add(curve: Curve, p1: Point, p2: Point) -> Point:
    """Affine point addition on a short Weierstrass curve."""
    if p1 is None:
        return p2
    if p2 is None:
        return p1
    p = _WEIERSTRASS[curve][2]
    a = -3 if curve is Curve.NIST256P1 else 0
    (x1, y1), (x2, y2) = p1, p2
    if x1 == x2 and (y1 + y2) % p == 0:
        return None
    if p1 == p2:
        slope = (3 * x1 * x1 + a) * pow(2 * y1, -1, p) % p
    else:
        slope = (y2 - y1) * pow(x2 - x1, -1, p) % p
    x3 = (slope * slope - x1 - x2) % p
    return x3, (slope * (x1 - x3) - y1) % p


def public_from_private(curve: Curve, private_key: bytes) -> bytes:
    """The 33-byte public key: SEC1 compressed, or 0x00 + 32 bytes for ed25519 (SLIP-0010)."""
    if curve is Curve.ED25519:
        raw = (
            ed25519.Ed25519PrivateKey.from_private_bytes(private_key)
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )
        return b"\x00" + raw
    return scalar_base_point(curve, int.from_bytes(private_key, "big"))


# --- nodes ----------------------------------------------------------------------------------


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


def master_node(seed: bytes, curve: Curve = Curve.SECP256K1) -> Node:
    """The master node of `seed` (BIP-32 for secp256k1, SLIP-0010 for the other curves)."""
    if curve is Curve.ED25519:
        digest = hmac.digest(_ED25519_SEED, seed, "sha512")
    else:
        hmac_key, order, *_ = _WEIERSTRASS[curve]
        digest = hmac.digest(hmac_key, seed, "sha512")
        # SLIP-0010: an invalid master key is retried by hashing the previous result.
        while not 0 < int.from_bytes(digest[:32], "big") < order:
            digest = hmac.digest(hmac_key, digest, "sha512")
    private_key, chain_code = digest[:32], digest[32:]
    return Node(curve, 0, b"\0\0\0\0", 0, chain_code, public_from_private(curve, private_key), private_key)


def derive_child(node: Node, index: int) -> Node:
    """Child `index` of `node`: private derivation if the node has its private key, else public."""
    if not 0 <= index < 2**32:
        raise DerivationError(f"child index {index} out of range")
    hardened = index >= HARDENED
    if node.curve is Curve.ED25519 and not hardened:
        raise DerivationError("ed25519 supports only hardened derivation")
    if node.private_key is None:
        if hardened:
            raise DerivationError("hardened derivation needs the private key")
        if node.curve is not Curve.SECP256K1:
            raise DerivationError("public derivation is only supported on secp256k1")
    if hardened:
        data = b"\0" + node.private_key + index.to_bytes(4, "big")  # type: ignore[operator]
    else:
        data = node.public_key + index.to_bytes(4, "big")
    digest = hmac.digest(node.chain_code, data, "sha512")

    if node.curve is Curve.ED25519:
        return _child(node, index, digest[32:], digest[:32])

    order = _WEIERSTRASS[node.curve][1]
    while True:
        tweak = int.from_bytes(digest[:32], "big")
        if tweak < order:
            if node.private_key is not None:
                child_key = (tweak + int.from_bytes(node.private_key, "big")) % order
                if child_key:
                    return _child(node, index, digest[32:], child_key.to_bytes(32, "big"))
            else:
                point = point_add(
                    node.curve,
                    decompress_point(node.curve, scalar_base_point(node.curve, tweak)),
                    decompress_point(node.curve, node.public_key),
                )
                if point is not None:
                    return _child_public(node, index, digest[32:], compress_point(point))
        # SLIP-0010: an invalid child is retried from the right half of the previous result.
        digest = hmac.digest(node.chain_code, b"\x01" + digest[32:] + index.to_bytes(4, "big"), "sha512")


def _child(parent: Node, index: int, chain_code: bytes, private_key: bytes) -> Node:
    return Node(
        parent.curve,
        parent.depth + 1,
        parent.fingerprint,
        index,
        chain_code,
        public_from_private(parent.curve, private_key),
        private_key,
    )


def _child_public(parent: Node, index: int, chain_code: bytes, public_key: bytes) -> Node:
    return Node(parent.curve, parent.depth + 1, parent.fingerprint, index, chain_code, public_key)


def derive_path(node: Node, path: list[int]) -> Node:
    for index in path:
        node = derive_child(node, index)
    return node


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


# --- serialization (secp256k1 only) ----------------------------------------------------------

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"

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


def base58check_encode(payload: bytes) -> str:
    data = payload + hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4]
    number = int.from_bytes(data, "big")
    out = ""
    while number:
        number, rem = divmod(number, 58)
        out = _B58[rem] + out
    return "1" * (len(data) - len(data.lstrip(b"\0"))) + out


def base58check_decode(text: str) -> bytes:
    number = 0
    for char in text:
        if char not in _B58:
            raise DerivationError("invalid base58 character")
        number = number * 58 + _B58.index(char)
    body = number.to_bytes((number.bit_length() + 7) // 8, "big")
    data = b"\0" * (len(text) - len(text.lstrip("1"))) + body
    payload, check = data[:-4], data[-4:]
    if len(data) < 4 or hashlib.sha256(hashlib.sha256(payload).digest()).digest()[:4] != check:
        raise DerivationError("base58 checksum mismatch")
    return payload


def serialize(node: Node, kind: str = "xpub") -> str:
    """Base58 extended key; `kind` picks the version bytes (xpub, tpub, xprv, ...)."""
    if node.curve is not Curve.SECP256K1:
        raise DerivationError("only secp256k1 keys have a BIP-32 serialization")
    private = kind in _PRIVATE_VERSIONS
    if private and node.private_key is None:
        raise DerivationError("cannot serialize a public node as a private key")
    key = b"\0" + node.private_key if private else node.public_key  # type: ignore[operator]
    payload = (
        VERSIONS[kind]
        + bytes([node.depth])
        + node.parent_fingerprint
        + node.child_number.to_bytes(4, "big")
        + node.chain_code
        + key
    )
    return base58check_encode(payload)


def parse_extended_key(text: str) -> tuple[str, Node]:
    """Parse a base58 extended key; returns its kind (xpub, tprv, ...) and the node."""
    payload = base58check_decode(text.strip())
    if len(payload) != 78:
        raise DerivationError("extended key has the wrong length")
    kinds = {v: k for k, v in VERSIONS.items()}
    kind = kinds.get(payload[:4])
    if kind is None:
        raise DerivationError("unknown extended key version")
    depth, parent, child = payload[4], payload[5:9], int.from_bytes(payload[9:13], "big")
    chain_code, key = payload[13:45], payload[45:]
    if kind in _PRIVATE_VERSIONS:
        if key[0] != 0:
            raise DerivationError("malformed private extended key")
        private = key[1:]
        if not 0 < int.from_bytes(private, "big") < SECP256K1_ORDER:
            raise DerivationError("private key out of range")
        node = Node(Curve.SECP256K1, depth, parent, child, chain_code, public_from_private(Curve.SECP256K1, private), private)
    else:
        decompress_point(Curve.SECP256K1, key)
        node = Node(Curve.SECP256K1, depth, parent, child, chain_code, key)
    return kind, node
