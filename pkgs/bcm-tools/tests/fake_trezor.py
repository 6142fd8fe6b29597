"""A FAKE Trezor, standing in for the device below trezorlib: a trezorlib `Transport`.

No Trezor (and no buildable emulator) is available to the tests, so this class plays the
firmware's part on the wire. trezorlib itself runs unchanged above it: protocol detection,
protocol v1 as a Trezor speaks it over USB (each message cut into 64-byte reports, the first
starting with `?##`, the message type and length, the others with `?`, zero-padded), protobuf
encoding, session setup with Initialize and the root fingerprint, ButtonRequest/ButtonAck, and the
conversion of a refusal into `Cancelled`. The fake reassembles trezorlib's reports and cuts its
replies the same way, written here from the protocol rather than taken from trezorlib. The fake
answers the messages bcm-tools leads trezorlib to send (GetFeatures, Initialize, GetPublicKey,
CipherKeyValue), asking for a button press where a real Trezor would. Keys come from the `slip10`
package, as bcm_tools' own do, so agreement between the two is no evidence by itself: the
fake's answers are pinned to Trezor's published firmware test vectors (SLIP-0011, SLIP-0013) and
to BIP-84/86 in test_devices.py.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections import deque

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from mnemonic import Mnemonic
from slip10 import SLIP10
from trezorlib import messages
from trezorlib.mapping import DEFAULT_MAPPING
from trezorlib.transport import Timeout, Transport, TransportException

_SESSION_ID = bytes(range(32))
_REPORT = 64  # bytes in one USB report


class FakeTrezorTransport(Transport):
    PATH_PREFIX = "fake"
    CHUNK_SIZE = 64  # one USB HID/WebUSB report, as trezorlib's USB transports use
    ENABLED = True

    def __init__(self, mnemonic: str, *, refuse: bool = False) -> None:
        self.seed = Mnemonic.to_seed(mnemonic, "")
        self.refuse = refuse
        self.received: list[object] = []
        self.button_requests = 0
        self._replies: deque[bytes] = deque()
        # Every 64-byte report in each direction, and per message: (direction, name, reports).
        self.reports_received: list[bytes] = []
        self.reports_sent: list[bytes] = []
        self.messages: list[tuple[str, str, int]] = []
        self._incoming: tuple[int, int, bytearray, int] | None = None  # type, length, data, reports
        self._waiting_for_button: object | None = None
        self._open_now = False

    # --- Transport -------------------------------------------------------------------------

    def get_path(self) -> str:
        return "fake:trezor"

    def is_open(self) -> bool:
        return self._open_now

    def _open(self) -> None:
        self._open_now = True

    def _close(self) -> None:
        self._open_now = False

    def write_chunk(self, chunk: bytes, /) -> None:
        if len(chunk) != _REPORT:
            raise TransportException(f"a USB report is {_REPORT} bytes, not {len(chunk)}")
        self.reports_received.append(chunk)
        if self._incoming is None:
            if chunk[:3] != b"?##":
                raise TransportException(f"first report of a message without '?##': {chunk.hex()}")
            msg_type, length = struct.unpack(">HL", chunk[3:9])
            self._incoming = (msg_type, length, bytearray(chunk[9:]), 1)
        else:
            if chunk[:1] != b"?":
                raise TransportException(f"continuation report without '?': {chunk.hex()}")
            msg_type, length, data, reports = self._incoming
            data.extend(chunk[1:])
            self._incoming = (msg_type, length, data, reports + 1)
        msg_type, length, data, reports = self._incoming
        if len(data) < length:
            return
        self._incoming = None
        message = DEFAULT_MAPPING.decode(msg_type, bytes(data[:length]))
        self.received.append(message)
        self.messages.append(("in", type(message).__name__, reports))
        self._reply(self._handle(message))

    def read_chunk(self, *, timeout: float | None = None) -> bytes:
        if not self._replies:
            raise Timeout("nothing to read")
        return self._replies.popleft()

    # --- firmware --------------------------------------------------------------------------

    def _reply(self, message: object) -> None:
        msg_type, data = DEFAULT_MAPPING.encode(message)
        stream = b"##" + struct.pack(">HL", msg_type, len(data)) + data
        reports = [(b"?" + stream[i : i + _REPORT - 1]).ljust(_REPORT, b"\0") for i in range(0, len(stream), _REPORT - 1)]
        self._replies.extend(reports)
        self.reports_sent.extend(reports)
        self.messages.append(("out", type(message).__name__, len(reports)))

    def _handle(self, msg: object) -> object:
        if isinstance(msg, messages.Cancel):
            return messages.Failure(code=messages.FailureType.ActionCancelled, message="Cancelled")
        if isinstance(msg, (messages.Initialize, messages.GetFeatures)):
            return self._features()
        if isinstance(msg, messages.GetPublicKey):
            return self._public_key(msg)
        if isinstance(msg, messages.CipherKeyValue):
            asks = msg.ask_on_encrypt if msg.encrypt else msg.ask_on_decrypt
            if asks:
                self._waiting_for_button = msg
                self.button_requests += 1
                return messages.ButtonRequest(code=messages.ButtonRequestType.Other)
            return self._cipher_key_value(msg)
        if isinstance(msg, messages.ButtonAck) and self._waiting_for_button is not None:
            pending, self._waiting_for_button = self._waiting_for_button, None
            if self.refuse:
                return messages.Failure(code=messages.FailureType.ActionCancelled, message="Cancelled")
            return self._cipher_key_value(pending)  # type: ignore[arg-type]
        return messages.Failure(code=messages.FailureType.UnexpectedMessage, message="Unexpected message")

    def _features(self) -> messages.Features:
        return messages.Features(
            vendor="trezor.io",
            major_version=2,
            minor_version=9,
            patch_version=0,
            model="T",
            internal_model="T2T1",
            device_id="FAKE",
            initialized=True,
            unlocked=True,
            passphrase_protection=False,
            session_id=_SESSION_ID,
            capabilities=[messages.Capability.Bitcoin, messages.Capability.Crypto],
        )

    def _wallet(self, curve: str) -> SLIP10:
        # slip10 calls NIST P-256 by its SEC name.
        return SLIP10.from_seed(self.seed, curve_name={"nist256p1": "secp256r1"}.get(curve, curve))

    def _public_key(self, msg: messages.GetPublicKey) -> messages.PublicKey:
        curve = msg.ecdsa_curve_name or "secp256k1"
        path = list(msg.address_n)
        wallet = self._wallet(curve)
        chain_code, public_key = wallet.get_extended_pubkey_from_path(path)
        parent_fingerprint = 0
        if path:
            parent = wallet.get_pubkey_from_path(path[:-1])
            parent_fingerprint = int.from_bytes(
                hashlib.new("ripemd160", hashlib.sha256(parent).digest()).digest()[:4], "big"
            )
        node = messages.HDNodeType(
            depth=len(path),
            fingerprint=parent_fingerprint,
            child_num=path[-1] if path else 0,
            chain_code=chain_code,
            public_key=public_key,
        )
        return messages.PublicKey(node=node, xpub="(not used by bcm-tools)")

    def _cipher_key_value(self, msg: messages.CipherKeyValue) -> object:
        if len(msg.value) % 16:
            return messages.Failure(code=messages.FailureType.DataError, message="Value length must be a multiple of 16")
        private_key = self._wallet("secp256k1").get_privkey_from_path(list(msg.address_n))
        data = msg.key.encode() + (b"E1" if msg.ask_on_encrypt else b"E0") + (b"D1" if msg.ask_on_decrypt else b"D0")
        secret = hmac.digest(private_key, data, "sha512")
        iv = msg.iv if msg.iv and len(msg.iv) == 16 else secret[32:48]
        cipher = Cipher(algorithms.AES(secret[:32]), modes.CBC(iv))
        worker = cipher.encryptor() if msg.encrypt else cipher.decryptor()
        return messages.CipheredKeyValue(value=worker.update(msg.value) + worker.finalize())
