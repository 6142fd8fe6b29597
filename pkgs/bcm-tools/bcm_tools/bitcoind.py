"""Bitcoin Core's JSON-RPC interface, through python-bitcoinrpc.

The only module that speaks to bitcoind. Each call goes to the node (`/`) or to one wallet
(`/wallet/NAME`); every failure becomes a DaemonError naming the method and bitcoind's reply,
never the credentials.
"""

from __future__ import annotations

import base64
import http.client
import socket
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

from bitcoinrpc.authproxy import AuthServiceProxy, JSONRPCException
from pydantic import BaseModel, ConfigDict, ValidationError

from bcm_tools.errors import DaemonError, RpcError, UsageError

# bitcoind's `chain` names, by bcm network name.
CHAIN_OF_NETWORK = {"mainnet": "main", "testnet4": "testnet4", "signet": "signet", "regtest": "regtest"}
DEFAULT_RPC_PORT = {"mainnet": 8332, "testnet4": 48332, "signet": 38332, "regtest": 18443}

RPC_WALLET_ALREADY_EXISTS_CODES = (-4, -35)  # "Database already exists" / "already loaded"


@dataclass(frozen=True)
class RpcEndpoint:
    """Where bitcoind listens and how to log in. `password` never appears in errors."""

    host: str
    port: int
    user: str
    password: str
    timeout: float = 60.0

    @classmethod
    def from_url(cls, url: str, user: str | None = None, password: str | None = None) -> "RpcEndpoint":
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise UsageError(f"bitcoind RPC URL must look like http://HOST:PORT, not {url!r}")
        # A URL carries its user and password percent-encoded (a `/`, `?` or `#` cannot appear bare).
        if user is None and parts.username is not None:
            user = unquote(parts.username)
        if password is None and parts.password is not None:
            password = unquote(parts.password)
        if not user or password is None:
            raise UsageError("bitcoind RPC needs a user and password (or a cookie file)")
        return cls(parts.hostname, parts.port or 8332, user, password)

    @classmethod
    def from_cookie(cls, url: str, cookie_file: str) -> "RpcEndpoint":
        try:
            user, _, password = open(cookie_file, encoding="utf-8").read().strip().partition(":")
        except OSError as err:
            raise UsageError(f"cannot read bitcoind cookie file {cookie_file}: {err.strerror}") from None
        return cls.from_url(url, user, password)

    def url(self, wallet: str | None) -> str:
        """The endpoint as a URL, its user and password percent-encoded."""
        path = f"/wallet/{quote(wallet, safe='')}" if wallet is not None else "/"
        return f"http://{quote(self.user, safe='')}:{quote(self.password, safe='')}@{self.host}:{self.port}{path}"

    @property
    def shown(self) -> str:
        return f"{self.host}:{self.port}"


class _Proxy(AuthServiceProxy):
    """python-bitcoinrpc's client for one call, logging in with the user and password themselves.

    AuthServiceProxy reads the credentials back out of the URL and sends them without
    percent-decoding, but a password with `/`, `?` or `#` can only be written into a URL
    percent-encoded. So the Basic credentials it would send are replaced by the real ones.
    """

    def __init__(self, endpoint: RpcEndpoint, wallet: str | None, method: str) -> None:
        super().__init__(endpoint.url(wallet), method, timeout=endpoint.timeout)
        credentials = f"{endpoint.user}:{endpoint.password}".encode()
        self._AuthServiceProxy__auth_header = b"Basic " + base64.b64encode(credentials)


class _Reply(BaseModel):
    model_config = ConfigDict(extra="ignore")


class BlockchainInfo(_Reply):
    chain: str
    blocks: int


class BlockHeader(_Reply):
    hash: str
    height: int
    time: int


class WalletInfo(_Reply):
    walletname: str = ""
    private_keys_enabled: bool
    descriptors: bool


class ImportFailure(_Reply):
    code: int = 0
    message: str = "unknown error"


class ImportResult(_Reply):
    success: bool
    error: ImportFailure | None = None


class ChainStatus(_Reply):
    """getblockchaininfo, as monitoring reads it."""

    chain: str
    blocks: int
    headers: int
    verificationprogress: float
    initialblockdownload: bool
    time: int = 0  # the tip's block time (Bitcoin Core 23 and later)
    size_on_disk: int = 0
    pruned: bool = False


class NetworkStatus(_Reply):
    connections: int = 0
    connections_in: int = 0
    connections_out: int = 0


class MempoolStatus(_Reply):
    size: int
    bytes: int


_ReplyT = TypeVar("_ReplyT", bound=_Reply)


class Bitcoind:
    """One bitcoind node."""

    def __init__(self, endpoint: RpcEndpoint) -> None:
        self.endpoint = endpoint

    def call(self, method: str, *params: Any, wallet: str | None = None) -> Any:
        where = f"bitcoind at {self.endpoint.shown}"
        try:
            return _Proxy(self.endpoint, wallet, method)(*params)
        except JSONRPCException as err:
            error = err.error if isinstance(getattr(err, "error", None), dict) else {}
            code, message = error.get("code"), error.get("message", str(err))
            if code == -342 and "401" in str(message):
                raise DaemonError(f"{where} rejected the RPC user or password") from None
            raise RpcError(f"{where}: {method} failed: {message} (code {code})", code=code) from None
        except (ConnectionError, socket.timeout, socket.gaierror, http.client.HTTPException, OSError) as err:
            reason = getattr(err, "strerror", None) or err.__class__.__name__
            raise DaemonError(f"cannot reach {where} ({reason})") from None

    def typed(self, model: type[_ReplyT], method: str, *params: Any, wallet: str | None = None) -> _ReplyT:
        """`call`, with the reply validated into `model`."""
        reply = self.call(method, *params, wallet=wallet)
        try:
            return model.model_validate(reply)
        except ValidationError as err:
            problem = err.errors()[0]
            field = ".".join(str(p) for p in problem["loc"]) or "reply"
            raise DaemonError(f"bitcoind at {self.endpoint.shown}: unexpected {method} reply ({field}: {problem['msg']})") from None

    # --- the calls bcm-tools makes --------------------------------------------------------

    def chain(self) -> str:
        return self.typed(BlockchainInfo, "getblockchaininfo").chain

    def block_time(self, height: int) -> int:
        """Timestamp of the block at `height`: where a wallet's rescan may start."""
        return self.typed(BlockHeader, "getblockheader", self.call("getblockhash", height)).time

    def tip_height(self) -> int:
        return int(self.call("getblockcount"))

    def create_watch_only_wallet(self, name: str) -> bool:
        """Create a blank descriptor wallet that can hold no private keys. Returns False if a
        wallet of that name already exists (it is then loaded and checked to be watch-only)."""
        try:
            # createwallet positional order: wallet_name, disable_private_keys, blank,
            # passphrase, avoid_reuse, descriptors, load_on_startup
            self.call("createwallet", name, True, True, "", False, True, True)
            return True
        except RpcError as err:
            if err.code not in RPC_WALLET_ALREADY_EXISTS_CODES:
                raise
        if name not in self.call("listwallets"):
            self.call("loadwallet", name)
        info = self.typed(WalletInfo, "getwalletinfo", wallet=name)
        if info.private_keys_enabled or not info.descriptors:
            raise DaemonError(
                f"wallet {name!r} already exists on bitcoind at {self.endpoint.shown} and is not a "
                "watch-only descriptor wallet; choose another --wallet name"
            )
        return False

    def import_descriptors(self, wallet: str, requests: list[dict[str, Any]]) -> None:
        replies = self.call("importdescriptors", requests, wallet=wallet)
        if not isinstance(replies, list) or len(replies) != len(requests):
            raise DaemonError(f"bitcoind at {self.endpoint.shown}: importdescriptors answered {len(replies) if isinstance(replies, list) else 'no list'} results for {len(requests)} descriptors")
        for request, reply in zip(requests, replies):
            try:
                result = ImportResult.model_validate(reply)
            except ValidationError:
                raise DaemonError(f"bitcoind at {self.endpoint.shown}: unexpected importdescriptors reply") from None
            if not result.success:
                message = result.error.message if result.error else "unknown error"
                raise DaemonError(f"bitcoind refused descriptor {request['desc']}: {message}")

    # --- monitoring (the calls the `monitoring` RPC user may make) ------------------------

    def chain_status(self) -> ChainStatus:
        return self.typed(ChainStatus, "getblockchaininfo")

    def network_status(self) -> NetworkStatus:
        return self.typed(NetworkStatus, "getnetworkinfo")

    def mempool_status(self) -> MempoolStatus:
        return self.typed(MempoolStatus, "getmempoolinfo")
