"""The cluster spec (TOML, version 1): typed model, loading and validation.

`load_spec` is the only way in. It returns a `ClusterSpec` whose every host has been checked
for shape and type (pydantic, here), then for consistency between fields and for capacity
(spec_checks.py, sizing.py). Every problem found is collected and raised together in one
`SpecError`, each with the field path a user reads in their TOML (`hosts[1].storage.bulk.size_gb`).
The models hold only what can be checked field by field: a rule between fields lives in
spec_checks.py, so that it runs even when some other field of the same table is wrong.
"""

from __future__ import annotations

import base64
import binascii
import enum
import ipaddress
import re
import struct
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from bcm_tools.errors import GenerateError, SpecError

SPEC_VERSION = 1

CLUSTER_NAME_RE = re.compile(r"^[a-z][a-z0-9-]*$")
# RFC 1123 host label. No dots and no slashes, so a host name is always one safe path component.
HOST_LABEL_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
UNIX_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
NFS_RE = re.compile(r"^(?P<server>[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:]+\]):(?P<export>/[^\s\"\\$]*)$")
DEVICE_RE = re.compile(r"^/dev/[A-Za-z0-9._:+@/=-]+$")
MOUNT_POINT_RE = re.compile(r"^(/[A-Za-z0-9._-]+)+$")
# A data tier mounted over one of these would hide part of the system.
RESERVED_MOUNT_POINTS = ("/nix", "/boot", "/etc", "/var", "/var/lib", "/run", "/proc", "/sys", "/dev", "/usr", "/tmp", "/home", "/root")
# An LXD server: the local unix socket, or HTTPS by IP or DNS name (LXD listens on 8443 by default).
LXD_REMOTE_RE = re.compile(r"^https://(?P<host>[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:(?P<port>[0-9]{1,5}))?/?$")
# LXD storage pool names: no slashes, no leading dot or dash.
LXD_POOL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
# An image alias or fingerprint on the server itself; `remote:alias` would name an image server.
LXD_IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_./+-]{0,255}$")
# SHA-256 of the server's certificate, as `lxc info` prints it (colons between bytes allowed).
FINGERPRINT_RE = re.compile(r"^[0-9a-f]{64}$")
RESERVED_MOUNT_TREES = ("/nix/", "/boot/", "/etc/", "/run/", "/proc/", "/sys/", "/dev/", "/usr/", "/tmp/")

SSH_KEY_TYPES = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "sk-ssh-ed25519@openssh.com",
    "sk-ecdsa-sha2-nistp256@openssh.com",
)


class Network(str, enum.Enum):
    mainnet = "mainnet"
    testnet4 = "testnet4"
    signet = "signet"
    regtest = "regtest"


class System(str, enum.Enum):
    x86_64_linux = "x86_64-linux"
    aarch64_linux = "aarch64-linux"


class Tier(str, enum.Enum):
    fast = "fast"
    bulk = "bulk"


class Filesystem(str, enum.Enum):
    ext4 = "ext4"
    xfs = "xfs"
    btrfs = "btrfs"


class InstanceType(str, enum.Enum):
    container = "container"
    virtual_machine = "virtual-machine"


Port = Annotated[int, Field(ge=1, le=65535)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, use_enum_values=False)


# Strict mode refuses strings for enums; these validators accept the TOML spelling.
def _enum_field(enum_type: type[enum.Enum]):
    def parse(value: Any) -> Any:
        if isinstance(value, str):
            try:
                return enum_type(value)
            except ValueError:
                choices = " | ".join(member.value for member in enum_type)
                raise ValueError(f"{value!r} is not one of {choices}") from None
        return value

    return parse


class Cluster(_Strict):
    name: Annotated[str, Field(max_length=31)]
    network: Network

    _network = field_validator("network", mode="before")(_enum_field(Network))

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not CLUSTER_NAME_RE.match(value):
            raise ValueError("must start with a lowercase letter and hold only a-z, 0-9 and '-'")
        return value


def check_ssh_public_key(line: str) -> str:
    """Checks an OpenSSH public key line (`TYPE BASE64 [COMMENT]`) and returns it normalised."""
    parts = line.strip().split(None, 2)
    if len(parts) < 2:
        raise ValueError("not an OpenSSH public key line (expected 'TYPE BASE64 [COMMENT]')")
    key_type, blob = parts[0], parts[1]
    if key_type not in SSH_KEY_TYPES:
        raise ValueError(f"unknown key type {key_type!r} (expected one of {', '.join(SSH_KEY_TYPES)})")
    try:
        raw = base64.b64decode(blob, validate=True)
        (length,) = struct.unpack(">I", raw[:4])
        embedded = raw[4 : 4 + length].decode("ascii")
    except (binascii.Error, struct.error, UnicodeDecodeError, ValueError):
        raise ValueError("key data is not valid base64 of an SSH key blob") from None
    if any(c in line for c in "\n\r"):
        raise ValueError("must be a single line")
    if embedded != key_type:
        raise ValueError(f"the line says {key_type} but its key data is of type {embedded or '(none)'}")
    if len(raw) <= 4 + length:
        raise ValueError("key data is truncated")
    return " ".join(parts)


SshPublicKey = Annotated[str, AfterValidator(check_ssh_public_key)]


class Operator(_Strict):
    user: str = "operator"
    ssh_authorized_keys: Annotated[list[SshPublicKey], Field(min_length=1)]
    # Keys that may log in as root to deploy (`nixos-rebuild --target-host root@HOST`). The
    # operator account itself stays unprivileged. Default: the operator's own keys.
    deploy_ssh_keys: list[SshPublicKey] | None = None

    @property
    def deploy_keys(self) -> list[str]:
        return self.ssh_authorized_keys if self.deploy_ssh_keys is None else self.deploy_ssh_keys

    @field_validator("user")
    @classmethod
    def _user(cls, value: str) -> str:
        if not UNIX_USER_RE.match(value):
            raise ValueError("must be a Unix user name: a-z, 0-9, '_' or '-', at most 32 characters")
        if value == "root":
            raise ValueError("the operator must not be root")
        return value


class StorageTier(_Strict):
    """One tier of storage: a local block device with a filesystem, or an NFS export."""

    device: str | None = None
    fs: Filesystem | None = None
    nfs: str | None = None
    size_gb: Annotated[int, Field(gt=0)]
    mount_point: str | None = None
    mount_options: list[str] = []

    _fs = field_validator("fs", mode="before")(_enum_field(Filesystem))

    @field_validator("device")
    @classmethod
    def _device(cls, value: str | None) -> str | None:
        if value is not None and not DEVICE_RE.match(value):
            raise ValueError("must be a path under /dev/, such as /dev/disk/by-id/nvme-...")
        return value

    @field_validator("nfs")
    @classmethod
    def _nfs(cls, value: str | None) -> str | None:
        if value is not None and not NFS_RE.match(value):
            raise ValueError("must be SERVER:/EXPORT, such as smith:/hdd/blockchain")
        return value

    @field_validator("mount_point")
    @classmethod
    def _mount_point(cls, value: str | None) -> str | None:
        if value is None:
            return value
        if not MOUNT_POINT_RE.match(value) or "/../" in value + "/" or "/./" in value + "/":
            raise ValueError("must be an absolute path of plain components, such as /srv/fast")
        if value in RESERVED_MOUNT_POINTS or value.startswith(RESERVED_MOUNT_TREES):
            raise ValueError(f"{value} is a system path; mount data tiers elsewhere, such as /srv/fast")
        return value

    @field_validator("mount_options")
    @classmethod
    def _mount_options(cls, values: list[str]) -> list[str]:
        for option in values:
            if not re.match(r"^[A-Za-z0-9_.,=:/@+-]+$", option):
                raise ValueError(f"mount option {option!r} holds characters a mount option cannot")
        return values


class Storage(_Strict):
    fast: StorageTier
    bulk: StorageTier | None = None


class _Service(_Strict):
    pass


class BitcoindService(_Service):
    prune_mb: Annotated[int, Field(ge=0)] = 0
    txindex: bool = False
    dbcache_mb: Annotated[int, Field(ge=4, le=65536)] = 450
    port: Port | None = None
    rpc_port: Port | None = None
    blocks_tier: Tier = Tier.bulk
    data_tier: Tier = Tier.fast

    _tiers = field_validator("blocks_tier", "data_tier", mode="before")(_enum_field(Tier))

    @field_validator("prune_mb")
    @classmethod
    def _prune(cls, value: int) -> int:
        # bitcoind refuses prune targets below 550 MiB; 1 means manual pruning, which we don't manage.
        if 0 < value < 550:
            raise ValueError("must be 0 (full node) or at least 550 (bitcoind's minimum prune target)")
        return value


class FulcrumService(_Service):
    port: Port | None = None
    ssl_port: Port | None = None
    data_tier: Tier = Tier.fast

    _tier = field_validator("data_tier", mode="before")(_enum_field(Tier))


class LndService(_Service):
    alias: Annotated[str, Field(max_length=32)] | None = None
    port: Port | None = None
    rpc_port: Port | None = None
    rest_port: Port | None = None
    data_tier: Tier = Tier.fast

    _tier = field_validator("data_tier", mode="before")(_enum_field(Tier))

    @field_validator("alias")
    @classmethod
    def _alias(cls, value: str | None) -> str | None:
        if value is not None and len(value.encode()) > 32:
            raise ValueError("LND aliases are at most 32 bytes")
        if value is not None and any(ord(c) < 32 for c in value):
            raise ValueError("must not contain control characters")
        return value


class MonerodService(_Service):
    prune: bool = False
    port: Port | None = None
    rpc_port: Port | None = None
    restricted_rpc_port: Port | None = None
    data_tier: Tier = Tier.bulk

    _tier = field_validator("data_tier", mode="before")(_enum_field(Tier))


class TorService(_Service):
    socks_port: Port | None = None


class KafkaService(_Service):
    port: Port | None = None
    retention_gb: Annotated[int, Field(gt=0)] = 20
    data_tier: Tier = Tier.fast

    _tier = field_validator("data_tier", mode="before")(_enum_field(Tier))


class Services(_Strict):
    bitcoind: BitcoindService | None = None
    fulcrum: FulcrumService | None = None
    lnd: LndService | None = None
    monerod: MonerodService | None = None
    tor: TorService | None = None
    kafka: KafkaService | None = None

    def enabled(self) -> list[str]:
        return [name for name in Services.model_fields if getattr(self, name) is not None]


# The modules' default ports, mirrored here only to detect clashes before deploying; the NixOS
# modules own the real defaults. bitcoind and monerod move with the network.
_MAINNET_PORTS: dict[tuple[str, str], int] = {
    ("bitcoind", "port"): 8333,
    ("bitcoind", "rpc_port"): 8332,
    ("fulcrum", "port"): 50001,
    ("fulcrum", "ssl_port"): 50002,
    ("lnd", "port"): 9735,
    ("lnd", "rpc_port"): 10009,
    ("lnd", "rest_port"): 8080,
    ("monerod", "port"): 18080,
    ("monerod", "rpc_port"): 18081,
    ("monerod", "restricted_rpc_port"): 18089,
    ("tor", "socks_port"): 9050,
    ("kafka", "port"): 9092,
}
_NETWORK_PORTS: dict[Network, dict[tuple[str, str], int]] = {
    Network.mainnet: {},
    Network.testnet4: {("bitcoind", "port"): 48333, ("bitcoind", "rpc_port"): 48332, ("monerod", "port"): 28080, ("monerod", "rpc_port"): 28081},
    Network.signet: {("bitcoind", "port"): 38333, ("bitcoind", "rpc_port"): 38332, ("monerod", "port"): 38080, ("monerod", "rpc_port"): 38081},
    Network.regtest: {("bitcoind", "port"): 18444, ("bitcoind", "rpc_port"): 18443},
}


def default_ports(network: Network) -> dict[tuple[str, str], int]:
    return {**_MAINNET_PORTS, **_NETWORK_PORTS[network]}


class Lxd(_Strict):
    """Where and how `bcm-tools provision` creates the host as an LXD instance."""

    remote: str = "local"
    # With an https remote: the client's certificate and key (paths, relative to the spec's
    # folder) and the SHA-256 fingerprint of the server's certificate.
    client_cert: str | None = None
    client_key: str | None = None
    fingerprint: str | None = None
    type: InstanceType = InstanceType.container
    image: str
    fast_pool: str
    bulk_pool: str | None = None

    _type = field_validator("type", mode="before")(_enum_field(InstanceType))

    @field_validator("remote")
    @classmethod
    def _remote(cls, value: str) -> str:
        if value == "local":
            return value
        match = LXD_REMOTE_RE.match(value)
        if not match:
            raise ValueError("must be 'local' (the unix socket) or https://HOST:PORT, such as https://10.0.3.2:8443")
        if match["port"] is not None and not 1 <= int(match["port"]) <= 65535:
            raise ValueError(f"port {match['port']} is not between 1 and 65535")
        return value.rstrip("/")

    @field_validator("fingerprint")
    @classmethod
    def _fingerprint(cls, value: str | None) -> str | None:
        if value is None:
            return value
        normalised = value.replace(":", "").lower()
        if not FINGERPRINT_RE.match(normalised):
            raise ValueError("must be the SHA-256 fingerprint of the server's certificate: 64 hex digits, as `lxc info` prints it")
        return normalised

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if ":" in value:
            raise ValueError("must be an alias or fingerprint of an image already on the LXD server, not REMOTE:IMAGE; bcm-tools never pulls images")
        if not LXD_IMAGE_RE.match(value):
            raise ValueError("must be an image alias or fingerprint: letters, digits and . _ / + -")
        return value

    @field_validator("fast_pool", "bulk_pool")
    @classmethod
    def _pool(cls, value: str | None) -> str | None:
        if value is not None and not LXD_POOL_RE.match(value):
            raise ValueError("must be an LXD storage pool name: letters, digits and _ . -, not starting with . or -")
        return value

    @field_validator("client_cert", "client_key")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or any(ord(c) < 32 for c in value)):
            raise ValueError("must be a file path, without control characters")
        return value


class Host(_Strict):
    name: str
    system: System = System.x86_64_linux
    address: str
    cpus: Annotated[int, Field(ge=1, le=1024)]
    memory_mb: Annotated[int, Field(ge=256)]
    storage: Storage
    services: Services = Services()
    lxd: Lxd | None = None

    _system = field_validator("system", mode="before")(_enum_field(System))

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not HOST_LABEL_RE.match(value):
            raise ValueError("must be an RFC 1123 host label: a-z, 0-9 and '-', 1-63 characters, not starting or ending with '-'")
        return value

    @field_validator("address")
    @classmethod
    def _address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
            return value
        except ValueError:
            pass
        labels = value.rstrip(".").split(".")
        if len(value) > 253 or not all(re.match(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$", label) for label in labels):
            raise ValueError("must be an IP address or a DNS name")
        return value

    def mount_point(self, tier: Tier) -> str:
        storage = self.storage.fast if tier is Tier.fast else self.storage.bulk
        default = f"/srv/{tier.value}"
        return (storage.mount_point if storage and storage.mount_point else None) or default


class ClusterSpec(_Strict):
    version: Literal[1]
    cluster: Cluster
    operator: Operator
    hosts: Annotated[list[Host], Field(min_length=1)]

    def host(self, name: str) -> Host:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)


# --- loading ---------------------------------------------------------------------------------


def field_path(loc: tuple[Any, ...]) -> str:
    """A pydantic location as the user reads it in the TOML: `hosts[1].storage.bulk.size_gb`."""
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path


def _message(error: dict[str, Any]) -> str:
    kind, msg = error["type"], error["msg"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required"
    if kind == "value_error":
        return msg.removeprefix("Value error, ")
    if kind == "literal_error" and error["loc"] == ("version",):
        return f"unsupported spec version {error['input']!r} (this bcm-tools reads version {SPEC_VERSION})"
    if kind.endswith("_type") or kind == "model_type":
        expected = {
            "int_type": "an integer",
            "bool_type": "true or false",
            "string_type": "a string",
            "list_type": "a list",
            "model_type": "a table",
            "float_type": "a number",
        }.get(kind, kind.removesuffix("_type"))
        return f"expected {expected}, got {type(error['input']).__name__} {error['input']!r}"
    return msg[0].lower() + msg[1:]


def _pydantic_problems(err: ValidationError) -> list[tuple[tuple[Any, ...], str]]:
    """Each problem's location and message."""
    # `X | None` fields validate as nullable, not as unions, so a location is the keys as written
    # (a capitalised unknown key included) with no member class names in between.
    return [(tuple(error["loc"]), _message(error)) for error in err.errors(include_url=False)]


def parse_spec(text: str, source: str = "spec") -> ClusterSpec:
    """Parses and validates spec text. Raises SpecError listing every problem: of shape and type
    first, then between fields and of capacity, with a note for each check held back."""
    from bcm_tools.spec_checks import PartialTable, check_spec

    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise SpecError([("", f"{source}: TOML syntax error: {err}")], ["nothing else is checked until the file parses"]) from None
    version = data.get("version")
    if version != SPEC_VERSION:
        # A spec of another version is checked against nothing else: its keys may mean other things.
        held_back = ["nothing else is checked: what the other keys mean depends on the version"]
        if version is None:
            raise SpecError([("version", f"required (this bcm-tools reads version {SPEC_VERSION})")], held_back)
        raise SpecError([("version", f"unsupported spec version {version!r} (this bcm-tools reads version {SPEC_VERSION})")], held_back)
    try:
        spec = ClusterSpec.model_validate(data)
    except ValidationError as err:
        located = _pydantic_problems(err)
        findings = check_spec(PartialTable(ClusterSpec, data, (), frozenset(loc for loc, _ in located)))
        problems = [(field_path(loc), message) for loc, message in located]
        raise SpecError(problems + findings.problems, findings.notes()) from None
    findings = check_spec(spec)
    if findings.problems:
        raise SpecError(findings.problems, findings.notes())
    return spec


def load_spec(path: Path) -> ClusterSpec:
    """Reads and validates the spec at `path`."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError([("", f"{path}: no such file")]) from None
    except (OSError, UnicodeDecodeError) as err:
        raise SpecError([("", f"{path}: cannot read: {err}")]) from None
    return parse_spec(text, source=str(path))


def add_operator_key(path: Path, key: str) -> ClusterSpec:
    """Adds `key` to the spec's `operator.ssh_authorized_keys`, keeping the file's comments and
    layout, and returns the updated spec. The file is replaced atomically and only if the result
    validates; a key already present changes nothing."""
    import os
    import tempfile

    import tomlkit

    spec = load_spec(path)
    key = check_ssh_public_key(key)
    if key in spec.operator.ssh_authorized_keys:
        return spec
    document = tomlkit.parse(path.read_text(encoding="utf-8"))
    document["operator"]["ssh_authorized_keys"].append(key)
    text = tomlkit.dumps(document)
    updated = parse_spec(text, str(path))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise GenerateError(f"{path}: cannot write: {err.strerror}") from None
    return updated
