"""The Electrum protocol (JSON-RPC lines over TCP), as Fulcrum serves it: the one module that
speaks it. Only what the exporter and `status` ask: the server's version and its chain tip.
"""

from __future__ import annotations

import json
import socket

from pydantic import BaseModel

from bcm_tools.errors import DaemonError, UsageError


class ServerTip(BaseModel):
    server_version: str
    height: int


class ElectrumClient:
    def __init__(self, address: str, timeout: float = 10.0) -> None:
        host, _, port = address.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"Electrum server address must look like HOST:PORT, not {address!r}")
        self.address = address
        self.host, self.port = host.strip("[]"), int(port)
        self.timeout = timeout

    def tip(self) -> ServerTip:
        requests = [
            {"jsonrpc": "2.0", "id": 0, "method": "server.version", "params": ["bcm-tools", "1.4"]},
            {"jsonrpc": "2.0", "id": 1, "method": "blockchain.headers.subscribe", "params": []},
        ]
        answers: dict[int, dict] = {}
        try:
            with socket.create_connection((self.host, self.port), timeout=self.timeout) as conn:
                stream = conn.makefile("rwb")
                for request in requests:
                    stream.write(json.dumps(request).encode() + b"\n")
                stream.flush()
                while len(answers) < len(requests):
                    line = stream.readline()
                    if not line:
                        raise OSError("connection closed")
                    message = json.loads(line)
                    if isinstance(message, dict) and message.get("id") in (0, 1):
                        answers[message["id"]] = message
        except OSError as err:
            raise DaemonError(f"cannot reach the Electrum server at {self.address} ({err.strerror or err})") from None
        except json.JSONDecodeError:
            raise DaemonError(f"the Electrum server at {self.address} answered something that is not JSON") from None
        for answer in answers.values():
            if answer.get("error"):
                raise DaemonError(f"the Electrum server at {self.address} refused a call: {answer['error']}")
        try:
            version = answers[0]["result"]
            return ServerTip(server_version=version[0] if isinstance(version, list) else str(version), height=int(answers[1]["result"]["height"]))
        except (KeyError, TypeError, ValueError, IndexError):
            raise DaemonError(f"the Electrum server at {self.address} gave an unexpected reply") from None
