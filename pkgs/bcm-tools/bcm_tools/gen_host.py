"""Generating NixOS host configurations from a cluster spec.

Rendering is pure: `render_host` turns one validated host into file contents. Writing is a
transaction: every file is staged next to its target, then renamed into place; if anything fails,
the files already replaced are restored, so the output directory is left as it was.

A generated file carries a checksum of its own body in its header. A file whose body still
matches its checksum was not edited by hand and may be regenerated freely; any other file that
differs from what the spec produces is the user's, and is only overwritten with `force`.
"""

from __future__ import annotations

import enum
import hashlib
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import jinja2

from bcm_tools.errors import DriftError, GenerateError, UsageError
from bcm_tools.spec import ClusterSpec, Host, Tier

STATE_VERSION = "26.05"
CHECKSUM_RE = re.compile(r"^# bcm-tools-checksum: sha256:([0-9a-f]{64})\n", re.MULTILINE)


def nix_string(value: str) -> str:
    """A Nix string literal holding exactly `value`."""
    escaped = (
        value.replace("\\", "\\\\")
        .replace('"', '\\"')
        .replace("${", "\\${")
        .replace("\n", "\\n")
        .replace("\r", "\\r")
        .replace("\t", "\\t")
    )
    return f'"{escaped}"'


def nix_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return nix_string(value)
    raise TypeError(f"no Nix rendering for {type(value).__name__}")


_templates = jinja2.Environment(
    loader=jinja2.PackageLoader("bcm_tools", "templates"),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)
_templates.filters["nix"] = nix_value


# --- rendering -------------------------------------------------------------------------------


def _service_attrs(host: Host) -> list[tuple[str, list[tuple[str, str]]]]:
    """The `bcm.<service>` attributes of a host, in module option names. Only what the spec
    states is written: defaults (ports, tiers) live in the modules, in one place."""
    services = host.services
    data_dir = lambda tier, sub: nix_string(f"{host.mount_point(tier)}/{sub}")  # noqa: E731
    out: list[tuple[str, list[tuple[str, str]]]] = []

    def add(name: str, attrs: list[tuple[str, object]], extra: Iterable[tuple[str, str]] = ()) -> None:
        rendered = [("enable", "true")]
        rendered += [(key, nix_value(value)) for key, value in attrs if value is not None]
        rendered += list(extra)
        out.append((name, rendered))

    if (b := services.bitcoind) is not None:
        dirs = []
        if b.data_tier is not Tier.fast:
            dirs.append(("dataDir", data_dir(b.data_tier, "bitcoind")))
        if b.blocks_tier is not Tier.bulk:
            dirs.append(("blocksDir", data_dir(b.blocks_tier, "bitcoind/blocks")))
        add(
            "bitcoind",
            [("prune", b.prune_mb), ("txindex", b.txindex), ("dbcache", b.dbcache_mb), ("port", b.port), ("rpc.port", b.rpc_port)],
            dirs,
        )
    if (f := services.fulcrum) is not None:
        dirs = [("dataDir", data_dir(f.data_tier, "fulcrum"))] if f.data_tier is not Tier.fast else []
        add("fulcrum", [("port", f.port), ("sslPort", f.ssl_port)], dirs)
    if (l := services.lnd) is not None:
        dirs = [("dataDir", data_dir(l.data_tier, "lnd"))] if l.data_tier is not Tier.fast else []
        add("lnd", [("alias", l.alias), ("port", l.port), ("rpc.port", l.rpc_port), ("restPort", l.rest_port)], dirs)
    if (m := services.monerod) is not None:
        dirs = [("dataDir", data_dir(m.data_tier, "monerod"))] if m.data_tier is not Tier.bulk else []
        add("monerod", [("prune", m.prune), ("port", m.port), ("rpc.port", m.rpc_port), ("restrictedRpc.port", m.restricted_rpc_port)], dirs)
    if (t := services.tor) is not None:
        add("tor", [("socksPort", t.socks_port)])
    if (k := services.kafka) is not None:
        dirs = [("dataDir", data_dir(k.data_tier, "kafka"))] if k.data_tier is not Tier.fast else []
        add("kafka", [("port", k.port), ("retentionBytes", k.retention_gb * 1024**3)], dirs)
    return out


# Mount options per source. Each tier is `nofail`: a missing disk must not stop the machine
# from booting (the operator still gets SSH), while every bcm unit has RequiresMountsFor on its
# directories, so its services stay down instead of writing to the root filesystem.
_LOCAL_OPTIONS = {
    "ext4": ["noatime", "nofail", "x-systemd.device-timeout=30s", "errors=remount-ro"],
    "xfs": ["noatime", "nofail", "x-systemd.device-timeout=30s"],
    "btrfs": ["noatime", "nofail", "x-systemd.device-timeout=30s"],
}
# `hard`: an NFS hiccup blocks bitcoind's writes instead of failing them mid-block.
_NFS_OPTIONS = ["nfsvers=4.2", "hard", "noatime", "_netdev", "nofail", "timeo=600", "retrans=2", "x-systemd.mount-timeout=90s"]

_TIER_COMMENTS = {
    Tier.fast: "Fast tier (NVMe): bitcoind chainstate and indexes, LND, Fulcrum, Kafka.",
    Tier.bulk: "Bulk tier (HDD): bitcoind block files, the Monero chain.",
}


@dataclass(frozen=True)
class Mount:
    tier: str
    point: str
    device: str
    fs_type: str
    options: list[str]
    comment: str


def _mounts(host: Host) -> list[Mount]:
    mounts = []
    for tier, storage in ((Tier.fast, host.storage.fast), (Tier.bulk, host.storage.bulk)):
        if storage is None:
            continue
        if storage.nfs is not None:
            device, fs_type, options = storage.nfs, "nfs", list(_NFS_OPTIONS)
            comment = _TIER_COMMENTS[tier].replace(":", " over NFS:", 1)
        else:
            device, fs_type, options = storage.device, storage.fs.value, list(_LOCAL_OPTIONS[storage.fs.value])
            comment = _TIER_COMMENTS[tier]
        options += [o for o in storage.mount_options if o not in options]
        mounts.append(Mount(tier.value, host.mount_point(tier), device, fs_type, options, comment))
    return mounts


def _header(cluster: str, body: str) -> str:
    digest = hashlib.sha256(body.encode()).hexdigest()
    return (
        f"# Generated by `bcm-tools gen-host` from the cluster spec {nix_string(cluster)}.\n"
        "# Change the spec and run gen-host again; it will not overwrite this file once edited.\n"
        f"# bcm-tools-checksum: sha256:{digest}\n"
    )


class Policy(enum.Enum):
    generated = "generated"  # owned by gen-host; regenerated unless edited by hand
    placeholder = "placeholder"  # written once, when missing; the user's from then on


@dataclass(frozen=True)
class RenderedFile:
    relpath: str
    content: str
    policy: Policy


def render_host(spec: ClusterSpec, host: Host) -> list[RenderedFile]:
    """The files of one host's configuration directory."""
    host_body = _templates.get_template("host.nix.j2").render(
        host=host,
        network=spec.cluster.network,
        operator=spec.operator,
        services=_service_attrs(host),
        state_version=STATE_VERSION,
    )
    storage_body = _templates.get_template("storage.nix.j2").render(host_name=host.name, mounts=_mounts(host))
    hardware = _templates.get_template("hardware-configuration.nix.j2").render(host_name=host.name)
    cluster = spec.cluster.name
    return [
        RenderedFile(f"{host.name}/default.nix", _header(cluster, host_body) + host_body, Policy.generated),
        RenderedFile(f"{host.name}/storage.nix", _header(cluster, storage_body) + storage_body, Policy.generated),
        RenderedFile(f"{host.name}/hardware-configuration.nix", hardware, Policy.placeholder),
    ]


# --- comparing with what is on disk ------------------------------------------------------------


class State(enum.Enum):
    new = "new"
    unchanged = "unchanged"
    outdated = "outdated"  # generated earlier from another spec, not edited since
    edited = "edited"  # differs and was changed by hand (or was never ours)
    kept = "kept"  # a placeholder the user already has


@dataclass(frozen=True)
class FilePlan:
    file: RenderedFile
    path: Path
    state: State


def _unedited(content: str) -> bool:
    match = CHECKSUM_RE.search(content)
    if not match:
        return False
    body = content[match.end() :]
    return hashlib.sha256(body.encode()).hexdigest() == match.group(1)


def _safe_target(out: Path, relpath: str) -> Path:
    """The path for `relpath` under `out`, refusing anything that would leave it. Host names are
    single path components by validation; a symbolic link is the only way out, so none is followed."""
    assert not relpath.startswith("/") and ".." not in Path(relpath).parts, relpath
    target = out / relpath
    for part in (target.parent, target):
        if part.is_symlink():
            raise GenerateError(f"{part}: is a symbolic link; refusing to write through it")
    return target


def plan_files(spec: ClusterSpec, out: Path, host_names: list[str] | None = None) -> list[FilePlan]:
    """What generating `host_names` (default: all hosts) into `out` would do to each file."""
    names = [h.name for h in spec.hosts]
    unknown = [n for n in host_names or [] if n not in names]
    if unknown:
        raise UsageError(f"--host {unknown[0]}: no such host in cluster {spec.cluster.name!r} (hosts: {', '.join(names)})")
    selected = [h for h in spec.hosts if not host_names or h.name in host_names]
    if out.exists() and not out.is_dir():
        raise GenerateError(f"{out}: exists and is not a directory")
    plans = []
    for host in selected:
        for rendered in render_host(spec, host):
            path = _safe_target(out, rendered.relpath)
            if not path.exists():
                state = State.new
            elif not path.is_file():
                raise GenerateError(f"{path}: exists and is not a regular file")
            else:
                try:
                    current = path.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as err:
                    raise GenerateError(f"{path}: cannot read: {err}") from None
                if rendered.policy is Policy.placeholder:
                    state = State.kept
                elif current == rendered.content:
                    state = State.unchanged
                elif _unedited(current):
                    state = State.outdated
                else:
                    state = State.edited
            plans.append(FilePlan(rendered, path, state))
    return plans


def check(plans: list[FilePlan]) -> None:
    """Raises DriftError when the files on disk are not what the spec generates."""
    drifted = [f"{p.path} ({p.state.value})" for p in plans if p.state in (State.new, State.outdated, State.edited)]
    if drifted:
        raise DriftError("generated host files differ from the spec:", drifted)


# --- writing ---------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_durably(path: Path, content: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())


def _commit(changes: list[tuple[Path, str]]) -> None:
    """Replaces every path with its content, all or nothing."""
    tag = f"bcm-{os.getpid()}"
    created_dirs: list[Path] = []
    staged: list[tuple[Path, Path]] = []
    backups: dict[Path, Path] = {}
    replaced: list[Path] = []
    try:
        for path, _ in changes:
            missing = [d for d in (path.parent, *path.parent.parents) if not d.exists()]
            for directory in reversed(missing):
                directory.mkdir()
                created_dirs.append(directory)
            staged.append((path.with_name(f".{path.name}.{tag}.tmp"), path))
        # Each fsync waits for the disk; run concurrently, they share the filesystem's journal commits.
        with ThreadPoolExecutor(max_workers=16) as pool:
            list(pool.map(_write_durably, [tmp for tmp, _ in staged], [content for _, content in changes]))
        for tmp, path in staged:
            if path.exists():
                backup = path.with_name(f".{path.name}.{tag}.old")
                os.link(path, backup)
                backups[path] = backup
            os.replace(tmp, path)
            replaced.append(path)
        for directory in {path.parent for _, path in staged} | {d.parent for d in created_dirs}:
            _fsync_dir(directory)
    except OSError as err:
        for path in reversed(replaced):
            if path in backups:
                os.replace(backups.pop(path), path)
            else:
                path.unlink(missing_ok=True)
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        for directory in reversed(created_dirs):
            try:
                directory.rmdir()
            except OSError:
                pass
        raise GenerateError(f"cannot write {err.filename or 'host files'}: {err.strerror}; nothing was changed") from None
    finally:
        for backup in backups.values():
            backup.unlink(missing_ok=True)


def write(plans: list[FilePlan], force: bool = False) -> None:
    """Writes every new, outdated (and, with force, edited) file. Refuses, writing nothing, when a
    file edited by hand would be overwritten without force."""
    edited = [str(p.path) for p in plans if p.state is State.edited]
    if edited and not force:
        raise GenerateError("these files were edited by hand and differ from the spec (use --force to overwrite):", edited)
    writes = [(p.path, p.file.content) for p in plans if p.state in (State.new, State.outdated, State.edited)]
    if writes:
        _commit(writes)
