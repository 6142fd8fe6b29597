"""`bcm-tools events bridge` on bitcoind's ZMQ and RPC, into a real Kafka broker.

bitcoind has no binary on these machines: a stand-in (fake_bitcoind.py, its docstring says how
far it goes) publishes a real btcd's regtest blocks in bitcoind's ZMQ format and answers the
bridge's backfill calls over JSON-RPC. The VM tests run the real bitcoind. Values the bridge
reads from the raw bytes (block hashes, txids, wtxids, sizes) are compared with what btcd says
of the same blocks. The last test runs a real monerod beside it, to show one source being down
does not hold up another.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest
from events_stack import Bridge, Monerod, stop_all_bridges
from fake_bitcoind import FakeBitcoind
from kafka_broker import KafkaBroker
from lnd_regtest import BURN_ADDRESS, Btcd, require_daemons, wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.btcd, pytest.mark.repo]

# Segwit activates on btcd's regtest after three 144-block signalling periods: blocks after it
# carry witness data (the coinbase's witness reserved value).
SEGWIT_HEIGHT = 432


@pytest.fixture(autouse=True)
def _stop_bridges():
    yield
    stop_all_bridges()


@pytest.fixture(scope="module")
def btcd(tmp_path_factory):
    node = Btcd(Path(require_daemons()["BTCD_BIN"]), tmp_path_factory.mktemp("btcd"))
    node.start(mining_address=BURN_ADDRESS)
    node.mine(SEGWIT_HEIGHT + 40)
    yield node
    node.stop()


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    broker.start()
    yield broker
    broker.stop()


def start_bridge(broker: KafkaBroker, fake: FakeBitcoind, directory: Path, prefix: str, extra: list[str] | None = None) -> Bridge:
    broker.create_topics([f"{prefix}.bitcoin.blocks"], partitions=1)
    broker.create_topics([f"{prefix}.bitcoin.txs"], partitions=2)
    directory.mkdir(parents=True, exist_ok=True)
    password = directory / "rpc-password"
    password.write_text(fake.password + "\n")
    bridge = Bridge(
        directory,
        [
            f"--kafka={broker.bootstrap}", f"--kafka-properties={broker.client_properties(directory / 'events.properties')}",
            f"--topic-prefix={prefix}", f"--state={directory / 'state.json'}",
            f"--bitcoind-rpc={fake.rpc_url}", f"--bitcoind-rpc-user={fake.user}", f"--bitcoind-rpc-password-file={password}",
            f"--bitcoind-zmq-block={fake.zmq_url}", f"--bitcoind-zmq-tx={fake.zmq_url}", *(extra or []),
        ],
    )  # fmt: skip
    bridge.start()
    wait_for("the bridge at the tip", lambda: "bitcoin: starting at the tip" in bridge.output(), timeout=60)
    return bridge


def read(broker: KafkaBroker, topic: str) -> list[dict]:
    return [value for _key, value in broker.read_all(topic)]


def test_blocks_gaps_garbage_reorg_and_mempool(btcd, broker, tmp_path):
    fake = FakeBitcoind(btcd, start_height=SEGWIT_HEIGHT)
    prefix = "btc"
    topic = f"{prefix}.bitcoin.blocks"
    try:
        bridge = start_bridge(broker, fake, tmp_path / "bridge", prefix)

        def wait_tip() -> list[dict]:
            tip = fake.chain[-1]
            return wait_for("the stand-in's tip in Kafka", lambda: (m := read(broker, topic)) and m[-1]["hash"] == tip and m, timeout=60, interval=0.5)

        # Blocks as bitcoind connects them, with btcd's own hashes at btcd's heights.
        revealed = fake.reveal(3)
        got = wait_tip()
        assert [(m["height"], m["hash"]) for m in got] == [(SEGWIT_HEIGHT + 1 + n, h) for n, h in enumerate(revealed)]
        assert all(m["chain"] == "regtest" and m["event"] == "connected" and m["tx_count"] == 1 for m in got)
        assert [m["size"] for m in got] == [len(fake.raw_block(h)) for h in revealed]

        # A dropped notification: the next one's sequence number jumps, the bridge backfills.
        revealed += fake.reveal(3, drop={0, 1})
        got = wait_tip()
        assert [m["hash"] for m in got] == revealed
        assert bridge.metric('bcm_events_sequence_gaps_total{source="bitcoind"}') == 2  # hashblock's and rawblock's
        assert bridge.metric('bcm_events_backfilled_blocks_total{chain="bitcoin"}') >= 2

        # Garbage: counted, skipped, and the bridge goes on.
        fake.publish(b"rawblock", os.urandom(300))
        fake.publish(b"rawblock", fake.raw_block(revealed[-1])[:-7])
        fake.publish(b"rawtx", b"\x02\x00\x00\x00\x01")
        fake.publish(b"hashblock", b"\x00" * 5)
        fake.send_frames([b"rawblock", b"two frames only"])
        fake.send_frames([b"hashblock", bytes(32), b"\x01"])
        wait_for("six malformed frames counted", lambda: bridge.metric('bcm_events_malformed_total{source="bitcoind"}') == 6, timeout=30)
        assert "skipped a malformed ZMQ rawblock message of" in bridge.output()
        revealed += fake.reveal(1)
        assert [m["hash"] for m in wait_tip()] == revealed

        # A reorg: the two newest blocks leave, three new ones come.
        new = fake.fork(2, 3)
        got = wait_tip()
        tail = [(m["event"], m["hash"], m["height"]) for m in got[len(revealed):]]
        top = SEGWIT_HEIGHT + len(revealed)
        assert tail == [("disconnected", revealed[-1], top), ("disconnected", revealed[-2], top - 1)] + [
            ("connected", h, top - 1 + n) for n, h in enumerate(new)
        ]
        assert bridge.metric('bcm_events_reorgs_total{chain="bitcoin"}') == 1

        # Mempool: a coinbase of btcd's (btcd gives its size, vsize and hashes) and a segwit
        # transaction made here (btcd's decoderawtransaction gives its txid); one has a known fee.
        coinbase = btcd.cli("getblock", btcd.cli("getblockhash", str(SEGWIT_HEIGHT + 20)), "2")["rawtx"][0]
        inputs = b"\x01" + os.urandom(32) + struct.pack("<I", 0) + b"\x00" + b"\xfd\xff\xff\xff"
        outputs = b"\x01" + struct.pack("<q", 90_000) + b"\x16\x00\x14" + os.urandom(20)
        witness = b"\x02" + b"\x48" + os.urandom(72) + b"\x21" + os.urandom(33)
        stripped = struct.pack("<I", 2) + inputs + outputs + struct.pack("<I", 0)
        segwit = struct.pack("<I", 2) + b"\x00\x01" + inputs + outputs + witness + struct.pack("<I", 0)
        segwit_txid = btcd.cli("decoderawtransaction", segwit.hex())["txid"]
        fake.mempool[segwit_txid] = 1234
        fake.publish(b"rawtx", bytes.fromhex(coinbase["hex"]))
        fake.publish(b"rawtx", segwit)
        got_txs = wait_for("two mempool txs", lambda: len(m := read(broker, f"{prefix}.bitcoin.txs")) == 2 and m, timeout=30, interval=0.5)
        by_txid = {m["txid"]: m for m in got_txs}
        published = by_txid[coinbase["txid"]]
        assert (published["wtxid"], published["size"], published["vsize"], published["fee_sat"]) == (coinbase["hash"], coinbase["size"], coinbase["vsize"], None)
        published = by_txid[segwit_txid]
        assert published["wtxid"] != segwit_txid and published["size"] == len(segwit)
        assert published["vsize"] == -(-(len(stripped) * 3 + len(segwit)) // 4) and published["fee_sat"] == 1234
        assert set(fake.calls) <= {"getblockchaininfo", "getblockcount", "getblockhash", "getblock", "getmempoolentry"}
        assert bridge.stop() == 0
    finally:
        fake.close()


@pytest.mark.monerod
def test_a_down_source_is_retried_while_another_flows(btcd, broker, tmp_path):
    fake = FakeBitcoind(btcd, start_height=SEGWIT_HEIGHT)
    monerod = Monerod(tmp_path / "monerod")
    monerod.start()
    prefix = "both"
    broker.create_topics([f"{prefix}.monero.blocks"], partitions=1)
    broker.create_topics([f"{prefix}.monero.txpool"], partitions=1)
    try:
        bridge = start_bridge(
            broker, fake, tmp_path / "bridge", prefix, [f"--monerod-rpc={monerod.rpc_url}", f"--monerod-zmq={monerod.zmq_url}"]
        )
        wait_for("monero followed", lambda: "monero: starting at the tip" in bridge.output(), timeout=60)
        fake.stop_rpc()
        fake.reveal(2)  # announced, but its RPC is gone: the bitcoind source fails and is retried
        wait_for("bitcoind reported down", lambda: bridge.metric('bcm_events_source_up{source="bitcoind"}') == 0, timeout=60)
        assert "bitcoind is down: cannot reach bitcoind at 127.0.0.1" in bridge.output()
        mined = monerod.mine(5)
        wait_for("monero blocks while bitcoind is down", lambda: [m["hash"] for m in read(broker, f"{prefix}.monero.blocks")] == mined, timeout=60, interval=0.5)

        fake.start_rpc()
        wait_for("bitcoind followed again", lambda: bridge.metric('bcm_events_source_up{source="bitcoind"}') == 1, timeout=60)
        wait_for("bitcoin caught up", lambda: [m["hash"] for m in read(broker, f"{prefix}.bitcoin.blocks")] == fake.chain[-2:], timeout=60, interval=0.5)
        assert bridge.metric('bcm_events_source_failures_total{source="bitcoind"}') >= 1
        assert bridge.stop() == 0
    finally:
        fake.close()
        monerod.stop()
