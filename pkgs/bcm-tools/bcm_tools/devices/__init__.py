"""Key devices: a Trezor, or an insecure software stand-in from a mnemonic file."""

from bcm_tools.devices.base import KeyDevice, open_device

__all__ = ["KeyDevice", "open_device"]
