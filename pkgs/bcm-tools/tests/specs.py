"""Building cluster specs for tests: a known-good base, TOML rendering, and hypothesis strategies."""

from __future__ import annotations

import base64
import copy
import struct

import tomli_w
from hypothesis import strategies as st

from bcm_tools.sizing import DISK_GB, MEMORY_MB
from bcm_tools.spec import Network


def ssh_key(seed: int = 1, comment: str = "test") -> str:
    """A well-formed OpenSSH ed25519 public key line (not a real key pair: the tests only read it)."""
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes([seed % 256]) * 32
    return f"ssh-ed25519 {base64.b64encode(blob).decode()} {comment}".strip()


BASE = {
    "version": 1,
    "cluster": {"name": "home", "network": "mainnet"},
    "operator": {"user": "operator", "ssh_authorized_keys": [ssh_key()]},
    "hosts": [
        {
            "name": "btc1",
            "system": "x86_64-linux",
            "address": "10.0.3.8",
            "cpus": 4,
            "memory_mb": 12288,
            "storage": {
                "fast": {"device": "/dev/disk/by-id/nvme-fast", "fs": "ext4", "size_gb": 300},
                "bulk": {"nfs": "smith:/hdd/blockchain", "size_gb": 1000},
            },
            "services": {
                "bitcoind": {"prune_mb": 0, "txindex": False, "dbcache_mb": 2048},
                "fulcrum": {},
                "lnd": {"alias": "btc1"},
                "monerod": {"prune": True},
                "tor": {},
                "kafka": {},
            },
        }
    ],
}


def base_spec() -> dict:
    return copy.deepcopy(BASE)


def to_toml(spec: dict) -> str:
    return tomli_w.dumps(spec)


# --- hypothesis strategies for valid specs -----------------------------------------------------

_label = st.from_regex(r"\A[a-z][a-z0-9-]{0,20}[a-z0-9]\Z", fullmatch=True)
_port = st.integers(min_value=1024, max_value=65535)
# Free text that reaches Nix strings: quotes, backslashes, `${`, unicode.
_alias = st.text(
    alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FFF, exclude_categories=("Cs",)),
    min_size=1,
    max_size=12,
).filter(lambda s: len(s.encode()) <= 32)


@st.composite
def _storage_tier(draw, tier: str) -> dict:
    if draw(st.booleans()):
        table = {
            "device": draw(st.from_regex(r"\A/dev/disk/by-id/[a-z0-9_-]{1,20}\Z", fullmatch=True)),
            "fs": draw(st.sampled_from(["ext4", "xfs", "btrfs"])),
        }
    else:
        server = draw(st.sampled_from(["smith", "nas.lan", "10.0.0.5", "[fd00::5]"]))
        export = draw(st.from_regex(r"\A/[a-z0-9_/-]{1,20}\Z", fullmatch=True))
        table = {"nfs": f"{server}:{export}"}
    table["size_gb"] = 100_000  # generous; capacity is tested on its own
    if draw(st.booleans()):
        table["mount_point"] = f"/srv/{tier}-" + draw(st.from_regex(r"\A[a-z0-9]{1,8}\Z", fullmatch=True))
    return table


@st.composite
def _services(draw) -> dict:
    services: dict = {}
    if draw(st.booleans()):
        bitcoind = {
            "prune_mb": 0,
            "txindex": draw(st.booleans()),
            "dbcache_mb": draw(st.integers(min_value=4, max_value=8192)),
            "blocks_tier": draw(st.sampled_from(["fast", "bulk"])),
            "data_tier": draw(st.sampled_from(["fast", "bulk"])),
        }
        if not bitcoind["txindex"] and draw(st.booleans()):
            bitcoind["prune_mb"] = draw(st.integers(min_value=550, max_value=100_000))
        services["bitcoind"] = bitcoind
        if not bitcoind["prune_mb"] and draw(st.booleans()):
            services["fulcrum"] = {"data_tier": draw(st.sampled_from(["fast", "bulk"]))}
        if draw(st.booleans()):
            services["lnd"] = {"alias": draw(_alias)}
    if draw(st.booleans()):
        services["monerod"] = {"prune": draw(st.booleans()), "data_tier": draw(st.sampled_from(["fast", "bulk"]))}
    if draw(st.booleans()):
        services["tor"] = {}
    if draw(st.booleans()):
        services["kafka"] = {"retention_gb": draw(st.integers(min_value=1, max_value=100))}
    return services


@st.composite
def _host(draw, name: str) -> dict:
    return {
        "name": name,
        "system": draw(st.sampled_from(["x86_64-linux", "aarch64-linux"])),
        "address": draw(st.sampled_from(["10.0.3.8", "btc.example.org", "fd00::8"])),
        "cpus": draw(st.integers(min_value=1, max_value=64)),
        "memory_mb": 1_000_000,  # generous; capacity is tested on its own
        "storage": {"fast": draw(_storage_tier("fast")), "bulk": draw(_storage_tier("bulk"))},
        "services": draw(_services()),
    }


@st.composite
def valid_specs(draw) -> dict:
    names = draw(st.lists(_label, min_size=1, max_size=3, unique=True))
    keys = draw(st.lists(st.integers(min_value=0, max_value=255), min_size=1, max_size=3))
    operator = {"user": draw(st.sampled_from(["operator", "alice", "bcm_admin"])), "ssh_authorized_keys": [ssh_key(k, f"key{k}") for k in keys]}
    if draw(st.booleans()):
        operator["deploy_ssh_keys"] = [ssh_key(k + 1, f"deploy{k}") for k in keys[:1]]
    return {
        "version": 1,
        "cluster": {"name": draw(_label), "network": draw(st.sampled_from([n.value for n in Network]))},
        "operator": operator,
        "hosts": [draw(_host(name)) for name in names],
    }


assert set(DISK_GB) == set(MEMORY_MB) == set(Network)
