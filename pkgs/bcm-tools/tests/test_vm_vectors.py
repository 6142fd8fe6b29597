"""The key material the VM tests write down (nixos-tests/common.nix) is what bcm-tools derives.

vm-lightning encrypts alice's channel backups to `vectors.operatorAgeRecipient` and decrypts them
with `--device mnemonic:` on the test vectors' mnemonic; a recipient that bcm-tools would not
derive from those words makes that VM test fail only where KVM is, so it is checked here. The
same for the regtest address the VM tests mine their first block to."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bcm_tools.devices.mnemonic import MnemonicDevice
from bcm_tools.keys.bech32 import encode_segwit_address
from bcm_tools.keys.operator import operator_age_recipient

ROOT = Path(__file__).resolve().parents[3]
COMMON = (ROOT / "nixos-tests" / "common.nix").read_text()
VECTORS = Path(__file__).parent / "vectors"

pytestmark = pytest.mark.repo


def nix_string(name: str) -> str:
    (value,) = re.findall(rf'^\s*{name} = "([^"]*)";$', COMMON, re.MULTILINE)
    return value


def test_operator_recipient_is_the_one_derived_from_the_vectors_mnemonic():
    mnemonic = json.loads((VECTORS / "bip84.json").read_text())["mnemonic"]
    assert nix_string("operatorAgeRecipient") == operator_age_recipient(MnemonicDevice(mnemonic))


def test_the_vm_tests_mine_to_the_zero_witness_program():
    assert nix_string("regtestBurnAddress") == encode_segwit_address("bcrt", 0, bytes(20))
