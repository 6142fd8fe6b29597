"""monerod's events: blocks (`monero.blocks`) and pool additions (`monero.txpool`).

monerod publishes JSON over ZMQ (`--zmq-pub`), one frame per message, `<topic>:<json>`. The
bridge subscribes to `json-minimal-chain_main` (first height, its parent, the new block ids) and
`json-minimal-txpool_add` (id, blob size, weight, fee of each new pool transaction). The ZMQ
feed has no sequence numbers: a block whose parent is not the published tip, a quiet spell, or
a reconnect makes the bridge compare the chain over RPC and backfill or unwind (`sync`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from typing import Annotated, Any

from pydantic import ConfigDict, TypeAdapter, ValidationError, with_config
from typing_extensions import TypedDict

from bcm_tools.events import schemas
from bcm_tools.events.bridge import ChainFollower, Context, Malformed
from bcm_tools.monerod import BlockHeader, Monerod

CHAIN_TOPIC = b"json-minimal-chain_main"
TXPOOL_TOPIC = b"json-minimal-txpool_add"
# With nothing from ZMQ for this long, the chain is compared over RPC anyway.
QUIET_SYNC_SECONDS = 10.0
RANGE = 100  # headers per get_block_headers_range call
# Frames taken from the socket before the loop looks at the stop signal and the quiet timer.
DRAIN = 10_000
# Pool messages handed to the producer at once; in a burst, each waits for at most this many.
BATCH = 500

_TX = schemas.MoneroTx.model_fields


@with_config(ConfigDict(strict=True))
class _PoolEntry(TypedDict):
    """One transaction of a `json-minimal-txpool_add` frame, checked with the monero.txpool
    model's own constraints on these fields, strictly (a JSON integer is an integer, not a
    string or a float); other keys are ignored."""

    id: Annotated[str, _TX["id"]]
    blob_size: Annotated[int, _TX["blob_size"]]
    weight: Annotated[int, _TX["weight"]]
    fee: Annotated[int, _TX["fee"]]


# A frame's body is parsed and validated in one call of pydantic-core's validator, without
# json.loads and a model per transaction; the message is encoded from the validated fields.
_VALIDATE_POOL = TypeAdapter(list[_PoolEntry]).validator.validate_json
_ENCODE_TX = schemas.wire_encoder(schemas.MoneroTx)
_TX_SCHEMA = _TX["schema_id"].default


class MoneroChain:
    chain = "monero"

    def __init__(self, rpc: Monerod, nettype: str):
        self.rpc = rpc
        self.nettype = nettype

    def tip_height(self) -> int:
        return self.rpc.tip_height()

    def hash_at(self, height: int) -> str:
        return self.rpc.header_at(height).hash

    def _message(self, header: BlockHeader, event: str = "connected") -> schemas.MoneroBlock:
        return schemas.MoneroBlock(
            seen_at=time.time(),
            event=event,  # type: ignore[arg-type]
            nettype=self.nettype,
            height=header.height,
            hash=header.hash,
            prev_hash=header.prev_hash,
            timestamp=header.timestamp,
            tx_count=header.num_txes,
            size=header.block_size,
        )

    def blocks(self, start: int, end: int) -> Iterable[schemas.MoneroBlock]:
        for first in range(start, end + 1, RANGE):
            for header in self.rpc.headers(first, min(end, first + RANGE - 1)):
                yield self._message(header)

    def disconnected(self, height: int, block_hash: str, prev_hash: str) -> schemas.MoneroBlock:
        # monerod keeps the blocks of a branch it left as alternative blocks; its header is
        # asked for by hash. If it is gone, what the bridge recorded is published.
        try:
            header = BlockHeader.model_validate(self.rpc.call("get_block_header_by_hash", hash=block_hash)["block_header"])
            return self._message(header, "disconnected")
        except Exception:  # noqa: BLE001 - any failure: fall back to what the state holds
            return schemas.MoneroBlock(
                seen_at=time.time(), event="disconnected", nettype=self.nettype, height=height, hash=block_hash,
                prev_hash=prev_hash or "0" * 64, timestamp=None, tx_count=None, size=None,
            )


def parse_json(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise Malformed(f"not JSON ({err})") from None


def _first_error(err: ValidationError) -> str:
    problem = err.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in problem["loc"])
    return f"{where}: {problem['msg']}" if where else problem["msg"]


def pool_messages(body: bytes, nettype: str, seen_at: float) -> list[tuple[bytes, bytes]]:
    """The monero.txpool messages of a `json-minimal-txpool_add` body, (key, value) each; the
    whole frame is refused if any entry is malformed."""
    try:
        entries = _VALIDATE_POOL(body)
    except ValidationError as err:
        raise Malformed(f"txpool_add: {_first_error(err)}") from None
    return [
        (entry["id"].encode(), _ENCODE_TX({"seen_at": seen_at, "schema": _TX_SCHEMA, "nettype": nettype, **entry}))
        for entry in entries
    ]


class MoneroSource:
    name = "monerod"

    def __init__(self, rpc_url: str, zmq_url: str):
        self.rpc = Monerod(rpc_url)
        self.zmq_url = zmq_url
        self.follower: ChainFollower | None = None

    def run(self, context: Context) -> None:
        import zmq

        view = MoneroChain(self.rpc, self.rpc.nettype())
        # One follower for the process, so Kafka is reconciled with the state file only once.
        if self.follower is None:
            self.follower = ChainFollower(context, view)
        follower = self.follower
        follower.view = view
        zmq_context = zmq.Context.instance()
        socket = zmq_context.socket(zmq.SUB)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RCVHWM, 100_000)
        for topic in (CHAIN_TOPIC, TXPOOL_TOPIC):
            socket.setsockopt(zmq.SUBSCRIBE, topic)
        socket.connect(self.zmq_url)
        try:
            self._follow(context, follower, view, socket)
        finally:
            socket.close(0)

    def _follow(self, context: Context, follower: ChainFollower, view: MoneroChain, socket: Any) -> None:
        import zmq

        follower.start("monero.blocks")
        send_tx = context.stream("monero.txpool")
        nettype = view.nettype
        recv, again, noblock = socket.recv, zmq.Again, zmq.NOBLOCK
        last_sync = time.monotonic()
        while not context.stop.is_set():
            if not socket.poll(500):
                if time.monotonic() - last_sync > QUIET_SYNC_SECONDS:
                    follower.sync()
                    last_sync = time.monotonic()
                continue
            # Everything already queued, without polling again for each message; pool messages
            # go to the producer a batch at a time.
            pool: list[tuple[bytes, bytes]] = []
            for _ in range(DRAIN):
                try:
                    part = recv(noblock, copy=False)
                except again:
                    break
                frame = part.bytes
                if part.more:
                    # monerod sends one part per message: the rest belongs to this one.
                    frame += b"".join(socket.recv_multipart())
                topic, sep, body = frame.partition(b":")
                try:
                    if topic == TXPOOL_TOPIC:
                        pool += pool_messages(body, nettype, time.time())
                        if len(pool) >= BATCH:
                            send_tx(pool)
                            pool = []
                    elif not sep:
                        raise Malformed("no topic separator")
                    elif topic == CHAIN_TOPIC:
                        if pool:
                            send_tx(pool)
                            pool = []
                        if not self._on_chain(follower, view, parse_json(body)):
                            follower.sync()
                            last_sync = time.monotonic()
                    else:
                        raise Malformed(f"unexpected topic {topic[:40]!r}")
                except Malformed as err:
                    context.malformed(self.name, "ZMQ frame", frame, str(err))
            if pool:
                send_tx(pool)

    def _on_chain(self, follower: ChainFollower, view: MoneroChain, body: Any) -> bool:
        """Publishes the notified blocks if they extend the published tip (their headers over
        RPC); False when the chain must be compared instead."""
        if not isinstance(body, dict) or not isinstance(body.get("first_height"), int) or not isinstance(body.get("ids"), list):
            raise Malformed("chain_main without first_height and ids")
        first, ids = body["first_height"], body["ids"]
        if not ids or not all(isinstance(i, str) and len(i) == 64 for i in ids):
            raise Malformed("chain_main with bad block ids")
        if follower.tip.height is None or first != follower.tip.height + 1 or body.get("first_prev_id") != follower.tip.hash:
            return all(follower.tip.hash_at(first + n) == block_id for n, block_id in enumerate(ids))
        for message in view.blocks(first, first + len(ids) - 1):
            if not follower.extend(message):
                return False
        return True
