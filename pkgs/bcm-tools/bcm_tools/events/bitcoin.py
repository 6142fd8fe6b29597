"""bitcoind's events: blocks (`bitcoin.blocks`) and mempool additions (`bitcoin.txs`).

bitcoind's ZMQ publishers send three frames: the topic (`rawblock`, `hashblock`, `rawtx`), the
body, and a 4-byte little-endian sequence number counted per topic. A jump in the sequence
means messages were dropped (the subscriber fell behind, or reconnected): the bridge then
compares the chain over RPC and backfills. Blocks are read from the raw bytes here; over RPC
the bridge calls only getblockchaininfo, getblockcount, getblockhash, getblock (raw) and
getmempoolentry (for a transaction's fee).
"""

from __future__ import annotations

import hashlib
import logging
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from bcm_tools.bitcoind import Bitcoind, RpcEndpoint
from bcm_tools.errors import DaemonError
from bcm_tools.events import schemas
from bcm_tools.events.bridge import ChainFollower, Context, Malformed

log = logging.getLogger("bcm.events")

QUIET_SYNC_SECONDS = 10.0


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


class _Reader:
    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise Malformed(f"truncated at byte {self.pos} (wanted {n} more of {len(self.data)})")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def varint(self) -> int:
        first = self.take(1)[0]
        if first < 0xFD:
            return first
        size = {0xFD: 2, 0xFE: 4, 0xFF: 8}[first]
        return int.from_bytes(self.take(size), "little")

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]


@dataclass(frozen=True)
class Tx:
    txid: str
    wtxid: str
    size: int
    vsize: int


def _read_tx(reader: _Reader) -> Tx:
    """One transaction (BIP-144 serialization, witness optional) from `reader`."""
    start = reader.pos
    reader.take(4)  # version
    segwit = reader.data[reader.pos : reader.pos + 2] == b"\x00\x01"
    if segwit:
        reader.take(2)
    inputs_at = reader.pos
    n_in = reader.varint()
    if n_in > 100_000:
        raise Malformed(f"{n_in} inputs")
    for _ in range(n_in):
        reader.take(36)
        reader.take(reader.varint())
        reader.take(4)
    n_out = reader.varint()
    if n_out > 100_000:
        raise Malformed(f"{n_out} outputs")
    for _ in range(n_out):
        reader.take(8)
        reader.take(reader.varint())
    outputs_end = reader.pos
    if segwit:
        for _ in range(n_in):
            for _ in range(reader.varint()):
                reader.take(reader.varint())
    locktime = reader.take(4)
    whole = reader.data[start : reader.pos]
    base = reader.data[start : start + 4] + reader.data[inputs_at:outputs_end] + locktime
    weight = len(base) * 3 + len(whole)
    return Tx(txid=sha256d(base)[::-1].hex(), wtxid=sha256d(whole)[::-1].hex(), size=len(whole), vsize=(weight + 3) // 4)


def parse_tx(raw: bytes) -> Tx:
    reader = _Reader(raw)
    tx = _read_tx(reader)
    if reader.pos != len(raw):
        raise Malformed(f"{len(raw) - reader.pos} bytes after the transaction")
    return tx


@dataclass(frozen=True)
class Block:
    hash: str
    prev_hash: str
    time: int
    tx_count: int
    size: int


def parse_block(raw: bytes) -> Block:
    """A serialized block: header, then every transaction, read to the last byte."""
    reader = _Reader(raw)
    header = reader.take(80)
    count = reader.varint()
    if count < 1 or count > len(raw) // 60:
        raise Malformed(f"{count} transactions")
    for _ in range(count):
        _read_tx(reader)
    if reader.pos != len(raw):
        raise Malformed(f"{len(raw) - reader.pos} bytes after the last transaction")
    return Block(
        hash=sha256d(header)[::-1].hex(),
        prev_hash=header[4:36][::-1].hex(),
        time=struct.unpack("<I", header[68:72])[0],
        tx_count=count,
        size=len(raw),
    )


def block_message(block: Block, height: int, chain: str, event: str = "connected") -> schemas.BitcoinBlock:
    return schemas.BitcoinBlock(
        seen_at=time.time(), event=event, chain=chain, height=height, hash=block.hash,  # type: ignore[arg-type]
        prev_hash=block.prev_hash, time=block.time, tx_count=block.tx_count, size=block.size,
    )  # fmt: skip


class BitcoinChain:
    chain = "bitcoin"

    def __init__(self, rpc: Bitcoind, chain_name: str):
        self.rpc = rpc
        self.chain_name = chain_name

    def tip_height(self) -> int:
        return self.rpc.tip_height()

    def hash_at(self, height: int) -> str:
        return str(self.rpc.call("getblockhash", height))

    def _block(self, block_hash: str) -> Block:
        raw = self.rpc.call("getblock", block_hash, 0)
        try:
            return parse_block(bytes.fromhex(raw))
        except (ValueError, TypeError) as err:
            raise Malformed(f"getblock {block_hash}: not a hex block ({err})") from None

    def blocks(self, start: int, end: int) -> Iterable[schemas.BitcoinBlock]:
        for height in range(start, end + 1):
            yield block_message(self._block(self.hash_at(height)), height, self.chain_name)

    def disconnected(self, height: int, block_hash: str, prev_hash: str) -> schemas.BitcoinBlock:
        # bitcoind keeps the blocks of a branch it left; the message carries their header. A
        # pruned one is gone: what the bridge recorded is published.
        try:
            return block_message(self._block(block_hash), height, self.chain_name, "disconnected")
        except (DaemonError, Malformed):
            return schemas.BitcoinBlock(
                seen_at=time.time(), event="disconnected", chain=self.chain_name, height=height, hash=block_hash,
                prev_hash=prev_hash or "0" * 64, time=None, tx_count=None, size=None,
            )


class BitcoinSource:
    name = "bitcoind"
    TOPICS = (b"rawblock", b"hashblock", b"rawtx")

    def __init__(self, endpoint: RpcEndpoint, zmq_block: str, zmq_tx: str | None):
        self.rpc = Bitcoind(endpoint)
        self.addresses = [zmq_block] + ([zmq_tx] if zmq_tx and zmq_tx != zmq_block else [])
        self.with_txs = zmq_tx is not None
        self.follower: ChainFollower | None = None

    def run(self, context: Context) -> None:
        import zmq

        view = BitcoinChain(self.rpc, self.rpc.chain())
        if self.follower is None:
            self.follower = ChainFollower(context, view)
        follower = self.follower
        follower.view = view
        socket = zmq.Context.instance().socket(zmq.SUB)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.RCVHWM, 100_000)
        for topic in self.TOPICS if self.with_txs else self.TOPICS[:2]:
            socket.setsockopt(zmq.SUBSCRIBE, topic)
        for address in self.addresses:
            socket.connect(address)
        sequences: dict[bytes, int] = {}
        try:
            follower.start("bitcoin.blocks")
            last_sync = time.monotonic()
            while not context.stop.is_set():
                if not socket.poll(500):
                    if time.monotonic() - last_sync > QUIET_SYNC_SECONDS:
                        follower.sync()
                        last_sync = time.monotonic()
                    continue
                frames = socket.recv_multipart()
                try:
                    topic, body, sequence = self._frames(frames)
                    expected = sequences.get(topic)
                    sequences[topic] = sequence
                    if expected is not None and sequence != (expected + 1) & 0xFFFFFFFF:
                        context.metrics.add("bcm_events_sequence_gaps_total", source=self.name)
                        log.warning(
                            "%s: %s sequence jumped from %d to %d: %d messages were dropped; backfilling over RPC",
                            self.name, topic.decode(), expected, sequence, (sequence - expected - 1) & 0xFFFFFFFF,
                        )  # fmt: skip
                        follower.sync()
                        last_sync = time.monotonic()
                    if topic == b"rawblock":
                        block = parse_block(body)
                        height = (follower.tip.height or 0) + 1
                        if not follower.extend(block_message(block, height, view.chain_name)):
                            follower.sync()
                            last_sync = time.monotonic()
                    elif topic == b"hashblock":
                        if len(body) != 32:
                            raise Malformed(f"hashblock of {len(body)} bytes")
                        # rawblock usually comes too; a hash not yet published is caught up over RPC.
                        if not follower.tip.knows(body.hex()):
                            follower.sync()
                            last_sync = time.monotonic()
                    else:
                        self._on_tx(context, view.chain_name, parse_tx(body))
                except Malformed as err:
                    context.malformed(self.name, f"ZMQ {frames[0][:16].decode('ascii', 'replace')} message", b"".join(frames), str(err))
        finally:
            socket.close(0)

    @staticmethod
    def _frames(frames: list[bytes]) -> tuple[bytes, bytes, int]:
        if len(frames) != 3:
            raise Malformed(f"{len(frames)} frames, not 3 (topic, body, sequence)")
        topic, body, sequence = frames
        if topic not in BitcoinSource.TOPICS:
            raise Malformed(f"unexpected topic {topic[:32]!r}")
        if len(sequence) != 4:
            raise Malformed(f"sequence of {len(sequence)} bytes")
        return topic, body, struct.unpack("<I", sequence)[0]

    def _on_tx(self, context: Context, chain: str, tx: Tx) -> None:
        # The fee is known while the transaction is in the mempool and RPC answers; a
        # transaction already mined or evicted, or RPC being down, leaves it null.
        fee: int | None = None
        try:
            entry = self.rpc.call("getmempoolentry", tx.txid)
            fee = int(Decimal(str(entry["fees"]["base"])) * 100_000_000)
        except DaemonError:
            pass
        except (KeyError, TypeError, ValueError, ArithmeticError):
            context.malformed(self.name, "getmempoolentry reply", repr(entry).encode(), "no fees.base")
        context.send(schemas.BitcoinTx(seen_at=time.time(), chain=chain, txid=tx.txid, wtxid=tx.wtxid, size=tx.size, vsize=tx.vsize, fee_sat=fee))
