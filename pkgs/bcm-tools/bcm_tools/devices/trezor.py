"""A Trezor hardware wallet, through trezorlib.

This is the only module that speaks the Trezor protocol. Public keys come from
`GetPublicKey` (secp256k1 for wallets, ed25519/nist256p1 for SLIP-0013 SSH identities, as
trezor-agent asks for them); symmetric secrets come from `CipherKeyValue`, which shows its key
name on the screen and waits for a button press.
"""

from __future__ import annotations

import logging
import sys
from typing import Any, Callable

from bcm_tools.devices.base import KeyDevice
from bcm_tools.errors import CredentialError
from bcm_tools.keys.bip32 import Curve, Node

def _connect(transport: Any = None) -> Any:
    """A trezorlib session on the first Trezor found (or on `transport`, a trezorlib Transport)."""
    from trezorlib.client import PassphraseSetting, get_default_client

    def on_button(_request: Any) -> None:
        print("Confirm on your Trezor.", file=sys.stderr, flush=True)

    def on_pin(_request: Any) -> str:
        # Trezor One shows a scrambled keypad; the user types positions, not digits.
        import click

        return click.prompt("PIN (positions on the Trezor's keypad)", hide_input=True)

    # trezorlib logs each transport it cannot enumerate; the one-line error below says it all.
    logging.getLogger("trezorlib.transport").setLevel(logging.CRITICAL)
    client = get_default_client("bcm-tools", transport, button_callback=on_button, pin_callback=on_pin)
    # AUTO: if passphrases are on and the device has a keyboard, it is typed on the device,
    # so it never touches this machine.
    return client.get_session(passphrase=PassphraseSetting.AUTO)


class TrezorDevice(KeyDevice):
    insecure = False
    label = "Trezor"

    def __init__(self, transport: Any = None) -> None:
        # `transport` is for tests (a trezorlib Transport); by default trezorlib finds the device.
        self._transport = transport
        self._session: Any = None

    def open(self) -> None:
        if self._session is None:
            self._session = self._guard(lambda: _connect(self._transport))

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None and hasattr(session, "close"):
            try:
                session.close()
            except Exception:  # noqa: BLE001 - the device may already be gone; nothing to undo
                pass

    @property
    def session(self) -> Any:
        self.open()
        return self._session

    def _guard(self, action: Callable[[], Any]) -> Any:
        """Run one device interaction, turning trezorlib's failures into one-line errors."""
        from trezorlib import exceptions
        from trezorlib.transport import DeviceIsBusy, TransportException

        try:
            return action()
        except exceptions.Cancelled:
            raise CredentialError("the request was refused on the Trezor") from None
        except exceptions.PinException:
            raise CredentialError("wrong PIN entered for the Trezor") from None
        except DeviceIsBusy:
            raise CredentialError("the Trezor is in use by another program (close Trezor Suite?)") from None
        except TransportException as err:
            if "No Trezor device found" in str(err):
                if "libusb" in str(err):
                    raise CredentialError("no Trezor found: libusb-1.0 is missing (install libusb-1.0-0)") from None
                raise CredentialError("no Trezor connected (plug it in and unlock it)") from None
            raise CredentialError(f"cannot talk to the Trezor: {str(err).splitlines()[0]}") from None
        except exceptions.TrezorFailure as err:
            raise CredentialError(f"the Trezor refused: {err.message or err.code}") from None
        except exceptions.TrezorException as err:
            raise CredentialError(f"Trezor error: {err.__class__.__name__}") from None

    def master_fingerprint(self) -> bytes:
        return self._guard(lambda: bytes(self.session.get_root_fingerprint()))

    def public_node(self, path: list[int]) -> Node:
        from trezorlib import btc

        reply = self._guard(
            lambda: btc.get_public_node(self.session, path, ecdsa_curve_name="secp256k1", ignore_xpub_magic=True)
        )
        node = reply.node
        return Node(
            curve=Curve.SECP256K1,
            depth=node.depth,
            parent_fingerprint=node.fingerprint.to_bytes(4, "big"),
            child_number=node.child_num,
            chain_code=bytes(node.chain_code),
            public_key=bytes(node.public_key),
        )

    def public_key(self, path: list[int], curve: Curve) -> bytes:
        from trezorlib import btc

        reply = self._guard(lambda: btc.get_public_node(self.session, path, ecdsa_curve_name=curve.value))
        return bytes(reply.node.public_key)

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
        from trezorlib import misc

        call = misc.encrypt_keyvalue if encrypt else misc.decrypt_keyvalue
        return bytes(
            self._guard(
                lambda: call(
                    self.session,
                    path,
                    key,
                    value,
                    ask_on_encrypt=ask_on_encrypt,
                    ask_on_decrypt=ask_on_decrypt,
                )
            )
        )
