"""A real OpenSSH server on 127.0.0.1 for tests, with a throwaway host key and client key."""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from lnd_regtest import free_port, stop_process, wait_for

SSHD = next((p for p in ("/usr/sbin/sshd", "/usr/bin/sshd") if os.path.exists(p)), "/usr/sbin/sshd")


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bcm-test", "-f", str(path)], check=True)


class LoopbackSshd:
    """sshd -D on a free loopback port; `stop()`/`start()` make the remote host go and come back."""

    def __init__(self, directory: Path, holdable_sync: bool = False):
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.user = getpass.getuser()
        self.host_key = directory / "host_ed25519"
        self.client_key = directory / "client_ed25519"
        self.known_hosts = directory / "known_hosts"
        _keygen(self.host_key)
        _keygen(self.client_key)
        (directory / "authorized_keys").write_text(Path(f"{self.client_key}.pub").read_text())
        host_pub = Path(f"{self.host_key}.pub").read_text().split()
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {host_pub[0]} {host_pub[1]}\n")
        self.hold_file = directory / "hold-sync"
        session_env = []
        if holdable_sync:
            # Sessions find `sync` here first: a wrapper that waits while `hold_sync` holds it, so
            # a test can catch a remote copy between its upload and its rename.
            bin_dir = directory / "bin"
            bin_dir.mkdir()
            wrapper = bin_dir / "sync"
            wrapper.write_text(f"#!/bin/sh\nwhile [ -e {self.hold_file} ]; do sleep 0.05; done\nexec {shutil.which('sync')} \"$@\"\n")
            wrapper.chmod(0o755)
            session_env = [f"SetEnv PATH={bin_dir}:/usr/local/bin:/usr/bin:/bin"]
        self.log = directory / "sshd.log"
        self.config = directory / "sshd_config"
        self.config.write_text(
            "\n".join(
                [
                    f"Port {self.port}",
                    "ListenAddress 127.0.0.1",
                    f"HostKey {self.host_key}",
                    f"AuthorizedKeysFile {directory / 'authorized_keys'}",
                    f"PidFile {directory / 'sshd.pid'}",
                    # The temporary directory's modes are not what sshd insists on for a home.
                    "StrictModes no",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "UsePAM no",
                    "PermitRootLogin prohibit-password",
                    f"AllowUsers {self.user}",
                    *session_env,
                    # INFO logs one "Accepted publickey" line per connection: tests count them.
                    "LogLevel INFO",
                    "",
                ]
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if os.geteuid() == 0:
            # sshd's privilege separation needs this directory to exist when run as root.
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        log = self.log.open("ab")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=subprocess.STDOUT)

        def listening() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        wait_for("sshd listening", listening, timeout=20, interval=0.1)

    def stop(self) -> None:
        """The host goes away: its open connections end too, not only the listener."""
        self.drop_connections()
        stop_process(self.proc)
        self.proc = None

    def connections(self) -> list[int]:
        """PIDs of the processes serving each open connection (the listener's children)."""
        if self.proc is None:
            return []
        pids = []
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            # The command name may hold spaces; the parent PID is the second field after it.
            if int(stat.rsplit(")", 1)[1].split()[1]) == self.proc.pid:
                pids.append(int(entry))
        return pids

    def drop_connections(self) -> None:
        for pid in self.connections():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def logins(self) -> int:
        """Connections accepted so far (each logs one line at LogLevel INFO)."""
        return self.log.read_text(errors="replace").count("Accepted publickey for") if self.log.exists() else 0

    def new_host_key(self) -> None:
        """Replaces the host key, as a reinstalled or impersonated host would have (restart to use it)."""
        for path in (self.host_key, Path(f"{self.host_key}.pub")):
            path.unlink()
        _keygen(self.host_key)

    @contextmanager
    def hold_sync(self) -> Iterator[None]:
        """While inside, a remote `sync` waits: a copy stops after its upload, before its rename.
        Only with `holdable_sync`."""
        assert (self.directory / "bin" / "sync").exists(), "LoopbackSshd(..., holdable_sync=True)"
        self.hold_file.touch()
        try:
            yield
        finally:
            self.hold_file.unlink(missing_ok=True)

    def url(self, remote_dir: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{remote_dir}"


def backup_connections(parent: int) -> list[int]:
    """PIDs of the `ssh` processes holding an SSH backup target's connection that process
    `parent` started (their remote command is the bcm-tools backup session)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and argv[0].endswith(b"ssh") and any(
            b"# bcm-tools backup session" in arg for arg in argv
        ):
            pids.append(int(entry))
    return pids


def backup_session_shells(directory: Path) -> list[int]:
    """PIDs of the remote shells running the backup session for `directory` (on this machine,
    since the server is on loopback): the `sh` whose arguments are the session and the directory."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv[0] == b"sh" and len(argv) > 3 and b"# bcm-tools backup session" in argv[2] and argv[4:5] == [str(directory).encode()]:
            pids.append(int(entry))
    return pids
