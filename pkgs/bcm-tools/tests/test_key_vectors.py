"""Key derivations against published test vectors (tests/vectors/*.json, each with its source).

The vectors come from the BIPs and SLIPs themselves and from Trezor's firmware test suite, so a
pass means our derivations agree with the specifications and with what a real Trezor computes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given, strategies as st
from mnemonic import Mnemonic

from bcm_tools.keys import bech32
from bcm_tools.keys.addresses import p2tr_address, p2wpkh_address, taproot_output_key
from bcm_tools.keys.bip32 import (
    HARDENED,
    Curve,
    DerivationError,
    derive_child,
    derive_path,
    format_path,
    master_node,
    parse_extended_key,
    parse_path,
    serialize,
)
from bcm_tools.keys.descriptors import DescriptorError, add_checksum, verify_checksum
from bcm_tools.keys.slip13 import identity_digest, identity_path

VECTORS = Path(__file__).parent / "vectors"


def load(name: str) -> dict:
    return json.loads((VECTORS / name).read_text())


def test_every_vector_file_names_its_source():
    """Each file says where its values were copied from: a repository, a file and a commit."""
    for path in VECTORS.glob("*.json"):
        assert re.search(r"^[\w.-]+/[\w.-]+ \S+.*\(commit [0-9a-f]{40}\)", load(path.name)["source"]), path


@pytest.mark.parametrize("vector", load("bip32.json")["vectors"], ids=lambda v: v["seed"][:8])
def test_bip32_private_derivation(vector):
    master = master_node(bytes.fromhex(vector["seed"]))
    for chain in vector["chains"]:
        node = derive_path(master, parse_path(chain["path"]))
        assert serialize(node, "xprv") == chain["xprv"], chain["path"]
        assert serialize(node, "xpub") == chain["xpub"], chain["path"]


@pytest.mark.parametrize("vector", load("bip32.json")["vectors"], ids=lambda v: v["seed"][:8])
def test_bip32_public_derivation_from_parsed_xpub(vector):
    """Every unhardened step must be reproducible from the parent's xpub alone."""
    chains = vector["chains"]
    for parent, child in zip(chains, chains[1:]):
        step = parse_path(child["path"])[-1]
        if step >= HARDENED:
            continue
        kind, parent_node = parse_extended_key(parent["xpub"])
        assert kind == "xpub" and parent_node.private_key is None
        assert serialize(derive_child(parent_node, step), "xpub") == child["xpub"]


def test_bip32_parse_round_trip_and_rejections():
    chain = load("bip32.json")["vectors"][0]["chains"][3]
    kind, node = parse_extended_key(chain["xprv"])
    assert kind == "xprv" and serialize(node, "xprv") == chain["xprv"]
    broken = chain["xpub"][:-1] + ("A" if chain["xpub"][-1] != "A" else "B")
    with pytest.raises(DerivationError):
        parse_extended_key(broken)
    with pytest.raises(DerivationError, match="needs the private key"):
        derive_child(node.neuter(), HARDENED)
    with pytest.raises(DerivationError, match="only hardened"):
        derive_child(master_node(bytes(16), Curve.ED25519), 1)


@pytest.mark.parametrize("vector", load("bip32.json")["invalid"], ids=lambda v: v["reason"])
def test_bip32_invalid_extended_keys_are_rejected(vector):
    """BIP-32 test vector 5: keys whose every field decodes, but which are not valid."""
    with pytest.raises(DerivationError):
        parse_extended_key(vector["key"])


@pytest.mark.parametrize("curve", ["nist256p1", "ed25519"])
def test_slip10_vectors(curve):
    data = load("slip10.json")
    master = master_node(bytes.fromhex(data["seed"]), Curve(curve))
    for chain in data[curve]:
        node = derive_path(master, parse_path(chain["path"]))
        assert node.chain_code.hex() == chain["chain_code"], chain["path"]
        assert node.private_key.hex() == chain["private"], chain["path"]
        assert node.public_key.hex() == chain["public"], chain["path"]
        assert node.parent_fingerprint.hex() == chain["fingerprint"], chain["path"]


@pytest.mark.parametrize("vector", load("slip13.json")["paths"], ids=lambda v: v["uri"])
def test_slip13_paths(vector):
    assert identity_digest(vector["uri"], vector["index"]).hex() == vector["sha256"]
    assert identity_path(vector["uri"], vector["index"]) == vector["path"]


@pytest.mark.parametrize("vector", load("slip13.json")["public_keys"], ids=lambda v: f'{v["uri"]}|{v["curve"]}')
def test_slip13_public_keys_match_a_real_trezor(vector):
    data = load("slip13.json")
    seed = Mnemonic.to_seed(data["device_mnemonic"], "")
    node = derive_path(master_node(seed, Curve(vector["curve"])), identity_path(vector["uri"], vector["index"]))
    assert node.public_key.hex() == vector["public_key"]


def test_bip84_vectors():
    data = load("bip84.json")
    master = master_node(Mnemonic.to_seed(data["mnemonic"], ""))
    assert serialize(master, "zprv") == data["rootnode_zprv"]
    assert serialize(master, "zpub") == data["rootnode_zpub"]
    account = derive_path(master, parse_path(data["account_path"]))
    assert serialize(account, "zprv") == data["account_zprv"]
    assert serialize(account.neuter(), "zpub") == data["account_zpub"]
    for item in data["addresses"]:
        child = derive_path(account.neuter(), [item["change"], item["index"]])
        assert child.public_key.hex() == item["pubkey"]
        assert p2wpkh_address(child.public_key, "mainnet") == item["address"]


def test_bip86_vectors():
    data = load("bip86.json")
    master = master_node(Mnemonic.to_seed(data["mnemonic"], ""))
    assert serialize(master, "xprv") == data["rootpriv"]
    assert serialize(master, "xpub") == data["rootpub"]
    account = derive_path(master, parse_path(data["account_path"]))
    assert serialize(account, "xprv") == data["account_xprv"]
    assert serialize(account, "xpub") == data["account_xpub"]
    _, account_public = parse_extended_key(data["account_xpub"])
    for item in data["addresses"]:
        child = derive_path(account_public, [item["change"], item["index"]])
        assert serialize(child, "xpub") == item["xpub"]
        assert child.public_key[1:].hex() == item["internal_key"]
        assert taproot_output_key(child.public_key).hex() == item["output_key"]
        assert p2tr_address(child.public_key, "mainnet") == item["address"]


def test_bip380_checksum_vectors():
    data = load("bip380.json")
    for item in data["valid"]:
        assert verify_checksum(item["descriptor"]) == item["body"]
        assert add_checksum(item["body"]) == item["descriptor"]
    for item in data["invalid"]:
        with pytest.raises(DescriptorError):
            verify_checksum(item["descriptor"])


BECH32 = load("bech32.json")


@pytest.mark.parametrize(
    "text, encoding",
    [(s, bech32.Encoding.BECH32) for s in BECH32["valid_bech32"]] + [(s, bech32.Encoding.BECH32M) for s in BECH32["valid_bech32m"]],
)
def test_bech32_and_bech32m_valid_strings(text, encoding):
    hrp, data, found = bech32.decode(text)
    assert found is encoding  # no string is valid as both
    assert bech32.encode(hrp, data, encoding) == text.lower()


@pytest.mark.parametrize(
    "vector", BECH32["invalid_bech32"] + BECH32["invalid_bech32m"], ids=lambda v: f'{v["string"]!r}: {v["reason"]}'
)
def test_bech32_and_bech32m_invalid_strings(vector):
    with pytest.raises(ValueError):
        bech32.decode(vector["string"])


@pytest.mark.parametrize("vector", BECH32["valid_segwit"], ids=lambda v: v["address"])
def test_segwit_address_vectors(vector):
    version, program = bech32.decode_segwit_address(vector["hrp"], vector["address"])
    opcode = 0 if version == 0 else 0x50 + version  # OP_0, OP_1 .. OP_16
    assert (bytes([opcode, len(program)]) + program).hex() == vector["script_pubkey"]
    assert bech32.encode_segwit_address(vector["hrp"], version, program) == vector["address"].lower()


@pytest.mark.parametrize("vector", BECH32["invalid_segwit"], ids=lambda v: f'{v["address"]}: {v["reason"]}')
def test_invalid_segwit_address_vectors(vector):
    for hrp in ("bc", "tb"):
        with pytest.raises(ValueError):
            bech32.decode_segwit_address(hrp, vector["address"])


@given(st.text(alphabet="0123456789abcdefwpkhtr()[]/*'", min_size=1, max_size=120))
def test_checksum_detects_any_single_substitution(body):
    """BIP-380 promises every 1-symbol error is caught; check it on random descriptors."""
    text = add_checksum(body)
    position = len(body) // 2
    replacement = "x" if body[position] != "x" else "y"
    with pytest.raises(DescriptorError):
        verify_checksum(text[:position] + replacement + text[position + 1 :])


@given(st.lists(st.integers(0, 2**31 - 1), max_size=6), st.lists(st.booleans(), min_size=6, max_size=6))
def test_path_format_parse_round_trip(steps, hardened):
    path = [s | (HARDENED if h else 0) for s, h in zip(steps, hardened)]
    assert parse_path(format_path(path)) == path


@given(st.binary(min_size=20, max_size=20))
def test_segwit_address_round_trip(program):
    address = bech32.encode_segwit_address("bc", 0, program)
    assert bech32.decode_segwit_address("bc", address) == (0, program)


@given(st.binary(min_size=16, max_size=64), st.integers(0, HARDENED - 1), st.integers(0, HARDENED - 1))
def test_public_derivation_equals_private_derivation(seed, account, index):
    """CKDpub(N(k), i) == N(CKDpriv(k, i)) for unhardened i: what a watch-only wallet relies on."""
    parent = derive_child(master_node(seed), HARDENED | account)
    assert derive_child(parent.neuter(), index) == derive_child(parent, index).neuter()
