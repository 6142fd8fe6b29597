"""Creating the cluster's hosts as LXD instances (`bcm-tools provision`).

For each host with a `[hosts.lxd]` table, `desired` reads what the spec asks for: an instance
with the host's CPUs and memory as limits, its root disk on the fast pool sized from
`storage.fast.size_gb`, and, for a bulk tier on a local disk, a custom volume on the bulk pool
sized from `storage.bulk.size_gb` attached at the bulk mount point that the host's `storage.nix`
uses (an NFS bulk tier gets none). `plan` compares it with what the server has: what is missing
is created, what differs is drift, changed only when asked (`apply`), and what cannot be changed
(a disk that would shrink, another instance type or root pool) is refused before anything is
done. Before creating, every pool, image and the room on each pool are checked, so that a run
fails before it makes anything; a failure after that removes what this run made for the host,
never what was there before.

Instances and volumes carry `user.bcm.cluster` and `user.bcm.host`; a name already taken by one
without them is refused, never adopted or changed.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from bcm_tools.errors import BcmError, DaemonError, LxdError, ProvisionError, UsageError
from bcm_tools.lxd import Image, Progress, Remote, Server, connect, parse_size
from bcm_tools.spec import ClusterSpec, InstanceType, Tier

OWNER_CLUSTER = "user.bcm.cluster"
OWNER_HOST = "user.bcm.host"
BULK_DEVICE = "bulk"
ROOT_DEVICE = "root"
PROFILES = ["default"]

# What a NixOS instance needs of LXD beyond the spec's limits, as nixpkgs' own LXD image
# module documents: a container runs systemd, which needs nesting; a VM boots NixOS' unsigned
# EFI loader, which Secure Boot would refuse.
TYPE_CONFIG = {
    InstanceType.container: {"security.nesting": "true"},
    InstanceType.virtual_machine: {"security.secureboot": "false"},
}


def _gb(size_gb: int) -> str:
    return f"{size_gb}GB"


def _show_bytes(size: int | None) -> str:
    if size is None:
        return "-"
    for unit, factor in (("TB", 10**12), ("GB", 10**9), ("MB", 10**6)):
        if size >= factor:
            return f"{size / factor:.3g}{unit}"
    return f"{size}B"


# --- what the spec asks for ------------------------------------------------------------------


@dataclass(frozen=True)
class BulkVolume:
    pool: str
    name: str
    size: str
    path: str

    @property
    def device(self) -> dict[str, str]:
        return {"type": "disk", "pool": self.pool, "source": self.name, "path": self.path}


@dataclass(frozen=True)
class Desired:
    host: str
    remote: Remote
    type: InstanceType
    image: str
    config: dict[str, str]
    root_pool: str
    root_size: str
    bulk: BulkVolume | None
    # Why there is no bulk volume, when there is none.
    no_bulk_because: str = ""

    @property
    def root_device(self) -> dict[str, str]:
        return {"type": "disk", "path": "/", "pool": self.root_pool, "size": self.root_size}


def desired(spec: ClusterSpec, index: int, base: Path) -> Desired:
    """What the spec asks of host `index`; relative certificate paths are read from `base`."""
    host = spec.hosts[index]
    lxd = host.lxd
    assert lxd is not None
    where = f"hosts[{index}].lxd"
    resolve = lambda path: None if path is None else (base / Path(path).expanduser())  # noqa: E731
    remote = Remote(lxd.remote, resolve(lxd.client_cert), resolve(lxd.client_key), lxd.fingerprint, where)
    config = {
        "limits.cpu": str(host.cpus),
        "limits.memory": f"{host.memory_mb}MiB",
        **TYPE_CONFIG[lxd.type],
        OWNER_CLUSTER: spec.cluster.name,
        OWNER_HOST: host.name,
    }
    bulk_tier = host.storage.bulk
    bulk, because = None, ""
    if bulk_tier is None:
        because = "the host has no bulk tier"
    elif bulk_tier.nfs is not None:
        because = f"storage.bulk is NFS ({bulk_tier.nfs}), mounted by the host itself"
    else:
        assert lxd.bulk_pool is not None  # the spec checks require it with a local bulk disk
        bulk = BulkVolume(lxd.bulk_pool, f"{host.name}-bulk", _gb(bulk_tier.size_gb), host.mount_point(Tier.bulk))
    return Desired(host.name, remote, lxd.type, lxd.image, config, lxd.fast_pool, _gb(host.storage.fast.size_gb), bulk, because)


# --- the plan --------------------------------------------------------------------------------


class Action(str, enum.Enum):
    create = "create"
    change = "change"
    refused = "refused"
    none = "-"


@dataclass(frozen=True)
class Row:
    host: str
    what: str
    now: str
    want: str
    action: Action


@dataclass(frozen=True)
class Claim:
    pool: str
    size: int
    what: str
    creating: bool


@dataclass
class HostPlan:
    desired: Desired
    server: Server
    image: Image | None = None
    create_instance: bool = False
    create_volume: bool = False
    # Changes to an existing instance: config keys and devices to set.
    config_changes: dict[str, str] = field(default_factory=dict)
    device_changes: dict[str, dict[str, str]] = field(default_factory=dict)
    # Whether a device change only attaches a volume this run creates (part of creating).
    attach_new_volume: bool = False
    grow_volume: str | None = None
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # Room this plan takes from pools: what is created, and what grows.
    claims: list[Claim] = field(default_factory=list)

    @property
    def host(self) -> str:
        return self.desired.host

    def row(self, what: str, now: str, want: str, action: Action) -> None:
        self.rows.append(Row(self.host, what, now, want, action))

    @property
    def creates(self) -> bool:
        return self.create_instance or self.create_volume

    @property
    def drift_devices(self) -> dict[str, dict[str, str]]:
        """Device changes that are drift: all of them but attaching a volume this run creates."""
        return {name: device for name, device in self.device_changes.items() if not (self.attach_new_volume and name == BULK_DEVICE)}

    @property
    def drifts(self) -> bool:
        return bool(self.config_changes or self.grow_volume or self.drift_devices)

    @property
    def refused(self) -> list[Row]:
        return [row for row in self.rows if row.action is Action.refused]


def plan_host(server: Server, want: Desired, cluster: str) -> HostPlan:
    """Compares one host's instance and volume with what the spec asks for."""
    plan = HostPlan(want, server)
    instance = server.instance(want.host)
    if instance is not None and _owner(instance.get("config", {})) != (cluster, want.host):
        plan.problems.append(
            f"{want.host}: instance {want.host} on {server.label} was not made by bcm-tools for cluster {cluster!r}; "
            f"remove or rename it, or adopt it with `lxc config set {want.host} {OWNER_CLUSTER}={cluster} {OWNER_HOST}={want.host}`"
        )
        return plan
    volume = None
    if want.bulk is not None:
        volume = server.volume(want.bulk.pool, want.bulk.name) if server.pool(want.bulk.pool) else None
        if volume is not None and _owner(volume.get("config", {})) != (cluster, want.host):
            plan.problems.append(
                f"{want.host}: volume {want.bulk.pool}/{want.bulk.name} on {server.label} was not made by bcm-tools for "
                f"cluster {cluster!r}; remove or rename it, or adopt it with "
                f"`lxc storage volume set {want.bulk.pool} {want.bulk.name} {OWNER_CLUSTER}={cluster}` (and {OWNER_HOST}={want.host})"
            )
            return plan
    if instance is None:
        _plan_new_instance(plan)
    else:
        _plan_existing_instance(plan, instance)
    _plan_volume(plan, volume, instance)
    return plan


def _owner(config: dict[str, str]) -> tuple[str | None, str | None]:
    return config.get(OWNER_CLUSTER), config.get(OWNER_HOST)


def _plan_new_instance(plan: HostPlan) -> None:
    want, server = plan.desired, plan.server
    plan.create_instance = True
    image = server.image(want.image)
    fast = server.pool(want.root_pool)
    if image is None:
        plan.problems.append(f"{want.host}: no image {want.image!r} on {server.label} (an alias or fingerprint of an image already there; bcm-tools never pulls one)")
    elif image.type != want.type.value:
        plan.problems.append(f"{want.host}: image {want.image!r} on {server.label} is a {image.type} image; type = {want.type.value!r} needs a {want.type.value} image")
    if fast is None:
        plan.problems.append(f"{want.host}: no storage pool {want.root_pool!r} on {server.label} (fast_pool)")
    plan.image = image
    shown_image = want.image + (f" ({image.fingerprint[:12]})" if image else "")
    plan.row("instance", "-", f"{want.type.value} from image {shown_image}, profile {', '.join(PROFILES)}", Action.create)
    for key, value in want.config.items():
        if not key.startswith("user."):
            plan.row(key, "-", value, Action.create)
    plan.row("root disk", "-", f"{want.root_size} on pool {want.root_pool}", Action.create)
    plan.claims.append(Claim(want.root_pool, parse_size(want.root_size) or 0, f"{want.host}'s root disk", creating=True))


def _plan_existing_instance(plan: HostPlan, instance: dict[str, Any]) -> None:
    want = plan.desired
    if instance.get("type") != want.type.value:
        plan.row("type", instance.get("type", "?"), want.type.value, Action.refused)
        plan.problems.append(f"{want.host}: the instance is a {instance.get('type')}, the spec says {want.type.value}; LXD cannot convert it")
    config = instance.get("config", {})
    for key, value in want.config.items():
        if key.startswith("user."):
            continue
        now = config.get(key)
        if not _same_setting(key, now, value):
            plan.config_changes[key] = value
            plan.row(key, now if now is not None else "(unset)", value, Action.change)
    root = instance.get("devices", {}).get(ROOT_DEVICE)
    if root is None:
        # The root disk comes from a profile: the spec's own takes its place.
        plan.device_changes[ROOT_DEVICE] = want.root_device
        plan.row("root disk", "from a profile", f"{want.root_size} on pool {want.root_pool}", Action.change)
        return
    if root.get("pool") != want.root_pool:
        plan.row("root disk pool", root.get("pool", "?"), want.root_pool, Action.refused)
        plan.problems.append(f"{want.host}: the root disk is on pool {root.get('pool')}, the spec says {want.root_pool}; moving it is not done here (`lxc move` can)")
        return
    now, new = parse_size(root.get("size")), parse_size(want.root_size)
    if now != new:
        if now is not None and new is not None and new < now:
            plan.row("root disk size", root.get("size", "-"), want.root_size, Action.refused)
            plan.problems.append(f"{want.host}: the root disk would shrink from {root.get('size')} to {want.root_size}; shrinking is refused (it can lose data)")
        else:
            plan.device_changes[ROOT_DEVICE] = {**root, "size": want.root_size}
            plan.row("root disk size", root.get("size") or "(no limit)", want.root_size, Action.change)
            plan.claims.append(Claim(want.root_pool, (new or 0) - (now or 0), f"{want.host}'s root disk", creating=False))


def _plan_volume(plan: HostPlan, volume: dict[str, Any] | None, instance: dict[str, Any] | None) -> None:
    want, server = plan.desired, plan.server
    devices = (instance or {}).get("devices", {})
    if want.bulk is None:
        if BULK_DEVICE in devices:
            plan.device_changes[BULK_DEVICE] = {}
            plan.row("bulk volume", _show_device(devices[BULK_DEVICE]), f"detached ({want.no_bulk_because}); the volume is kept", Action.change)
        elif instance is None:
            plan.row("bulk volume", "-", f"none: {want.no_bulk_because}", Action.none)
        return
    bulk = want.bulk
    if volume is None:
        if server.pool(bulk.pool) is None:
            plan.problems.append(f"{want.host}: no storage pool {bulk.pool!r} on {server.label} (bulk_pool)")
        plan.create_volume = True
        plan.row("bulk volume", "-", f"{bulk.pool}/{bulk.name}, {bulk.size}", Action.create)
        plan.claims.append(Claim(bulk.pool, parse_size(bulk.size) or 0, f"{want.host}'s bulk volume", creating=True))
    else:
        size = volume.get("config", {}).get("size")
        now, new = parse_size(size), parse_size(bulk.size)
        if now != new:
            if now is not None and new is not None and new < now:
                plan.row("bulk volume size", size or "-", bulk.size, Action.refused)
                plan.problems.append(f"{want.host}: volume {bulk.pool}/{bulk.name} would shrink from {size} to {bulk.size}; shrinking is refused (it can lose chain data)")
            else:
                plan.grow_volume = bulk.size
                plan.row("bulk volume size", size or "(no limit)", bulk.size, Action.change)
                plan.claims.append(Claim(bulk.pool, (new or 0) - (now or 0), f"{want.host}'s bulk volume", creating=False))
        elif instance is None:
            plan.row("bulk volume", f"{bulk.pool}/{bulk.name}, {size}", "kept from before: attached again", Action.none)
    if instance is None:
        plan.row("bulk mount", "-", f"{bulk.pool}/{bulk.name} at {bulk.path}", Action.create)
        return
    device = devices.get(BULK_DEVICE)
    if device != bulk.device:
        plan.device_changes[BULK_DEVICE] = bulk.device
        plan.attach_new_volume = device is None and volume is None
        action = Action.create if plan.attach_new_volume else Action.change
        plan.row("bulk mount", _show_device(device) if device else "-", f"{bulk.pool}/{bulk.name} at {bulk.path}", action)


def _show_device(device: dict[str, str]) -> str:
    return f"{device.get('pool', '?')}/{device.get('source', '?')} at {device.get('path', '?')}"


def _same_setting(key: str, now: str | None, want: str) -> bool:
    if now is None:
        return False
    if key == "limits.memory":
        return parse_size(now) is not None and parse_size(now) == parse_size(want)
    return now.strip().lower() == want.lower()


# --- carrying it out -------------------------------------------------------------------------


class Mode(str, enum.Enum):
    dry_run = "dry-run"  # change nothing
    create = "create"  # create what is missing; leave drift
    apply = "apply"  # create what is missing and change what drifted


class Reporter(Protocol):
    def plan(self, plans: list[HostPlan]) -> None: ...

    def step(self, text: str) -> Any:
        """A context manager around one step; what it yields takes progress text."""
        ...

    def line(self, text: str) -> None: ...


@dataclass
class Outcome:
    created: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    drift_left: list[str] = field(default_factory=list)


def select_hosts(spec: ClusterSpec, names: list[str]) -> list[int]:
    """Indexes of the hosts to provision: those named (each must exist and have [hosts.lxd]), or
    every host with an LXD table."""
    by_name = {host.name: index for index, host in enumerate(spec.hosts)}
    if names:
        unknown = [name for name in names if name not in by_name]
        if unknown:
            raise UsageError(f"--host {unknown[0]}: no such host in the spec (hosts: {', '.join(by_name)})")
        without = [name for name in names if spec.hosts[by_name[name]].lxd is None]
        if without:
            raise UsageError(f"--host {without[0]}: the host has no [hosts.lxd] table, so it is not provisioned on LXD")
        return [by_name[name] for name in dict.fromkeys(names)]
    chosen = [index for index, host in enumerate(spec.hosts) if host.lxd is not None]
    if not chosen:
        raise UsageError("no host in the spec has a [hosts.lxd] table; add one to the hosts to create on LXD")
    return chosen


def provision(
    spec: ClusterSpec,
    base: Path,
    hosts: list[str],
    mode: Mode,
    reporter: Reporter,
    accept_fingerprint: str | None = None,
    connector: Callable[[Remote, str | None], Server] = connect,
) -> Outcome:
    """Plans every chosen host, reports the plan, then creates and (with Mode.apply) changes.
    Raises before changing anything when a host's plan has problems or a pool lacks room."""
    wants = [desired(spec, index, base) for index in select_hosts(spec, hosts)]
    servers: dict[Remote, Server] = {}
    plans = []
    for want in wants:
        key = Remote(want.remote.endpoint, want.remote.client_cert, want.remote.client_key, want.remote.fingerprint)
        if key not in servers:
            servers[key] = connector(want.remote, accept_fingerprint)
        plans.append(plan_host(servers[key], want, spec.cluster.name))
    reporter.plan(plans)
    problems = [problem for plan in plans for problem in plan.problems]
    problems += _room_problems(plans, mode)
    if problems:
        error = ProvisionError if any(plan.refused for plan in plans) else LxdError
        raise error(problems, ["nothing was changed"])
    outcome = Outcome()
    if mode is Mode.dry_run:
        return outcome
    for plan in plans:
        did_create = plan.creates or plan.attach_new_volume
        if did_create:
            _create(plan, reporter)
            outcome.created.append(plan.host)
        if plan.drifts:
            if mode is Mode.apply:
                _change(plan, reporter)
                outcome.changed.append(plan.host)
            else:
                outcome.drift_left.append(plan.host)
        elif not did_create:
            outcome.unchanged.append(plan.host)
    return outcome


def _room_problems(plans: list[HostPlan], mode: Mode) -> list[str]:
    """Each pool must have room for what this run puts on it. A dry run checks everything it
    shows; a run without --apply only what it creates."""
    needed: dict[tuple[str, str], list[tuple[int, str]]] = {}
    servers: dict[str, Server] = {}
    for plan in plans:
        for claim in plan.claims:
            if mode is Mode.create and not claim.creating:
                continue
            needed.setdefault((plan.server.label, claim.pool), []).append((claim.size, claim.what))
            servers[plan.server.label] = plan.server
    problems = []
    for (label, name), claims in needed.items():
        pool = servers[label].pool(name)
        if pool is None:
            continue  # reported as a missing pool
        total = sum(size for size, _ in claims)
        if total > pool.free_bytes:
            wants = ", ".join(f"{_show_bytes(size)} for {what}" for size, what in claims)
            problems.append(f"storage pool {name!r} on {label} has {_show_bytes(pool.free_bytes)} free of {_show_bytes(pool.total_bytes)}; this run needs {_show_bytes(total)} ({wants})")
    return problems


def _create(plan: HostPlan, reporter: Reporter) -> None:
    """Creates what the host lacks; on any failure removes what this run made, and only that."""
    want, server = plan.desired, plan.server
    made: list[tuple[str, Callable[[Progress | None], None]]] = []
    try:
        if plan.create_volume and want.bulk is not None:
            bulk = want.bulk
            with reporter.step(f"creating volume {bulk.pool}/{bulk.name} ({bulk.size}) on {server.label}") as progress:
                server.create_volume(bulk.pool, bulk.name, {"size": bulk.size, OWNER_CLUSTER: want.config[OWNER_CLUSTER], OWNER_HOST: want.host}, progress)
            made.append((f"volume {bulk.pool}/{bulk.name}", lambda p, b=bulk: server.delete_volume(b.pool, b.name, p)))
        if plan.create_instance:
            assert plan.image is not None
            devices = {ROOT_DEVICE: want.root_device}
            if want.bulk is not None:
                devices[BULK_DEVICE] = want.bulk.device
            request = {
                "name": want.host,
                "type": want.type.value,
                "source": {"type": "image", "fingerprint": plan.image.fingerprint},
                "profiles": PROFILES,
                "config": want.config,
                "devices": devices,
            }
            with reporter.step(f"creating {want.type.value} {want.host} on {server.label} from image {want.image}") as progress:
                server.create_instance(request, progress)
            made.append((f"instance {want.host}", lambda p: server.delete_instance(want.host, p)))
            with reporter.step(f"starting {want.host}") as progress:
                server.set_state(want.host, "start", progress)
        elif plan.attach_new_volume and want.bulk is not None:
            with reporter.step(f"attaching volume {want.bulk.pool}/{want.bulk.name} to {want.host} at {want.bulk.path}") as progress:
                server.update_instance(want.host, {}, {BULK_DEVICE: want.bulk.device}, progress)
    except BaseException as err:
        note = _roll_back(made, reporter)
        if isinstance(err, LxdError):
            raise LxdError([f"{want.host}: {err.lines()[0]}{note}"]) from None
        if isinstance(err, DaemonError):
            raise DaemonError(f"{want.host}: {err}{note}") from None
        raise


def _roll_back(made: list[tuple[str, Callable[[Progress | None], None]]], reporter: Reporter) -> str:
    """Undoes what this run made, newest first; says what was removed and what could not be."""
    removed, left = [], []
    for what, undo in reversed(made):
        try:
            with reporter.step(f"removing {what} (made by this run)") as progress:
                undo(progress)
            removed.append(what)
        except BcmError as err:
            left.append(f"{what} ({err})")
    note = f"; removed what this run had made: {', '.join(removed)}" if removed else ""
    if left:
        note += f"; could not remove {', '.join(left)}"
    return note or "; this run had made nothing for it"


def _change(plan: HostPlan, reporter: Reporter) -> None:
    want, server = plan.desired, plan.server
    if plan.grow_volume and want.bulk is not None:
        with reporter.step(f"growing volume {want.bulk.pool}/{want.bulk.name} to {plan.grow_volume}") as progress:
            server.update_volume(want.bulk.pool, want.bulk.name, {"size": plan.grow_volume}, progress)
    devices = plan.drift_devices
    detach = [name for name, device in devices.items() if not device]
    devices = {name: device for name, device in devices.items() if device}
    if plan.config_changes or devices:
        keys = ", ".join([*plan.config_changes, *(f"device {name}" for name in devices)])
        with reporter.step(f"changing {want.host}: {keys}") as progress:
            server.update_instance(want.host, plan.config_changes, devices, progress)
    for name in detach:
        with reporter.step(f"detaching device {name} from {want.host} (the volume is kept)") as progress:
            server.remove_device(want.host, name, progress)


# --- destroying ------------------------------------------------------------------------------


@dataclass
class Destroyed:
    instance: str | None = None
    volume_deleted: str | None = None
    volume_kept: str | None = None


def destroy(
    spec: ClusterSpec,
    base: Path,
    host: str,
    delete_data: bool,
    reporter: Reporter,
    accept_fingerprint: str | None = None,
    connector: Callable[[Remote, str | None], Server] = connect,
) -> Destroyed:
    """Removes the host's instance; its bulk volume too only with `delete_data`. Only what
    bcm-tools made for this cluster and host is removed."""
    (index,) = select_hosts(spec, [host])
    want = desired(spec, index, base)
    server = connector(want.remote, accept_fingerprint)
    cluster = spec.cluster.name
    result = Destroyed()
    instance = server.instance(want.host)
    volume = server.volume(want.bulk.pool, want.bulk.name) if want.bulk and server.pool(want.bulk.pool) else None
    foreign = []
    if instance is not None and _owner(instance.get("config", {})) != (cluster, want.host):
        foreign.append(f"instance {want.host} on {server.label} was not made by bcm-tools for cluster {cluster!r}; it is left alone")
    if delete_data and volume is not None and want.bulk and _owner(volume.get("config", {})) != (cluster, want.host):
        foreign.append(f"volume {want.bulk.pool}/{want.bulk.name} on {server.label} was not made by bcm-tools for cluster {cluster!r}; it is left alone")
    if foreign:
        raise ProvisionError(foreign, ["nothing was removed"])
    if instance is not None:
        with reporter.step(f"deleting instance {want.host} on {server.label}") as progress:
            server.delete_instance(want.host, progress)
        result.instance = want.host
    if volume is not None and want.bulk is not None:
        name = f"{want.bulk.pool}/{want.bulk.name}"
        if delete_data:
            with reporter.step(f"deleting volume {name} and the chain data on it") as progress:
                server.delete_volume(want.bulk.pool, want.bulk.name, progress)
            result.volume_deleted = name
        else:
            result.volume_kept = name
    return result
