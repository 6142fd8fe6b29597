"""Output script descriptors (BIP-380) for single-key accounts: wpkh (BIP-84) and tr (BIP-86).

A watch-only wallet needs, per account, two ranged descriptors (receive `/0/*`, change `/1/*`)
with key origin info `[fingerprint/purpose'/coin'/account']` so that a signer can later
recognise its own keys, and with the checksum bitcoind insists on in `importdescriptors`.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from bcm_tools.keys.addresses import p2tr_address, p2wpkh_address
from bcm_tools.keys.bip32 import HARDENED, Node, derive_child, format_path, serialize

_INPUT_CHARSET = (
    "0123456789()[],'/*abcdefgh@:$%{}"
    "IJKLMNOPQRSTUVWXYZ&+-.;<=>?!^_|~"
    "ijklmnopqrstuvwxyzABCDEFGH`#\"\\ "
)
_CHECKSUM_CHARSET = "qpzry9x8gf2tvdw0s3jn54khce6mua7l"
_GENERATOR = (0xF5DEE51989, 0xA9FDCA3312, 0x1BAB10E32D, 0x3706B1677A, 0x644D626FFD)


class DescriptorError(ValueError):
    """A descriptor string that is malformed or whose checksum does not match."""


def _polymod(symbols: list[int]) -> int:
    chk = 1
    for value in symbols:
        top = chk >> 35
        chk = (chk & 0x7FFFFFFFF) << 5 ^ value
        for i, gen in enumerate(_GENERATOR):
            if (top >> i) & 1:
                chk ^= gen
    return chk


def _expand(text: str) -> list[int]:
    # Each character gives its position within its group of 32; every three characters add
    # one symbol for their three group numbers, so case errors cost a single symbol.
    symbols: list[int] = []
    groups: list[int] = []
    for char in text:
        index = _INPUT_CHARSET.find(char)
        if index < 0:
            raise DescriptorError(f"character {char!r} is not allowed in a descriptor")
        symbols.append(index & 31)
        groups.append(index >> 5)
        if len(groups) == 3:
            symbols.append(groups[0] * 9 + groups[1] * 3 + groups[2])
            groups = []
    if len(groups) == 1:
        symbols.append(groups[0])
    elif len(groups) == 2:
        symbols.append(groups[0] * 3 + groups[1])
    return symbols


def checksum(descriptor: str) -> str:
    """The 8-character BIP-380 checksum of a descriptor without one."""
    value = _polymod(_expand(descriptor) + [0] * 8) ^ 1
    return "".join(_CHECKSUM_CHARSET[(value >> (5 * (7 - i))) & 31] for i in range(8))


def add_checksum(descriptor: str) -> str:
    return f"{descriptor}#{checksum(descriptor)}"


def verify_checksum(text: str) -> str:
    """Return the descriptor part of `DESC#CHECKSUM`; raise DescriptorError unless it checks out."""
    body, sep, check = text.rpartition("#")
    if not sep:
        raise DescriptorError("descriptor has no checksum")
    if len(check) != 8 or any(c not in _CHECKSUM_CHARSET for c in check):
        raise DescriptorError(f"checksum {check!r} is not 8 checksum characters")
    symbols = _expand(body) + [_CHECKSUM_CHARSET.find(c) for c in check]
    if _polymod(symbols) != 1:
        raise DescriptorError("descriptor checksum mismatch")
    return body


class ScriptKind(str, Enum):
    """Single-key account kinds a watch-only wallet follows, named by descriptor function."""

    WPKH = "wpkh"  # BIP-84, native segwit v0
    TR = "tr"  # BIP-86, taproot key path

    @property
    def purpose(self) -> int:
        return {ScriptKind.WPKH: 84, ScriptKind.TR: 86}[self]


def coin_type(network: str) -> int:
    """SLIP-0044 coin type: 0 for mainnet, 1 for every test network."""
    return 0 if network == "mainnet" else 1


def account_path(kind: ScriptKind, network: str, account: int) -> list[int]:
    """m / purpose' / coin' / account'."""
    if not 0 <= account < HARDENED:
        raise ValueError(f"account {account} out of range")
    return [HARDENED | kind.purpose, HARDENED | coin_type(network), HARDENED | account]


@dataclass(frozen=True)
class AccountKey:
    """An account's extended public key together with where it came from."""

    kind: ScriptKind
    network: str
    master_fingerprint: bytes
    path: list[int]
    node: Node  # public-only node at `path`

    @property
    def xpub(self) -> str:
        # Descriptors always take xpub/tpub; SLIP-0132 prefixes (zpub, ...) are not valid there.
        return serialize(self.node.neuter(), "xpub" if self.network == "mainnet" else "tpub")

    def descriptor(self, change: int) -> str:
        """Ranged descriptor with origin info and checksum; change 0 = receive, 1 = change."""
        origin = f"[{self.master_fingerprint.hex()}/{format_path(self.path, prefix='')}]"
        body = f"{self.kind.value}({origin}{self.xpub}/{change}/*)"
        return add_checksum(body)

    def address(self, change: int, index: int) -> str:
        child = derive_child(derive_child(self.node.neuter(), change), index)
        if self.kind is ScriptKind.WPKH:
            return p2wpkh_address(child.public_key, self.network)
        return p2tr_address(child.public_key, self.network)
