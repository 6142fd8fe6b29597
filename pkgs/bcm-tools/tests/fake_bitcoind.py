"""A stand-in for bitcoind's ZMQ publisher and JSON-RPC server, for the events bridge tests.

bitcoind has no binary on the machines these tests run on (the VM tests run the real one). Its
blocks here are a real btcd's regtest blocks (`getblock HASH 0`, the same serialization as
bitcoind's): the stand-in reveals them one at a time, as if bitcoind had just connected them,
and publishes them the way bitcoind's ZMQ does: three frames, topic (`hashblock`, `rawblock`,
`rawtx`), body, and a 4-byte little-endian sequence number counted per topic. Blocks of a
competing branch (for a reorg) are made here, with regtest's proof of work. The JSON-RPC side
answers exactly the calls the bridge makes, from the blocks revealed so far, with bitcoind's
error codes.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import json
import os
import struct
import threading
from typing import Any

import zmq
from lnd_regtest import Btcd, free_port

REGTEST_TARGET = 0x7FFFFF << (8 * (0x20 - 3))  # bits 0x207fffff


def sha256d(data: bytes) -> bytes:
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def script_number(n: int) -> bytes:
    """BIP-34's height push: a minimal little-endian number."""
    out = bytearray()
    while n:
        out.append(n & 0xFF)
        n >>= 8
    if out and out[-1] & 0x80:
        out.append(0)
    return bytes([len(out)]) + bytes(out)


def make_block(prev_hash: str, prev_time: int, height: int) -> bytes:
    """A regtest block on `prev_hash` holding only a coinbase, its nonce ground to the target."""
    script_sig = script_number(height) + os.urandom(8)
    coinbase = (
        struct.pack("<I", 1) + b"\x01" + b"\x00" * 32 + b"\xff\xff\xff\xff" + bytes([len(script_sig)]) + script_sig
        + b"\xff\xff\xff\xff" + b"\x01" + struct.pack("<q", 0) + b"\x01\x51" + struct.pack("<I", 0)
    )  # fmt: skip
    merkle = sha256d(coinbase)
    for nonce in range(1 << 32):
        header = struct.pack("<I", 0x20000000) + bytes.fromhex(prev_hash)[::-1] + merkle + struct.pack("<III", prev_time + 1, 0x207FFFFF, nonce)
        if int.from_bytes(sha256d(header), "little") <= REGTEST_TARGET:
            return header + b"\x01" + coinbase
    raise AssertionError("no nonce")


def block_hash(raw: bytes) -> str:
    return sha256d(raw[:80])[::-1].hex()


class FakeBitcoind:
    """Reveals btcd's blocks as bitcoind's best chain; see the module docstring."""

    def __init__(self, btcd: Btcd, start_height: int):
        self.btcd = btcd
        self.user, self.password = "events", "p/ss#word?"
        self.rpc_port = free_port()
        self.zmq_port = free_port()
        self.chain: list[str] = [btcd.cli("getblockhash", str(h)) for h in range(start_height + 1)]
        self.raw: dict[str, bytes] = {}
        self.mempool: dict[str, int] = {}
        self.sequences: dict[bytes, int] = {}
        self.calls: list[str] = []
        self._lock = threading.Lock()
        self._zmq = zmq.Context.instance().socket(zmq.PUB)
        self._zmq.bind(f"tcp://127.0.0.1:{self.zmq_port}")
        self._server: http.server.ThreadingHTTPServer | None = None
        self.start_rpc()

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.rpc_port}"

    @property
    def zmq_url(self) -> str:
        return f"tcp://127.0.0.1:{self.zmq_port}"

    # -- blocks ---------------------------------------------------------------------------

    def raw_block(self, h: str) -> bytes:
        if h not in self.raw:
            self.raw[h] = bytes.fromhex(self.btcd.cli("getblock", h, "0"))
        return self.raw[h]

    def reveal(self, count: int, drop: set[int] | None = None) -> list[str]:
        """Connects btcd's next `count` blocks; the `drop`-th of them (0-based) are not published."""
        revealed = []
        for n in range(count):
            h = self.btcd.cli("getblockhash", str(len(self.chain)))
            with self._lock:
                self.chain.append(h)
            revealed.append(h)
            self._announce(h, published=n not in (drop or set()))
        return revealed

    def fork(self, depth: int, count: int) -> list[str]:
        """Replaces the newest `depth` blocks by `count` new ones (a reorg); returns the new hashes."""
        with self._lock:
            del self.chain[-depth:]
        made = []
        for _ in range(count):
            prev = self.chain[-1]
            prev_time = struct.unpack("<I", self.raw_block(prev)[68:72])[0]
            raw = make_block(prev, prev_time, len(self.chain))
            h = block_hash(raw)
            self.raw[h] = raw
            with self._lock:
                self.chain.append(h)
            made.append(h)
            self._announce(h, published=True)
        return made

    def _announce(self, h: str, published: bool) -> None:
        for topic, body in ((b"hashblock", bytes.fromhex(h)), (b"rawblock", self.raw_block(h))):
            sequence = self.sequences.get(topic, -1) + 1
            self.sequences[topic] = sequence
            if published:
                self._zmq.send_multipart([topic, body, struct.pack("<I", sequence)])

    def publish(self, topic: bytes, body: bytes) -> None:
        """One message on `topic`, with the next sequence number."""
        sequence = self.sequences.get(topic, -1) + 1
        self.sequences[topic] = sequence
        self._zmq.send_multipart([topic, body, struct.pack("<I", sequence)])

    def send_frames(self, frames: list[bytes]) -> None:
        self._zmq.send_multipart(frames)

    # -- JSON-RPC -------------------------------------------------------------------------

    def _answer(self, method: str, params: list[Any]) -> Any:
        with self._lock:
            chain = list(self.chain)
        if method == "getblockchaininfo":
            return {"chain": "regtest", "blocks": len(chain) - 1, "headers": len(chain) - 1}
        if method == "getblockcount":
            return len(chain) - 1
        if method == "getblockhash":
            if not 0 <= params[0] < len(chain):
                raise LookupError(-8, "Block height out of range")
            return chain[params[0]]
        if method == "getblock":
            if params[0] not in self.raw and params[0] not in chain:
                raise LookupError(-5, "Block not found")
            if len(params) < 2 or params[1] != 0:
                raise LookupError(-8, "the stand-in serves verbosity 0 only")
            return self.raw_block(params[0]).hex()
        if method == "getmempoolentry":
            if params[0] not in self.mempool:
                raise LookupError(-5, "Transaction not in mempool")
            return {"vsize": 0, "fees": {"base": self.mempool[params[0]] / 100_000_000}}
        raise LookupError(-32601, "Method not found")

    def start_rpc(self) -> None:
        fake = self
        expected = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.end_headers()
                    return
                request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.calls.append(request["method"])
                try:
                    reply = {"result": fake._answer(request["method"], request.get("params", [])), "error": None, "id": request["id"]}
                    status = 200
                except LookupError as err:
                    code, message = err.args
                    reply = {"result": None, "error": {"code": code, "message": message}, "id": request["id"]}
                    status = 404 if code == -32601 else 500
                body = json.dumps(reply).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", self.rpc_port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop_rpc(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def close(self) -> None:
        self.stop_rpc()
        self._zmq.close(0)
