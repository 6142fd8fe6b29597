"""An INSECURE software key device built from a BIP-39 mnemonic file.

It derives exactly what a Trezor loaded with the same words would (BIP-32 / SLIP-0010 keys,
SLIP-0011 CipherKeyValue), so regtest nodes, tests and operators without a Trezor can use
every command. Its private keys live in this process and in a plain file, which is why its
label says INSECURE and the CLI repeats it on every use.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from mnemonic import Mnemonic

from bcm_tools.devices.base import KeyDevice
from bcm_tools.errors import CredentialError
from bcm_tools.keys.bip32 import Curve, Node, derive_path, master_node

#: Environment variable holding the BIP-39 passphrase ("25th word"); empty when unset.
PASSPHRASE_ENV = "BCM_MNEMONIC_PASSPHRASE"


class MnemonicDevice(KeyDevice):
    insecure = True

    def __init__(self, words: str, passphrase: str = "", source: str = "mnemonic") -> None:
        normalized = " ".join(words.split())
        wordlist = Mnemonic("english")
        unknown = [w for w in normalized.split(" ") if w and w not in wordlist.wordlist]
        if not normalized:
            raise CredentialError(f"{source}: the mnemonic file is empty")
        if unknown:
            raise CredentialError(f"{source}: not a BIP-39 mnemonic (unknown word {unknown[0]!r})")
        if not wordlist.check(normalized):
            raise CredentialError(f"{source}: not a BIP-39 mnemonic (wrong word count or checksum)")
        self._seed = Mnemonic.to_seed(normalized, passphrase)
        self._masters: dict[Curve, Node] = {}
        self.label = f"INSECURE software keys from {source}"

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], passphrase: str | None = None) -> "MnemonicDevice":
        try:
            words = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise CredentialError(f"{path}: cannot read mnemonic file ({err.__class__.__name__})") from None
        if passphrase is None:
            passphrase = os.environ.get(PASSPHRASE_ENV, "")
        return cls(words, passphrase, source=str(path))

    def _node(self, path: list[int], curve: Curve = Curve.SECP256K1) -> Node:
        if curve not in self._masters:
            self._masters[curve] = master_node(self._seed, curve)
        return derive_path(self._masters[curve], path)

    def master_fingerprint(self) -> bytes:
        return self._node([]).fingerprint

    def public_node(self, path: list[int]) -> Node:
        return self._node(path).neuter()

    def public_key(self, path: list[int], curve: Curve) -> bytes:
        return self._node(path, curve).public_key

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
        if len(value) % 16:
            raise CredentialError("CipherKeyValue needs a value whose length is a multiple of 16")
        private_key = self._node(path).private_key
        assert private_key is not None
        # SLIP-0011: the confirmation flags are part of the key, so a caller cannot skip the
        # button press by asking for the same value without it.
        message = key.encode() + (b"E1" if ask_on_encrypt else b"E0") + (b"D1" if ask_on_decrypt else b"D0")
        secret = hmac.digest(private_key, message, "sha512")
        cipher = Cipher(algorithms.AES(secret[:32]), modes.CBC(secret[32:48]))
        worker = cipher.encryptor() if encrypt else cipher.decryptor()
        return worker.update(value) + worker.finalize()
