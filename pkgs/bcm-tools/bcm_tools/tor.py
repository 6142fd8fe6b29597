"""Tor's control port: the one module in bcm-tools that speaks Tor's control protocol.

Read-only questions only (`GETINFO`), after cookie authentication. The cookie file grants full
control of Tor; this module never sends anything that changes it.
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

from pydantic import BaseModel

from bcm_tools.errors import CredentialError, DaemonError, UsageError


class Bootstrap(BaseModel):
    progress: int  # percent
    tag: str
    summary: str
    circuit_established: bool


def _parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UsageError(f"Tor control address must look like HOST:PORT, not {address!r}")
    return host.strip("[]"), int(port)


class TorControl:
    def __init__(self, address: str, cookie_file: Path, timeout: float = 10.0) -> None:
        self.address = address
        self.host, self.port = _parse_address(address)
        self.cookie_file = cookie_file
        self.timeout = timeout

    def _ask(self, *commands: str) -> list[str]:
        """Authenticates, sends each command, returns the reply lines of the last one."""
        try:
            cookie = self.cookie_file.read_bytes()
        except OSError as err:
            raise CredentialError(f"cannot read Tor's control cookie {self.cookie_file}: {err.strerror}") from None
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as conn:
                stream = conn.makefile("rwb")
                replies: list[list[str]] = []
                for command in (f"AUTHENTICATE {cookie.hex()}", *commands):
                    stream.write(command.encode() + b"\r\n")
                    stream.flush()
                    replies.append(self._reply(stream))
                stream.write(b"QUIT\r\n")
                stream.flush()
        except OSError as err:
            raise DaemonError(f"cannot reach Tor's control port at {self.address} ({err.strerror or err.__class__.__name__})") from None
        if not replies[0] or not replies[0][-1].startswith("250"):
            raise CredentialError(f"Tor at {self.address} refused the control cookie: {' '.join(replies[0])}")
        for command, reply in zip(commands, replies[1:]):
            if not reply or not reply[-1].startswith("250"):
                raise DaemonError(f"Tor at {self.address} refused {command.split()[0]}: {' '.join(reply)}")
        return replies[-1]

    @staticmethod
    def _reply(stream) -> list[str]:  # type: ignore[no-untyped-def]
        lines: list[str] = []
        while True:
            raw = stream.readline()
            if not raw:
                raise OSError("connection closed")
            line = raw.decode(errors="replace").rstrip("\r\n")
            lines.append(line)
            # "250-" continues, "250+" opens a data block ending with ".", "250 " ends.
            if len(line) >= 4 and line[3] == " ":
                return lines

    def bootstrap(self) -> Bootstrap:
        lines = self._ask("GETINFO status/bootstrap-phase status/circuit-established")
        text = "\n".join(lines)
        phase = re.search(r'PROGRESS=(\d+) TAG=(\S+) SUMMARY="([^"]*)"', text)
        circuit = re.search(r"status/circuit-established=(\d)", text)
        if phase is None or circuit is None:
            raise DaemonError(f"Tor at {self.address}: unexpected GETINFO reply: {text}")
        return Bootstrap(progress=int(phase.group(1)), tag=phase.group(2), summary=phase.group(3), circuit_established=circuit.group(1) == "1")
