"""LND's data tied to the LND version that last ran on it.

NixOS switches LND's package atomically; LND's data does not follow. A new LND migrates its
channel database, and the older one then refuses it. This module keeps the two together:

- **Before a start** (`prepare_start`, the lnd unit's pre-start step, as the lnd user): when the
  LND about to start is another version than the one that last ran on the data, the data
  directory is copied to a snapshot beside it (a reflink copy where the file system can share
  extents, a plain copy otherwise, after checking there is room for it). When it is an *older*
  version, LND is not started: the refusal names the snapshot of that version's data and the
  command that restores it.
- **While LND runs** (`record_state`, after start and before stop): LND's own account of its
  channel state (each channel's commitment height, balances, pending and closed channels, the
  payment index, forwarded HTLCs) is recorded in the data directory and compared with the record
  each kept snapshot started from.
- **Rollback** (`rollback`, `bcm-tools lnd rollback` as root): stops LND, restores the snapshot of
  the version about to start, starts LND. It refuses when the channels may have moved since the
  snapshot: an old channel database holds revoked commitments, and a peer that sees one
  broadcast takes the channel's funds.

Why the records can prove "nothing changed": every value recorded only ever moves one way while
channel state changes (a commitment height grows with every update; channels open, close and
stay closed; the payment index and the forwarding log grow). So if a record taken *after* every
run of the newer LND equals one taken *before* the snapshot, nothing moved in between, whatever
happened between the records. That final record is taken by the unit's stop step while LND still
runs; what LND does between that call and its exit on SIGTERM is not seen (a window of the order
of a second, during which a peer could still complete an update).

Files: in the data directory `bcm-lnd-version.json` (the version that last ran, travels with the
data into snapshots) and `bcm-lnd-state.json` (the records); in the snapshots directory one
directory per snapshot with `<name>.json` beside it (written last: a snapshot without it is
incomplete), `refusal.json` (the last refusal, for `rollback`), `restore.json` while a restore
runs, and `replaced-*`: the data a rollback took out of place, kept until the operator removes it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import logging
import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Literal, Protocol

from pydantic import BaseModel, ValidationError

from bcm_tools.errors import BcmError, LndDataError, RollbackRefused, StartRefused
from bcm_tools.lnd import ChannelStateRecord

log = logging.getLogger("bcm_tools.lnd_rollback")

VERSION_FILE = "bcm-lnd-version.json"
STATE_FILE = "bcm-lnd-state.json"
REFUSAL_FILE = "refusal.json"
RESTORE_JOURNAL = "restore.json"
RESTORE_MARKER = ".bcm-restored-from"
# LND's logs are not state; leaving them out keeps snapshots small.
NOT_SNAPSHOTTED = frozenset({"logs"})
# linux/fs.h: FICLONE = _IOW(0x94, 9, int).
FICLONE = 0x40049409
# linux/fs.h: RENAME_EXCHANGE.
RENAME_EXCHANGE = 2
AT_FDCWD = -100
# The lnd unit's RestartPreventExitStatus: a refused start is not retried.
EXIT_REFUSED = StartRefused.exit_code
_SNAPSHOT_NAME = re.compile(r"^\d{8}T\d{6}Z-lnd-[0-9A-Za-z.+-]+$")
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)(?:-([0-9A-Za-z.-]+))?")


# --- versions -------------------------------------------------------------------------------


def parse_version_output(output: str) -> str:
    """The version in `lnd --version` output ("lnd version 0.20.1-beta commit=v0.20.1-beta")."""
    match = re.search(r"version\s+(\S+)", output)
    if not match:
        raise LndDataError(f"cannot read LND's version from its output: {output.strip()[:200]!r}")
    return match.group(1)


def installed_version(lnd_path: Path) -> str:
    """The version of an lnd binary, from its own `--version`."""
    try:
        done = subprocess.run([str(lnd_path), "--version"], capture_output=True, text=True, timeout=60)
    except OSError as err:
        raise LndDataError(f"cannot run {lnd_path} --version: {err.strerror}") from None
    if done.returncode != 0:
        raise LndDataError(f"{lnd_path} --version exited {done.returncode}: {(done.stderr or done.stdout).strip()[:200]}")
    return parse_version_output(done.stdout)


def version_key(version: str) -> tuple[int, int, int, int, int] | None:
    """An order for LND's version strings: major, minor, patch, then a release after its
    release candidates (0.20.1-beta.rc2 < 0.20.1-beta). None for a string in another form."""
    match = _VERSION.fullmatch(version.lstrip("v"))
    if not match:
        return None
    major, minor, patch, suffix = match.groups()
    rc = re.search(r"rc(\d+)", suffix or "")
    pre = (0, int(rc.group(1))) if rc else (1, 0)
    return (int(major), int(minor), int(patch), *pre)


def compare_versions(a: str, b: str) -> int | None:
    """-1, 0 or 1 as a is older than, the same as or newer than b; None when they cannot be
    ordered (either is in a form `version_key` does not know, or only the suffixes differ)."""
    if a == b:
        return 0
    ka, kb = version_key(a), version_key(b)
    if ka is None or kb is None or ka == kb:
        return None
    return -1 if ka < kb else 1


# --- records --------------------------------------------------------------------------------


class SystemGeneration(BaseModel):
    """The NixOS system a start happened under: /run/current-system and its profile generation."""

    system: str | None = None
    generation: int | None = None


class VersionRecord(BaseModel):
    """`bcm-lnd-version.json`: the LND that last started on this data."""

    version: str
    lnd: str | None = None
    started: datetime
    system: SystemGeneration = SystemGeneration()


class StateRecord(BaseModel):
    """One reading of LND's channel state. `final`: taken by the stop step with no start since."""

    taken: datetime
    version: str
    final: bool
    state: ChannelStateRecord


class SinceSnapshot(BaseModel):
    """What is known of the channels since a snapshot: the last record before it (the baseline)
    and every difference a later record showed."""

    baseline: StateRecord | None
    changes: list[str] = []


class StateFile(BaseModel):
    """`bcm-lnd-state.json`."""

    last: StateRecord | None = None
    since: dict[str, SinceSnapshot] = {}


class SnapshotMeta(BaseModel):
    """`<name>.json` beside a complete snapshot."""

    name: str
    version: str
    next_version: str
    taken: datetime
    method: Literal["reflink", "copy"]
    size: int
    data_dir: str
    system: SystemGeneration = SystemGeneration()


class Refusal(BaseModel):
    """`refusal.json`: why the last start was refused, for `rollback`."""

    refused: datetime
    installed: str
    ran: str
    snapshot: str | None
    line: str


# --- files ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where LND's data and its snapshots are. The snapshots must be on the data's file system."""

    data_dir: Path
    snapshots_dir: Path

    @classmethod
    def of(cls, data_dir: Path, snapshots_dir: Path | None = None) -> Layout:
        data_dir = Path(os.path.abspath(data_dir))
        return cls(data_dir, Path(os.path.abspath(snapshots_dir)) if snapshots_dir else default_snapshots_dir(data_dir))

    def snapshot(self, name: str) -> Path:
        if not _SNAPSHOT_NAME.match(name):
            raise LndDataError(f"{name!r} is not a snapshot name (YYYYMMDDTHHMMSSZ-lnd-VERSION)")
        return self.snapshots_dir / name

    def meta(self, name: str) -> Path:
        return self.snapshot(name).with_name(f"{name}.json")


def default_snapshots_dir(data_dir: Path) -> Path:
    """`<data dir>-snapshots`, the module's default (as the certificate's `<data dir>-tls`)."""
    return data_dir.with_name(f"{data_dir.name}-snapshots")


def _read_model(path: Path, model: type[BaseModel]) -> BaseModel | None:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise LndDataError(f"cannot read {path}: {err.strerror}") from None
    try:
        return model.model_validate_json(text)
    except ValidationError as err:
        first = err.errors()[0]
        raise LndDataError(f"{path} is damaged: {first['msg']} at {'.'.join(map(str, first['loc'])) or 'top level'}") from None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, text: str, like: Path | None = None) -> None:
    """Temporary file beside `path`, fsync, rename, fsync of the directory. With `like`, the file
    gets that directory's owner (root writing into the lnd user's directory)."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
        if like is not None and os.geteuid() == 0:
            owner = os.stat(like)
            os.fchown(fd, owner.st_uid, owner.st_gid)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _write_model(path: Path, value: BaseModel, like: Path | None = None) -> None:
    _write_atomic(path, value.model_dump_json(indent=1) + "\n", like)


def _remove_tree(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def read_state(data_dir: Path) -> StateFile:
    return _read_model(data_dir / STATE_FILE, StateFile) or StateFile()  # type: ignore[return-value]


def read_version(data_dir: Path) -> VersionRecord | None:
    return _read_model(data_dir / VERSION_FILE, VersionRecord)  # type: ignore[return-value]


def list_snapshots(layout: Layout) -> list[SnapshotMeta]:
    """Complete snapshots, oldest first."""
    if not layout.snapshots_dir.is_dir():
        return []
    found = []
    for meta_file in layout.snapshots_dir.glob("*.json"):
        name = meta_file.name[: -len(".json")]
        if _SNAPSHOT_NAME.match(name) and (layout.snapshots_dir / name).is_dir():
            meta = _read_model(meta_file, SnapshotMeta)
            if meta is not None:
                found.append(meta)
    return sorted(found, key=lambda m: (m.taken, m.name))  # type: ignore[attr-defined]


def current_generation(
    current_system: Path = Path("/run/current-system"), profiles: Path = Path("/nix/var/nix/profiles")
) -> SystemGeneration:
    """The running NixOS system and the number of the profile generation that points at it (none
    when it was started without becoming a generation, e.g. `nixos-rebuild test`)."""
    try:
        system = os.path.realpath(current_system, strict=True)
    except OSError:
        return SystemGeneration()
    generation = None
    for link in profiles.glob("system-*-link"):
        number = link.name[len("system-") : -len("-link")]
        if number.isdigit() and os.path.realpath(link) == system:
            generation = max(generation or 0, int(number))
    return SystemGeneration(system=system, generation=generation)


# --- copying --------------------------------------------------------------------------------


def _entries(root: Path, skip: frozenset[str] = frozenset()) -> Iterator[tuple[Path, os.stat_result]]:
    """Every path under root (root first, directories before their contents), without following
    symbolic links; `skip` names top-level entries left out."""
    yield root, os.lstat(root)
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        if here == root:
            dirnames[:] = [d for d in dirnames if d not in skip]
            filenames = [f for f in filenames if f not in skip]
        for name in sorted(dirnames) + sorted(filenames):
            path = here / name
            yield path, os.lstat(path)


def tree_size(root: Path, skip: frozenset[str] = frozenset()) -> int:
    return sum(st.st_size for _, st in _entries(root, skip) if stat.S_ISREG(st.st_mode))


def can_reflink(source_dir: Path, target_dir: Path) -> bool:
    """Whether a file of source_dir can be cloned into target_dir (FICLONE: btrfs, XFS with
    reflink, bcachefs; not ext4 or tmpfs). Tried on a real file, not guessed from the file system."""
    sample = next((p for p, st in _entries(source_dir, NOT_SNAPSHOTTED) if stat.S_ISREG(st.st_mode) and st.st_size), None)
    if sample is None:
        return False
    probe = target_dir / ".reflink-probe"
    try:
        with open(sample, "rb") as src, open(probe, "wb") as dst:
            fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
        return True
    except OSError:
        return False
    finally:
        probe.unlink(missing_ok=True)


def _copy_data(src_fd: int, dst_fd: int, size: int, reflink: bool) -> None:
    if reflink:
        try:
            fcntl.ioctl(dst_fd, FICLONE, src_fd)
            return
        except OSError as err:
            if err.errno == errno.ENOSPC:
                raise
    copied = 0
    use_range = True
    while copied < size:
        if use_range:
            try:
                n = os.copy_file_range(src_fd, dst_fd, min(size - copied, 1 << 30))
            except OSError as err:
                # Not offered here (old kernel, another file system, a seccomp filter): read and write.
                if err.errno in (errno.ENOSYS, errno.EXDEV, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM):
                    use_range = False
                    os.lseek(src_fd, copied, os.SEEK_SET)
                    os.lseek(dst_fd, copied, os.SEEK_SET)
                    continue
                raise
        else:
            chunk = os.read(src_fd, 1 << 20)
            n = len(chunk)
            view = memoryview(chunk)
            while view:
                view = view[os.write(dst_fd, view) :]
        if n == 0:
            break
        copied += n


def copy_tree(source: Path, target: Path, *, reflink: bool, skip: frozenset[str] = frozenset(), owners: bool = False) -> None:
    """Copies `source` to the new directory `target`: contents, modes, times and (with `owners`,
    as root) owners; symbolic links as links. Every file and directory is fsynced before this
    returns, so a rename of `target` afterwards publishes a complete tree."""
    directories: list[tuple[Path, os.stat_result]] = []
    for path, st in _entries(source, skip):
        dest = target / path.relative_to(source) if path != source else target
        if stat.S_ISDIR(st.st_mode):
            os.mkdir(dest, 0o700)
            directories.append((dest, st))
        elif stat.S_ISREG(st.st_mode):
            src_fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            try:
                dst_fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    _copy_data(src_fd, dst_fd, st.st_size, reflink)
                    if owners:
                        os.fchown(dst_fd, st.st_uid, st.st_gid)
                    os.fchmod(dst_fd, stat.S_IMODE(st.st_mode))
                    os.fsync(dst_fd)
                finally:
                    os.close(dst_fd)
            finally:
                os.close(src_fd)
            os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))
        elif stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(path), dest)
            if owners:
                os.lchown(dest, st.st_uid, st.st_gid)
        # Sockets, fifos and devices are not data; LND keeps none in its directory.
    for dest, st in reversed(directories):
        if owners:
            os.chown(dest, st.st_uid, st.st_gid)
        os.chmod(dest, stat.S_IMODE(st.st_mode))
        os.utime(dest, ns=(st.st_atime_ns, st.st_mtime_ns))
        _fsync_dir(dest)


def free_bytes(directory: Path) -> int:
    st = os.statvfs(directory)
    return st.f_bavail * st.f_frsize


def _mb(size: int) -> str:
    return f"{size / 1e6:.0f} MB" if size >= 1e6 else f"{size / 1e6:.1f} MB"


# --- before a start -------------------------------------------------------------------------


@dataclass
class StartDecision:
    """What the pre-start step decided: `refusal` is None when LND may start."""

    messages: list[str]
    refusal: str | None = None
    snapshot: SnapshotMeta | None = None


def _snapshot_name(at: datetime, version: str) -> str:
    safe = re.sub(r"[^0-9A-Za-z.+-]", "_", version)
    return f"{at.strftime('%Y%m%dT%H%M%SZ')}-lnd-{safe}"


def clean_incomplete(layout: Layout) -> list[str]:
    """Removes what a snapshot stopped part-way left: `.partial-*` directories and snapshot
    directories without their `.json`. Returns what was removed."""
    removed = []
    if not layout.snapshots_dir.is_dir():
        return removed
    for path in sorted(layout.snapshots_dir.iterdir()):
        incomplete = path.name.startswith(".partial-") or (
            _SNAPSHOT_NAME.match(path.name) and path.is_dir() and not path.with_name(f"{path.name}.json").exists()
        )
        if incomplete:
            _remove_tree(path)
            removed.append(str(path))
    return removed


def _refuse(
    layout: Layout, installed: str, ran: str, snapshot: str | None, line: str, now: datetime, messages: list[str]
) -> StartDecision:
    refusal = Refusal(refused=now, installed=installed, ran=ran, snapshot=snapshot, line=line)
    _write_model(layout.snapshots_dir / REFUSAL_FILE, refusal)
    return StartDecision(messages, refusal=line)


def _rollback_command(layout: Layout) -> str:
    command = f"bcm-tools lnd rollback --data-dir {layout.data_dir}"
    if layout.snapshots_dir != default_snapshots_dir(layout.data_dir):
        command += f" --snapshots-dir {layout.snapshots_dir}"
    return command


def has_lnd_data(data_dir: Path) -> bool:
    """Whether LND has run on this directory: it keeps its databases under data/."""
    return (data_dir / "data").is_dir()


def prepare_start(
    layout: Layout,
    installed: str,
    *,
    lnd_path: str | None = None,
    keep: int = 3,
    reserve: int = 0,
    system: SystemGeneration | None = None,
    now: datetime | None = None,
) -> StartDecision:
    """The lnd unit's pre-start step: snapshot before another version starts, refuse an older one.

    `installed` is the version of the LND about to start; `reserve` the bytes to leave free on
    the snapshots' file system after a plain copy."""
    now = now or datetime.now(timezone.utc)
    system = system or SystemGeneration()
    messages: list[str] = []
    layout.snapshots_dir.mkdir(mode=0o700, exist_ok=True)
    (layout.snapshots_dir / REFUSAL_FILE).unlink(missing_ok=True)
    if (layout.snapshots_dir / RESTORE_JOURNAL).exists():
        journal = _read_model(layout.snapshots_dir / RESTORE_JOURNAL, RestoreJournal)
        line = (
            f"a rollback of {layout.data_dir} was interrupted (the data is either the old or the restored "
            f"copy, never a mix); not starting LND until it is finished: run as root: {_rollback_command(layout)}"
        )
        return _refuse(layout, installed, installed, getattr(journal, "snapshot", None), line, now, messages)
    for removed in clean_incomplete(layout):
        messages.append(f"removed the incomplete snapshot {removed}")

    record = read_version(layout.data_dir)
    ran = record.version if record else None
    snapshot = None
    if not has_lnd_data(layout.data_dir):
        messages.append(f"no LND data in {layout.data_dir} yet; LND {installed} starts on it")
    elif ran == installed:
        pass
    elif ran is not None and compare_versions(installed, ran) == -1:
        matching = [m for m in list_snapshots(layout) if m.version == installed]
        if matching:
            chosen = matching[-1]
            line = (
                f"LND {installed} is older than LND {ran}, which last ran on {layout.data_dir} and may have "
                f"migrated its database; not starting it. The snapshot of {installed}'s data is "
                f"{layout.snapshot(chosen.name)} (taken {chosen.taken:%Y-%m-%d %H:%M} UTC); run as root: "
                f"{_rollback_command(layout)}"
            )
            return _refuse(layout, installed, ran, chosen.name, line, now, messages)
        line = (
            f"LND {installed} is older than LND {ran}, which last ran on {layout.data_dir} and may have "
            f"migrated its database; not starting it. No snapshot of {installed}'s data is kept in "
            f"{layout.snapshots_dir}: switch to a generation with LND {ran} or newer, or recover the funds "
            "from the static channel backup (bcm-tools backup restore)"
        )
        return _refuse(layout, installed, ran, None, line, now, messages)
    else:
        decision = _take_snapshot(layout, ran, installed, keep, reserve, system, now)
        if decision.refusal:
            return _refuse(layout, installed, ran or "unknown", None, decision.refusal, now, messages)
        messages += decision.messages
        snapshot = decision.snapshot

    state = read_state(layout.data_dir)
    if snapshot is not None:
        # Any record taken before the snapshot is a sound baseline: the values only grow, so a
        # later record equal to it proves nothing moved from the record to then.
        state.since[snapshot.name] = SinceSnapshot(baseline=state.last)
    if state.last is not None:
        # LND runs again after this record: only a record taken after this start is final.
        state.last.final = False
    kept = {m.name for m in list_snapshots(layout)}
    state.since = {name: entry for name, entry in state.since.items() if name in kept}
    if has_lnd_data(layout.data_dir) or state.last is not None:
        _write_model(layout.data_dir / STATE_FILE, state)
    _write_model(
        layout.data_dir / VERSION_FILE,
        VersionRecord(version=installed, lnd=lnd_path, started=now, system=system),
    )
    return StartDecision(messages, snapshot=snapshot)


def _take_snapshot(
    layout: Layout, ran: str | None, installed: str, keep: int, reserve: int, system: SystemGeneration, now: datetime
) -> StartDecision:
    version = ran or "unknown"
    name = _snapshot_name(now, version)
    target = layout.snapshot(name)
    partial = layout.snapshots_dir / f".partial-{name}"
    size = tree_size(layout.data_dir, NOT_SNAPSHOTTED)
    reflink = can_reflink(layout.data_dir, layout.snapshots_dir)
    needed = reserve + (0 if reflink else size)
    free = free_bytes(layout.snapshots_dir)
    why = f"LND {version} last ran on {layout.data_dir}" if ran else f"no record of the LND version that last ran on {layout.data_dir}"
    if free < needed:
        line = (
            f"not enough free space in {layout.snapshots_dir} for a snapshot of {layout.data_dir} before LND "
            f"{installed} starts ({why}): a copy needs {_mb(size)} and {_mb(reserve)} must stay free, "
            f"{_mb(free)} is free; not starting LND. Free space or lower bcm.lnd.snapshots.keep, then start lnd again"
        )
        return StartDecision([], refusal=line)
    started = datetime.now(timezone.utc)
    try:
        copy_tree(layout.data_dir, partial, reflink=reflink, skip=NOT_SNAPSHOTTED)
    except OSError as err:
        _remove_tree(partial)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            line = (
                f"the file system of {layout.snapshots_dir} filled up while copying {layout.data_dir} before LND "
                f"{installed} starts; the partial copy is removed and LND is not started. Free space, then start lnd again"
            )
            return StartDecision([], refusal=line)
        raise LndDataError(f"cannot snapshot {layout.data_dir} into {layout.snapshots_dir}: {err.strerror} ({err.filename})") from None
    os.rename(partial, target)
    _fsync_dir(layout.snapshots_dir)
    meta = SnapshotMeta(
        name=name,
        version=version,
        next_version=installed,
        taken=now,
        method="reflink" if reflink else "copy",
        size=size,
        data_dir=str(layout.data_dir),
        system=system,
    )
    _write_model(layout.meta(name), meta)
    seconds = (datetime.now(timezone.utc) - started).total_seconds()
    generation = f", NixOS generation {system.generation}" if system.generation is not None else ""
    messages = [
        f"{why}; LND {installed} starts now. Snapshot of the data: {target} "
        f"({meta.method}, {_mb(size)}, {seconds:.1f} s{generation})"
    ]
    if os.stat(layout.snapshots_dir).st_dev != os.stat(layout.data_dir).st_dev:
        messages.append(
            f"warning: {layout.snapshots_dir} is not on the file system of {layout.data_dir}: a rollback cannot "
            "swap a snapshot in from there; put the snapshots beside the data (bcm.lnd.snapshots.dir)"
        )
    snapshots = list_snapshots(layout)
    for old in snapshots[: max(0, len(snapshots) - keep)]:
        layout.meta(old.name).unlink()
        _fsync_dir(layout.snapshots_dir)
        _remove_tree(layout.snapshot(old.name))
        messages.append(f"removed the snapshot {layout.snapshot(old.name)} (keeping the newest {keep})")
    return StartDecision(messages, snapshot=meta)


# --- while LND runs -------------------------------------------------------------------------


def differences(before: ChannelStateRecord, after: ChannelStateRecord) -> list[str]:
    """Each way the channel state moved from `before` to `after`, in the operator's terms."""
    found: list[str] = []
    if before.pubkey != after.pubkey:
        found.append(f"the node's identity changed ({before.pubkey[:16]}… → {after.pubkey[:16]}…)")
    for point in sorted(set(before.channels) | set(after.channels)):
        old, new = before.channels.get(point), after.channels.get(point)
        if old is None:
            found.append(f"channel {point} opened")
        elif new is None:
            state = "closed" if point in after.closed else after.pending.get(point, "no longer listed")
            found.append(f"channel {point} {state}")
        elif new != old:
            moved = new.num_updates - old.num_updates
            detail = f"commitment height {old.num_updates} → {new.num_updates}"
            if new.local_balance != old.local_balance:
                detail += f", local balance {old.local_balance} → {new.local_balance} sat"
            found.append(f"channel {point}: {detail}" + (f" ({moved} update(s))" if moved > 0 else ""))
    for point in sorted(set(after.pending) - set(before.pending)):
        if point not in before.channels:
            found.append(f"channel {point} {after.pending[point]}")
    for point in sorted(set(after.closed) - set(before.closed)):
        if point not in before.channels:
            found.append(f"channel {point} closed")
    if after.payment_index != before.payment_index:
        found.append(f"payments made (payment index {before.payment_index} → {after.payment_index})")
    if after.forwards != before.forwards:
        found.append(f"{after.forwards - before.forwards} HTLC(s) forwarded")
    return found


def record_state(data_dir: Path, state: ChannelStateRecord, *, final: bool, now: datetime | None = None) -> list[str]:
    """Records LND's channel state (read by the caller from LND) in the data directory and notes,
    for each kept snapshot, how it differs from the snapshot's baseline. Returns the new notes."""
    now = now or datetime.now(timezone.utc)
    version = read_version(data_dir)
    record = StateRecord(taken=now, version=version.version if version else "unknown", final=final, state=state)
    current = read_state(data_dir)
    notes = []
    for name, entry in current.since.items():
        if entry.baseline is None:
            continue
        for change in differences(entry.baseline.state, state):
            if change not in entry.changes:
                entry.changes.append(change)
                notes.append(f"since snapshot {name}: {change}")
    current.last = record
    _write_model(data_dir / STATE_FILE, current)
    return notes


# --- rollback -------------------------------------------------------------------------------


class ServiceControl(Protocol):
    """The LND unit, as `rollback` stops and starts it (systemd on a host)."""

    def is_active(self) -> bool: ...

    def stop(self) -> None: ...

    def start(self) -> None: ...


def safety_reasons(layout: Layout, meta: SnapshotMeta) -> tuple[list[str], str | None]:
    """Why restoring `meta` may broadcast revoked state (empty: the records prove the channels
    have not moved since it was taken), and the node's alias as LND last reported it."""
    state = read_state(layout.data_dir)
    entry = state.since.get(meta.name)
    alias = state.last.state.alias if state.last else None
    if entry is None:
        return [f"{layout.data_dir} has no record of its channels since snapshot {meta.name} was taken"], alias
    if entry.baseline is None:
        return [f"LND's channel state was never recorded before snapshot {meta.name} was taken, so there is nothing to compare with"], alias
    reasons = list(entry.changes)
    last = state.last
    if last is None or last.taken <= meta.taken:
        reasons.append(
            f"LND {meta.next_version} ran on the data after the snapshot but never reported its channel state "
            "(it did not answer over RPC, or was stopped before it could)"
        )
    elif not last.final:
        reasons.append(
            f"LND {last.version}'s last run has no final record of its channel state (it was killed, crashed or stopped "
            f"outside its unit); the last record is from {last.taken:%Y-%m-%d %H:%M:%S} UTC and the channels may have moved since"
        )
    else:
        reasons += [d for d in differences(entry.baseline.state, last.state) if d not in reasons]
    return reasons, alias or entry.baseline.state.alias


@dataclass
class RollbackResult:
    snapshot: SnapshotMeta
    replaced: Path
    forced: bool
    reasons: list[str]


def _renameat2(old: Path, new: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), str(old))


class RestoreJournal(BaseModel):
    snapshot: str
    staging: str
    replaced: str


@dataclass
class Interrupted:
    """An interrupted restore, finished (`completed`: the snapshot is in place) or undone."""

    snapshot: str
    completed: bool
    replaced: Path

    def describe(self, layout: Layout) -> str:
        if self.completed:
            return f"finished the interrupted restore of {self.snapshot}; the replaced data is in {self.replaced}"
        return f"undid the interrupted restore of {self.snapshot}: {layout.data_dir} was never replaced"


def finish_interrupted_restore(layout: Layout) -> Interrupted | None:
    """Completes or undoes a restore that was stopped part-way (`restore.json` present): the data
    directory is then the old data or the whole snapshot, and the data taken out of place is kept.
    None when there was nothing to do."""
    journal_path = layout.snapshots_dir / RESTORE_JOURNAL
    journal = _read_model(journal_path, RestoreJournal)
    if journal is None:
        return None
    assert isinstance(journal, RestoreJournal)
    staging = layout.snapshots_dir / Path(journal.staging).name
    replaced = layout.snapshots_dir / Path(journal.replaced).name
    marker = layout.data_dir / RESTORE_MARKER
    if marker.exists():
        # Swapped in: the staging directory holds the data that was replaced.
        if staging.exists():
            os.rename(staging, replaced)
        marker.unlink()
        completed = True
    elif not layout.data_dir.exists() and (staging / RESTORE_MARKER).exists():
        # Between the two renames of a file system without RENAME_EXCHANGE.
        os.rename(staging, layout.data_dir)
        (layout.data_dir / RESTORE_MARKER).unlink()
        completed = True
    else:
        _remove_tree(staging)
        completed = False
    _fsync_dir(layout.data_dir.parent)
    journal_path.unlink()
    _fsync_dir(layout.snapshots_dir)
    return Interrupted(journal.snapshot, completed, replaced)


def restore_snapshot(
    layout: Layout,
    meta: SnapshotMeta,
    now: datetime | None = None,
    prepare: Callable[[Path], None] | None = None,
) -> Path:
    """Puts a copy of the snapshot in place of the data directory, atomically: at every moment
    the data directory is the old data or the whole copy (RENAME_EXCHANGE). `prepare` may change
    the copy before it goes in. The snapshot stays; the replaced data goes to `replaced-*` in the
    snapshots directory. Returns that path."""
    now = now or datetime.now(timezone.utc)
    source = layout.snapshot(meta.name)
    if os.stat(layout.snapshots_dir).st_dev != os.stat(layout.data_dir).st_dev:
        raise LndDataError(
            f"{layout.snapshots_dir} and {layout.data_dir} are on different file systems; a restore must swap "
            "them in one rename. Move the snapshots beside the data (bcm.lnd.snapshots.dir)"
        )
    size = tree_size(source)
    reflink = can_reflink(source, layout.snapshots_dir)
    free = free_bytes(layout.snapshots_dir)
    if not reflink and free < size:
        raise LndDataError(
            f"not enough free space in {layout.snapshots_dir} to restore {meta.name}: a copy needs {_mb(size)}, "
            f"{_mb(free)} is free (the snapshot itself is kept)"
        )
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    staging = layout.snapshots_dir / f".restore-{meta.name}"
    replaced = layout.snapshots_dir / f"replaced-{stamp}"
    _write_model(
        layout.snapshots_dir / RESTORE_JOURNAL,
        RestoreJournal(snapshot=meta.name, staging=staging.name, replaced=replaced.name),
        like=layout.snapshots_dir,
    )
    _remove_tree(staging)
    copy_tree(source, staging, reflink=reflink, owners=os.geteuid() == 0)
    if prepare is not None:
        prepare(staging)
    marker = staging / RESTORE_MARKER
    _write_atomic(marker, meta.name + "\n", like=staging)
    try:
        _renameat2(layout.data_dir, staging, RENAME_EXCHANGE)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
            raise
        # No RENAME_EXCHANGE here (some network file systems): two renames, the journal finishes
        # the second if a crash falls between them.
        os.rename(layout.data_dir, replaced)
        os.rename(staging, layout.data_dir)
    else:
        os.rename(staging, replaced)
    _fsync_dir(layout.data_dir.parent)
    _fsync_dir(layout.snapshots_dir)
    (layout.data_dir / RESTORE_MARKER).unlink()
    _fsync_dir(layout.data_dir)
    (layout.snapshots_dir / RESTORE_JOURNAL).unlink()
    _fsync_dir(layout.snapshots_dir)
    return replaced


def choose_snapshot(layout: Layout, name: str | None) -> SnapshotMeta:
    if name is None:
        refusal = _read_model(layout.snapshots_dir / REFUSAL_FILE, Refusal)
        if refusal is None:
            raise LndDataError(
                f"nothing to roll back: LND has not refused to start on {layout.data_dir}; "
                f"name a snapshot with --snapshot (bcm-tools lnd snapshots --data-dir {layout.data_dir} lists them)"
            )
        assert isinstance(refusal, Refusal)
        if refusal.snapshot is None:
            raise LndDataError(f"no snapshot to roll back to: {refusal.line}")
        name = refusal.snapshot
    meta = _read_model(layout.meta(name), SnapshotMeta)
    if meta is None or not layout.snapshot(name).is_dir():
        raise LndDataError(f"no complete snapshot {name} in {layout.snapshots_dir}")
    assert isinstance(meta, SnapshotMeta)
    return meta


def rollback(
    layout: Layout,
    service: ServiceControl,
    *,
    snapshot: str | None = None,
    force: bool = False,
    confirm: Callable[[str, list[str]], str] | None = None,
    now: datetime | None = None,
) -> RollbackResult:
    """Stops LND, restores the snapshot (the one the last refusal named, or `snapshot`) when the
    records prove the channels have not moved since it was taken, and starts LND again.

    With `force`, `confirm(alias, reasons)` must return the node's alias as LND reported it (the
    snapshot's name when LND never reported one) for the restore to go ahead anyway."""
    interrupted = finish_interrupted_restore(layout)
    if interrupted is not None:
        log.warning("%s", interrupted.describe(layout))
        if interrupted.completed:
            # The snapshot is in place already (it had passed the checks, or been forced): only
            # the start is left.
            meta = choose_snapshot(layout, interrupted.snapshot)
            (layout.snapshots_dir / REFUSAL_FILE).unlink(missing_ok=True)
            service.start()
            return RollbackResult(snapshot=meta, replaced=interrupted.replaced, forced=False, reasons=[])
        snapshot = snapshot or interrupted.snapshot
    meta = choose_snapshot(layout, snapshot)
    was_active = service.is_active()
    # Stopped first: the unit's stop step takes the final record of the channel state.
    service.stop()
    try:
        reasons, alias = safety_reasons(layout, meta)
        if reasons and not force:
            raise RollbackRefused(
                f"rollback to {meta.name} refused: the channels may have moved since it was taken, and restoring "
                "it could broadcast a revoked commitment, which lets the peers take the channels' funds",
                reasons,
                [
                    "recover from the static channel backup instead: restore the wallet from its seed, then "
                    "bcm-tools backup restore FILE (docs/backups.md); the peers close the channels and the funds return on chain",
                    "only if you are certain no channel moved: --force, then type the node's alias",
                ],
            )
        if reasons:
            word = alias or meta.name
            typed = confirm(word, reasons) if confirm else ""
            if typed.strip() != word:
                raise RollbackRefused(
                    f"rollback to {meta.name} not forced: the confirmation did not match the node's alias {word!r}",
                    reasons,
                    [],
                )
    except BcmError:
        if was_active:
            service.start()
        raise

    def mark_forced(copy: Path) -> None:
        # Forced past changes: the copy's older baselines no longer describe the channels, so a
        # later rollback to an older snapshot must not pass on them. Written before the swap.
        state = read_state(copy)
        for entry in state.since.values():
            entry.changes.append(f"a rollback to {meta.name} was forced past channel changes")
        _write_model(copy / STATE_FILE, state, like=copy)

    replaced = restore_snapshot(layout, meta, now, prepare=mark_forced if reasons else None)
    (layout.snapshots_dir / REFUSAL_FILE).unlink(missing_ok=True)
    service.start()
    return RollbackResult(snapshot=meta, replaced=replaced, forced=bool(reasons), reasons=reasons)


class Systemd:
    """The LND unit through systemctl."""

    def __init__(self, unit: str = "lnd.service", systemctl: str = "systemctl"):
        self.unit, self.systemctl = unit, systemctl

    def _run(self, *args: str, check: bool = True) -> int:
        try:
            done = subprocess.run([self.systemctl, *args, self.unit], capture_output=True, text=True)
        except OSError as err:
            raise LndDataError(f"cannot run {self.systemctl}: {err.strerror}") from None
        if check and done.returncode != 0:
            raise LndDataError(f"systemctl {args[0]} {self.unit} failed: {(done.stderr or done.stdout).strip()}")
        return done.returncode

    def is_active(self) -> bool:
        return self._run("is-active", "--quiet", check=False) == 0

    def stop(self) -> None:
        self._run("stop")

    def start(self) -> None:
        # The unit may refuse again (another version installed): say so, but the restore stands.
        self._run("start")

