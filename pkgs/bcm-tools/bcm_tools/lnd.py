"""LND over gRPC: the one module in bcm-tools that speaks LND's protocol.

The Python stubs are not part of the package: they are generated from the
`.proto` files of the LND release the node runs (by Nix from `lnd.src`, by the
test setup from the module source the test daemon was built from) and found
through `BCM_LND_STUBS` or the `stubs_dir` argument.
"""

from __future__ import annotations

import importlib
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
from pydantic import BaseModel, ConfigDict, Field

from bcm_tools.errors import BackupError, BcmError, CredentialError, DaemonError

STUBS_ENV = "BCM_LND_STUBS"

_stubs_lock = threading.Lock()
_stubs: dict[str, ModuleType] = {}


def load_stubs(stubs_dir: str | os.PathLike[str] | None = None) -> dict[str, ModuleType]:
    """Imports the generated lightning/walletunlocker modules from `stubs_dir` or $BCM_LND_STUBS."""
    with _stubs_lock:
        if _stubs:
            return _stubs
        where = stubs_dir or os.environ.get(STUBS_ENV)
        if not where:
            raise BcmError(
                f"LND gRPC stubs not configured: set {STUBS_ENV} to the directory generated "
                "from LND's lnrpc/*.proto"
            )
        path = Path(where)
        if not (path / "lightning_pb2.py").is_file():
            raise BcmError(f"LND gRPC stubs not found in {path} (no lightning_pb2.py)")
        # The generated modules import each other by bare name (walletunlocker_pb2 imports
        # lightning_pb2), so their directory has to be an import root.
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
        for name in ("lightning_pb2", "lightning_pb2_grpc", "walletunlocker_pb2", "walletunlocker_pb2_grpc"):
            _stubs[name] = importlib.import_module(name)
        # The router's stubs (TrackPayments, for the events bridge) may be absent from an older
        # stubs directory; only the calls that need them fail then.
        if (path / "routerrpc" / "router_pb2.py").is_file():
            for name in ("router_pb2", "router_pb2_grpc"):
                _stubs[name] = importlib.import_module(f"routerrpc.{name}")
        return _stubs


class Endpoint(BaseModel):
    """Where an LND's gRPC interface is and the files that authenticate us to it."""

    model_config = ConfigDict(frozen=True)

    rpc: str = Field(description="host:port of LND's gRPC listener")
    tls_cert: Path
    macaroon: Path | None = Field(default=None, description="None only for the wallet unlocker")


class MultiBackup(BaseModel):
    """LND's packed multi-channel backup (encrypted by LND with a key from the node's seed)."""

    chan_points: list[str]
    packed: bytes


class NodeInfo(BaseModel):
    pubkey: str
    alias: str
    block_height: int
    synced_to_chain: bool
    num_active_channels: int
    num_pending_channels: int


class OpenChannelState(BaseModel):
    """What can only move forward while a channel is open: its commitment height (LND's
    `num_updates`) and what it has carried."""

    num_updates: int
    local_balance: int
    remote_balance: int
    sent: int
    received: int
    pending_htlcs: int


class ChannelStateRecord(BaseModel):
    """Everything LND reports that changes when channel state moves: each open channel's
    commitment, channels opening, closing and closed, the payment index and the number of
    forwarded HTLCs. Every field only grows or changes while channels move, never back."""

    pubkey: str
    alias: str
    channels: dict[str, OpenChannelState]
    pending: dict[str, str] = Field(description="channel point -> opening | closing | force-closing | waiting-close")
    closed: list[str]
    payment_index: int = Field(description="index of the newest payment, complete or not")
    forwards: int = Field(description="forwarding events so far")


class ChannelEvent(BaseModel):
    """One change LND reported on its channel event stream."""

    kind: str  # the ChannelEventUpdate.UpdateType name, e.g. OPEN_CHANNEL
    chan_point: str | None


def _chan_point_str(point: Any) -> str:
    """`txid:index` as lncli prints it (funding_txid_bytes are in wire order, reversed)."""
    which = point.WhichOneof("funding_txid")
    txid = point.funding_txid_str if which == "funding_txid_str" else point.funding_txid_bytes[::-1].hex()
    return f"{txid}:{point.output_index}"


class ChannelChange(BaseModel):
    """One update of LND's channel event stream, with what it says about the channel."""

    event: str  # pending_open, open, active, inactive, closed, fully_resolved, funding_timeout
    channel_point: str
    remote_pubkey: str | None = None
    capacity_sat: int | None = None
    close_type: str | None = None


class InvoiceUpdate(BaseModel):
    """An invoice as LND's invoice stream reports it when it is added or changes state."""

    payment_hash: str
    state: str  # OPEN, SETTLED, CANCELED, ACCEPTED
    value_msat: int
    amt_paid_msat: int
    memo: str
    add_index: int
    settle_index: int
    creation_date: int
    settle_date: int


class PaymentUpdate(BaseModel):
    """An outgoing payment as the router's TrackPayments stream reports it."""

    payment_hash: str
    status: str  # UNKNOWN, IN_FLIGHT, SUCCEEDED, FAILED, INITIATED
    value_msat: int
    fee_msat: int
    payment_index: int
    creation_time_ns: int
    failure_reason: str


class WalletTransaction(BaseModel):
    """An on-chain transaction of LND's wallet (SubscribeTransactions)."""

    txid: str
    amount_sat: int
    fee_sat: int
    num_confirmations: int
    block_height: int
    block_hash: str
    time_stamp: int
    label: str


class NodeStatus(BaseModel):
    """GetInfo as monitoring reads it."""

    pubkey: str
    alias: str
    block_height: int
    synced_to_chain: bool
    synced_to_graph: bool
    num_peers: int
    num_active_channels: int
    num_inactive_channels: int
    num_pending_channels: int


class ChannelBalance(BaseModel):
    """One open channel and where its funds are."""

    chan_point: str
    remote_pubkey: str
    active: bool
    capacity: int
    local_balance: int
    remote_balance: int


class WalletBalance(BaseModel):
    confirmed: int
    unconfirmed: int


class BackupStream:
    """LND's channel backup stream (`Lnd.subscribe_channel_backups`). Iterating yields each new
    backup; `cancel()`, from any thread, ends the iteration without an error."""

    def __init__(self, lnd: Lnd, call: Any):
        self._lnd, self._call = lnd, call

    def __iter__(self) -> Iterator[MultiBackup]:
        return self._lnd._follow_backups(self._call)

    def cancel(self) -> None:
        self._call.cancel()


class Lnd:
    """A connection to one LND; each method is one RPC with LND's errors turned into ours."""

    def __init__(self, endpoint: Endpoint, stubs_dir: str | os.PathLike[str] | None = None):
        self.endpoint = endpoint
        self._pb = load_stubs(stubs_dir)
        try:
            cert = endpoint.tls_cert.read_bytes()
        except OSError as err:
            raise CredentialError(f"cannot read LND TLS certificate {endpoint.tls_cert}: {err.strerror}") from None
        creds = grpc.ssl_channel_credentials(cert)
        if endpoint.macaroon is not None:
            try:
                macaroon = endpoint.macaroon.read_bytes().hex()
            except OSError as err:
                raise CredentialError(f"cannot read LND macaroon {endpoint.macaroon}: {err.strerror}") from None

            def attach(_context: Any, callback: Any) -> None:
                callback([("macaroon", macaroon)], None)

            creds = grpc.composite_channel_credentials(creds, grpc.metadata_call_credentials(attach))
        # LND's self-signed certificate names "localhost"; accept it for an IP address as well.
        options = [("grpc.ssl_target_name_override", "localhost")]
        self._channel = grpc.secure_channel(endpoint.rpc, creds, options=options)
        self._lightning = self._pb["lightning_pb2_grpc"].LightningStub(self._channel)
        self._unlocker = self._pb["walletunlocker_pb2_grpc"].WalletUnlockerStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Lnd:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _call(self, method: str, request: Any, stub: Any = None, timeout: float = 30) -> Any:
        try:
            return getattr(stub or self._lightning, method)(request, timeout=timeout)
        except grpc.RpcError as err:
            raise self._error(method, err) from None

    def _error(self, method: str, err: grpc.RpcError) -> BcmError:
        code = err.code() if hasattr(err, "code") else None
        details = err.details() if hasattr(err, "details") else str(err)
        if code == grpc.StatusCode.UNAVAILABLE:
            return DaemonError(f"LND at {self.endpoint.rpc} is unreachable ({method}): {details}")
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            return CredentialError(f"LND refused {method}: {details}")
        return DaemonError(f"LND {method} failed: {details}")

    def _multi(self, snapshot: Any) -> MultiBackup:
        multi = snapshot.multi_chan_backup
        return MultiBackup(chan_points=[_chan_point_str(p) for p in multi.chan_points], packed=multi.multi_chan_backup)

    # --- backups -------------------------------------------------------------------------

    def export_all_channel_backups(self) -> MultiBackup:
        pb = self._pb["lightning_pb2"]
        return self._multi(self._call("ExportAllChannelBackups", pb.ChanBackupExportRequest()))

    def subscribe_channel_backups(self) -> BackupStream:
        """A new multi-channel backup each time LND's set of channels changes; forever.

        The call starts here, not at the first `next()`, so a caller can subscribe, then take a
        full export, and miss no change in between."""
        pb = self._pb["lightning_pb2"]
        try:
            stream = self._lightning.SubscribeChannelBackups(pb.ChannelBackupSubscription())
        except grpc.RpcError as err:
            raise self._error("SubscribeChannelBackups", err) from None
        return BackupStream(self, stream)

    def _follow_backups(self, stream: Any) -> Iterator[MultiBackup]:
        try:
            for snapshot in stream:
                yield self._multi(snapshot)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.CANCELLED:
                return
            raise self._error("SubscribeChannelBackups", err) from None
        finally:
            stream.cancel()
        raise DaemonError(f"LND at {self.endpoint.rpc} ended the channel backup stream")

    def verify_multi(self, packed: bytes) -> list[str]:
        """Asks LND whether it can open this packed multi backup; returns the channels it covers."""
        pb = self._pb["lightning_pb2"]
        request = pb.ChanBackupSnapshot(multi_chan_backup=pb.MultiChanBackup(multi_chan_backup=packed))
        try:
            reply = self._lightning.VerifyChanBackup(request, timeout=30)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNKNOWN:
                raise BackupError(_refusal("VerifyChanBackup", err.details())) from None
            raise self._error("VerifyChanBackup", err) from None
        return list(reply.chan_points)

    def restore_multi(self, packed: bytes) -> int:
        """Hands a packed multi backup to LND's recovery; returns how many channels it took."""
        pb = self._pb["lightning_pb2"]
        try:
            reply = self._lightning.RestoreChannelBackups(
                pb.RestoreChanBackupRequest(multi_chan_backup=packed), timeout=120
            )
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNKNOWN:
                raise BackupError(_refusal("RestoreChannelBackups", err.details())) from None
            raise self._error("RestoreChannelBackups", err) from None
        return int(getattr(reply, "num_restored", 0))

    # --- node state ----------------------------------------------------------------------

    def get_info(self) -> NodeInfo:
        pb = self._pb["lightning_pb2"]
        r = self._call("GetInfo", pb.GetInfoRequest())
        return NodeInfo(
            pubkey=r.identity_pubkey,
            alias=r.alias,
            block_height=r.block_height,
            synced_to_chain=r.synced_to_chain,
            num_active_channels=r.num_active_channels,
            num_pending_channels=r.num_pending_channels,
        )

    def channel_state(self) -> ChannelStateRecord:
        """The channel state as LND reports it now (GetInfo, ListChannels, PendingChannels,
        ClosedChannels, ListPayments, ForwardingHistory)."""
        pb = self._pb["lightning_pb2"]
        info = self._call("GetInfo", pb.GetInfoRequest())
        channels = {
            c.channel_point: OpenChannelState(
                num_updates=c.num_updates,
                local_balance=c.local_balance,
                remote_balance=c.remote_balance,
                sent=c.total_satoshis_sent,
                received=c.total_satoshis_received,
                pending_htlcs=len(c.pending_htlcs),
            )
            for c in self._call("ListChannels", pb.ListChannelsRequest()).channels
        }
        waiting = self._call("PendingChannels", pb.PendingChannelsRequest())
        pending: dict[str, str] = {}
        for kind, entries in (
            ("opening", waiting.pending_open_channels),
            ("closing", waiting.pending_closing_channels),
            ("force-closing", waiting.pending_force_closing_channels),
            ("waiting-close", waiting.waiting_close_channels),
        ):
            for entry in entries:
                pending[entry.channel.channel_point] = kind
        closed = sorted(c.channel_point for c in self._call("ClosedChannels", pb.ClosedChannelsRequest()).channels)
        newest = self._call(
            "ListPayments", pb.ListPaymentsRequest(include_incomplete=True, reversed=True, max_payments=1)
        )
        payment_index = max([newest.last_index_offset] + [p.payment_index for p in newest.payments])
        forwards = 0
        while True:
            # start_time 0 and end_time 0: every event up to now, 50 000 per page.
            page = self._call(
                "ForwardingHistory",
                pb.ForwardingHistoryRequest(start_time=0, index_offset=forwards, num_max_events=50_000),
            )
            if not page.forwarding_events:
                break
            forwards = max(page.last_offset_index, forwards + len(page.forwarding_events))
        return ChannelStateRecord(
            pubkey=info.identity_pubkey,
            alias=info.alias,
            channels=channels,
            pending=pending,
            closed=closed,
            payment_index=payment_index,
            forwards=forwards,
        )

    def subscribe_channel_events(self) -> Iterator[ChannelEvent]:
        """Yields LND's channel events (opened, closed, ...) as they happen."""
        pb = self._pb["lightning_pb2"]
        stream = self._lightning.SubscribeChannelEvents(pb.ChannelEventSubscription())
        kinds = pb.ChannelEventUpdate.UpdateType
        try:
            for update in stream:
                kind = kinds.Name(update.type)
                point = None
                if update.HasField("open_channel"):
                    point = update.open_channel.channel_point
                elif update.HasField("closed_channel"):
                    point = update.closed_channel.channel_point
                elif update.HasField("fully_resolved_channel"):
                    point = _chan_point_str(update.fully_resolved_channel)
                elif update.HasField("pending_open_channel"):
                    p = update.pending_open_channel
                    point = f"{p.txid[::-1].hex()}:{p.output_index}"
                yield ChannelEvent(kind=kind, chan_point=point)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.CANCELLED:
                return
            raise self._error("SubscribeChannelEvents", err) from None
        finally:
            stream.cancel()

    # --- monitoring (read-only: info:read, offchain:read, onchain:read) ------------------

    def node_status(self) -> NodeStatus:
        pb = self._pb["lightning_pb2"]
        r = self._call("GetInfo", pb.GetInfoRequest())
        return NodeStatus(
            pubkey=r.identity_pubkey,
            alias=r.alias,
            block_height=r.block_height,
            synced_to_chain=r.synced_to_chain,
            synced_to_graph=r.synced_to_graph,
            num_peers=r.num_peers,
            num_active_channels=r.num_active_channels,
            num_inactive_channels=r.num_inactive_channels,
            num_pending_channels=r.num_pending_channels,
        )

    def channel_balances(self) -> list[ChannelBalance]:
        pb = self._pb["lightning_pb2"]
        r = self._call("ListChannels", pb.ListChannelsRequest())
        return [
            ChannelBalance(
                chan_point=c.channel_point,
                remote_pubkey=c.remote_pubkey,
                active=c.active,
                capacity=c.capacity,
                local_balance=c.local_balance,
                remote_balance=c.remote_balance,
            )
            for c in r.channels
        ]

    def wallet_balance(self) -> WalletBalance:
        pb = self._pb["lightning_pb2"]
        r = self._call("WalletBalance", pb.WalletBalanceRequest())
        return WalletBalance(confirmed=r.confirmed_balance, unconfirmed=r.unconfirmed_balance)

    # --- event streams (the events bridge) -------------------------------------------------

    def _stream(self, method: str, request: Any, stub: Any = None) -> Iterator[Any]:
        """Yields the updates of a server stream until LND ends it (DaemonError) or it is
        cancelled (returns)."""
        try:
            stream = getattr(stub or self._lightning, method)(request)
        except grpc.RpcError as err:
            raise self._error(method, err) from None
        try:
            yield from stream
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.CANCELLED:
                return
            raise self._error(method, err) from None
        finally:
            stream.cancel()
        raise DaemonError(f"LND at {self.endpoint.rpc} ended the {method} stream")

    def channel_changes(self) -> Iterator[ChannelChange]:
        """SubscribeChannelEvents, each update with its channel point and what LND says of it."""
        pb = self._pb["lightning_pb2"]
        for update in self._stream("SubscribeChannelEvents", pb.ChannelEventSubscription()):
            which = update.WhichOneof("channel")
            if which == "open_channel":
                c = update.open_channel
                yield ChannelChange(event="open", channel_point=c.channel_point, remote_pubkey=c.remote_pubkey, capacity_sat=c.capacity)
            elif which == "closed_channel":
                c = update.closed_channel
                yield ChannelChange(
                    event="closed", channel_point=c.channel_point, remote_pubkey=c.remote_pubkey, capacity_sat=c.capacity,
                    close_type=pb.ChannelCloseSummary.ClosureType.Name(c.close_type),
                )
            elif which == "active_channel":
                yield ChannelChange(event="active", channel_point=_chan_point_str(update.active_channel))
            elif which == "inactive_channel":
                yield ChannelChange(event="inactive", channel_point=_chan_point_str(update.inactive_channel))
            elif which == "fully_resolved_channel":
                yield ChannelChange(event="fully_resolved", channel_point=_chan_point_str(update.fully_resolved_channel))
            elif which == "pending_open_channel":
                p = update.pending_open_channel
                yield ChannelChange(event="pending_open", channel_point=f"{p.txid[::-1].hex()}:{p.output_index}")
            elif which == "channel_funding_timeout":
                yield ChannelChange(event="funding_timeout", channel_point=_chan_point_str(update.channel_funding_timeout))

    def invoice_updates(self, add_index: int = 0, settle_index: int = 0) -> Iterator[InvoiceUpdate]:
        """SubscribeInvoices: first every invoice added after `add_index` and settled after
        `settle_index` (what was missed), then each change as it happens."""
        pb = self._pb["lightning_pb2"]
        states = pb.Invoice.InvoiceState
        request = pb.InvoiceSubscription(add_index=add_index, settle_index=settle_index)
        for invoice in self._stream("SubscribeInvoices", request):
            yield InvoiceUpdate(
                payment_hash=invoice.r_hash.hex(), state=states.Name(invoice.state), value_msat=invoice.value_msat,
                amt_paid_msat=invoice.amt_paid_msat, memo=invoice.memo, add_index=invoice.add_index,
                settle_index=invoice.settle_index, creation_date=invoice.creation_date, settle_date=invoice.settle_date,
            )

    def payment_updates(self) -> Iterator[PaymentUpdate]:
        """The router's TrackPayments: every outgoing payment each time its status changes."""
        if "router_pb2" not in self._pb:
            raise BcmError(f"LND's router stubs (routerrpc/router_pb2.py) are not in {STUBS_ENV}; regenerate the stubs")
        router = self._pb["router_pb2_grpc"].RouterStub(self._channel)
        statuses = self._pb["lightning_pb2"].Payment.PaymentStatus
        reasons = self._pb["lightning_pb2"].PaymentFailureReason
        request = self._pb["router_pb2"].TrackPaymentsRequest(no_inflight_updates=False)
        for payment in self._stream("TrackPayments", request, stub=router):
            yield PaymentUpdate(
                payment_hash=payment.payment_hash, status=statuses.Name(payment.status), value_msat=payment.value_msat,
                fee_msat=payment.fee_msat, payment_index=payment.payment_index, creation_time_ns=payment.creation_time_ns,
                failure_reason=reasons.Name(payment.failure_reason),
            )

    def wallet_transactions(self) -> Iterator[WalletTransaction]:
        """SubscribeTransactions: the wallet's transactions, when first seen and when confirmed."""
        pb = self._pb["lightning_pb2"]
        for tx in self._stream("SubscribeTransactions", pb.GetTransactionsRequest()):
            yield WalletTransaction(
                txid=tx.tx_hash, amount_sat=tx.amount, fee_sat=tx.total_fees, num_confirmations=tx.num_confirmations,
                block_height=tx.block_height, block_hash=tx.block_hash, time_stamp=tx.time_stamp, label=tx.label,
            )

    # --- wallet unlocker -----------------------------------------------------------------

    def gen_seed(self) -> list[str]:
        pb = self._pb["walletunlocker_pb2"]
        return list(self._call("GenSeed", pb.GenSeedRequest(), stub=self._unlocker).cipher_seed_mnemonic)

    def init_wallet(self, password: bytes, mnemonic: list[str], recovery_window: int = 0) -> bytes:
        """Creates (or, with a recovery window, restores) the wallet; returns the admin macaroon."""
        pb = self._pb["walletunlocker_pb2"]
        request = pb.InitWalletRequest(
            wallet_password=password, cipher_seed_mnemonic=mnemonic, recovery_window=recovery_window
        )
        return bytes(self._call("InitWallet", request, stub=self._unlocker, timeout=120).admin_macaroon)


def _refusal(method: str, details: str) -> str:
    """One line saying why LND would not take a backup, in the user's terms."""
    lowered = details.lower()
    if "authentication failed" in lowered or "unable to decrypt" in lowered or "decrypt" in lowered:
        return (
            f"LND cannot open this channel backup ({method}): it was made by another node "
            f"or with another seed ({details})"
        )
    if "eof" in lowered or "too short" in lowered or "unpack" in lowered:
        return f"LND cannot read this channel backup ({method}): it is damaged or truncated ({details})"
    return f"LND rejected this channel backup ({method}): {details}"
