"""Bech32 (BIP-173) and bech32m (BIP-350) encoding.

Used for segwit addresses (v0 with bech32, v1+ with bech32m) and for age keys, which are
plain bech32 strings; age drops the 90-character limit (`decode(..., max_length=None)`).
"""

from __future__ import annotations

from enum import Enum

CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0x3B6A57B2, 0x26508E6D, 0x1EA119FA, 0x3D4233DD, 0x2A1462B3)


class Encoding(Enum):
    BECH32 = 1
    BECH32M = 0x2BC830A3


def _polymod(values: list[int]) -> int:
    chk = 1
    for value in values:
        top = chk >> 25
        chk = (chk & 0x1FFFFFF) << 5 ^ value
        for i, gen in enumerate(_GENERATOR):
            if (top >> i) & 1:
                chk ^= gen
    return chk


def _hrp_expand(hrp: str) -> list[int]:
    return [ord(c) >> 5 for c in hrp] + [0] + [ord(c) & 31 for c in hrp]


def _checksum(hrp: str, data: list[int], encoding: Encoding) -> list[int]:
    polymod = _polymod(_hrp_expand(hrp) + data + [0] * 6) ^ encoding.value
    return [(polymod >> 5 * (5 - i)) & 31 for i in range(6)]


def convert_bits(data: bytes | list[int], from_bits: int, to_bits: int, pad: bool) -> list[int]:
    """Regroup a sequence of `from_bits`-bit values into `to_bits`-bit values."""
    acc = 0
    bits = 0
    out: list[int] = []
    max_value = (1 << to_bits) - 1
    for value in data:
        if value < 0 or value >> from_bits:
            raise ValueError("value out of range for bit conversion")
        acc = (acc << from_bits) | value
        bits += from_bits
        while bits >= to_bits:
            bits -= to_bits
            out.append((acc >> bits) & max_value)
    if pad:
        if bits:
            out.append((acc << (to_bits - bits)) & max_value)
    elif bits >= from_bits or ((acc << (to_bits - bits)) & max_value):
        raise ValueError("invalid padding in bit conversion")
    return out


def encode(hrp: str, data: list[int], encoding: Encoding) -> str:
    """Encode 5-bit `data` under the human-readable part `hrp` (lower case)."""
    combined = data + _checksum(hrp, data, encoding)
    return hrp + "1" + "".join(CHARSET[d] for d in combined)


def decode(text: str, max_length: int | None = 90) -> tuple[str, list[int], Encoding]:
    """Split a bech32/bech32m string into its hrp, 5-bit data and encoding; raise ValueError."""
    if any(not 33 <= ord(c) <= 126 for c in text):
        raise ValueError("character out of range in bech32 string")
    if max_length is not None and len(text) > max_length:
        raise ValueError(f"bech32 string longer than {max_length} characters")
    if text.lower() != text and text.upper() != text:
        raise ValueError("mixed case in bech32 string")
    text = text.lower()
    pos = text.rfind("1")
    if pos < 1 or pos + 7 > len(text):
        raise ValueError("bech32 separator missing or checksum too short")
    hrp, rest = text[:pos], text[pos + 1 :]
    if any(c not in CHARSET for c in rest):
        raise ValueError("invalid bech32 character")
    data = [CHARSET.find(c) for c in rest]
    const = _polymod(_hrp_expand(hrp) + data)
    for encoding in Encoding:
        if const == encoding.value:
            return hrp, data[:-6], encoding
    raise ValueError("bech32 checksum mismatch")


def encode_segwit_address(hrp: str, witness_version: int, program: bytes) -> str:
    """A segwit address: bech32 for version 0, bech32m from version 1 on (BIP-350)."""
    encoding = Encoding.BECH32 if witness_version == 0 else Encoding.BECH32M
    return encode(hrp, [witness_version] + convert_bits(program, 8, 5, pad=True), encoding)


def decode_segwit_address(hrp: str, address: str) -> tuple[int, bytes]:
    """The witness version and program of `address`; raise ValueError if it is not valid for `hrp`."""
    got_hrp, data, encoding = decode(address)
    if got_hrp != hrp:
        raise ValueError(f"address is for {got_hrp!r}, expected {hrp!r}")
    if not data:
        raise ValueError("empty segwit address")
    version = data[0]
    program = bytes(convert_bits(data[1:], 5, 8, pad=False))
    expected = Encoding.BECH32 if version == 0 else Encoding.BECH32M
    if encoding is not expected or version > 16 or not 2 <= len(program) <= 40:
        raise ValueError("invalid segwit address")
    if version == 0 and len(program) not in (20, 32):
        raise ValueError("invalid segwit v0 program length")
    return version, program
