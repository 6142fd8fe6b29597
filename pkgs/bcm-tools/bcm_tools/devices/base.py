"""The one interface bcm-tools needs from a key device, and how a `--device` value picks one.

Two devices implement it: a Trezor (`trezor.py`) and an insecure software device built from a
BIP-39 mnemonic file (`mnemonic.py`) for regtest, tests and people without a Trezor. Callers
never learn which one they hold, except through `label` and `insecure`, which every command
shows so that software keys are never mistaken for hardware ones.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType

from bcm_tools.errors import UsageError
from bcm_tools.keys.bip32 import Curve, Node


class KeyDevice(ABC):
    """A source of keys whose private parts stay inside it (or, for the software device, should)."""

    #: Shown wherever the device's keys are shown; names the device and, if so, its insecurity.
    label: str
    insecure: bool

    def __enter__(self) -> "KeyDevice":
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def open(self) -> None:
        """Connect; raise CredentialError if the device cannot be used."""

    def close(self) -> None:
        """Release the connection."""

    @abstractmethod
    def master_fingerprint(self) -> bytes:
        """First four bytes of HASH160 of the secp256k1 master public key."""

    @abstractmethod
    def public_node(self, path: list[int]) -> Node:
        """The secp256k1 extended public key at `path` (no private key)."""

    @abstractmethod
    def public_key(self, path: list[int], curve: Curve) -> bytes:
        """The SLIP-0010 public key at `path` on `curve` (33 bytes; ed25519 is 0x00-prefixed)."""

    @abstractmethod
    def cipher_key_value(
        self,
        path: list[int],
        key: str,
        value: bytes,
        *,
        encrypt: bool,
        ask_on_encrypt: bool,
        ask_on_decrypt: bool,
    ) -> bytes:
        """SLIP-0011 CipherKeyValue: AES-256-CBC of `value` under a key bound to path and `key`."""


def open_device(spec: str) -> KeyDevice:
    """Parse a `--device` value: `trezor` or `mnemonic:PATH`. Raises UsageError otherwise."""
    if spec == "trezor":
        from bcm_tools.devices.trezor import TrezorDevice

        return TrezorDevice()
    if spec.startswith("mnemonic:") and len(spec) > len("mnemonic:"):
        from bcm_tools.devices.mnemonic import MnemonicDevice

        return MnemonicDevice.from_file(spec[len("mnemonic:") :])
    raise UsageError(f"--device must be 'trezor' or 'mnemonic:PATH', not {spec!r}")
