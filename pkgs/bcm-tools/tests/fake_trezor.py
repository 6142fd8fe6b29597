"""A FAKE Trezor session, standing in for a device at trezorlib's session boundary.

No Trezor (and no buildable emulator) is available to the tests, so this object plays the
firmware's part for the two requests bcm-tools makes, GetPublicKey and CipherKeyValue: it takes
the real trezorlib message objects, answers with real trezorlib message objects, and raises
`trezorlib.exceptions.Cancelled` where trezorlib's client raises it after the user presses
"cancel". Keys come from the `slip10` package (which trezorlib itself depends on), not from
bcm_tools, so agreement between the two is evidence, not a tautology; the fake's own answers
are pinned to Trezor's published firmware test vectors in test_devices.py.
"""

from __future__ import annotations

import hashlib
import hmac

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from mnemonic import Mnemonic
from slip10 import SLIP10
from trezorlib import exceptions, messages


class FakeTrezorSession:
    def __init__(self, mnemonic: str, passphrase: str = "", refuse: bool = False) -> None:
        self.seed = Mnemonic.to_seed(mnemonic, passphrase)
        self.refuse = refuse
        self.received: list[object] = []
        self.closed = False

    def __enter__(self) -> "FakeTrezorSession":
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    def get_root_fingerprint(self) -> bytes:
        # trezorlib asks for m/0h and reads its parent fingerprint.
        reply = self.call(messages.GetPublicKey(address_n=[0x80000000], ecdsa_curve_name="secp256k1"))
        return reply.node.fingerprint.to_bytes(4, "big")

    def call(self, msg: object, *, expect: type = object, timeout: float | None = None) -> object:
        self.received.append(msg)
        if isinstance(msg, messages.GetPublicKey):
            reply = self._public_key(msg)
        elif isinstance(msg, messages.CipherKeyValue):
            reply = self._cipher_key_value(msg)
        else:
            raise exceptions.TrezorFailure(messages.Failure(code=messages.FailureType.UnexpectedMessage))
        assert isinstance(reply, expect)
        return reply

    def _wallet(self, curve: str) -> SLIP10:
        # slip10 calls NIST P-256 by its SEC name.
        return SLIP10.from_seed(self.seed, curve_name={"nist256p1": "secp256r1"}.get(curve, curve))

    def _public_key(self, msg: messages.GetPublicKey) -> messages.PublicKey:
        curve = msg.ecdsa_curve_name or "secp256k1"
        path = list(msg.address_n)
        wallet = self._wallet(curve)
        chain_code, public_key = wallet.get_extended_pubkey_from_path(path)
        parent_fp = 0
        if path:
            parent_pub = wallet.get_pubkey_from_path(path[:-1])
            parent_fp = int.from_bytes(
                hashlib.new("ripemd160", hashlib.sha256(parent_pub).digest()).digest()[:4], "big"
            )
        node = messages.HDNodeType(
            depth=len(path),
            fingerprint=parent_fp,
            child_num=path[-1] if path else 0,
            chain_code=chain_code,
            public_key=public_key,
        )
        return messages.PublicKey(node=node, xpub="(not used by bcm-tools)")

    def _cipher_key_value(self, msg: messages.CipherKeyValue) -> messages.CipheredKeyValue:
        if len(msg.value) % 16:
            raise exceptions.TrezorFailure(messages.Failure(code=messages.FailureType.DataError))
        asks = msg.ask_on_encrypt if msg.encrypt else msg.ask_on_decrypt
        if asks and self.refuse:
            raise exceptions.Cancelled
        private_key = self._wallet("secp256k1").get_privkey_from_path(list(msg.address_n))
        data = msg.key.encode() + (b"E1" if msg.ask_on_encrypt else b"E0") + (b"D1" if msg.ask_on_decrypt else b"D0")
        secret = hmac.digest(private_key, data, "sha512")
        iv = msg.iv if msg.iv and len(msg.iv) == 16 else secret[32:48]
        cipher = Cipher(algorithms.AES(secret[:32]), modes.CBC(iv))
        worker = cipher.encryptor() if msg.encrypt else cipher.decryptor()
        return messages.CipheredKeyValue(value=worker.update(msg.value) + worker.finalize())
