"""The bridge's engine: sources run side by side, each in its own thread, supervised with
backoff; messages go to Kafka through one idempotent producer; chains are followed block by
block with reorgs published as `disconnected` events.

A source is an object with a `name` and a `run(context)` that follows its daemon until the
daemon fails (it raises) or the bridge stops. The supervisor restarts a failed source after
1, 2, 4 ... 30 s and says which source is down and why; the other sources keep flowing.
"""

from __future__ import annotations

import hashlib
import http.server
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from bcm_tools.errors import BcmError
from bcm_tools.events import schemas
from bcm_tools.events.state import ChainTip, StateFile

log = logging.getLogger("bcm.events")

BACKOFF_FIRST = 1.0
BACKOFF_MAX = 30.0


class Malformed(Exception):
    """A frame or reply that cannot be read; the bridge logs, counts and skips it."""


class Metrics:
    """Counters and gauges, served in Prometheus' text format (`--metrics`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._values: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        self._help = {
            "bcm_events_published_total": ("counter", "Messages Kafka acknowledged, by topic."),
            "bcm_events_malformed_total": ("counter", "Frames or replies that could not be read and were skipped, by source."),
            "bcm_events_sequence_gaps_total": ("counter", "Gaps in a ZMQ publisher's sequence numbers, by source."),
            "bcm_events_reorgs_total": ("counter", "Reorgs seen, by chain."),
            "bcm_events_backfilled_blocks_total": ("counter", "Blocks published from RPC rather than from a notification, by chain."),
            "bcm_events_source_up": ("gauge", "1 while a source is followed, 0 while it is down and retried."),
            "bcm_events_source_failures_total": ("counter", "Times a source went down, by source."),
        }

    def add(self, name: str, amount: float = 1, **labels: str) -> None:
        key = (name, tuple(sorted(labels.items())))
        with self._lock:
            self._values[key] = self._values.get(key, 0) + amount

    def counter(self, name: str, **labels: str) -> Callable[[], None]:
        """`add(name, 1, **labels)` with the series looked up once, for a counter bumped per message."""
        key = (name, tuple(sorted(labels.items())))
        lock, values = self._lock, self._values

        def bump() -> None:
            with lock:
                values[key] = values.get(key, 0) + 1

        return bump

    def set(self, name: str, value: float, **labels: str) -> None:
        with self._lock:
            self._values[(name, tuple(sorted(labels.items())))] = value

    def get(self, name: str, **labels: str) -> float:
        with self._lock:
            return self._values.get((name, tuple(sorted(labels.items()))), 0)

    def render(self) -> str:
        with self._lock:
            items = sorted(self._values.items())
        lines: list[str] = []
        seen: set[str] = set()
        for (name, labels), value in items:
            if name not in seen:
                kind, text = self._help.get(name, ("untyped", name))
                lines += [f"# HELP {name} {text}", f"# TYPE {name} {kind}"]
                seen.add(name)
            rendered = ",".join(f'{k}="{v}"' for k, v in labels)
            lines.append(f"{name}{{{rendered}}} {value:g}" if rendered else f"{name} {value:g}")
        return "\n".join(lines) + "\n"

    def serve(self, host: str, port: int) -> http.server.ThreadingHTTPServer:
        metrics = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                body = metrics.render().encode()
                self.send_response(200 if self.path in ("/", "/metrics") else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer((host, port), Handler)
        threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
        return server


DeliveryCallback = Callable[[str | None, bytes | None], None]


class Sink(Protocol):
    """Where messages go: the Kafka producer (bcm_tools.kafka.Producer)."""

    def produce(self, topic: str, key: bytes, value: bytes, on_delivery: DeliveryCallback | None = None) -> None: ...

    def stream(self, topic: str, on_delivery: DeliveryCallback | None) -> Callable[[list[tuple[bytes, bytes]]], None]: ...

    def publish(self, topic: str, key: bytes, value: bytes, stop: threading.Event | None = None) -> None: ...


@dataclass
class Context:
    """What every source gets: where to publish, the state, the metrics, the stop signal."""

    sink: Sink
    prefix: str
    state: StateFile
    metrics: Metrics
    stop: threading.Event
    # The newest message of each partition of a topic (prefixed name), decoded; for reconcile.
    newest: Callable[[str], list[schemas._Message]] = lambda _topic: []
    _reports: dict[str, DeliveryCallback] = field(default_factory=dict)

    def topic(self, name: str) -> str:
        return f"{self.prefix}.{name}"

    def _delivered(self, name: str) -> DeliveryCallback:
        """The delivery report of every message to topic `name`: counted, or logged if refused."""
        if name not in self._reports:
            bump = self.metrics.counter("bcm_events_published_total", topic=name)

            def delivered(err: str | None, _key: bytes | None) -> None:
                if err is None:
                    bump()
                else:
                    log.error("kafka refused a message for %s: %s", name, err)

            self._reports[name] = delivered
        return self._reports[name]

    def send(self, message: schemas._Message, on_acked: Callable[[], None] | None = None) -> None:
        """Queues `message`; Kafka retries it until acknowledged. `on_acked` runs then."""
        name = schemas.topic_of(message)
        report = self._delivered(name)
        if on_acked is not None:
            counted = report

            def report_and_run(err: str | None, key: bytes | None) -> None:
                counted(err, key)
                if err is None:
                    on_acked()

            report = report_and_run
        self.sink.produce(self.topic(name), schemas.key_of(message), schemas.encode(message), report)

    def stream(self, name: str) -> Callable[[list[tuple[bytes, bytes]]], None]:
        """`send(batch)` for a source's stream of messages to topic `name`, a batch of (key,
        value), each value already validated against the topic's model and encoded
        (schemas.wire_encoder): the path of a busy topic, without a model and a callback built
        for every message, and one call into the producer per batch."""
        return self.sink.stream(self.topic(name), self._delivered(name))

    def send_and_wait(self, message: schemas._Message) -> None:
        """Publishes `message` and returns once Kafka acknowledged it."""
        name = schemas.topic_of(message)
        self.sink.publish(self.topic(name), schemas.key_of(message), schemas.encode(message), self.stop)
        self.metrics.add("bcm_events_published_total", topic=name)

    def malformed(self, source: str, what: str, frame: bytes, reason: str) -> None:
        digest = hashlib.sha256(frame).hexdigest()[:16]
        self.metrics.add("bcm_events_malformed_total", source=source)
        log.warning("%s: skipped a malformed %s of %d bytes (sha256 %s…): %s", source, what, len(frame), digest, reason)


class ChainView(Protocol):
    """A chain as its daemon's RPC shows it, for backfill and reorgs."""

    chain: str  # the state's name for this chain: bitcoin, monero

    def tip_height(self) -> int: ...

    def hash_at(self, height: int) -> str: ...

    def blocks(self, start: int, end: int) -> Iterable[schemas._Message]:
        """Connected-block messages for heights start..end, in order."""
        ...

    def disconnected(self, height: int, block_hash: str, prev_hash: str) -> schemas._Message: ...


class ChainFollower:
    """Publishes one chain's blocks in order, each once Kafka acknowledged the one before.

    `sync()` brings the published branch to the daemon's tip over RPC: it finds where the two
    part, publishes the old branch's blocks as `disconnected`, newest first, then the new
    blocks, oldest first. It is how the bridge starts, backfills after a gap, and handles a
    reorg. A notification whose block extends the published tip is published directly
    (`extend`); any other one leads to `sync()`."""

    def __init__(self, context: Context, view: ChainView):
        self.context = context
        self.view = view
        self.tip: ChainTip = context.state.chain(view.chain)
        self._reconciled = False

    def start(self, topic: str) -> None:
        """Once per process, before the first sync: what Kafka holds beyond the state file."""
        if not self._reconciled:
            self.reconcile(self.context.newest(self.context.topic(topic)))
            self._reconciled = True
        self.sync()

    def reconcile(self, newest: list[schemas._Message]) -> None:
        """Takes in the block message Kafka holds that the state file has not recorded yet (the
        bridge was killed between Kafka's acknowledgement and the state's save)."""
        for message in newest:
            height, block_hash, event = message.height, message.hash, message.event  # type: ignore[attr-defined]
            if event == "connected" and self.tip.height is not None and height == self.tip.height + 1 and message.prev_hash == self.tip.hash:  # type: ignore[attr-defined]
                self.tip.push(height, block_hash)
                self.context.state.save()
                log.info("%s: state caught up with Kafka: block %d %s was published", self.view.chain, height, block_hash)
            elif event == "disconnected" and self.tip.height == height and self.tip.hash == block_hash:
                self.tip.pop()
                self.context.state.save()
                log.info("%s: state caught up with Kafka: block %d %s was disconnected", self.view.chain, height, block_hash)

    def _publish_connected(self, message: schemas._Message, backfilled: bool) -> None:
        self.context.send_and_wait(message)
        self.tip.push(message.height, message.hash)  # type: ignore[attr-defined]
        self.context.state.save()
        if backfilled:
            self.context.metrics.add("bcm_events_backfilled_blocks_total", chain=self.view.chain)

    def extend(self, message: schemas._Message) -> bool:
        """Publishes a notified block if it extends the published tip; False if it does not."""
        if self.tip.hash is None or message.prev_hash != self.tip.hash:  # type: ignore[attr-defined]
            return self.tip.knows(message.hash)  # type: ignore[attr-defined]
        self._publish_connected(message, backfilled=False)
        return True

    def sync(self) -> None:
        view = self.view
        tip_height = view.tip_height()
        if self.tip.height is None:
            # First start: follow from the daemon's tip on; nothing before it is published.
            self.tip.push(tip_height, view.hash_at(tip_height))
            self.context.state.save()
            log.info("%s: starting at the tip, block %d %s", view.chain, tip_height, self.tip.hash)
            return
        # Where the published branch and the daemon's chain part.
        height = min(self.tip.height, tip_height)
        lowest = self.tip.blocks[0][0]
        while height >= lowest and view.hash_at(height) != self.tip.hash_at(height):
            height -= 1
        if height < lowest:
            log.error(
                "%s: reorg deeper than the %d blocks remembered; resuming at the daemon's block %d without disconnecting the rest",
                view.chain, len(self.tip.blocks), lowest,
            )
            self.context.metrics.add("bcm_events_reorgs_total", chain=view.chain)
            self.tip.blocks = []
            self.tip.push(lowest, view.hash_at(lowest))
            self.context.state.save()
            height = lowest
        if self.tip.height is not None and self.tip.height > height:
            self.context.metrics.add("bcm_events_reorgs_total", chain=view.chain)
            log.warning("%s: reorg: blocks %d..%d left the best chain", view.chain, height + 1, self.tip.height)
            while self.tip.height is not None and self.tip.height > height:
                gone_height, gone_hash = self.tip.blocks[-1]
                prev_hash = self.tip.hash_at(gone_height - 1) or ""
                self.context.send_and_wait(view.disconnected(gone_height, gone_hash, prev_hash))
                self.tip.pop()
                self.context.state.save()
        if tip_height > height:
            for message in view.blocks(height + 1, tip_height):
                if self.context.stop.is_set():
                    return
                if message.prev_hash != self.tip.hash:  # type: ignore[attr-defined]
                    # The chain moved while we read it: start over from the new tip.
                    return self.sync()
                self._publish_connected(message, backfilled=True)


class Source(Protocol):
    name: str

    def run(self, context: Context) -> None: ...


class Bridge:
    def __init__(self, sources: list[Source], context: Context):
        self.sources = sources
        self.context = context
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for source in self.sources:
            thread = threading.Thread(target=self._supervise, args=(source,), name=f"source-{source.name}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def _supervise(self, source: Source) -> None:
        context = self.context
        delay = BACKOFF_FIRST
        while not context.stop.is_set():
            started = time.monotonic()
            context.metrics.set("bcm_events_source_up", 1, source=source.name)
            try:
                source.run(context)
                if context.stop.is_set():
                    return
                reason = "it stopped"
            except InterruptedError:
                return
            except BcmError as err:
                reason = str(err)
            except Exception as err:  # noqa: BLE001 - a source must never take the bridge down
                log.exception("%s: unexpected failure", source.name)
                reason = f"{err.__class__.__name__}: {err}"
            context.metrics.set("bcm_events_source_up", 0, source=source.name)
            context.metrics.add("bcm_events_source_failures_total", source=source.name)
            if time.monotonic() - started > 60:
                delay = BACKOFF_FIRST
            log.warning("%s is down: %s; retrying in %.0f s", source.name, reason, delay)
            if context.stop.wait(delay):
                return
            delay = min(delay * 2, BACKOFF_MAX)

    def wait(self) -> None:
        while not self.context.stop.is_set():
            self.context.stop.wait(1)
        for thread in self.threads:
            thread.join(10)
