"""`bcm-tools events bridge` with a real Kafka broker (from the bcm.kafka module's rendered
server.properties, SASL/PLAIN) and a real monerod in regtest, on 127.0.0.1.

monerod publishes its JSON over ZMQ; blocks come from `generateblocks`, a reorg from
`pop_blocks` followed by new blocks on the shortened chain."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from events_stack import Bridge, Monerod, stop_all_bridges
from kafka_broker import KafkaBroker
from lnd_regtest import wait_for

pytestmark = [pytest.mark.kafka, pytest.mark.monerod, pytest.mark.repo]

PREFIX = "regtest1"


@pytest.fixture(autouse=True)
def _stop_bridges():
    yield
    stop_all_bridges()


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    broker.start()
    broker.create_topics([f"{PREFIX}.monero.blocks"], partitions=1)
    broker.create_topics([f"{PREFIX}.monero.txpool"], partitions=3)
    yield broker
    broker.stop()


@pytest.fixture
def monerod(tmp_path):
    node = Monerod(tmp_path / "monerod")
    node.start()
    yield node
    node.stop()


def make_bridge(broker: KafkaBroker, monerod: Monerod, directory: Path, prefix: str = PREFIX) -> Bridge:
    directory.mkdir(parents=True, exist_ok=True)
    properties = broker.client_properties(directory / "events.properties")
    return Bridge(
        directory,
        [
            f"--kafka={broker.bootstrap}", f"--kafka-properties={properties}", f"--topic-prefix={prefix}",
            f"--state={directory / 'state.json'}", f"--monerod-rpc={monerod.rpc_url}", f"--monerod-zmq={monerod.zmq_url}",
        ],
    )  # fmt: skip


def blocks(broker: KafkaBroker, prefix: str = PREFIX) -> list[dict]:
    return [value for _key, value in broker.read_all(f"{prefix}.monero.blocks")]


def wait_published(bridge: Bridge, count: int, timeout: float = 120) -> None:
    wait_for(
        f"{count} monero blocks published",
        lambda: bridge.metric('bcm_events_published_total{topic="monero.blocks"}') >= count,
        timeout=timeout,
    )


def test_fifty_blocks_arrive_in_order_and_a_sigkill_leaves_no_gap_and_no_duplicate(broker, monerod, tmp_path):
    bridge = make_bridge(broker, monerod, tmp_path / "bridge")
    bridge.start()
    wait_for("the bridge at monerod's tip", lambda: "starting at the tip" in bridge.output(), timeout=60)
    start = monerod.height()
    mined = monerod.mine(50)
    wait_published(bridge, 50)
    got = blocks(broker)
    assert [m["height"] for m in got] == list(range(start + 1, start + 51))
    assert [m["hash"] for m in got] == mined
    assert all(m["event"] == "connected" and m["schema"] == "monero.blocks/1" and m["nettype"] == "fakechain" for m in got)
    for parent, child in zip(got, got[1:]):
        assert child["prev_hash"] == parent["hash"]

    # Killed mid-stream: blocks keep coming while it is dead and while it starts again.
    more = []
    for _ in range(5):
        more += monerod.mine(4)
    bridge.kill()
    more += monerod.mine(15)
    bridge.start()
    more += monerod.mine(5)
    tip = monerod.height()
    wait_for("every block in Kafka", lambda: blocks(broker)[-1]["height"] == tip, timeout=120, interval=1)
    got = blocks(broker)
    keys = [m["hash"] for m in got]
    assert len(keys) == len(set(keys)), "a block was published twice"
    assert [m["height"] for m in got] == list(range(start + 1, tip + 1))
    assert keys[50:] == more
    assert bridge.metric('bcm_events_backfilled_blocks_total{chain="monero"}') >= 1
    assert bridge.stop() == 0


def test_reorg_is_published_as_disconnects_before_the_new_branch(broker, monerod, tmp_path):
    prefix = "reorg"
    broker.create_topics([f"{prefix}.monero.blocks"], partitions=1)
    broker.create_topics([f"{prefix}.monero.txpool"], partitions=1)
    bridge = make_bridge(broker, monerod, tmp_path / "bridge", prefix)
    bridge.start()
    wait_for("the bridge at monerod's tip", lambda: "starting at the tip" in bridge.output(), timeout=60)
    old = monerod.mine(6)
    wait_published(bridge, 6)
    monerod.pop(3)
    time.sleep(1)  # monerod's block timestamps are in seconds: the new branch differs from the old
    new = monerod.mine(4)
    tip = monerod.height()
    wait_for("the new branch in Kafka", lambda: blocks(broker, prefix)[-1]["hash"] == new[-1], timeout=120, interval=1)
    got = blocks(broker, prefix)
    events = [(m["event"], m["hash"]) for m in got]
    assert events == (
        [("connected", h) for h in old]
        + [("disconnected", h) for h in reversed(old[3:])]
        + [("connected", h) for h in new]
    )
    assert [m["height"] for m in got[-4:]] == list(range(tip - 3, tip + 1))
    # The newest old block goes first, with its height and parent; monerod dropped the popped
    # blocks, so what only their header said is null.
    assert (got[6]["height"], got[6]["prev_hash"]) == (got[5]["height"], got[4]["hash"])
    assert got[6]["timestamp"] is None
    assert bridge.metric('bcm_events_reorgs_total{chain="monero"}') == 1
    bridge.stop()


def test_broker_restart_while_blocks_keep_coming_loses_nothing(broker, monerod, tmp_path):
    prefix = "restart"
    broker.create_topics([f"{prefix}.monero.blocks"], partitions=1)
    broker.create_topics([f"{prefix}.monero.txpool"], partitions=1)
    bridge = make_bridge(broker, monerod, tmp_path / "bridge", prefix)
    bridge.start()
    wait_for("the bridge at monerod's tip", lambda: "starting at the tip" in bridge.output(), timeout=60)
    start = monerod.height()
    mined = monerod.mine(5)
    broker.stop()
    mined += monerod.mine(10)  # published while the broker is away: held and retried
    broker.start()
    mined += monerod.mine(5)
    wait_for("every block after the restart", lambda: [m["hash"] for m in blocks(broker, prefix)] == mined, timeout=180, interval=1)
    assert [m["height"] for m in blocks(broker, prefix)] == list(range(start + 1, start + 21))
    assert bridge.proc is not None and bridge.proc.poll() is None
    assert bridge.stop() == 0


def test_pool_frames_arrive_and_garbage_on_the_feed_is_counted_and_skipped(broker, monerod, tmp_path):
    """monerod's pool cannot be filled on regtest without a wallet, so the feed here is a ZMQ
    publisher of the test's, sending frames in monerod's `json-minimal-txpool_add` format and
    garbage among them; monerod itself answers the bridge's RPC."""
    import json
    import secrets

    import zmq
    from lnd_regtest import free_port

    prefix = "pool"
    broker.create_topics([f"{prefix}.monero.blocks"], partitions=1)
    broker.create_topics([f"{prefix}.monero.txpool"], partitions=3)
    port = free_port()
    feed = zmq.Context.instance().socket(zmq.PUB)
    feed.bind(f"tcp://127.0.0.1:{port}")
    try:
        directory = tmp_path / "bridge"
        directory.mkdir()
        bridge = Bridge(
            directory,
            [
                f"--kafka={broker.bootstrap}", f"--kafka-properties={broker.client_properties(directory / 'events.properties')}",
                f"--topic-prefix={prefix}", f"--state={directory / 'state.json'}", f"--monerod-rpc={monerod.rpc_url}",
                f"--monerod-zmq=tcp://127.0.0.1:{port}",
            ],
        )  # fmt: skip
        bridge.start()
        wait_for("the bridge at monerod's tip", lambda: "starting at the tip" in bridge.output(), timeout=60)

        def entry() -> dict:
            return {"id": secrets.token_hex(32), "blob_size": 1534, "weight": 1536, "fee": 30680000}

        def pool(*entries: dict) -> bytes:
            return b"json-minimal-txpool_add:" + json.dumps(list(entries)).encode()

        def published() -> float:
            return bridge.metric('bcm_events_published_total{topic="monero.txpool"}')

        # A subscriber misses what is sent before it is connected: send until one arrives.
        wait_for("the feed subscribed", lambda: (feed.send(pool(entry())), time.sleep(0.2), published() >= 1)[-1], timeout=30)
        before = published()
        good = [entry(), entry(), entry()]
        # Each passes the subscription's topic prefixes, so the bridge receives it.
        garbage = [
            [b"json-minimal-chain_main"],
            [b"json-minimal-txpool_add:{not json"],
            [pool({**entry(), "fee": "30680000"})],
            [pool(entry(), {**entry(), "id": "Z" * 64})],
            [b"json-minimal-txpool_addition:[]"],
            [b'json-minimal-chain_main:{"first_height": "x"}'],
            [pool(entry()), b"a second part"],
        ]
        feed.send(pool(good[0], good[1]))
        for frames in garbage:
            feed.send_multipart(frames)
        feed.send(pool(good[2]))
        wait_for("the garbage counted", lambda: bridge.metric('bcm_events_malformed_total{source="monerod"}') == len(garbage), timeout=30)
        wait_for("the good entries published", lambda: published() == before + 3, timeout=30)
        by_key = {key.decode(): value for key, value in broker.read_all(f"{prefix}.monero.txpool")}
        for sent in good:
            assert by_key[sent["id"]] == {**by_key[sent["id"]], **sent, "schema": "monero.txpool/1", "nettype": "fakechain"}
        assert "skipped a malformed ZMQ frame of" in bridge.output()
        assert bridge.metric('bcm_events_source_up{source="monerod"}') == 1
        assert bridge.stop() == 0
    finally:
        feed.close(0)


def test_a_stream_batch_larger_than_the_producers_queue_waits_for_room_and_loses_nothing(broker):
    """The producer's queue holds 10 messages here: a batch of 250 is queued in parts as the
    broker acknowledges the earlier ones, in order within each key's partition, each reported once."""
    from bcm_tools import kafka

    topic = "queue-full.monero.txpool"
    broker.create_topics([topic], partitions=3)
    producer = kafka.Producer(broker.client_config("events"), **{"queue.buffering.max.messages": 10})
    reports: list[tuple[str | None, bytes | None]] = []
    try:
        send = producer.stream(topic, lambda err, key: reports.append((err, key)))
        batch = [(f"key-{n % 7}".encode(), f'{{"n": {n}}}'.encode()) for n in range(250)]
        send(batch)
        assert producer.flush(60) == 0
    finally:
        producer.close()
    assert sorted(reports) == sorted((None, key) for key, _ in batch)
    got = broker.read_all(topic)
    for key in {key for key, _ in batch}:
        assert [value["n"] for k, value in got if k == key] == [n for n in range(250) if f"key-{n % 7}".encode() == key]
