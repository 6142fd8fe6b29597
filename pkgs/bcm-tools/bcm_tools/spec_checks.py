"""Checks across fields and of capacity, on a spec that validated or on what validated of one.

pydantic finds every problem of shape and type, field by field, in one pass. What needs several
fields together (a service and the one it depends on, the ports of different services, what is
placed on a tier against its size) is checked here, afterwards, and also when some fields had
problems: a check reads the fields it needs and is held back only if one of those did not
validate. What was held back, and until what is fixed, is said in a note.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, TypeAdapter

from bcm_tools.sizing import memory_plan, memory_problem, tier_plan, tier_problem
from bcm_tools.spec import _MAINNET_PORTS, _NETWORK_PORTS, ClusterSpec, Tier, default_ports, field_path

Loc = tuple[str | int, ...]

# Default ports that move with the network: a clash with one of them needs a usable network.
_NETWORK_DEPENDENT_PORTS = {key for ports in _NETWORK_PORTS.values() for key in ports}


class Unusable(Exception):
    """A check read a field that did not validate (or a table that is not one)."""

    def __init__(self, loc: Loc):
        super().__init__(field_path(loc))
        self.loc = loc


class PartialTable:
    """A table of a spec that did not validate as a whole, read like the model it should be.

    A field that validated reads as the model would give it (defaults included), a nested table
    as another PartialTable, and a field with a problem raises Unusable. `errors` are the
    locations pydantic reported problems at.
    """

    __slots__ = ("_model", "_raw", "_loc", "_errors")

    def __init__(self, model: type[BaseModel], raw: Any, loc: Loc, errors: frozenset[Loc]):
        self._model, self._raw, self._loc, self._errors = model, raw, loc, errors

    def __getattr__(self, name: str) -> Any:
        fields = self._model.model_fields
        if name not in fields:
            method = getattr(self._model, name)  # such as Services.enabled or Host.mount_point
            if not callable(method):
                raise AttributeError(name)
            return types.MethodType(method, self)
        if not isinstance(self._raw, dict):
            raise Unusable(self._loc)
        loc = (*self._loc, name)
        nested = _model_of(fields[name].annotation)
        # A nested table with problems inside is still read; one that is itself wrong is not.
        if any(e == loc or (nested is None and e[: len(loc)] == loc) for e in self._errors):
            raise Unusable(loc)
        if name not in self._raw:
            return fields[name].get_default(call_default_factory=True)
        value = self._raw[name]
        if nested is not None:
            if isinstance(value, list):
                return [PartialTable(nested, item, (*loc, i), self._errors) for i, item in enumerate(value)]
            return PartialTable(nested, value, loc, self._errors)
        return _adapter(self._model, name).validate_python(value)

    def present(self, name: str) -> bool:
        """Whether the key is written in the table, whatever its value."""
        if not isinstance(self._raw, dict):
            raise Unusable(self._loc)
        return name in self._raw

    def as_written(self, name: str) -> Any:
        """The value as written, validated or not."""
        if not isinstance(self._raw, dict):
            raise Unusable(self._loc)
        return self._raw.get(name)


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The model class of a field typed `Model`, `Model | None` or `list[Model]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if get_origin(annotation) in (Union, types.UnionType, list):
        for arg in get_args(annotation):
            if (model := _model_of(arg)) is not None:
                return model
    return None


_ADAPTERS: dict[tuple[type[BaseModel], str], TypeAdapter[Any]] = {}


def _adapter(model: type[BaseModel], name: str) -> TypeAdapter[Any]:
    """Turns a value that already passed validation into what the model holds (enums from
    their TOML spelling, say); lax, because the strict checks have already been made."""
    key = (model, name)
    if key not in _ADAPTERS:
        _ADAPTERS[key] = TypeAdapter(model.model_fields[name].annotation)
    return _ADAPTERS[key]


def _present(table: Any, name: str) -> bool:
    if isinstance(table, PartialTable):
        return table.present(name)
    return getattr(table, name) is not None


def _as_written(table: Any, name: str) -> Any:
    if isinstance(table, PartialTable):
        return table.as_written(name)
    return getattr(table, name)


class Findings:
    """Problems found, and the checks held back with what they wait for."""

    def __init__(self) -> None:
        self.problems: list[tuple[str, str]] = []
        # cause -> check -> subjects, in the order met
        self._held_back: dict[str, dict[str, list[str]]] = {}

    def add(self, path: str, message: str) -> None:
        self.problems.append((path, message))

    @contextmanager
    def needs_usable(self, check: str, subject: str) -> Iterator[None]:
        """Runs one check of `subject`; if it reads a field that did not validate, it is held back."""
        try:
            yield
        except Unusable as gap:
            subjects = self._held_back.setdefault(field_path(gap.loc), {}).setdefault(check, [])
            if subject not in subjects:
                subjects.append(subject)

    def notes(self) -> list[str]:
        return [
            f"not checked until {cause} is fixed: " + "; ".join(f"{check} of {', '.join(subjects)}" for check, subjects in checks.items())
            for cause, checks in self._held_back.items()
        ]


def check_spec(spec: ClusterSpec | PartialTable) -> Findings:
    """Every cross-field problem, then every capacity problem, of every host."""
    findings = Findings()
    try:
        hosts = spec.hosts
    except Unusable:
        return findings  # no list of hosts: that is the problem pydantic reported
    first_index: dict[str, int] = {}
    for index, host in enumerate(hosts):
        _cross_field(findings, spec, index, host, first_index)
    for index, host in enumerate(hosts):
        _capacity(findings, spec, index, host)
    return findings


def _cross_field(findings: Findings, spec: Any, index: int, host: Any, first_index: dict[str, int]) -> None:
    at = f"hosts[{index}]"
    check = findings.needs_usable

    with check("uniqueness", f"{at}.name"):
        # Two hosts with the same name clash whether or not the name is a valid one.
        name = _as_written(host, "name")
        if isinstance(name, str):
            if name in first_index:
                findings.add(f"{at}.name", f"duplicate host name {name!r} (also hosts[{first_index[name]}])")
            else:
                first_index[name] = index

    for dependent in ("fulcrum", "lnd"):
        with check("the need for bitcoind", f"{at}.services.{dependent}"):
            services = host.services
            if _present(services, dependent) and not _present(services, "bitcoind"):
                findings.add(f"{at}.services.{dependent}", f"{dependent} needs bitcoind on the same host; add [hosts.services.bitcoind]")

    with check("txindex against pruning", f"{at}.services.bitcoind"):
        bitcoind = host.services.bitcoind
        if bitcoind is not None and _all(lambda: bitcoind.prune_mb, lambda: bitcoind.txindex):
            findings.add(f"{at}.services.bitcoind", "txindex needs every block; set prune_mb = 0 or txindex = false")

    with check("Fulcrum's need for an unpruned bitcoind", f"{at}.services.fulcrum"):
        services = host.services
        if _present(services, "fulcrum") and services.bitcoind is not None and services.bitcoind.prune_mb:
            findings.add(
                f"{at}.services.bitcoind.prune_mb",
                "Fulcrum indexes every block and needs an unpruned bitcoind; set prune_mb = 0 or remove fulcrum",
            )

    for tier in Tier:
        with check("where the storage is", f"{at}.storage.{tier.value}"):
            table = getattr(host.storage, tier.value)
            if table is not None:
                problem = _source_problem(*(_present(table, key) for key in ("device", "nfs", "fs")))
                if problem:
                    findings.add(f"{at}.storage.{tier.value}", problem)

    with check("mount points", f"{at}.storage.bulk.mount_point"):
        bulk = host.storage.bulk
        if bulk is not None and bulk.mount_point is not None and bulk.mount_point == host.storage.fast.mount_point:
            findings.add(f"{at}.storage.bulk.mount_point", "fast and bulk need different mount points")

    with check("the LXD remote's credentials", f"{at}.lxd"):
        lxd = host.lxd
        if lxd is not None:
            if lxd.remote == "local":
                for key in ("client_cert", "client_key", "fingerprint"):
                    if _present(lxd, key):
                        findings.add(f"{at}.lxd.{key}", "applies to an https remote, not to 'local' (the unix socket)")
            else:
                for key in ("client_cert", "client_key"):
                    if not _present(lxd, key):
                        findings.add(f"{at}.lxd.{key}", "required with an https remote: the client certificate and key that the LXD server trusts")

    with check("the LXD bulk pool", f"{at}.lxd.bulk_pool"):
        lxd = host.lxd
        if lxd is not None:
            problem = _bulk_pool_problem(host.storage.bulk, _present(lxd, "bulk_pool"))
            if problem:
                findings.add(f"{at}.lxd.bulk_pool", problem)

    used: dict[int, str] = {}
    for service, field in _MAINNET_PORTS:
        with check("port clashes", f"{at}.services.{service}.{field}"):
            services = host.services
            if not _present(services, service):
                continue
            port = getattr(getattr(services, service), field) or _default_port(spec, service, field)
            if port in used:
                findings.add(f"{at}.services.{service}.{field}", f"port {port} is already used by {used[port]}")
            else:
                used[port] = f"{service}.{field}"


def _all(*conditions: Callable[[], Any]) -> bool:
    """Whether every condition holds. One that is usable and false settles it, even when another
    cannot be read; only when none is false does an unusable one hold the check back."""
    gap: Unusable | None = None
    for condition in conditions:
        try:
            if not condition():
                return False
        except Unusable as unusable:
            gap = gap or unusable
    if gap is not None:
        raise gap
    return True


def _source_problem(device: bool, nfs: bool, fs: bool) -> str | None:
    if device and nfs:
        return "give exactly one of device (with fs) or nfs, not both"
    if not device and not nfs:
        return "give exactly one of device (with fs) or nfs"
    if device and not fs:
        return "fs is required with device (ext4 | xfs | btrfs)"
    if nfs and fs:
        return "fs applies to a device, not to an nfs export"
    return None


def _bulk_pool_problem(bulk: Any, bulk_pool: bool) -> str | None:
    """Whether `bulk_pool` fits the bulk tier: a local disk becomes a volume on that pool, an NFS
    export gets none. A tier with neither or both sources is already a problem of its own."""
    if bulk is None:
        return "there is no storage.bulk to place on it; remove bulk_pool" if bulk_pool else None
    device, nfs = _present(bulk, "device"), _present(bulk, "nfs")
    if device and not nfs and not bulk_pool:
        return "required: storage.bulk is a local disk, which provision creates as a volume on this pool"
    if nfs and not device and bulk_pool:
        return "storage.bulk is an NFS export, which gets no volume; remove bulk_pool"
    return None


def _default_port(spec: Any, service: str, field: str) -> int:
    if (service, field) in _NETWORK_DEPENDENT_PORTS:
        return default_ports(spec.cluster.network)[(service, field)]
    return _MAINNET_PORTS[(service, field)]


def _capacity(findings: Findings, spec: Any, index: int, host: Any) -> None:
    at = f"hosts[{index}]"
    for tier in Tier:
        with findings.needs_usable("capacity", f"{at}.storage.{tier.value}"):
            problem = tier_problem(tier_plan(spec.cluster.network, host, tier))
            if problem:
                findings.add(f"{at}.{problem[0]}", problem[1])
    with findings.needs_usable("capacity", f"{at}.memory_mb"):
        problem = memory_problem(memory_plan(spec.cluster.network, host))
        if problem:
            findings.add(f"{at}.{problem[0]}", problem[1])
