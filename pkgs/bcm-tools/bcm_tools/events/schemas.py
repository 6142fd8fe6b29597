"""The messages `bcm-tools events bridge` publishes: one versioned schema per topic.

Every message is a JSON object carrying its `schema` (`<topic>/<version>`, without the cluster
prefix), so a consumer can tell an old message from a new one. A version changes only when a
field is removed or changes its meaning; new optional fields keep it. The models are the one
definition: `bcm-tools events schemas --out schemas/` writes them as JSON Schema files, and a
test keeps the committed files equal to them.

Keys make log compaction and per-key ordering meaningful: a block's hash, a transaction's id, a
payment hash, a channel point. Block topics have one partition, so blocks stay in chain order.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter
from typing_extensions import TypedDict

Hex32 = Field(pattern=r"^[0-9a-f]{64}$")


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seen_at: float = Field(description="When the bridge received the event from its source, Unix seconds.")


class BitcoinBlock(_Message):
    """A block joining (`connected`) or leaving (`disconnected`, in a reorg) bitcoind's best
    chain. In a reorg every block of the old branch is disconnected, newest first, before the
    blocks of the new branch are connected, oldest first."""

    schema_id: Literal["bitcoin.blocks/1"] = Field(default="bitcoin.blocks/1", alias="schema")
    event: Literal["connected", "disconnected"]
    chain: str = Field(description="bitcoind's chain name: main, testnet4, signet, regtest.")
    height: int = Field(ge=0)
    hash: str = Hex32
    prev_hash: str = Hex32
    time: int | None = Field(description="The block header's timestamp, Unix seconds. Like tx_count and size, null only in a `disconnected` event for a block bitcoind no longer holds (pruned).")
    tx_count: int | None = Field(ge=1)
    size: int | None = Field(ge=80, description="Serialized size in bytes, witness included.")


class BitcoinTx(_Message):
    """A transaction added to bitcoind's mempool."""

    schema_id: Literal["bitcoin.txs/1"] = Field(default="bitcoin.txs/1", alias="schema")
    chain: str
    txid: str = Hex32
    wtxid: str = Hex32
    size: int = Field(ge=1)
    vsize: int = Field(ge=1, description="Virtual size: weight / 4, rounded up.")
    fee_sat: int | None = Field(description="Fee in satoshis from bitcoind's mempool entry; null when it is not known (the entry had already left the mempool, or RPC was down).")


class MoneroBlock(_Message):
    """A block joining or leaving monerod's main chain (same order rules as bitcoin.blocks)."""

    schema_id: Literal["monero.blocks/1"] = Field(default="monero.blocks/1", alias="schema")
    event: Literal["connected", "disconnected"]
    nettype: str = Field(description="mainnet, testnet, stagenet, or fakechain (regtest).")
    height: int = Field(ge=0)
    hash: str = Hex32
    prev_hash: str = Hex32
    timestamp: int | None = Field(description="Block timestamp, Unix seconds. Like tx_count and size, null only in a `disconnected` event for a block monerod no longer holds (popped rather than left as an alternative block).")
    tx_count: int | None = Field(ge=0, description="Transactions besides the miner's.")
    size: int | None = Field(ge=0, description="Block size in bytes (monerod's block_size).")


class MoneroTx(_Message):
    """A transaction added to monerod's pool."""

    schema_id: Literal["monero.txpool/1"] = Field(default="monero.txpool/1", alias="schema")
    nettype: str
    id: str = Hex32
    blob_size: int = Field(ge=1)
    weight: int = Field(ge=1)
    fee: int = Field(ge=0, description="Fee in piconero.")


class LndChannel(_Message):
    """A change on LND's channel event stream."""

    schema_id: Literal["lnd.channels/1"] = Field(default="lnd.channels/1", alias="schema")
    event: Literal["pending_open", "open", "active", "inactive", "closed", "fully_resolved", "funding_timeout"]
    node: str = Field(description="This LND's identity public key.")
    channel_point: str = Field(pattern=r"^[0-9a-f]{64}:\d+$")
    remote_pubkey: str | None = None
    capacity_sat: int | None = None
    close_type: str | None = Field(default=None, description="For `closed`: LND's close type, e.g. COOPERATIVE_CLOSE.")


class LndInvoice(_Message):
    """An invoice added to LND or changing state (settled, canceled, accepted)."""

    schema_id: Literal["lnd.invoices/1"] = Field(default="lnd.invoices/1", alias="schema")
    event: Literal["added", "settled", "canceled", "accepted"]
    node: str
    payment_hash: str = Hex32
    state: Literal["OPEN", "SETTLED", "CANCELED", "ACCEPTED"]
    value_msat: int
    amt_paid_msat: int
    memo: str
    add_index: int
    settle_index: int
    creation_date: int
    settle_date: int


class LndPayment(_Message):
    """An outgoing payment of LND's, each time its status changes."""

    schema_id: Literal["lnd.payments/1"] = Field(default="lnd.payments/1", alias="schema")
    node: str
    payment_hash: str = Hex32
    status: Literal["UNKNOWN", "IN_FLIGHT", "SUCCEEDED", "FAILED", "INITIATED"]
    value_msat: int
    fee_msat: int
    payment_index: int
    creation_time_ns: int
    failure_reason: str


class LndTransaction(_Message):
    """An on-chain transaction of LND's wallet, seen unconfirmed and again when confirmed."""

    schema_id: Literal["lnd.transactions/1"] = Field(default="lnd.transactions/1", alias="schema")
    node: str
    txid: str = Hex32
    amount_sat: int
    fee_sat: int
    num_confirmations: int
    block_height: int
    block_hash: str
    time_stamp: int
    label: str


# topic (without the cluster prefix) -> its model and the field its messages are keyed by.
TOPICS: dict[str, tuple[type[_Message], str]] = {
    "bitcoin.blocks": (BitcoinBlock, "hash"),
    "bitcoin.txs": (BitcoinTx, "txid"),
    "lnd.channels": (LndChannel, "channel_point"),
    "lnd.invoices": (LndInvoice, "payment_hash"),
    "lnd.payments": (LndPayment, "payment_hash"),
    "lnd.transactions": (LndTransaction, "txid"),
    "monero.blocks": (MoneroBlock, "hash"),
    "monero.txpool": (MoneroTx, "id"),
}

# Topics whose messages must stay in order across keys: one partition each.
ORDERED_TOPICS = ("bitcoin.blocks", "monero.blocks")


def topic_of(message: _Message) -> str:
    return message.schema_id.split("/", 1)[0]


def key_of(message: _Message) -> bytes:
    _, key_field = TOPICS[topic_of(message)]
    return str(getattr(message, key_field)).encode()


def encode(message: _Message) -> bytes:
    return message.model_dump_json(by_alias=True).encode()


def wire_encoder(model: type[_Message]) -> Callable[[dict[str, Any]], bytes]:
    """`encode` for a message given as a dict instead of a model: its fields by their JSON
    names, in the model's order, with values already validated by the model's own constraints
    (a TypeAdapter over the same FieldInfos, see monero.py). The JSON is the one `encode` writes
    (tests/test_events_schemas.py checks); building no model saves most of a busy stream's
    per-message work."""
    fields = {field.alias or name: field.annotation for name, field in model.model_fields.items()}
    wire = TypedDict(f"{model.__name__}Wire", fields)  # type: ignore[misc]
    # pydantic-core's serializer itself: TypeAdapter.dump_json's Python layer costs as much again.
    return TypeAdapter(wire).serializer.to_json


def schema_file_name(topic: str) -> str:
    model, _ = TOPICS[topic]
    version = model.model_fields["schema_id"].default.split("/", 1)[1]
    return f"{topic}.v{version}.schema.json"


def json_schema(topic: str) -> str:
    """The topic's JSON Schema, as the committed file holds it."""
    model, key_field = TOPICS[topic]
    schema = model.model_json_schema(by_alias=True, mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"bcm:events/{schema_file_name(topic)}"
    schema["x-bcm-topic"] = topic
    schema["x-bcm-key"] = key_field
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def all_schema_files() -> dict[str, str]:
    return {schema_file_name(topic): json_schema(topic) for topic in sorted(TOPICS)}
