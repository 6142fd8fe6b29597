"""Key devices: the insecure mnemonic device and the Trezor (through a fake session) against
published vectors, against each other, and on bad input."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest
from trezorlib import messages

from bcm_tools.devices.mnemonic import MnemonicDevice
from bcm_tools.devices.trezor import TrezorDevice
from bcm_tools.errors import CredentialError
from bcm_tools.keys.bip32 import Curve, parse_path, serialize
from bcm_tools.keys.operator import (
    OPERATOR_AGE_KEY_NAME,
    OPERATOR_AGE_PATH,
    account_keys,
    operator_age_identity,
    operator_age_recipient,
    ssh_public_key,
)
from bcm_tools.keys.slip13 import identity_path
from fake_trezor import FakeTrezorTransport

VECTORS = Path(__file__).parent / "vectors"
SLIP11 = json.loads((VECTORS / "slip11.json").read_text())
SLIP13 = json.loads((VECTORS / "slip13.json").read_text())
BIP84 = json.loads((VECTORS / "bip84.json").read_text())
BIP86 = json.loads((VECTORS / "bip86.json").read_text())
ABANDON = BIP84["mnemonic"]


def trezor(mnemonic: str, **kwargs) -> tuple[TrezorDevice, FakeTrezorTransport]:
    """A TrezorDevice running real trezorlib over the fake device transport."""
    transport = FakeTrezorTransport(mnemonic, **kwargs)
    return TrezorDevice(transport=transport), transport


def devices(mnemonic: str):
    """The same seed as the software device and as a (fake-session) Trezor."""
    return [MnemonicDevice(mnemonic), trezor(mnemonic)[0]]


@pytest.mark.parametrize("kind", ["mnemonic", "trezor"])
@pytest.mark.parametrize("vector", SLIP11["vectors"], ids=lambda v: f'{v["key"]}-{v["encrypted"][:8]}')
def test_cipher_key_value_matches_trezor_firmware_vectors(kind, vector):
    device = MnemonicDevice(SLIP11["mnemonic"]) if kind == "mnemonic" else trezor(SLIP11["mnemonic"])[0]
    flags = dict(ask_on_encrypt=vector["ask_on_encrypt"], ask_on_decrypt=vector["ask_on_decrypt"])
    encrypted = device.cipher_key_value(vector["path"], vector["key"], vector["value"].encode(), encrypt=True, **flags)
    assert encrypted.hex() == vector["encrypted"]
    decrypted = device.cipher_key_value(vector["path"], vector["key"], encrypted, encrypt=False, **flags)
    assert decrypted == vector["value"].encode()


@pytest.mark.parametrize("kind", ["mnemonic", "trezor"])
@pytest.mark.parametrize("vector", SLIP13["public_keys"], ids=lambda v: f'{v["uri"]}|{v["curve"]}')
def test_slip13_public_keys_match_trezor_firmware_vectors(kind, vector):
    device = MnemonicDevice(SLIP13["device_mnemonic"]) if kind == "mnemonic" else trezor(SLIP13["device_mnemonic"])[0]
    key = device.public_key(identity_path(vector["uri"], vector["index"]), Curve(vector["curve"]))
    assert key.hex() == vector["public_key"]


@pytest.mark.parametrize("device", devices(ABANDON), ids=["mnemonic", "trezor"])
def test_account_xpubs_match_bip84_and_bip86(device):
    wpkh, tr = account_keys(device, "mainnet", 0)
    assert wpkh.path == parse_path(BIP84["account_path"]) and tr.path == parse_path(BIP86["account_path"])
    assert tr.xpub == BIP86["account_xpub"]
    assert serialize(wpkh.node, "zpub") == BIP84["account_zpub"]
    assert wpkh.address(0, 0) == BIP84["addresses"][0]["address"]
    assert tr.address(0, 0) == BIP86["addresses"][0]["address"]
    assert wpkh.master_fingerprint.hex() == "73c5da0a"  # the well-known fingerprint of this seed


def test_trezor_and_software_device_agree_on_every_operator_key():
    software, (hardware, session) = MnemonicDevice(ABANDON), trezor(ABANDON)
    assert ssh_public_key(software, "operator@btc1") == ssh_public_key(hardware, "operator@btc1")
    assert ssh_public_key(software, "operator@btc1", "nist256p1") == ssh_public_key(hardware, "operator@btc1", "nist256p1")
    assert operator_age_identity(software) == operator_age_identity(hardware)
    # The request the Trezor saw for the operator identity: fixed path, key name and flags.
    request = [m for m in session.received if isinstance(m, messages.CipherKeyValue)][-1]
    assert list(request.address_n) == OPERATOR_AGE_PATH and request.key == OPERATOR_AGE_KEY_NAME
    assert request.encrypt and request.ask_on_encrypt and request.ask_on_decrypt and len(request.value) == 32
    assert session.button_requests == 1  # the operator key costs one button press
    ssh_request = [m for m in session.received if isinstance(m, messages.GetPublicKey) and m.address_n[0] == 0x8000000D][0]
    assert ssh_request.ecdsa_curve_name == "ed25519"
    assert list(ssh_request.address_n) == identity_path("ssh://operator@btc1")


def test_ssh_key_line_is_what_trezor_agent_prints_and_openssh_reads(tmp_path):
    """libagent (trezor-agent's library) is the oracle for path, key encoding and label."""
    from libagent import formats
    from libagent.device.interface import Identity

    device = MnemonicDevice(ABANDON)
    for curve in ("ed25519", "nist256p1"):
        line = ssh_public_key(device, "operator@btc1", curve)
        identity = Identity("operator@btc1", curve)
        identity.identity_dict["proto"] = "ssh"  # what trezor-agent does for USER@HOST
        assert identity_path("ssh://operator@btc1") == identity.get_bip32_address()
        raw = device.public_key(identity.get_bip32_address(), Curve(curve))
        expected = formats.export_public_key(formats.decompress_pubkey(raw, curve), identity.to_string())
        assert line == expected.strip()
        (tmp_path / "key.pub").write_text(line + "\n")
        fingerprint = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "key.pub")], capture_output=True, text=True, check=True)
        assert ("ED25519" if curve == "ed25519" else "ECDSA") in fingerprint.stdout


def test_operator_recipient_matches_age_keygen(tmp_path):
    identity = operator_age_identity(MnemonicDevice(ABANDON))
    (tmp_path / "id").write_text(identity + "\n")
    derived = subprocess.run(["age-keygen", "-y", str(tmp_path / "id")], capture_output=True, text=True, check=True)
    assert derived.stdout.strip() == operator_age_recipient(MnemonicDevice(ABANDON))


def test_passphrase_changes_every_key():
    plain, with_passphrase = MnemonicDevice(ABANDON), MnemonicDevice(ABANDON, passphrase="TREZOR")
    assert operator_age_recipient(plain) != operator_age_recipient(with_passphrase)
    assert plain.master_fingerprint() != with_passphrase.master_fingerprint()


def test_refusal_on_the_trezor_is_a_credential_error():
    device, _ = trezor(ABANDON, refuse=True)
    with pytest.raises(CredentialError, match="refused on the Trezor"):
        operator_age_identity(device)


def test_refusal_through_the_cli_is_one_line(capsys, monkeypatch, tmp_path):
    """The same refusal as a user sees it: converted once, in main(), nothing written."""
    import sys

    import bcm_tools.cli.trezor as cli_trezor
    from bcm_tools.cli import main

    device, _ = trezor(ABANDON, refuse=True)
    monkeypatch.setattr(cli_trezor, "open_device", lambda spec: device)
    monkeypatch.setattr(sys, "argv", ["bcm-tools", "secrets", "init", "--repo", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == CredentialError.exit_code
    assert capsys.readouterr().err.strip().splitlines() == ["Confirm on your Trezor.", "error: the request was refused on the Trezor"]
    assert not (tmp_path / "secrets").exists()


def test_messages_cross_the_usb_wire_in_64_byte_reports():
    """Protocol v1 as a Trezor speaks it over USB: trezorlib cuts every message into 64-byte
    reports and reassembles the device's; the fake does the device's half from the protocol."""
    device, transport = trezor(ABANDON)
    with device:
        recipient = operator_age_recipient(device)
        node = device.public_node(parse_path(BIP86["account_path"]))
    assert recipient == operator_age_recipient(MnemonicDevice(ABANDON))
    assert serialize(node, "xpub") == BIP86["account_xpub"]
    reports = transport.reports_received + transport.reports_sent
    assert {len(report) for report in reports} == {64}
    # A message longer than one report (path, key name and 32-byte value; a node with its xpub)
    # crossed as several, and came out whole on the other side.
    assert ("in", "CipherKeyValue", 2) in transport.messages
    assert ("out", "PublicKey", 2) in transport.messages
    first_reports = sum(1 for r in transport.reports_received if r.startswith(b"?##"))
    assert first_reports == sum(1 for d, _, _ in transport.messages if d == "in")


def test_transport_is_released_after_use():
    device, transport = trezor(ABANDON)
    with device:
        device.master_fingerprint()
    assert not transport.is_open()


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "the mnemonic file is empty"),
        ("abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon\n", "not a BIP-39 mnemonic (wrong word count or checksum)"),
        ("abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon bitcoinz\n", "not a BIP-39 mnemonic (unknown word 'bitcoinz')"),
        ("abandon abandon abandon about\n", "not a BIP-39 mnemonic (wrong word count or checksum)"),
    ],
)
def test_bad_mnemonic_file_is_one_line_and_non_zero(run_cli, tmp_path, content, message):
    path = tmp_path / "words.txt"
    path.write_text(content)
    result = run_cli("trezor", "ssh-pubkey", "--identity", "operator@btc1", "--device", f"mnemonic:{path}")
    assert result.returncode == CredentialError.exit_code
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"error: {path}: {message}"]


def test_missing_mnemonic_file(run_cli, tmp_path):
    result = run_cli("trezor", "ssh-pubkey", "--identity", "a@b", "--device", f"mnemonic:{tmp_path / 'nope'}")
    assert result.returncode == CredentialError.exit_code
    assert "cannot read mnemonic file" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_no_trezor_connected_is_found_by_real_usb_enumeration(run_cli):
    """No device is attached to this machine: trezorlib's real transports find none."""
    result = run_cli("trezor", "ssh-pubkey", "--identity", "operator@btc1")
    assert result.returncode == CredentialError.exit_code
    assert result.stderr.strip().splitlines() == ["error: no Trezor connected (plug it in and unlock it)"]


def test_ssh_pubkey_cli_labels_the_insecure_device(run_cli, tmp_path):
    words = tmp_path / "words.txt"
    words.write_text(ABANDON + "\n")
    result = run_cli("trezor", "ssh-pubkey", "--identity", "operator@btc1", "--device", f"mnemonic:{words}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ssh-ed25519 ") and result.stdout.strip().endswith("<ssh://operator@btc1|ed25519>")
    assert "INSECURE" in result.stderr
    blob = base64.b64decode(result.stdout.split()[1])
    assert blob[4:15] == b"ssh-ed25519"


def test_malformed_identity_is_a_usage_error(run_cli, tmp_path):
    words = tmp_path / "words.txt"
    words.write_text(ABANDON + "\n")
    result = run_cli("trezor", "ssh-pubkey", "--identity", "not an identity", "--device", f"mnemonic:{words}")
    assert result.returncode == 2 and "USER@HOST" in result.stderr
