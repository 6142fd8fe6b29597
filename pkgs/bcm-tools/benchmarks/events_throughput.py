"""Throughput and latency of the events bridge into a real Kafka broker.

A burst of monerod-style pool notifications (`json-minimal-txpool_add` frames, one transaction
each) goes through the bridge's monerod source (ZMQ receive, parse, validate into the
monero.txpool model, encode, key, the idempotent producer) into a real broker (Kafka from
scripts/test.d/18-kafka, the bcm.kafka module's settings, SASL/PLAIN on loopback). The frames
come from a ZMQ publisher here, standing in for monerod's, which cannot be made to fill its
pool this fast; monerod itself (regtest) answers the source's RPC. The same messages are then
sent by a plain confluent-kafka producer with the same settings, in the same run.

Reported: (a) sustained messages per second through the bridge, as a ratio to the plain
producer's; (b) p50/p99 latency from the frame leaving the publisher to the broker's
acknowledgement, at a paced 1,000 events/s. Goals: at least 70 % of the plain rate, p99 under
20 ms. Prints JSON.

    python benchmarks/events_throughput.py [--burst 50000] [--paced-seconds 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path.insert(0, str(TESTS))

import zmq  # noqa: E402
from events_stack import Monerod  # noqa: E402
from kafka_broker import KafkaBroker  # noqa: E402
from lnd_regtest import free_port, wait_for  # noqa: E402

from bcm_tools import kafka  # noqa: E402
from bcm_tools.events.bridge import Context, Metrics  # noqa: E402
from bcm_tools.events.monero import MoneroSource  # noqa: E402
from bcm_tools.events.state import StateFile  # noqa: E402


class TimedSink:
    """The bridge's producer, noting when the broker acknowledged each key."""

    def __init__(self, producer: kafka.Producer):
        self.producer = producer
        self.acked: dict[bytes, float] = {}

    def produce(self, topic, key, value, on_delivery=None):  # noqa: ANN001
        def delivered(err):  # noqa: ANN001
            if err is None:
                self.acked[key] = time.perf_counter()
            if on_delivery is not None:
                on_delivery(err)

        self.producer.produce(topic, key, value, delivered)

    def publish(self, topic, key, value, stop=None):  # noqa: ANN001
        self.producer.publish(topic, key, value, stop)


def frames(count: int) -> list[tuple[bytes, bytes]]:
    out = []
    for _ in range(count):
        txid = secrets.token_hex(32)
        body = json.dumps([{"id": txid, "blob_size": 1534, "weight": 1534, "fee": 30680000}]).encode()
        out.append((txid.encode(), b"json-minimal-txpool_add:" + body))
    return out


def publish_process(port: int, commands, done) -> None:  # noqa: ANN001
    """The stand-in for monerod's publisher, in its own process (as monerod is): sends each
    batch it is handed, as fast as it can or paced at 1,000 a second, noting when each left."""
    socket = zmq.Context().socket(zmq.PUB)
    socket.setsockopt(zmq.SNDHWM, 0)
    socket.bind(f"tcp://127.0.0.1:{port}")
    while True:
        command = commands.get()
        if command is None:
            break
        batch, paced = command
        sent = []
        begin = time.time()
        for n, frame in enumerate(batch):
            if paced:
                delay = begin + n / 1000 - time.time()
                if delay > 0:
                    time.sleep(delay)
            sent.append(time.time())
            socket.send(frame)
        done.put(sent)
    socket.close(0)


def run_bridge_phase(broker: KafkaBroker, monerod: Monerod, work: Path, prefix: str, burst: int, paced_seconds: float) -> dict:
    import multiprocessing

    port = free_port()
    commands, done = multiprocessing.Queue(), multiprocessing.Queue()
    publisher = multiprocessing.Process(target=publish_process, args=(port, commands, done), daemon=True)
    publisher.start()
    producer = kafka.Producer(broker.client_config("events"))
    sink = TimedSink(producer)
    stop = threading.Event()
    context = Context(sink=sink, prefix=prefix, state=StateFile(work / "state.json"), metrics=Metrics(), stop=stop)
    source = MoneroSource(monerod.rpc_url, f"tcp://127.0.0.1:{port}")
    thread = threading.Thread(target=source.run, args=(context,), daemon=True)
    thread.start()

    def send(batch: list[tuple[bytes, bytes]], paced: bool) -> list[float]:
        commands.put(([f for _, f in batch], paced))
        return done.get(timeout=600)

    # The subscription must be in place before the burst: probe until a frame arrives.
    probe = frames(1)[0]
    wait_for("the source subscribed", lambda: (send([probe], False), time.sleep(0.1), probe[0] in sink.acked)[-1], timeout=60)

    burst_frames = frames(burst)
    started = send(burst_frames[:1], False)[0]
    send(burst_frames[1:], False)
    wait_for("the burst acknowledged", lambda: all(k in sink.acked for k, _ in burst_frames), timeout=600, interval=0.05)
    # perf_counter on the bridge's side, wall clock on the publisher's: both measured here.
    offset = time.time() - time.perf_counter()
    finished = max(sink.acked[k] for k, _ in burst_frames) + offset
    bridge_rate = burst / (finished - started)

    paced = frames(int(paced_seconds * 1000))
    sent_at = send(paced, True)
    wait_for("the paced events acknowledged", lambda: all(k in sink.acked for k, _ in paced), timeout=120, interval=0.05)
    offset = time.time() - time.perf_counter()
    latencies = sorted((sink.acked[k] + offset - t) * 1000 for (k, _), t in zip(paced, sent_at))
    commands.put(None)
    publisher.join(10)
    stop.set()
    thread.join(10)
    producer.close()
    return {
        "bridge_msgs_per_s": round(bridge_rate),
        "latency_ms_p50": round(statistics.median(latencies), 2),
        "latency_ms_p99": round(latencies[int(len(latencies) * 0.99) - 1], 2),
        "latency_ms_max": round(latencies[-1], 2),
        "paced_events": len(latencies),
        "_values": [f for _, f in burst_frames],
    }


def run_plain_phase(broker: KafkaBroker, topic: str, values: list[bytes]) -> float:
    from confluent_kafka import Producer

    producer = Producer({**broker.client_config("events"), "enable.idempotence": True, "acks": "all", "linger.ms": 5, "queue.buffering.max.messages": 500_000})
    # The same JSON a message of the bridge carries, built beforehand: only the sending is timed.
    payloads = [(secrets.token_hex(32).encode(), v) for v in values]
    done = [0]

    def delivered(err, _msg):  # noqa: ANN001
        if err is None:
            done[0] += 1

    started = time.perf_counter()
    for key, value in payloads:
        while True:
            try:
                producer.produce(topic, value=value, key=key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(120)
    elapsed = time.perf_counter() - started
    assert done[0] == len(payloads)
    return len(payloads) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--burst", type=int, default=50_000)
    parser.add_argument("--paced-seconds", type=float, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = KafkaBroker(work / "kafka")
        monerod = Monerod(work / "monerod")
        broker.start()
        monerod.start()
        try:
            prefix = "bench"
            broker.create_topics([f"{prefix}.monero.txpool", f"{prefix}.plain"], partitions=1)
            broker.create_topics([f"{prefix}.monero.blocks"], partitions=1)
            result = run_bridge_phase(broker, monerod, work, prefix, args.burst, args.paced_seconds)
            values = [v.split(b":", 1)[1] for v in result.pop("_values")]
            plain = run_plain_phase(broker, f"{prefix}.plain", values)
        finally:
            monerod.stop()
            broker.stop()
    result.update(
        plain_producer_msgs_per_s=round(plain),
        ratio=round(result["bridge_msgs_per_s"] / plain, 3),
        burst=args.burst,
        goal_ratio=0.7,
        goal_p99_ms=20,
        kafka=broker.env["KAFKA_VERSION"],
        python=platform.python_version(),
        cpus=os.cpu_count(),
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
