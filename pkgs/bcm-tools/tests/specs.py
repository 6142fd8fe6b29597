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


# --- independent faults, for specs with several problems -------------------------------------


class Fault:
    """One thing wrong with a spec: how to put it in, which fields it touches, and what the
    validator must say. `expect` are the field paths of the problems it causes. `capacity` names
    the capacity checks it spoils (subject paths) and `spoils` the faults whose problem it makes
    meaningless, which are then held back with a note instead of reported."""

    def __init__(self, name: str, host: int | None, touches: set[str], apply, expect: list[str],
                 capacity: str | None = None, spoils: set[str] = frozenset()):
        self.name, self.host, self.touches, self.apply = name, host, touches, apply
        self.expect, self.capacity, self.spoils = expect, capacity, spoils

    def __repr__(self) -> str:
        return f"{self.name}@{self.host}" if self.host is not None else self.name


def two_host_spec() -> dict:
    """The base spec with a second host like the first: every service, disks and memory that fit."""
    spec = base_spec()
    second = copy.deepcopy(spec["hosts"][0])
    second["name"], second["address"] = "btc2", "10.0.3.9"
    second["services"]["lnd"]["alias"] = "btc2"
    spec["hosts"].append(second)
    return spec


def _set(*path, value):
    def apply(spec: dict) -> None:
        table = spec
        for key in path[:-1]:
            table = table[key]
        table[path[-1]] = value

    return apply


def _host_faults(h: int) -> list[Fault]:
    at = f"hosts[{h}]"
    host = ("hosts", h)
    storage, services = (*host, "storage"), (*host, "services")

    def pruned_with_txindex(spec: dict) -> None:
        spec["hosts"][h]["services"]["bitcoind"].update(prune_mb=2000, txindex=True)

    def same_mount_points(spec: dict) -> None:
        spec["hosts"][h]["storage"]["fast"]["mount_point"] = "/srv/data"
        spec["hosts"][h]["storage"]["bulk"]["mount_point"] = "/srv/data"

    def device_and_nfs(spec: dict) -> None:
        spec["hosts"][h]["storage"]["bulk"].update(device="/dev/disk/by-id/ata-bulk")

    def no_fs(spec: dict) -> None:
        del spec["hosts"][h]["storage"]["fast"]["fs"]

    def no_bulk(spec: dict) -> None:
        del spec["hosts"][h]["storage"]["bulk"]

    return [
        # shape and type
        Fault("cpus", h, {f"{at}.cpus"}, _set(*host, "cpus", value=0), [f"{at}.cpus"]),
        Fault("address", h, {f"{at}.address"}, _set(*host, "address", value="not an address!"), [f"{at}.address"]),
        Fault("system", h, {f"{at}.system"}, _set(*host, "system", value="riscv64-linux"), [f"{at}.system"]),
        Fault("unknown host key", h, {f"{at}.colour"}, _set(*host, "colour", value="red"), [f"{at}.colour"]),
        Fault("alias", h, {f"{at}.lnd.alias"}, _set(*services, "lnd", "alias", value="x" * 40), [f"{at}.services.lnd.alias"]),
        Fault("unknown tor key", h, {f"{at}.tor"}, _set(*services, "tor", "colour", value="red"), [f"{at}.services.tor.colour"]),
        Fault("fast size type", h, {f"{at}.fast.size_gb"}, _set(*storage, "fast", "size_gb", value="300"),
              [f"{at}.storage.fast.size_gb"]),
        Fault("monerod prune type", h, {f"{at}.monerod.prune"}, _set(*services, "monerod", "prune", value="yes"),
              [f"{at}.services.monerod.prune"], spoils={"bulk too small", "bulk missing"}),
        Fault("dbcache type", h, {f"{at}.bitcoind.dbcache_mb"}, _set(*services, "bitcoind", "dbcache_mb", value="lots"),
              [f"{at}.services.bitcoind.dbcache_mb"], spoils={"memory too small"}),
        # across fields
        Fault("pruned with txindex and fulcrum", h, {f"{at}.bitcoind.prune_mb", f"{at}.bitcoind.txindex"}, pruned_with_txindex,
              [f"{at}.services.bitcoind", f"{at}.services.bitcoind.prune_mb"]),
        Fault("port clash", h, {f"{at}.lnd.rest_port"}, _set(*services, "lnd", "rest_port", value=50001),
              [f"{at}.services.lnd.rest_port"]),
        Fault("same mount points", h, {f"{at}.fast.mount_point", f"{at}.bulk.mount_point"}, same_mount_points,
              [f"{at}.storage.bulk.mount_point"]),
        Fault("device and nfs", h, {f"{at}.bulk.source"}, device_and_nfs, [f"{at}.storage.bulk"]),
        Fault("device without fs", h, {f"{at}.fast.fs"}, no_fs, [f"{at}.storage.fast"]),
        # the LXD table: a bad value on its own, and a bulk pool for a bulk tier that gets no volume
        Fault("lxd image from a remote", h, {f"{at}.lxd"}, _set(*host, "lxd", value={"image": "images:nixos", "fast_pool": "fast"}),
              [f"{at}.lxd.image"]),
        Fault("lxd bulk pool for nfs", h, {f"{at}.lxd", f"{at}.bulk.source"},
              _set(*host, "lxd", value={"image": "nixos", "fast_pool": "fast", "bulk_pool": "bulk"}), [f"{at}.lxd.bulk_pool"]),
        # capacity
        Fault("fast too small", h, {f"{at}.fast.size_gb"}, _set(*storage, "fast", "size_gb", value=10),
              [f"{at}.storage.fast.size_gb"], capacity=f"{at}.storage.fast"),
        Fault("bulk too small", h, {f"{at}.bulk.size_gb"}, _set(*storage, "bulk", "size_gb", value=10),
              [f"{at}.storage.bulk.size_gb"], capacity=f"{at}.storage.bulk"),
        Fault("bulk missing", h, {f"{at}.bulk.size_gb", f"{at}.bulk.mount_point", f"{at}.bulk.source"}, no_bulk, [f"{at}.storage.bulk"], capacity=f"{at}.storage.bulk"),
        Fault("memory too small", h, {f"{at}.memory_mb"}, _set(*host, "memory_mb", value=1024), [f"{at}.memory_mb"],
              capacity=f"{at}.memory_mb"),
    ]


FAULTS: list[Fault] = [
    Fault("cluster name", None, {"cluster.name"}, _set("cluster", "name", value="Home!"), ["cluster.name"]),
    Fault("network", None, {"cluster.network"}, _set("cluster", "network", value="testnet3"), ["cluster.network"],
          spoils={"fast too small", "bulk too small", "bulk missing", "memory too small"}),
    Fault("root operator", None, {"operator.user"}, _set("operator", "user", value="root"), ["operator.user"]),
    Fault("bad ssh key", None, {"operator.keys"}, _set("operator", "ssh_authorized_keys", value=["ssh-ed25519 AAAA"]),
          ["operator.ssh_authorized_keys[0]"]),
    Fault("unknown top-level key", None, {"colour"}, _set("colour", value="red"), ["colour"]),
    Fault("duplicate host name", None, {"hosts[1].name"}, _set("hosts", 1, "name", value="btc1"), ["hosts[1].name"]),
    *_host_faults(0),
    *_host_faults(1),
]


def spoiled(fault: Fault, faults: list[Fault]) -> bool:
    """Whether another of `faults` makes `fault`'s problem meaningless (a cluster-wide fault
    spoils every host's; a host's fault only its own host's)."""
    return any(fault.name in other.spoils and other.host in (None, fault.host) for other in faults if other is not fault)


@st.composite
def faulty_specs(draw) -> tuple[dict, list[Fault]]:
    """The two-host base spec with 2-6 faults that touch disjoint fields."""
    chosen: list[Fault] = []
    touched: set[str] = set()
    for fault in draw(st.lists(st.sampled_from(FAULTS), min_size=2, max_size=6, unique_by=repr)):
        if fault.touches & touched:
            continue
        chosen.append(fault)
        touched |= fault.touches
    spec = two_host_spec()
    for fault in chosen:
        fault.apply(spec)
    return spec, chosen
