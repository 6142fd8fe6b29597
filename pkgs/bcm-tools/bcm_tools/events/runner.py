"""Puts a bridge together from its settings and runs it until stopped; reads topics back for
`events tail`."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bcm_tools import kafka
from bcm_tools.errors import UsageError
from bcm_tools.events import schemas
from bcm_tools.events.bridge import Bridge, Context, Metrics, Source
from bcm_tools.events.state import StateFile

log = logging.getLogger("bcm.events")


class BitcoindSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    rpc_url: str
    rpc_user: str | None = None
    rpc_password: str | None = None
    rpc_cookie: Path | None = None
    zmq_block: str
    zmq_tx: str | None = None


class MonerodSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    rpc_url: str
    zmq_url: str


class LndSettings(BaseModel):
    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    rpc: str
    tls_cert: Path
    macaroon: Path


class BridgeSettings(BaseModel):
    model_config = ConfigDict(frozen=True)

    kafka_bootstrap: str
    kafka_properties: Path | None = None
    topic_prefix: str = Field(pattern=r"^[A-Za-z0-9_-]+$")
    state_file: Path
    metrics: str | None = None
    bitcoind: BitcoindSettings | None = None
    monerod: MonerodSettings | None = None
    lnd: LndSettings | None = None


def _sources(settings: BridgeSettings) -> list[Source]:
    sources: list[Source] = []
    if settings.bitcoind is not None:
        from bcm_tools.bitcoind import RpcEndpoint
        from bcm_tools.events.bitcoin import BitcoinSource

        b = settings.bitcoind
        if b.rpc_cookie is not None:
            endpoint = RpcEndpoint.from_cookie(b.rpc_url, str(b.rpc_cookie))
        else:
            endpoint = RpcEndpoint.from_url(b.rpc_url, b.rpc_user, b.rpc_password)
        sources.append(BitcoinSource(endpoint, b.zmq_block, b.zmq_tx))
    if settings.monerod is not None:
        from bcm_tools.events.monero import MoneroSource

        sources.append(MoneroSource(settings.monerod.rpc_url, settings.monerod.zmq_url))
    if settings.lnd is not None:
        from bcm_tools.events.lightning import lnd_sources
        from bcm_tools.lnd import Endpoint

        sources += lnd_sources(Endpoint(rpc=settings.lnd.rpc, tls_cert=settings.lnd.tls_cert, macaroon=settings.lnd.macaroon))
    if not sources:
        raise UsageError("no source to bridge: name at least one of --bitcoind-rpc, --monerod-rpc, --lnd-rpc")
    return sources


def _decode(value: bytes) -> schemas._Message | None:
    try:
        data = json.loads(value)
        model, _ = schemas.TOPICS[data["schema"].split("/", 1)[0]]
        return model.model_validate(data)
    except (ValueError, KeyError, TypeError, AttributeError, ValidationError):
        return None


def run_bridge(settings: BridgeSettings, stop: threading.Event) -> Metrics:
    """Runs the bridge until `stop` is set; returns its metrics."""
    sources = _sources(settings)
    state = StateFile(settings.state_file)
    config = kafka.client_config(settings.kafka_bootstrap, settings.kafka_properties)
    metrics = Metrics()
    server = None
    if settings.metrics:
        host, _, port = settings.metrics.rpartition(":")
        if not host or not port.isdigit():
            raise UsageError(f"--metrics must be HOST:PORT, not {settings.metrics!r}")
        try:
            server = metrics.serve(host, int(port))
        except OSError as err:
            raise UsageError(f"cannot serve metrics on {settings.metrics}: {err.strerror}") from None
    producer = kafka.Producer(config, log=log.warning)
    consumer_lock = threading.Lock()

    def newest(topic: str) -> list[schemas._Message]:
        with consumer_lock:
            consumer = kafka.Consumer(config)
            try:
                records = consumer.last_records(topic)
            finally:
                consumer.close()
        return [m for m in (_decode(r.value) for r in records) if m is not None]

    context = Context(sink=producer, prefix=settings.topic_prefix, state=state, metrics=metrics, stop=stop, newest=newest)
    bridge = Bridge(sources, context)
    log.info("bridging %s to Kafka at %s, topics %s.*", ", ".join(s.name for s in sources), settings.kafka_bootstrap, settings.topic_prefix)
    bridge.start()
    try:
        bridge.wait()
    finally:
        left = producer.close(30)
        if left:
            log.warning("%d messages were not acknowledged by Kafka before stopping", left)
        if server is not None:
            server.shutdown()
    return metrics


class TailLine(BaseModel):
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: str | None
    value: Any


def tail(bootstrap: str, properties: Path | None, topic: str, from_beginning: bool, stop: threading.Event, limit: int | None = None) -> Iterator[TailLine]:
    """Messages of `topic` (a full topic name) as they arrive."""
    consumer = kafka.Consumer(kafka.client_config(bootstrap, properties))
    try:
        count = 0
        for record in consumer.follow(topic, from_beginning, stop):
            try:
                value: Any = json.loads(record.value)
            except (ValueError, UnicodeDecodeError):
                value = record.value.decode("utf-8", "replace")
            yield TailLine(
                topic=record.topic, partition=record.partition, offset=record.offset, timestamp_ms=record.timestamp_ms,
                key=record.key.decode("utf-8", "replace") if record.key is not None else None, value=value,
            )
            count += 1
            if limit is not None and count >= limit:
                return
    finally:
        consumer.close()


def readable(line: TailLine) -> str:
    """One line an operator reads: time, topic, key and the message's main fields."""
    when = datetime.fromtimestamp(line.timestamp_ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
    value = line.value
    if isinstance(value, dict):
        shown = " ".join(f"{k}={v}" for k, v in value.items() if k not in ("schema", "seen_at") and v not in (None, ""))
        kind = value.get("schema", "?")
    else:
        shown, kind = str(value), "raw"
    return f"{when} {line.topic}[{line.partition}]@{line.offset} {kind} {shown}"
