"""Throughput and latency of the events bridge into a real Kafka broker.

A burst of monerod-style pool notifications (`json-minimal-txpool_add` frames, one transaction
each) goes through the bridge's monerod source (ZMQ receive, validation against the
monero.txpool model's constraints, encoding, key, the idempotent producer) into a real broker
(Kafka from scripts/test.d/18-kafka, the bcm.kafka module's settings, SASL/PLAIN on loopback).
The frames come from a ZMQ publisher here, standing in for monerod's, which cannot be made to
fill its pool this fast; monerod itself (regtest) answers the source's RPC. The same messages
are then sent by a plain confluent-kafka producer with the bridge's producer settings
(`bcm_tools.kafka.PRODUCER_SETTINGS`), in the same run.

Both sides note when the broker acknowledged each message the same way: a delivery callback
that stores the time under the message's key. The publisher is handed its frames before the
clock starts, so only sending them is timed, as only producing is timed for the plain producer.

Reported: (a) sustained messages per second through the bridge, as a ratio to the plain
producer's; (b) p50/p99 latency from the frame leaving the publisher to the broker's
acknowledgement, at a paced 1,000 events/s. Goals: at least 70 % of the plain rate, p99 under
20 ms. Also the same burst through the source with no Kafka behind it (`source_alone`: ZMQ
receive, validation and encoding only), the most the bridge could reach. The machine is shared, so `--rounds` alternates bridge and plain producer and reports
the median of each figure and every round's. Prints JSON.

    python benchmarks/events_throughput.py [--burst 50000] [--paced-seconds 10] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
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


class AckTimes:
    """When the broker acknowledged each key (perf_counter), and how many were acknowledged."""

    def __init__(self) -> None:
        self.at: dict[bytes, float] = {}

    def wrap(self, on_delivery):  # noqa: ANN001, ANN201
        at, clock = self.at, time.perf_counter

        def delivered(err, key):  # noqa: ANN001
            if err is None:
                at[key] = clock()
            if on_delivery is not None:
                on_delivery(err, key)

        return delivered


class TimedSink:
    """The bridge's producer, noting when the broker acknowledged each key."""

    def __init__(self, producer: kafka.Producer):
        self.producer = producer
        self.acks = AckTimes()

    def produce(self, topic, key, value, on_delivery=None):  # noqa: ANN001
        self.producer.produce(topic, key, value, self.acks.wrap(on_delivery))

    def stream(self, topic, on_delivery):  # noqa: ANN001
        return self.producer.stream(topic, self.acks.wrap(on_delivery))

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
    """The stand-in for monerod's publisher, in its own process (as monerod is). Each batch is
    handed over first ("loaded"), then sent on "go", as fast as it can or paced at 1,000 a
    second, noting when each frame left."""
    socket = zmq.Context().socket(zmq.PUB)
    socket.setsockopt(zmq.SNDHWM, 0)
    socket.bind(f"tcp://127.0.0.1:{port}")
    while True:
        command = commands.get()
        if command is None:
            break
        batch, paced = command
        done.put("loaded")
        commands.get()  # go
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


class Publisher:
    def __init__(self) -> None:
        self.port = free_port()
        self.commands: multiprocessing.Queue = multiprocessing.Queue()
        self.done: multiprocessing.Queue = multiprocessing.Queue()
        self.process = multiprocessing.Process(target=publish_process, args=(self.port, self.commands, self.done), daemon=True)
        self.process.start()

    def send(self, batch: list[tuple[bytes, bytes]], paced: bool) -> list[float]:
        """Sends the frames; returns when each left (wall clock)."""
        self.commands.put(([f for _, f in batch], paced))
        assert self.done.get(timeout=600) == "loaded"
        self.commands.put("go")
        return self.done.get(timeout=600)

    def stop(self) -> None:
        self.commands.put(None)
        self.process.join(10)


def wait_acked(acks: AckTimes, before: int, keys: list[bytes], what: str, timeout: float) -> None:
    """Until `keys` are acknowledged, `before` being how many were before they were sent."""
    wait_for(what, lambda: len(acks.at) >= before + len(keys), timeout=timeout, interval=0.02)
    missing = [k for k in keys if k not in acks.at]
    assert not missing, f"{len(missing)} messages were not acknowledged"


class SourceOnlySink:
    """No Kafka: notes when the source handed each message on. How fast the source alone goes
    (ZMQ receive, validation, encoding) bounds what the bridge can reach."""

    def __init__(self) -> None:
        self.acks = AckTimes()

    def stream(self, topic, on_delivery):  # noqa: ANN001, ARG002
        at, clock = self.acks.at, time.perf_counter

        def send(batch):  # noqa: ANN001
            for key, _value in batch:
                at[key] = clock()

        return send

    def produce(self, topic, key, value, on_delivery=None):  # noqa: ANN001, ARG002
        self.acks.at[key] = time.perf_counter()

    def publish(self, topic, key, value, stop=None):  # noqa: ANN001, ARG002
        pass


def run_source_phase(sink, monerod: Monerod, work: Path, prefix: str, burst: int, paced_seconds: float) -> dict:  # noqa: ANN001
    """A burst, then `paced_seconds` of 1,000 frames a second, through the monerod source into
    `sink`: the rate of the burst and the latencies of the paced frames."""
    publisher = Publisher()
    stop = threading.Event()
    context = Context(sink=sink, prefix=prefix, state=StateFile(work / f"state-{secrets.token_hex(4)}.json"), metrics=Metrics(), stop=stop)
    source = MoneroSource(monerod.rpc_url, f"tcp://127.0.0.1:{publisher.port}")
    thread = threading.Thread(target=source.run, args=(context,), daemon=True)
    thread.start()

    # The subscription must be in place before the burst: probe until a frame arrives.
    def probed() -> bool:
        probe = frames(1)
        publisher.send(probe, False)
        time.sleep(0.1)
        return probe[0][0] in sink.acks.at

    wait_for("the source subscribed", probed, timeout=60)

    burst_frames = frames(burst)
    before = len(sink.acks.at)
    sent_at = publisher.send(burst_frames, False)
    wait_acked(sink.acks, before, [k for k, _ in burst_frames], "the burst acknowledged", 600)
    # perf_counter on the bridge's side, wall clock on the publisher's: both read here.
    offset = time.time() - time.perf_counter()
    finished = max(sink.acks.at[k] for k, _ in burst_frames) + offset
    result = {"msgs_per_s": burst / (finished - sent_at[0]), "_values": [f.split(b":", 1)[1] for _, f in burst_frames]}

    if paced_seconds:
        paced = frames(int(paced_seconds * 1000))
        before = len(sink.acks.at)
        sent_at = publisher.send(paced, True)
        wait_acked(sink.acks, before, [k for k, _ in paced], "the paced events acknowledged", 120)
        offset = time.time() - time.perf_counter()
        latencies = sorted((sink.acks.at[k] + offset - t) * 1000 for (k, _), t in zip(paced, sent_at))
        result.update(
            latency_ms_p50=statistics.median(latencies),
            latency_ms_p99=latencies[int(len(latencies) * 0.99) - 1],
            latency_ms_max=latencies[-1],
        )
    publisher.stop()
    stop.set()
    thread.join(10)
    return result


def run_bridge_phase(broker: KafkaBroker, monerod: Monerod, work: Path, prefix: str, burst: int, paced_seconds: float) -> dict:
    producer = kafka.Producer(broker.client_config("events"))
    try:
        result = run_source_phase(TimedSink(producer), monerod, work, prefix, burst, paced_seconds)
    finally:
        producer.close()
    result["bridge_msgs_per_s"] = result.pop("msgs_per_s")
    return result


def run_plain_phase(broker: KafkaBroker, topic: str, values: list[bytes]) -> float:
    from confluent_kafka import Producer

    producer = Producer({**broker.client_config("events"), **kafka.PRODUCER_SETTINGS})
    # The same JSON a message of the bridge carries, built beforehand: only the sending is timed.
    payloads = [(secrets.token_hex(32).encode(), v) for v in values]
    acks = AckTimes()
    record = acks.wrap(None)

    def delivered(err, msg):  # noqa: ANN001
        record(err, msg.key())

    # Connected, logged in and given its idempotent producer id before the clock starts, as the
    # bridge's producer is by its probe.
    producer.produce(topic, values[0], b"warm-up")
    assert producer.flush(60) == 0
    started = time.perf_counter()
    for key, value in payloads:
        while True:
            try:
                producer.produce(topic, value, key, on_delivery=delivered)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    producer.flush(120)
    assert len(acks.at) == len(payloads)
    return len(payloads) / (max(acks.at.values()) - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--burst", type=int, default=50_000)
    parser.add_argument("--paced-seconds", type=float, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = KafkaBroker(work / "kafka")
        monerod = Monerod(work / "monerod")
        broker.start()
        monerod.start()
        try:
            prefix = "bench"
            broker.create_topics([f"{prefix}.monero.txpool", f"{prefix}.plain", f"{prefix}.monero.blocks"], partitions=1)
            for _ in range(args.rounds):
                result = run_bridge_phase(broker, monerod, work, prefix, args.burst, args.paced_seconds)
                plain = run_plain_phase(broker, f"{prefix}.plain", result.pop("_values"))
                alone = run_source_phase(SourceOnlySink(), monerod, work, prefix, args.burst, 0)["msgs_per_s"]
                result.update(
                    plain_producer_msgs_per_s=plain, ratio=result["bridge_msgs_per_s"] / plain,
                    source_alone_msgs_per_s=alone, source_alone_ratio=alone / plain, load_average=os.getloadavg()[0],
                )  # fmt: skip
                rounds.append(result)
                print(json.dumps({k: round(v, 3) for k, v in result.items()}), file=sys.stderr, flush=True)
        finally:
            monerod.stop()
            broker.stop()
    median = {name: round(statistics.median(r[name] for r in rounds), 3) for name in rounds[0] if name != "load_average"}
    print(json.dumps({
        "median": median,
        "rounds": [{k: round(v, 3) for k, v in r.items()} for r in rounds],
        "burst": args.burst,
        "paced_events": int(args.paced_seconds * 1000),
        "producer_settings": {k: v for k, v in kafka.PRODUCER_SETTINGS.items()},
        "goal_ratio": 0.7,
        "goal_p99_ms": 20,
        "kafka": broker.env["KAFKA_VERSION"],
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
