"""Apache Kafka through confluent-kafka (librdkafka): the one module in bcm-tools that speaks
Kafka's protocol.

Clients log in the way the `bcm.kafka` module provides: a Java client properties file
(`bcm.kafka.clients.<name>.propertiesFile`) with `security.protocol`, `sasl.mechanism` and a
PLAIN `sasl.jaas.config` line, turned here into librdkafka settings.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bcm_tools.errors import DaemonError, UsageError

_JAAS_OPTION = re.compile(r'(\w+)\s*=\s*"((?:[^"\\]|\\.)*)"')


def _unescape_properties(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"t": "\t", "n": "\n", "r": "\r", "f": "\f"}.get(m.group(1), m.group(1)), value)


def read_properties(path: Path) -> dict[str, str]:
    """A Java .properties file (`key=value`, `key: value` or `key value`; `#`/`!` comments)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise UsageError(f"cannot read Kafka client properties {path}: {err.strerror}") from None
    properties: dict[str, str] = {}
    logical = ""
    for raw in text.splitlines():
        line = raw.lstrip()
        if not logical and (not line or line[0] in "#!"):
            continue
        # A line ending in an odd number of backslashes continues on the next.
        if (len(line) - len(line.rstrip("\\"))) % 2 == 1:
            logical += line[:-1]
            continue
        logical += line
        match = re.match(r"((?:[^=:\s\\]|\\.)+)\s*[=:\s]\s*(.*)$", logical)
        if match:
            properties[_unescape_properties(match.group(1))] = _unescape_properties(match.group(2))
        elif logical:
            properties[_unescape_properties(logical)] = ""
        logical = ""
    return properties


def client_config(bootstrap: str, properties_file: Path | None) -> dict[str, Any]:
    """librdkafka settings for `bootstrap`, logging in as the properties file says."""
    config: dict[str, Any] = {"bootstrap.servers": bootstrap}
    if properties_file is None:
        return config
    properties = read_properties(properties_file)
    protocol = properties.get("security.protocol", "PLAINTEXT")
    config["security.protocol"] = protocol
    if protocol.startswith("SASL"):
        mechanism = properties.get("sasl.mechanism", "GSSAPI")
        if mechanism != "PLAIN":
            raise UsageError(f"{properties_file}: sasl.mechanism {mechanism} is not supported (bcm.kafka uses PLAIN)")
        options = dict(_JAAS_OPTION.findall(properties.get("sasl.jaas.config", "")))
        if "username" not in options or "password" not in options:
            raise UsageError(f"{properties_file}: sasl.jaas.config has no username and password")
        config.update({"sasl.mechanism": "PLAIN", "sasl.username": options["username"], "sasl.password": options["password"]})
    return config


def _kafka_error(what: str, err: Any) -> DaemonError:
    return DaemonError(f"Kafka {what}: {err.str() if hasattr(err, 'str') else err}")


# Called once per message: (None, key) when the broker acknowledged it, (reason, key) when it never will.
DeliveryCallback = Callable[[str | None, bytes | None], None]

# The producer's settings besides the connection's, for the bridge and for anything measured
# against it (benchmarks/events_throughput.py).
PRODUCER_SETTINGS: dict[str, Any] = {
    "enable.idempotence": True,
    "acks": "all",
    # 0: a message is never given up while the broker is down; the bridge keeps going.
    "message.timeout.ms": 0,
    # How long a message may wait for others to share its request: at a trickle, the latency it
    # adds; in a burst, fewer and fuller requests. benchmarks/events_throughput.py measured 1, 2
    # and 5 ms: 2 gave the most messages a second with p99 as low as 1 ms gave.
    "linger.ms": 2,
    "queue.buffering.max.messages": 500_000,
}

# How long the background thread leaves delivery reports to the threads that produce.
_SERVE_GRACE = 0.005


class Producer:
    """An idempotent producer (`enable.idempotence`: acks from every in-sync replica, retries
    that never duplicate or reorder within a partition). Messages wait in librdkafka's queue
    while the broker is away and are retried without limit.

    Delivery reports are served by the thread that produces, right after it produces, so a
    source in a burst does not hand Python's GIL to another thread for each callback (in
    benchmarks/events_throughput.py that took 6-17 % less CPU at the same rate). A
    background thread serves them when no thread has produced for a few milliseconds: the
    last reports of a burst, a lone message, a wait in `publish`."""

    def __init__(self, config: dict[str, Any], log: Callable[[str], None] | None = None, **settings: Any):
        from confluent_kafka import Producer as RdProducer

        self._log = log or (lambda _line: None)
        try:
            self._producer = RdProducer({**config, **PRODUCER_SETTINGS, **settings, "error_cb": self._on_error})
        except Exception as err:  # noqa: BLE001 - librdkafka's KafkaException for bad settings
            raise _kafka_error("producer settings rejected", err) from None
        self._stop = threading.Event()
        self._served_at = 0.0
        self.fatal: str | None = None
        self._poller = threading.Thread(target=self._poll, name="kafka-delivery", daemon=True)
        self._poller.start()

    def _on_error(self, err: Any) -> None:
        if err.fatal():
            self.fatal = err.str()
        self._log(f"kafka: {err.str()}")

    def _poll(self) -> None:
        while not self._stop.is_set():
            quiet = time.monotonic() - self._served_at
            if quiet < _SERVE_GRACE:
                self._stop.wait(_SERVE_GRACE - quiet)
            else:
                self._producer.poll(0.1)

    @staticmethod
    def _reporter(on_delivery: DeliveryCallback | None) -> Callable[[Any, Any], None] | None:
        if on_delivery is None:
            return None

        def report(err: Any, msg: Any) -> None:
            on_delivery(None if err is None else err.str(), msg.key())

        return report

    def _produce(self, topic: str, key: bytes, value: bytes, report: Callable[[Any, Any], None] | None) -> None:
        while True:
            try:
                self._producer.produce(topic, value, key, on_delivery=report)
                break
            except BufferError:
                # The queue is full (the broker is away for long): serve reports until there is room.
                self._producer.poll(0.05)
        self._producer.poll(0)
        self._served_at = time.monotonic()

    def produce(self, topic: str, key: bytes, value: bytes, on_delivery: DeliveryCallback | None = None) -> None:
        """Queues one message; `on_delivery` is called once with the outcome."""
        self._produce(topic, key, value, self._reporter(on_delivery))

    def stream(self, topic: str, on_delivery: DeliveryCallback | None) -> Callable[[list[tuple[bytes, bytes]]], None]:
        """`send(batch)` for a stream of messages to one topic, each batch a list of (key,
        value), all reported to `on_delivery`: one call into librdkafka for the batch
        (`produce_batch`, which partitions by key as `produce` does) and one callback object for
        every message, not one of each per message."""
        from confluent_kafka import KafkaError

        report = self._reporter(on_delivery)
        producer = self._producer

        def send(batch: list[tuple[bytes, bytes]]) -> None:
            messages = [{"key": key, "value": value} for key, value in batch]
            while messages and producer.produce_batch(topic, messages, on_delivery=report) != len(messages):
                # The ones not queued are the batch's tail; a full queue (the broker is away for
                # long) is waited out serving reports, any other refusal is reported.
                retry = []
                for message in messages:
                    err = message.pop("_error", None)
                    if err is None:
                        continue
                    if err.code() == KafkaError._QUEUE_FULL:
                        retry.append(message)
                    elif on_delivery is not None:
                        on_delivery(err.str(), message["key"])
                messages = retry
                if messages:
                    producer.poll(0.05)
            producer.poll(0)
            self._served_at = time.monotonic()

        return send

    def publish(self, topic: str, key: bytes, value: bytes, stop: threading.Event | None = None) -> None:
        """Queues one message and waits for the broker's acknowledgement (however long it is away)."""
        done = threading.Event()
        outcome: list[str | None] = []

        def delivered(err: str | None, _key: bytes | None) -> None:
            outcome.append(err)
            done.set()

        self.produce(topic, key, value, delivered)
        while not done.wait(0.5):
            if stop is not None and stop.is_set():
                raise InterruptedError("stopping")
            if self.fatal:
                raise DaemonError(f"Kafka producer failed: {self.fatal}")
        if outcome[0] is not None:
            raise DaemonError(f"Kafka did not take a message for {topic}: {outcome[0]}")

    def flush(self, timeout: float = 30) -> int:
        """Waits for queued messages; returns how many are still undelivered."""
        return self._producer.flush(timeout)

    def close(self, timeout: float = 30) -> int:
        left = self.flush(timeout)
        self._stop.set()
        self._poller.join(5)
        return left


@dataclass(frozen=True)
class Record:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes


class Consumer:
    """Reads topics without a consumer group's committed offsets (assign, not subscribe)."""

    def __init__(self, config: dict[str, Any]):
        from confluent_kafka import Consumer as RdConsumer

        import secrets

        self._consumer = RdConsumer(
            {**config, "group.id": f"bcm-tools-{secrets.token_hex(6)}", "enable.auto.commit": False, "enable.partition.eof": False}
        )

    def close(self) -> None:
        self._consumer.close()

    def partitions(self, topic: str, timeout: float = 15) -> list[int]:
        try:
            metadata = self._consumer.list_topics(topic, timeout=timeout)
        except Exception as err:  # noqa: BLE001 - KafkaException: broker unreachable
            raise _kafka_error(f"cannot list topic {topic}", err.args[0] if err.args else err) from None
        described = metadata.topics.get(topic)
        if described is None or described.error is not None:
            reason = described.error.str() if described is not None and described.error is not None else "unknown topic"
            raise DaemonError(f"Kafka topic {topic}: {reason}")
        return sorted(described.partitions)

    def last_records(self, topic: str, timeout: float = 15) -> list[Record]:
        """The newest message of each partition of `topic` (none for an empty partition)."""
        from confluent_kafka import TopicPartition

        wanted: dict[int, int] = {}
        for partition in self.partitions(topic, timeout):
            try:
                low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
            except Exception as err:  # noqa: BLE001
                raise _kafka_error(f"cannot read offsets of {topic}", err.args[0] if err.args else err) from None
            if high > low:
                wanted[partition] = high - 1
        if not wanted:
            return []
        self._consumer.assign([TopicPartition(topic, p, offset) for p, offset in wanted.items()])
        found: dict[int, Record] = {}
        deadline = time.monotonic() + timeout
        while len(found) < len(wanted) and time.monotonic() < deadline:
            message = self._consumer.poll(0.5)
            if message is None or message.error():
                continue
            if message.offset() >= wanted[message.partition()]:
                found[message.partition()] = self._record(message)
        self._consumer.unassign()
        if len(found) < len(wanted):
            raise DaemonError(f"Kafka: could not read the newest messages of {topic} within {timeout:.0f} s")
        return list(found.values())

    def follow(self, topic: str, from_beginning: bool, stop: threading.Event | None = None) -> Iterator[Record]:
        """Every message of `topic` from its start or from now on, until `stop` is set."""
        from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, TopicPartition

        start = OFFSET_BEGINNING if from_beginning else OFFSET_END
        self._consumer.assign([TopicPartition(topic, p, start) for p in self.partitions(topic)])
        while stop is None or not stop.is_set():
            message = self._consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                if message.error().fatal():
                    raise _kafka_error(f"reading {topic}", message.error())
                continue
            yield self._record(message)

    @staticmethod
    def _record(message: Any) -> Record:
        _kind, timestamp = message.timestamp()
        return Record(message.topic(), message.partition(), message.offset(), timestamp, message.key(), message.value())
