"""A real OpenSSH server on 127.0.0.1 for tests, with a throwaway host key and client key."""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
from pathlib import Path

from lnd_regtest import free_port, stop_process, wait_for

SSHD = next((p for p in ("/usr/sbin/sshd", "/usr/bin/sshd") if os.path.exists(p)), "/usr/sbin/sshd")


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bcm-test", "-f", str(path)], check=True)


class LoopbackSshd:
    """sshd -D on a free loopback port; `stop()`/`start()` make the remote host go and come back."""

    def __init__(self, directory: Path):
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
                    "LogLevel ERROR",
                    "",
                ]
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        if os.geteuid() == 0:
            # sshd's privilege separation needs this directory to exist when run as root.
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        log = (self.directory / "sshd.log").open("ab")
        self.proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdout=log, stderr=subprocess.STDOUT)

        def listening() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True

        wait_for("sshd listening", listening, timeout=20, interval=0.1)

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None

    def url(self, remote_dir: Path) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}{remote_dir}"
