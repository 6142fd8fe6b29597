"""SLIP-0013 identities and the OpenSSH public keys trezor-agent derives from them.

An identity is a URI (`ssh://operator@btc1`) plus an index; its SHA-256 picks a hardened path
under 13'. trezor-agent turns `USER@HOST` into `ssh://USER@HOST` with index 0 and labels the
public key `<ssh://USER@HOST|CURVE>`; doing the same here gives byte-identical
`authorized_keys` lines, so a key printed by bcm-tools works with `trezor-agent USER@HOST`.
The key itself is written in OpenSSH's format by `cryptography`.
"""

from __future__ import annotations

import hashlib
import re
import struct

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from bcm_tools.keys.bip32 import HARDENED, Curve

SSH_CURVES = (Curve.ED25519, Curve.NIST256P1)

_USER_HOST = re.compile(r"^(?:(?P<user>[^@/:\s]+)@)?(?P<host>[^@/:\s]+)(?::(?P<port>\d+))?$")


def identity_digest(uri: str, index: int = 0) -> bytes:
    """SHA-256 of the 32-bit little-endian `index` followed by `uri`: what the path is cut from."""
    return hashlib.sha256(struct.pack("<I", index) + uri.encode("ascii")).digest()


def identity_path(uri: str, index: int = 0) -> list[int]:
    """The SLIP-0013 derivation path of `uri` at `index`: m/13'/A'/B'/C'/D'."""
    parts = struct.unpack("<IIII", identity_digest(uri, index)[:16])
    return [HARDENED | 13] + [HARDENED | part for part in parts]


def ssh_identity_uri(user_at_host: str) -> str:
    """`USER@HOST[:PORT]` as the `ssh://` URI trezor-agent hashes; raise ValueError if malformed."""
    text = user_at_host.strip()
    if text.startswith("ssh://"):
        text = text[len("ssh://") :]
    if not _USER_HOST.match(text):
        raise ValueError(f"identity {user_at_host!r} is not of the form USER@HOST[:PORT]")
    return "ssh://" + text


def openssh_public_key(curve: Curve, public_key: bytes, comment: str) -> str:
    """An `authorized_keys` line for a SLIP-0010 public key (33 bytes, 0x00-prefixed for ed25519)."""
    key: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
    if curve is Curve.ED25519:
        if len(public_key) != 33 or public_key[0] != 0:
            raise ValueError("not a SLIP-0010 ed25519 public key")
        key = ed25519.Ed25519PublicKey.from_public_bytes(public_key[1:])
    elif curve is Curve.NIST256P1:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), public_key)
    else:
        raise ValueError(f"SSH keys are ed25519 or nist256p1, not {curve.value}")
    line = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{line} {comment}"


def ssh_key_comment(uri: str, curve: Curve) -> str:
    """The label trezor-agent puts after the key: `<ssh://user@host|ed25519>`."""
    return f"<{uri}|{curve.value}>"
