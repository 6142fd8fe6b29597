"""Continuous, encrypted, verified copies of LND's static channel backup (SCB).

A backup file is LND's packed multi-channel backup — the same bytes as LND's own
`channel.backup` — encrypted with age. So `age -d FILE > channel.backup` followed by
`lncli restorechanbackup --multi_file channel.backup` works without bcm-tools.

The watcher takes a backup at start and on every change LND reports. Each one is
checked by LND (`VerifyChanBackup`) before it is written, encrypted once, and then
written by one worker per target: under the target directory's lock, atomically
(temporary file, fsync, rename, fsync of the directory), named by node and sequence
number, read back, and — when the watcher holds an identity it may decrypt with —
decrypted and verified by LND again. A target that fails is retried
with backoff by its own worker; the others carry on. Only the newest backup is ever
pending for a target, so one that comes back catches up with a single write.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import select
import shlex
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, TYPE_CHECKING
from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field

from bcm_tools import age
from bcm_tools.errors import BackupError, BcmError, CredentialError, TargetError, UsageError
from bcm_tools.lnd import BackupStream, Endpoint, Lnd, MultiBackup

if TYPE_CHECKING:
    from bcm_tools.devices.base import KeyDevice

log = logging.getLogger("bcm_tools.backup")

PREFIX = "channel-backup-"
SUFFIX = ".age"
# Every writer on a target directory takes this lock (flock) for the whole of a store.
LOCK_NAME = ".channel-backup.lock"
# How long a store waits for another writer's lock, s.
LOCK_WAIT = 30
# channel-backup-NODE-SEQUENCE-TIME.age: NODE is the node's tag (node_tag), SEQUENCE counts that
# node's backups in this target (ten digits: names sort as numbers do), TIME is when LND reported
# the change (UTC, to the second).
_NAME = re.compile(r"^channel-backup-(?P<node>[0-9a-f]{16})-(?P<seq>[0-9]{10})-[0-9]{8}T[0-9]{6}Z\.age$")
_NODE = re.compile(r"^[0-9a-f]{16}$")


def node_tag(pubkey: str) -> str:
    """What a backup's name says of its node: the first 16 hex digits of the node's public key
    (`lncli getinfo` shows it as identity_pubkey)."""
    tag = pubkey[:16].lower()
    if len(pubkey) != 66 or not _NODE.match(tag):
        raise BackupError(f"{pubkey!r} is not a node public key")
    return tag


def backup_name(node: str, seq: int, at: float) -> str:
    """The name of `node`'s backup number `seq` in a target, of a change LND reported at `at`."""
    return f"{PREFIX}{node}-{seq:010d}-{_stamp(at)}{SUFFIX}"


def _stamp(at: float) -> str:
    return datetime.fromtimestamp(at, tz=timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def backup_names(names: Sequence[str], node: str | None = None) -> list[str]:
    """The backup files among `names` (of `node` only, when given) in the order each node wrote
    them: by node, then by sequence number. The time in a name plays no part: a clock set back
    must not make the newest backup look old."""
    found = []
    for name in names:
        match = _NAME.match(name)
        if match and (node is None or match["node"] == node):
            found.append((match["node"], int(match["seq"]), name))
    return [name for _, _, name in sorted(found)]


def _sequence(name: str) -> int:
    match = _NAME.match(name)
    assert match is not None
    return int(match["seq"])


def _check_node(node: str) -> None:
    if not _NODE.match(node):
        raise UsageError(f"{node!r} is not a node tag (16 hex digits)")


# --- targets ------------------------------------------------------------------------------


class Target(ABC):
    """Somewhere backups are kept, by one node or several. `store` is atomic and durable, or
    raises TargetError."""

    label: str

    @abstractmethod
    def store(self, node: str, data: bytes, keep: int, at: float) -> str:
        """Writes a new backup of `node` (its tag) atomically and durably, holding the target's
        lock: named with the next sequence number among that node's backups here and the time
        `at`. Checks what landed, then keeps that node's newest `keep` (the new one always among
        them) and removes that node's leftover temporary files. Other nodes' files are never
        touched. Returns the name."""

    @abstractmethod
    def names(self, node: str | None = None) -> list[str]:
        """Backup file names present (of `node` only, when given), oldest first (backup_names)."""

    @abstractmethod
    def read(self, name: str) -> bytes: ...

    def latest(self, node: str) -> str | None:
        """The newest backup of `node` here."""
        names = self.names(node)
        return names[-1] if names else None

    def close(self) -> None:
        """Lets go of any connection the target holds open."""

    def abort(self) -> None:
        """Cuts off the copy under way, from another thread, when the watcher stops and it takes
        too long. Where the copy is a few local system calls there is nothing to cut off."""


class LocalTarget(Target):
    """A directory on this machine (the bulk disk, say). It must exist: a missing directory is
    usually an unmounted disk, and writing into the bare mount point would hide that."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.label = f"local:{directory}"

    def _fail(self, what: str, err: OSError) -> TargetError:
        return TargetError(f"{self.label}: {what}: {err.strerror or err}")

    def store(self, node: str, data: bytes, keep: int, at: float) -> str:
        _check_node(node)
        if not self.directory.is_dir():
            raise TargetError(f"{self.label}: directory is missing (disk not mounted?)")
        with self._locked():
            try:
                entries = os.listdir(self.directory)
            except OSError as err:
                raise self._fail("listing", err) from None
            # Leftovers of this node's writer killed between write and rename. Nobody is writing
            # them now: they would hold the lock. Other nodes' are theirs to sweep.
            for entry in entries:
                if entry.startswith(f".{PREFIX}{node}-"):
                    _remove_quietly(self.directory / entry)
            mine = backup_names(entries, node)
            name = backup_name(node, _sequence(mine[-1]) + 1 if mine else 1, at)
            final = self.directory / name
            temporary = self.directory / f".{name}.tmp"
            try:
                # Made anew, never opened through a link: a symlink planted at this name since
                # the sweep makes the store fail, and the next attempt sweeps it.
                fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(temporary, final)
                _fsync_directory(self.directory)
            except OSError as err:
                if not isinstance(err, FileExistsError):
                    _remove_quietly(temporary)
                raise self._fail(f"writing {name}", err) from None
            if hashlib.sha256(self.read(name)).digest() != hashlib.sha256(data).digest():
                raise TargetError(f"{self.label}: {name} reads back different from what was written")
            # Sorted by sequence number, the new one last: it is never among those pruned.
            for old in [*mine, name][:-keep]:
                _remove_quietly(self.directory / old)
        return name

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Holds the directory's lock, shared with every other writer (local or over SSH)."""
        path = self.directory / LOCK_NAME
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as err:
            raise self._fail(f"opening {LOCK_NAME}", err) from None
        try:
            deadline = time.monotonic() + LOCK_WAIT
            pause = 0.001
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise TargetError(
                            f"{self.label}: another writer has held {LOCK_NAME} for {LOCK_WAIT} s"
                        ) from None
                    time.sleep(pause)
                    pause = min(pause * 2, 0.05)
            yield
        finally:
            os.close(fd)  # and with it the lock

    def names(self, node: str | None = None) -> list[str]:
        try:
            return backup_names(os.listdir(self.directory), node)
        except OSError as err:
            raise self._fail("listing", err) from None

    def read(self, name: str) -> bytes:
        try:
            return (self.directory / name).read_bytes()
        except OSError as err:
            raise self._fail(f"reading {name}", err) from None


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass


class SshOptions(BaseModel):
    """How to reach SSH targets: the key to log in with and the host keys to trust."""

    identity: Path | None = None
    known_hosts: Path | None = None
    connect_timeout: int = 5
    command_timeout: float = 60


# Runs on the remote host under its POSIX shell with coreutils and flock (util-linux); $1.. are
# the arguments: the directory, the node's tag, the time for the name, the upload's SHA-256 and
# how many of the node's backups to keep. It holds the directory's lock (LOCK_NAME, the one local
# writers take) from the first look at the directory to the last removal, so two writers never
# pick the same number or remove what the other is writing. The upload is checked against its
# SHA-256 before the rename: a truncated file must never replace a good one. The temporary file is
# this shell's own ($$), created by dd with O_CREAT|O_EXCL|O_NOFOLLOW: never written through a
# symlink planted at its name. Only this node's files and leftovers are touched, and the file just
# written (the highest number) is never among those pruned. The node's backups are found by a
# glob, which lists them in order (ten-digit numbers, the C locale): no process is started for
# that, since each costs a copy milliseconds.
_REMOTE_STORE = r"""
d=$1 node=$2 stamp=$3 sum=$4 keep=$5
case $node in ????????????????) ;; *) exit 2 ;; esac
case $node in *[!0-9a-f]*) exit 2 ;; esac
case $keep in '' | *[!0-9]*) exit 2 ;; esac
case $stamp in [0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]T[0-9][0-9][0-9][0-9][0-9][0-9]Z) ;; *) exit 2 ;; esac
[ -d "$d" ] || { echo "directory $d is missing" >&2; exit 4; }
command -v flock > /dev/null || { echo "flock (util-linux) is missing on the remote host" >&2; exit 9; }
umask 077
lock="$d/.channel-backup.lock"
[ ! -L "$lock" ] || { echo "$lock is a symbolic link" >&2; exit 9; }
exec 9>> "$lock" && flock -w 30 9 || { echo "another writer has held .channel-backup.lock for 30 s" >&2; exit 9; }
mine="channel-backup-$node-"
for p in "$d/.$mine"*; do
  if [ -e "$p" ] || [ -L "$p" ]; then rm -f -- "$p"; fi
done
set --
for p in "$d/$mine"[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]-[0-9][0-9][0-9][0-9][0-9][0-9][0-9][0-9]T[0-9][0-9][0-9][0-9][0-9][0-9]Z.age; do
  if [ -f "$p" ]; then set -- "$@" "$p"; last=$p; fi
done
n=0
if [ $# -gt 0 ]; then
  n=${last#"$d/$mine"} && n=${n%%-*}
  while :; do case $n in 0?*) n=${n#0} ;; *) break ;; esac; done
fi
f="$mine$(printf '%010d' $((n + 1)))-$stamp.age"
t="$d/.$f.$$.tmp"
dd of="$t" conv=excl oflag=nofollow bs=65536 status=none || { rm -f "$t"; exit 5; }
got=$(sha256sum < "$t") && [ "${got%% *}" = "$sum" ] || { rm -f "$t"; echo "upload arrived incomplete" >&2; exit 6; }
sync "$t" && mv -f "$t" "$d/$f" && sync "$d" || { rm -f "$t"; echo "could not make $f durable" >&2; exit 7; }
n=$(($# + 1 - keep))
for p; do
  [ "$n" -gt 0 ] || break
  rm -f -- "$p"
  n=$((n - 1))
done
echo "stored $f"
"""

# The other end of an SSH target's session, started once per connection with the target's
# directory as $1. It answers one request after another: a line `store NODE TIME SHA256 KEEP
# SIZE` followed by SIZE bytes, `names`, or `read NAME`; each answer is a line `STATUS OUT ERR`
# and then OUT bytes of output and ERR bytes of error messages. An upload that ends short (our
# side died) ends the session before anything is stored. `ready` carries a word only we know, so
# whatever the remote account's shell prints when it starts is skipped. The answer leaves in one
# write: as two, the second small TCP segment would wait for the acknowledgement of the first,
# which the other side delays by up to 40 ms.
_REMOTE_SESSION = r"""
# bcm-tools backup session
store() {
%s
}
d=$1
LC_ALL=C && export LC_ALL
w=$(mktemp -d) || exit 1
trap 'rm -rf "$w"' EXIT
trap 'exit 1' HUP INT PIPE TERM
echo "ready $2"
while IFS=' ' read -r op a1 a2 a3 a4 size; do
  case $op in
    store)
      head -c "$size" > "$w/in" && [ "$(wc -c < "$w/in")" -eq "$size" ] || exit 1
      ( store "$d" "$a1" "$a2" "$a3" "$a4" ) < "$w/in" > "$w/out" 2> "$w/err" ;;
    names) ( cd "$d" && ls -1 ) > "$w/out" 2> "$w/err" ;;
    read) cat -- "$d/$a1" > "$w/out" 2> "$w/err" ;;
    *) exit 1 ;;
  esac
  status=$?
  { printf '%%s %%s %%s\n' "$status" "$(wc -c < "$w/out")" "$(wc -c < "$w/err")"; cat "$w/out" "$w/err"; } > "$w/reply"
  cat "$w/reply"
done
""" % _REMOTE_STORE


class _Session:
    """One SSH connection to a target and the shell session at its other end (_REMOTE_SESSION),
    kept open for every request. Requests go one at a time; one that fails half-way leaves the
    session in an unknown state, so it is closed and the next request connects again. The session
    reads a pipe from this process: when this process lets go of it or dies, even by SIGKILL,
    the remote shell sees end of input and the connection ends with it."""

    def __init__(self, ssh_args: list[str], host: str, directory: str, label: str, options: SshOptions):
        self.ssh_args, self.host, self.directory, self.label, self.options = ssh_args, host, directory, label, options
        self.lock = threading.Lock()
        self.proc: subprocess.Popen[bytes] | None = None
        # ssh's own messages, in a file with no name: nothing is left behind, even after SIGKILL.
        self.log: IO[bytes] | None = None
        self.buffer = bytearray()

    def request(self, line: str, data: bytes = b"") -> tuple[int, bytes, bytes]:
        """Sends one request; returns the remote status, output and error messages."""
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self._connect()
            deadline = time.monotonic() + self.options.command_timeout
            try:
                self._write(line.encode() + b"\n" + data, deadline)
                status, out_size, err_size = (int(x) for x in self._read_line(deadline).split())
                out = self._read(out_size, deadline)
                err = self._read(err_size, deadline)
            except (OSError, ValueError, EOFError, TimeoutError) as err:
                self._stop()
                raise TargetError(f"{self.label}: {self._why(err)}") from None
            return status, out, err

    def _why(self, err: BaseException) -> str:
        if isinstance(err, TimeoutError):
            return f"no answer within {self.options.command_timeout:.0f} s"
        said = self._said()
        return f"connection lost ({said})" if said else "connection lost"

    def _said(self) -> str:
        """ssh's last message: what went wrong, as ssh puts it."""
        if self.log is None:
            return ""
        try:
            self.log.seek(0)
            text = self.log.read().decode(errors="replace")
        except OSError:
            return ""
        lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("@")]
        if "IDENTIFICATION HAS CHANGED" in text:
            return f"its host key is not the one in known_hosts ({lines[-1]})"
        if "host key is known for" in text:
            return f"known_hosts has no key for it ({lines[-1]})"
        return lines[-1] if lines else ""

    def _connect(self) -> None:
        self._stop()
        if self.log is not None:
            self.log.close()
        self.log = tempfile.TemporaryFile(prefix="bcm-ssh-")
        word = os.urandom(8).hex()
        script = "sh -c " + shlex.quote(_REMOTE_SESSION) + " sh " + shlex.quote(self.directory) + " " + word
        self.proc = subprocess.Popen(
            ["ssh", *self.ssh_args, "--", self.host, script],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        assert self.proc.stdin is not None
        os.set_blocking(self.proc.stdin.fileno(), False)
        self.buffer.clear()
        # ssh's own timeout covers the TCP connection; this one the login and the shell starting.
        timeout = self.options.connect_timeout + 5
        deadline = time.monotonic() + timeout
        try:
            while self._read_line(deadline) != f"ready {word}":
                pass
        except (OSError, ValueError, EOFError, TimeoutError) as err:
            self._stop()
            if isinstance(err, TimeoutError):
                raise TargetError(f"{self.label}: cannot connect: no answer within {timeout} s") from None
            raise TargetError(f"{self.label}: cannot connect: {self._said() or 'ssh exited'}") from None

    def _write(self, data: bytes, deadline: float) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        fd = self.proc.stdin.fileno()
        view = memoryview(data)
        while view:
            if not select.select([], [fd], [], max(0.0, deadline - time.monotonic()))[1]:
                raise TimeoutError
            view = view[os.write(fd, view) :]

    def _fill(self, deadline: float) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
            raise TimeoutError
        chunk = os.read(fd, 65536)
        if not chunk:
            # ssh is ending; once it has, its last words are in the log.
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            raise EOFError
        self.buffer += chunk

    def _read_line(self, deadline: float) -> str:
        while (end := self.buffer.find(b"\n")) < 0:
            self._fill(deadline)
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 1]
        return line.decode(errors="replace")

    def _read(self, size: int, deadline: float) -> bytes:
        while len(self.buffer) < size:
            self._fill(deadline)
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def _stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.stdin is not None:
            proc.stdin.close()  # end of input ends the remote session, then ssh
        try:
            proc.wait(timeout=2)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()

    def abort(self) -> None:
        """Ends the connection under a request in flight, without waiting for the request's lock:
        the request fails as if the connection were lost. The other end completes a copy it has
        whole, or drops it."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()

    def close(self) -> None:
        with self.lock:
            self._stop()
            if self.log is not None:
                self.log.close()
                self.log = None


class SshTarget(Target):
    """A directory on a host reached with OpenSSH (`ssh://[user@]host[:port]/path`).

    One connection carries every store, listing and read: a shell session kept open at the
    other end takes each request in turn. A copy then costs the remote commands it runs, where a
    connection of its own costs a key exchange, a login and the account's shell starting. The
    connection is made on first use and made again whenever it has gone (the network dropped,
    the host restarted); a request under way when it went fails, and the target's worker retries
    it. The host key is checked, against `known_hosts` when given, each time it connects.
    """

    def __init__(self, host: str, directory: str, user: str | None, port: int | None, options: SshOptions):
        self.host, self.directory, self.user, self.port, self.options = host, directory, user, port, options
        where = f"{user}@{host}" if user else host
        self.label = f"ssh://{where}{':' + str(port) if port else ''}{directory}"
        args = ["-o", "BatchMode=yes", "-o", f"ConnectTimeout={options.connect_timeout}"]
        # A connection that stops answering is dropped after 10-15 s, and made again at next use.
        args += ["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=2"]
        if port:
            args += ["-p", str(port)]
        if options.identity:
            args += ["-i", str(options.identity), "-o", "IdentitiesOnly=yes"]
        if options.known_hosts:
            args += ["-o", f"UserKnownHostsFile={options.known_hosts}", "-o", "StrictHostKeyChecking=yes"]
        if user:
            args += ["-l", user]
        self._session = _Session(args, host, directory, self.label, options)
        # The connection goes when the target does, at the latest when the interpreter exits.
        self._finalizer = weakref.finalize(self, self._session.close)

    def close(self) -> None:
        self._finalizer()

    def abort(self) -> None:
        self._session.abort()

    def _request(self, line: str, data: bytes = b"") -> bytes:
        status, out, err = self._session.request(line, data)
        if status != 0:
            raise TargetError(f"{self.label}: {' '.join(err.decode(errors='replace').split()) or f'exit status {status}'}")
        return out

    def store(self, node: str, data: bytes, keep: int, at: float) -> str:
        _check_node(node)
        reply = self._request(f"store {node} {_stamp(at)} {hashlib.sha256(data).hexdigest()} {int(keep)} {len(data)}", data)
        words = reply.decode(errors="replace").split()
        if len(words) != 2 or words[0] != "stored" or backup_names(words[1:], node) != words[1:]:
            raise TargetError(f"{self.label}: unexpected reply {reply[:120]!r}")
        return words[1]

    def names(self, node: str | None = None) -> list[str]:
        return backup_names(self._request("names").decode(errors="replace").splitlines(), node)

    def read(self, name: str) -> bytes:
        _check_name(name)
        return self._request(f"read {name}")


def _check_name(name: str) -> None:
    if not _NAME.match(name):
        raise UsageError(f"{name!r} is not a backup file name")


def parse_target(spec: str, ssh: SshOptions | None = None) -> Target:
    """`/abs/dir` or `ssh://[user@]host[:port]/abs/dir`."""
    if spec.startswith("ssh://"):
        url = urlsplit(spec)
        if not url.hostname or not url.path.startswith("/"):
            raise UsageError(f"SSH target {spec!r} must look like ssh://[user@]host[:port]/absolute/dir")
        try:
            port = url.port
        except ValueError:
            raise UsageError(f"SSH target {spec!r} has a bad port") from None
        return SshTarget(url.hostname, unquote(url.path), url.username, port, ssh or SshOptions())
    if "://" in spec:
        raise UsageError(f"target {spec!r}: only local directories and ssh:// are supported")
    if not spec.startswith("/"):
        raise UsageError(f"local target {spec!r} must be an absolute path")
    return LocalTarget(Path(spec))


# --- one-off verify and restore ----------------------------------------------------------


class BackupCheck(BaseModel):
    file: str
    node: str = Field(description="pubkey of the LND that accepted the backup")
    chan_points: list[str]


def open_backup(
    path: Path, identities: Sequence[str | os.PathLike[str]], device: KeyDevice | None = None
) -> bytes:
    """Reads and decrypts a backup file with identity files or the operator's key on `device`.

    The plaintext is LND's packed multi backup."""
    if not identities and device is None:
        raise UsageError("name an age identity (-i FILE) or the operator's device (--device) to decrypt with")
    try:
        data = path.read_bytes()
    except OSError as err:
        raise BackupError(f"cannot read {path}: {err.strerror}") from None
    if not data:
        raise BackupError(f"{path} is empty")
    if device is None:
        plain = age.decrypt(data, identities, source=str(path))
    else:
        # Imported here: the long-running watcher never needs the device code.
        from bcm_tools.keys.operator import operator_age_identity

        with age.identity_in_memory(operator_age_identity(device)) as operator:
            try:
                plain = age.decrypt(data, [*identities, operator], source=str(path))
            except CredentialError as err:
                if "not encrypted to" not in str(err):
                    raise
                raise CredentialError(
                    f"{path} is not encrypted to the operator key of {device.label} (wrong key?)"
                ) from None
    if not plain:
        raise BackupError(f"{path} decrypts to nothing: not a channel backup")
    return plain


def verify_file(
    path: Path, identities: Sequence[str | os.PathLike[str]], endpoint: Endpoint, device: KeyDevice | None = None
) -> BackupCheck:
    plain = open_backup(path, identities, device)
    with Lnd(endpoint) as lnd:
        node = lnd.get_info().pubkey
        chan_points = lnd.verify_multi(plain)
    return BackupCheck(file=str(path), node=node, chan_points=chan_points)


def restore_file(
    path: Path, identities: Sequence[str | os.PathLike[str]], endpoint: Endpoint, device: KeyDevice | None = None
) -> BackupCheck:
    """Verifies, then hands the backup to LND's recovery (the wallet must be restored from seed)."""
    plain = open_backup(path, identities, device)
    with Lnd(endpoint) as lnd:
        node = lnd.get_info().pubkey
        chan_points = lnd.verify_multi(plain)
        lnd.restore_multi(plain)
    return BackupCheck(file=str(path), node=node, chan_points=chan_points)


# --- the watcher --------------------------------------------------------------------------


class WatchConfig(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    recipients: list[str] = Field(min_length=1)
    targets: list[str] = Field(min_length=1)
    keep: int = Field(default=30, ge=1)
    ssh: SshOptions = SshOptions()
    metrics: Path | None = Field(default=None, description="Prometheus textfile to (re)write")
    journal: Path | None = Field(default=None, description="JSON lines, one per durable copy")
    check_identity: Path | None = Field(
        default=None, description="age identity the watcher may decrypt with, to verify each copy with LND"
    )
    retry_initial: float = 1.0
    retry_max: float = 60.0
    stop_grace: float = Field(
        default=10.0, description="on stop, how long copies in flight may take before they are cut off, s"
    )


class _Pending(BaseModel):
    pubkey: str  # of the node whose backup this is
    data: bytes
    chan_points: list[str]
    changed_at: float  # when the watcher got this state from LND


class _TargetState:
    def __init__(self) -> None:
        self.last_success: float | None = None
        self.channels: int | None = None
        self.failures = 0
        self.behind = False


class _Metrics:
    """Prometheus textfile metrics, rewritten atomically after each change."""

    def __init__(self, path: Path | None, labels: list[str]):
        self.path = path
        self.lock = threading.Lock()
        self.targets = {label: _TargetState() for label in labels}
        self.lnd_channels: int | None = None
        self.lnd_failures = 0
        self.journal_failures = 0
        self.last_change: float | None = None

    def write(self) -> None:
        if self.path is None:
            return
        with self.lock:
            lines = _metric_lines(self)
            temporary = self.path.with_name(f".{self.path.name}.tmp")
            try:
                temporary.write_text("".join(lines))
                # Readable by the watcher's group, whatever the umask (the unit's is 0077): the
                # node exporter reads it as a member of that group (bcm.monitoring).
                os.chmod(temporary, 0o640)
                os.replace(temporary, self.path)
            except OSError as err:
                log.warning("cannot write metrics to %s: %s", self.path, err.strerror)


def _metric_lines(m: _Metrics) -> list[str]:
    def esc(label: str) -> str:
        return label.replace("\\", "\\\\").replace('"', '\\"')

    out: list[str] = []

    def family(name: str, kind: str, help_: str, values: list[tuple[str | None, float | None]]) -> None:
        out.append(f"# HELP {name} {help_}\n# TYPE {name} {kind}\n")
        for label, value in values:
            if value is None:
                continue
            labels = f'{{target="{esc(label)}"}}' if label is not None else ""
            out.append(f"{name}{labels} {value:.6f}\n" if isinstance(value, float) else f"{name}{labels} {value}\n")

    t = m.targets
    family(
        "bcm_lnd_backup_last_success_timestamp_seconds",
        "gauge",
        "Unix time the newest backup became durable and verified in this target.",
        [(k, v.last_success) for k, v in t.items()],
    )
    family(
        "bcm_lnd_backup_channels",
        "gauge",
        "Channels covered by the newest good backup in this target.",
        [(k, v.channels) for k, v in t.items()],
    )
    family(
        "bcm_lnd_backup_failures_total",
        "counter",
        "Failed attempts to store or verify a backup in this target.",
        [(k, v.failures) for k, v in t.items()],
    )
    family(
        "bcm_lnd_backup_behind",
        "gauge",
        "1 while this target does not yet hold LND's current channel set.",
        [(k, int(v.behind)) for k, v in t.items()],
    )
    family("bcm_lnd_backup_lnd_channels", "gauge", "Channels in LND's current backup.", [(None, m.lnd_channels)])
    family(
        "bcm_lnd_backup_lnd_failures_total",
        "counter",
        "Failed LND calls: lost stream, refused verification.",
        [(None, m.lnd_failures)],
    )
    family(
        "bcm_lnd_backup_journal_failures_total",
        "counter",
        "Failed attempts to write the journal (the entries wait and are written later).",
        [(None, m.journal_failures)],
    )
    family(
        "bcm_lnd_backup_last_change_timestamp_seconds",
        "gauge",
        "Unix time LND last reported a change of its channel set.",
        [(None, m.last_change)],
    )
    return out


class _Journal:
    """JSON lines, one per durable copy. An entry that cannot be written (the disk full, its
    directory gone) is kept and written before the next one, in order, once the file takes
    writes again; meanwhile the workers retry it with backoff. A line is written whole or not
    at all: a write that fails part-way is cut back off."""

    # Entries kept while the journal cannot be written: weeks of channel changes.
    BACKLOG = 10_000

    def __init__(self, path: Path | None, retry_initial: float, retry_max: float):
        self.path = path
        self.lock = threading.Lock()
        self.backlog: list[bytes] = []
        self.retry_initial, self.retry_max = retry_initial, retry_max
        self.delay = retry_initial
        self.retry_at = 0.0

    def record(self, **entry: object) -> None:
        """Appends `entry` after any kept before it. Raises OSError when they could not be
        written; they are kept for the next attempt."""
        if self.path is None:
            return
        with self.lock:
            self.backlog.append(json.dumps(entry, sort_keys=True).encode() + b"\n")
            del self.backlog[: -self.BACKLOG]
            self._flush()

    def due(self) -> bool:
        return bool(self.backlog) and time.monotonic() >= self.retry_at

    def retry(self) -> None:
        """Writes the entries kept, if their next attempt is due. Raises OSError as `record`."""
        with self.lock:
            if self.backlog and time.monotonic() >= self.retry_at:
                self._flush()

    def record_kept(self) -> None:
        """Writes the entries kept now, whatever their backoff (when the watcher stops)."""
        with self.lock:
            if self.backlog:
                self._flush()

    def _flush(self) -> None:
        assert self.path is not None
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
            try:
                size = os.fstat(fd).st_size
                try:
                    view = memoryview(b"".join(self.backlog))
                    while view:
                        view = view[os.write(fd, view) :]
                except OSError:
                    try:
                        os.ftruncate(fd, size)
                    except OSError:
                        pass
                    raise
            finally:
                os.close(fd)
        except OSError:
            self.retry_at = time.monotonic() + self.delay
            self.delay = min(self.delay * 2, self.retry_max)
            raise
        self.backlog.clear()
        self.delay = self.retry_initial


class _TargetWorker(threading.Thread):
    """Writes the newest pending backup to one target; retries with backoff on failure.

    It never ends before the watcher stops: a failure of any kind, in the target, in the check
    or in the journal, is logged, counted in the metrics and retried. A worker that died would
    leave its target behind for good while the process looked healthy."""

    def __init__(self, target: Target, watcher: Watcher):
        super().__init__(name=f"backup-{target.label}", daemon=True)
        self.target = target
        self.watcher = watcher
        self.cond = threading.Condition()
        self.pending: _Pending | None = None
        self.delay = watcher.config.retry_initial
        self.cut_off = False  # the watcher stopped and its grace period ran out: no more attempts

    def submit(self, item: _Pending) -> None:
        with self.cond:
            # Only the newest backup matters: it covers every open channel.
            self.pending = item
            self.watcher.metrics.targets[self.target.label].behind = True
            self.cond.notify()

    def run(self) -> None:
        w = self.watcher
        # Once the watcher stops, one more step: the newest backup still pending, if any, gets
        # one attempt (within the watcher's grace period), so a stop right after a channel
        # change does not leave the change unbacked-up until the next start.
        while not self.cut_off:
            last = w.stopping.is_set()
            try:
                self._step()
            except Exception:  # noqa: BLE001 - a bug of ours must not end the worker either
                w.metrics.targets[self.target.label].failures += 1
                w.metrics.write()
                log.exception("%s: unexpected failure; going on in %.0f s", self.target.label, self.delay)
                w.stopping.wait(self.delay)
                self.delay = min(self.delay * 2, w.config.retry_max)
            if last:
                return

    def _step(self) -> None:
        w = self.watcher
        with self.cond:
            while self.pending is None and not w.stopping.is_set():
                if w.journal.due():
                    break
                self.cond.wait(timeout=1)
            item, self.pending = self.pending, None
        if item is None:
            self._journal(w.journal.retry)
            return
        state = w.metrics.targets[self.target.label]
        try:
            name = self.target.store(node_tag(item.pubkey), item.data, w.config.keep, item.changed_at)
            durable_at = time.time()
            w.check_copy(self.target, name, item)
        except Exception as err:  # noqa: BLE001 - retried whatever it is; logged with its trace if unexpected
            state.failures += 1
            w.metrics.write()
            then = "not retried: stopping" if w.stopping.is_set() else f"retrying in {self.delay:.0f} s"
            if isinstance(err, BcmError):
                log.warning("%s: %s; %s", self.target.label, err, then)
            else:
                log.error("%s: unexpected failure; %s", self.target.label, then, exc_info=True)
            with self.cond:
                if self.pending is None:
                    self.pending = item
            w.stopping.wait(self.delay)
            self.delay = min(self.delay * 2, w.config.retry_max)
            return
        self.delay = w.config.retry_initial
        with self.cond:
            state.behind = self.pending is not None
        state.last_success, state.channels = time.time(), len(item.chan_points)
        w.metrics.write()
        log.info(
            "%s: %s durable (%d channels, %.0f ms after LND's change)",
            self.target.label,
            name,
            len(item.chan_points),
            (durable_at - item.changed_at) * 1000,
        )
        self._journal(
            lambda: w.journal.record(
                event="durable",
                target=self.target.label,
                file=name,
                node=item.pubkey,
                chan_points=item.chan_points,
                changed_at=item.changed_at,
                durable_at=durable_at,
                verified_at=state.last_success,
            )
        )

    def _journal(self, write: Callable[[], None]) -> None:
        """A journal that cannot be written holds up nothing: the copy stands, the entry waits."""
        w = self.watcher
        try:
            write()
        except OSError as err:
            with w.metrics.lock:
                w.metrics.journal_failures += 1
            w.metrics.write()
            log.warning(
                "journal %s: %s; %d entries kept, next attempt in %.0f s",
                w.journal.path,
                err.strerror or err,
                len(w.journal.backlog),
                max(0.0, w.journal.retry_at - time.monotonic()),
            )


class Watcher:
    """Follows LND's channel backup stream and keeps every target current."""

    def __init__(self, config: WatchConfig, endpoint: Endpoint, targets: list[Target] | None = None):
        self.config = config
        self.endpoint = endpoint
        self.targets = targets or [parse_target(t, config.ssh) for t in config.targets]
        labels = [t.label for t in self.targets]
        if len(set(labels)) != len(labels):
            raise UsageError("the same backup target is named twice")
        recipients = list(config.recipients)
        if config.check_identity is not None:
            # Every copy is also encrypted to the watcher's own key so it can prove each one
            # decrypts and verifies. That key adds no exposure: it lives on the node, which
            # already holds the unencrypted channel.backup.
            recipients.append(age.recipient_of(config.check_identity))
        age.check_recipients(recipients)
        self.recipients = recipients
        self.stopping = threading.Event()
        self.metrics = _Metrics(config.metrics, labels)
        self.journal = _Journal(config.journal, config.retry_initial, config.retry_max)
        self.workers = [_TargetWorker(t, self) for t in self.targets]
        self.lnd: Lnd | None = None
        self._stream: BackupStream | None = None
        self._finished = False

    def check_copy(self, target: Target, name: str, item: _Pending) -> None:
        """With a check identity: decrypt what the target holds and have LND verify it."""
        if self.config.check_identity is None or self.lnd is None:
            return
        plain = age.decrypt(target.read(name), [self.config.check_identity], source=f"{target.label}/{name}")
        covered = self.lnd.verify_multi(plain)
        if sorted(covered) != sorted(item.chan_points):
            raise BackupError(
                f"{target.label}/{name}: LND sees {len(covered)} channels, expected {len(item.chan_points)}"
            )

    def _take(self, lnd: Lnd, pubkey: str, backup: MultiBackup) -> None:
        changed_at = time.time()
        self.metrics.last_change = changed_at
        self.metrics.lnd_channels = len(backup.chan_points)
        # LND's own check before the backup counts: it must open with this node's keys.
        lnd.verify_multi(backup.packed)
        data = age.encrypt(backup.packed, self.recipients)
        item = _Pending(pubkey=pubkey, data=data, chan_points=backup.chan_points, changed_at=changed_at)
        for worker in self.workers:
            worker.submit(item)
        self.metrics.write()

    def run(self, on_ready: Callable[[], None] | None = None, stop_on: Sequence[int] = ()) -> None:
        """Runs until `stop()`, or one of the signals `stop_on` (in the main thread only);
        reconnects to LND with backoff when it goes away. Returns once the copies in flight are
        finished, or cut off after `stop_grace` seconds."""
        with _stopping_on(stop_on, self.stop):
            for worker in self.workers:
                worker.start()
            self.metrics.write()
            try:
                self._follow(on_ready)
            finally:
                self._finish()

    def _follow(self, on_ready: Callable[[], None] | None) -> None:
        delay = self.config.retry_initial
        while not self.stopping.is_set():
            try:
                with Lnd(self.endpoint) as lnd:
                    self.lnd = lnd
                    # Which node this is goes into every file name: nodes sharing a target each
                    # keep their own backups. Asked at each connection: another node may answer.
                    pubkey = lnd.get_info().pubkey
                    node_tag(pubkey)
                    # Subscribe before the full export so no change falls between the two.
                    self._stream = stream = lnd.subscribe_channel_backups()
                    if self.stopping.is_set():  # stopped before there was a stream to cancel
                        return
                    self._take(lnd, pubkey, lnd.export_all_channel_backups())
                    if on_ready:
                        on_ready()
                        on_ready = None
                    delay = self.config.retry_initial
                    for backup in stream:
                        if self.stopping.is_set():
                            break
                        self._take(lnd, pubkey, backup)
                    if self.stopping.is_set():
                        # Still connected: the copies in flight are checked by LND as usual.
                        self._finish()
                        return
            except BcmError as err:
                if self.stopping.is_set():
                    return
                self.metrics.lnd_failures += 1
                self.metrics.write()
                log.warning("LND: %s; reconnecting in %.0f s", err, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, self.config.retry_max)

    def stop(self) -> None:
        """Asks `run` to return: no new copy starts; one in flight may finish. Any thread."""
        if self.stopping.is_set():
            return
        log.info("stopping")
        self.stopping.set()
        stream = self._stream
        if stream is not None:
            stream.cancel()
        for worker in self.workers:
            with worker.cond:
                worker.cond.notify()

    def _finish(self) -> None:
        """Waits for the workers: each finishes the copy in flight, if any, and records it. A
        copy still under way after `stop_grace` seconds is cut off; the target's other end then
        completes it or drops it whole. Then lets go of the targets."""
        if self._finished:
            return
        self._finished = True
        self.stopping.set()
        deadline = time.monotonic() + self.config.stop_grace
        for worker in self.workers:
            if worker.is_alive():
                worker.join(max(0.0, deadline - time.monotonic()))
        for worker in self.workers:
            if worker.is_alive():
                log.warning("%s: copy still under way after %.0f s; cutting it off", worker.target.label, self.config.stop_grace)
                worker.cut_off = True
                worker.target.abort()
        for worker in self.workers:
            if worker.is_alive():
                worker.join(5)
        for target in self.targets:
            target.close()
        if self.journal.backlog:
            try:
                self.journal.record_kept()
            except OSError as err:
                log.warning("journal %s: %s; %d entries not written", self.journal.path, err.strerror or err, len(self.journal.backlog))
        self.metrics.write()
        log.info("stopped")


@contextmanager
def _stopping_on(signals: Sequence[int], stop: Callable[[], None]) -> Iterator[None]:
    """While inside, each of `signals` calls `stop` from a thread of its own. The handler only
    wakes that thread (Python's wakeup fd): taking locks inside a signal handler could deadlock
    with the very code it interrupted."""
    if not signals:
        yield
        return
    read_fd, write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    os.set_blocking(read_fd, True)
    previous_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    previous = {number: signal.signal(number, lambda *_: None) for number in signals}

    def wait() -> None:
        while True:
            try:
                got = os.read(read_fd, 64)
            except OSError:
                return
            if not got:
                return  # closed: the watcher is done
            if any(number in got for number in signals):
                log.info("%s received", signal.Signals(next(n for n in got if n in signals)).name)
                stop()

    waiter = threading.Thread(target=wait, name="backup-signals", daemon=True)
    waiter.start()
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        signal.set_wakeup_fd(previous_fd)
        os.close(write_fd)
        waiter.join(5)
        os.close(read_fd)
