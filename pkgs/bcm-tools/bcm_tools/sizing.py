"""How much disk and memory each service needs, per network, and the capacity plan of a host.

The figures are planning estimates, not measurements of a node: what a service is expected to
occupy when fully synced at the date below, rounded up. They were taken on SIZES_TAKEN from
the sources named in SOURCES; where a source gave an older figure, it was carried forward at the
growth rate the source shows. Update them (and the date) when they age; the README shows them.
"""

from __future__ import annotations

from dataclasses import dataclass

from bcm_tools.spec import Host, Network, Tier

SIZES_TAKEN = "2026-11-22"

SOURCES = {
    "bitcoind": "Bitcoin Core's published disk requirement and the size of blocks/ and chainstate/ on "
    "public mainnet nodes (about 650 GB of blocks at the end of 2024, growing roughly 60-80 GB a "
    "year); test networks from their explorers' chain sizes. txindex is about 8% of the block files.",
    "fulcrum": "Fulcrum's release notes and node guides (MiniBolt, RaspiBlitz): the mainnet index was "
    "about 130-160 GB in 2025 and grows with the chain; migrations need temporary space on top.",
    "lnd": "The homelab plan this project grew from reserves 20 GB of NVMe for LND; channel.db of a "
    "small routing node stays well under that after compaction.",
    "monerod": "Monero's documentation: a full chain of about 230-250 GB in 2025, and pruning keeps "
    "roughly one third of it.",
    "kafka": "The retention the spec configures (retention_gb) plus 1 GB of segments and metadata.",
    "memory": "Resident set sizes after sync: bitcoind about 600 MB plus its dbcache, Fulcrum 1-2 GB, "
    "LND about 1 GB, monerod about 2 GB (more page cache while syncing), Tor 256 MB, Kafka a 1 GB "
    "heap plus overhead, and 1 GB for the operating system.",
}

# Disk, in GB, per network.
DISK_GB: dict[Network, dict[str, float]] = {
    Network.mainnet: {
        "bitcoind.blocks": 780,
        "bitcoind.chainstate": 13,
        "bitcoind.txindex": 65,
        "fulcrum.index": 170,
        "lnd.data": 20,
        "monerod.full": 260,
        "monerod.pruned": 95,
    },
    Network.testnet4: {
        "bitcoind.blocks": 60,
        "bitcoind.chainstate": 2,
        "bitcoind.txindex": 5,
        "fulcrum.index": 20,
        "lnd.data": 5,
        "monerod.full": 15,
        "monerod.pruned": 6,
    },
    Network.signet: {
        "bitcoind.blocks": 30,
        "bitcoind.chainstate": 1,
        "bitcoind.txindex": 3,
        "fulcrum.index": 10,
        "lnd.data": 5,
        "monerod.full": 20,
        "monerod.pruned": 8,
    },
    Network.regtest: {
        "bitcoind.blocks": 1,
        "bitcoind.chainstate": 0.5,
        "bitcoind.txindex": 0.5,
        "fulcrum.index": 1,
        "lnd.data": 1,
        "monerod.full": 1,
        "monerod.pruned": 1,
    },
}

# Memory, in MB, per network. bitcoind's dbcache from the spec comes on top of its base.
MEMORY_MB: dict[Network, dict[str, int]] = {
    Network.mainnet: {"os": 1024, "bitcoind": 600, "fulcrum": 2048, "lnd": 1024, "monerod": 2048, "tor": 256, "kafka": 1280},
    Network.testnet4: {"os": 1024, "bitcoind": 400, "fulcrum": 1024, "lnd": 512, "monerod": 1024, "tor": 256, "kafka": 1280},
    Network.signet: {"os": 1024, "bitcoind": 400, "fulcrum": 1024, "lnd": 512, "monerod": 1024, "tor": 256, "kafka": 1280},
    Network.regtest: {"os": 768, "bitcoind": 300, "fulcrum": 256, "lnd": 256, "monerod": 512, "tor": 128, "kafka": 1024},
}

# bitcoind may run a little past its prune target (undo data, the block being written).
PRUNE_MARGIN_GB = 2


@dataclass(frozen=True)
class Need:
    service: str
    what: str
    amount: float


@dataclass(frozen=True)
class TierPlan:
    tier: Tier
    needs: list[Need]
    size_gb: int | None  # None when the host has no such tier

    @property
    def total(self) -> float:
        return sum(n.amount for n in self.needs)

    @property
    def headroom(self) -> float | None:
        return None if self.size_gb is None else self.size_gb - self.total


@dataclass(frozen=True)
class MemoryPlan:
    needs: list[Need]
    memory_mb: int

    @property
    def total(self) -> int:
        return int(sum(n.amount for n in self.needs))

    @property
    def headroom(self) -> int:
        return self.memory_mb - self.total


@dataclass(frozen=True)
class HostPlan:
    host: str
    network: Network
    tiers: list[TierPlan]
    memory: MemoryPlan


def _tier_needs(network: Network, host: Host, tier: Tier) -> list[Need]:
    """What is placed on `tier`. A service's size is read only when it is placed there, so a
    spec whose other services are partly invalid can still be planned for this tier."""
    disk = DISK_GB[network]
    services = host.services
    needs: list[Need] = []
    if (b := services.bitcoind) is not None:
        if b.blocks_tier is tier:
            if b.prune_mb:
                blocks = min(disk["bitcoind.blocks"], b.prune_mb / 1024 + PRUNE_MARGIN_GB)
                needs.append(Need("bitcoind", f"block files (pruned to {b.prune_mb} MiB)", blocks))
            else:
                needs.append(Need("bitcoind", "block files", disk["bitcoind.blocks"]))
        if b.data_tier is tier:
            needs.append(Need("bitcoind", "chainstate", disk["bitcoind.chainstate"]))
            if b.txindex:
                needs.append(Need("bitcoind", "txindex", disk["bitcoind.txindex"]))
    if (f := services.fulcrum) is not None and f.data_tier is tier:
        needs.append(Need("fulcrum", "index", disk["fulcrum.index"]))
    if (l := services.lnd) is not None and l.data_tier is tier:
        needs.append(Need("lnd", "channel state", disk["lnd.data"]))
    if (m := services.monerod) is not None and m.data_tier is tier:
        key = "monerod.pruned" if m.prune else "monerod.full"
        needs.append(Need("monerod", "pruned chain" if m.prune else "chain", disk[key]))
    if (k := services.kafka) is not None and k.data_tier is tier:
        needs.append(Need("kafka", f"logs ({k.retention_gb} GB retention)", k.retention_gb + 1))
    return needs


def tier_plan(network: Network, host: Host, tier: Tier) -> TierPlan:
    storage = host.storage.fast if tier is Tier.fast else host.storage.bulk
    needs = _tier_needs(network, host, tier)
    return TierPlan(tier, needs, storage.size_gb if storage is not None else None)


def memory_plan(network: Network, host: Host) -> MemoryPlan:
    return MemoryPlan(_memory_needs(network, host), host.memory_mb)


def _memory_needs(network: Network, host: Host) -> list[Need]:
    memory = MEMORY_MB[network]
    needs = [Need("os", "operating system", memory["os"])]
    for name in host.services.enabled():
        amount = memory[name]
        what = "resident"
        if name == "bitcoind":
            amount += host.services.bitcoind.dbcache_mb
            what = f"resident + dbcache {host.services.bitcoind.dbcache_mb} MB"
        needs.append(Need(name, what, amount))
    return needs


def plan_host(network: Network, host: Host) -> HostPlan:
    """The capacity plan of one host: per tier and for memory, each need, the total and the headroom."""
    tiers = [tier_plan(network, host, tier) for tier in Tier]
    return HostPlan(host.name, network, tiers, memory_plan(network, host))


def _fmt(amount: float) -> str:
    return f"{amount:g}"


def tier_problem(plan: TierPlan) -> tuple[str, str] | None:
    """The field path (relative to the host) and message when a tier is missing or too small."""
    if not plan.needs:
        return None
    listed = ", ".join(f"{n.service} {n.what} {_fmt(n.amount)}" for n in plan.needs)
    if plan.size_gb is None:
        services = sorted({n.service for n in plan.needs})
        return (f"storage.{plan.tier.value}", f"required: {', '.join(services)} place data on {plan.tier.value} storage ({listed} GB)")
    if plan.total > plan.size_gb:
        return (
            f"storage.{plan.tier.value}.size_gb",
            f"{plan.size_gb} GB is too small for what is placed on it: needs {_fmt(plan.total)} GB ({listed})",
        )
    return None


def memory_problem(plan: MemoryPlan) -> tuple[str, str] | None:
    """The field path (relative to the host) and message when the host has too little memory."""
    if plan.total <= plan.memory_mb:
        return None
    listed = ", ".join(f"{n.service} {n.amount}" for n in plan.needs)
    return ("memory_mb", f"{plan.memory_mb} MB is too little: needs {plan.total} MB ({listed})")
