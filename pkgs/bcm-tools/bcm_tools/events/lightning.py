"""LND's events: one source per gRPC stream, so a stream that fails is retried on its own while
the others keep flowing.

- `lnd.channels`: SubscribeChannelEvents, keyed by channel point.
- `lnd.invoices`: SubscribeInvoices, keyed by payment hash. The bridge records the newest
  add and settle index Kafka acknowledged and resumes from them after a restart, so LND replays
  what was missed.
- `lnd.payments`: the router's TrackPayments, keyed by payment hash.
- `lnd.transactions`: SubscribeTransactions, keyed by txid.

The macaroon needs only the five RPCs: lnrpc.Lightning's GetInfo, SubscribeChannelEvents,
SubscribeInvoices and SubscribeTransactions, and routerrpc.Router's TrackPayments (bcm.events
bakes it with exactly those `uri:` permissions).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import ValidationError

from bcm_tools.events import schemas
from bcm_tools.events.bridge import Context
from bcm_tools.lnd import Endpoint, Lnd

INVOICE_EVENT = {"OPEN": "added", "SETTLED": "settled", "CANCELED": "canceled", "ACCEPTED": "accepted"}


class LndStream:
    """One of LND's streams, followed into one topic."""

    def __init__(self, endpoint: Endpoint, stream: str, follow: Callable[[LndStream, Lnd, Context, str], None]):
        self.endpoint = endpoint
        self.name = f"lnd-{stream}"
        self._follow = follow

    def run(self, context: Context) -> None:
        with Lnd(self.endpoint) as lnd:
            node = lnd.get_info().pubkey
            # The stream blocks in gRPC; closing the channel when the bridge stops ends it.
            done = threading.Event()

            def watch() -> None:
                while not done.is_set():
                    if context.stop.wait(0.5):
                        lnd.close()
                        return

            threading.Thread(target=watch, name=f"{self.name}-stop", daemon=True).start()
            try:
                self._follow(self, lnd, context, node)
            finally:
                done.set()

    def cursor_name(self, node: str) -> str:
        return f"lnd/{node}"


def _each(context: Context, source: str, updates: Iterator[Any], build: Callable[[Any], schemas._Message], on_acked: Callable[[Any], Callable[[], None] | None] | None = None) -> None:
    for update in updates:
        if context.stop.is_set():
            return
        try:
            message = build(update)
        except (ValidationError, ValueError, KeyError) as err:
            context.malformed(source, "LND update", repr(update).encode(), f"{err.__class__.__name__}: {str(err).splitlines()[0]}")
            continue
        context.send(message, on_acked(update) if on_acked is not None else None)


def _channels(stream: LndStream, lnd: Lnd, context: Context, node: str) -> None:
    _each(context, stream.name, lnd.channel_changes(), lambda c: schemas.LndChannel(seen_at=time.time(), node=node, **c.model_dump()))


def _invoices(stream: LndStream, lnd: Lnd, context: Context, node: str) -> None:
    name = stream.cursor_name(node)
    cursor = context.state.cursor(name)
    lock = threading.Lock()

    def acked(update: Any) -> Callable[[], None]:
        def save() -> None:
            with lock:
                now = context.state.cursor(name)
                if update.add_index > now.get("add_index", 0) or update.settle_index > now.get("settle_index", 0):
                    context.state.set_cursor(
                        name, add_index=max(update.add_index, now.get("add_index", 0)), settle_index=max(update.settle_index, now.get("settle_index", 0))
                    )

        return save

    updates = lnd.invoice_updates(cursor.get("add_index", 0), cursor.get("settle_index", 0))
    _each(
        context, stream.name, updates,
        lambda i: schemas.LndInvoice(seen_at=time.time(), node=node, event=INVOICE_EVENT[i.state], **i.model_dump()),  # type: ignore[arg-type]
        acked,
    )  # fmt: skip


def _payments(stream: LndStream, lnd: Lnd, context: Context, node: str) -> None:
    _each(context, stream.name, lnd.payment_updates(), lambda p: schemas.LndPayment(seen_at=time.time(), node=node, **p.model_dump()))


def _transactions(stream: LndStream, lnd: Lnd, context: Context, node: str) -> None:
    _each(context, stream.name, lnd.wallet_transactions(), lambda t: schemas.LndTransaction(seen_at=time.time(), node=node, **t.model_dump()))


def lnd_sources(endpoint: Endpoint) -> list[LndStream]:
    return [
        LndStream(endpoint, "channels", _channels),
        LndStream(endpoint, "invoices", _invoices),
        LndStream(endpoint, "payments", _payments),
        LndStream(endpoint, "transactions", _transactions),
    ]
