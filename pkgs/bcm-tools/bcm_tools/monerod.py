"""monerod's JSON-RPC interface: the one module in bcm-tools that speaks to monerod's RPC.

Every failure becomes a DaemonError naming the method and monerod's reply.
"""

from __future__ import annotations

import http.client
import json
import socket
import urllib.error
import urllib.request
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from bcm_tools.errors import DaemonError, RpcError, UsageError


class ChainInfo(BaseModel):
    """get_info, as monitoring reads it."""

    model_config = ConfigDict(extra="ignore")

    height: int
    target_height: int = 0
    synchronized: bool = False
    tx_pool_size: int = 0
    database_size: int = 0
    incoming_connections_count: int = 0
    outgoing_connections_count: int = 0
    nettype: str = "mainnet"


class BlockHeader(BaseModel):
    model_config = ConfigDict(extra="ignore")

    height: int
    hash: str
    prev_hash: str
    timestamp: int
    num_txes: int
    block_size: int


class Monerod:
    """One monerod, by the URL of its RPC port (http://127.0.0.1:18081)."""

    def __init__(self, url: str, timeout: float = 30):
        if not url.startswith("http://"):
            raise UsageError(f"monerod RPC URL must look like http://HOST:PORT, not {url!r}")
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _post(self, path: str, body: dict[str, Any], method: str) -> Any:
        request = urllib.request.Request(
            f"{self.url}{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.load(response)
        except urllib.error.HTTPError as err:
            raise DaemonError(f"monerod at {self.url}: {method} answered HTTP {err.code}") from None
        except (urllib.error.URLError, ConnectionError, socket.timeout, http.client.HTTPException, OSError) as err:
            reason = getattr(err, "reason", None) or getattr(err, "strerror", None) or err.__class__.__name__
            raise DaemonError(f"cannot reach monerod at {self.url} ({reason})") from None
        except json.JSONDecodeError:
            raise DaemonError(f"monerod at {self.url}: {method} answered with something that is not JSON") from None

    def call(self, method: str, **params: Any) -> Any:
        reply = self._post("/json_rpc", {"jsonrpc": "2.0", "id": "0", "method": method, "params": params}, method)
        if not isinstance(reply, dict):
            raise DaemonError(f"monerod at {self.url}: unexpected {method} reply")
        if "error" in reply:
            error = reply["error"] if isinstance(reply["error"], dict) else {"message": str(reply["error"])}
            raise RpcError(f"monerod at {self.url}: {method} failed: {error.get('message')} (code {error.get('code')})", code=error.get("code"))
        result = reply.get("result")
        if not isinstance(result, dict) or result.get("status", "OK") != "OK":
            raise DaemonError(f"monerod at {self.url}: {method} did not answer OK")
        return result

    def other(self, path: str, method: str, **params: Any) -> Any:
        """A call on one of monerod's non-JSON-RPC endpoints (`/get_info`, `/pop_blocks`)."""
        reply = self._post(path, params, method)
        if not isinstance(reply, dict) or reply.get("status", "OK") != "OK":
            raise DaemonError(f"monerod at {self.url}: {method} did not answer OK")
        return reply

    # --- the calls bcm-tools makes --------------------------------------------------------

    def chain_info(self) -> ChainInfo:
        info = self.other("/get_info", "get_info")
        try:
            return ChainInfo.model_validate(info)
        except ValidationError as err:
            raise DaemonError(f"monerod at {self.url}: unexpected get_info reply ({err.errors()[0]['msg']})") from None

    def nettype(self) -> str:
        return self.chain_info().nettype

    def tip_timestamp(self) -> int:
        """Time stamp of the newest block."""
        header = self.call("get_last_block_header").get("block_header")
        if not isinstance(header, dict) or not isinstance(header.get("timestamp"), int):
            raise DaemonError(f"monerod at {self.url}: unexpected get_last_block_header reply")
        return int(header["timestamp"])

    def tip_height(self) -> int:
        """Height of the newest block (monerod's `height` counts blocks, one more)."""
        return int(self.call("get_block_count")["count"]) - 1

    def headers(self, start: int, end: int) -> list[BlockHeader]:
        """Headers of the blocks at heights start..end, both included."""
        result = self.call("get_block_headers_range", start_height=start, end_height=end)
        try:
            return [BlockHeader.model_validate(h) for h in result.get("headers", [])]
        except ValidationError as err:
            raise DaemonError(f"monerod at {self.url}: unexpected get_block_headers_range reply ({err.errors()[0]['msg']})") from None

    def header_at(self, height: int) -> BlockHeader:
        return self.headers(height, height)[0]
