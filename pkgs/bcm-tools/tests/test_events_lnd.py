"""`bcm-tools events bridge` following a real LND (v0.20.1-beta, btcd as its chain, regtest) into
a real Kafka broker on 127.0.0.1, with the macaroon bcm.events bakes: the permissions are read
from the `events` fixture host's export (the module's rendered post-start step of LND), so the
module's list is the one shown to be enough.

alice runs the bridge; she opens a channel to bob, pays an invoice of bob's and is paid one of
her own: lnd.channels, lnd.transactions, lnd.payments and lnd.invoices each get their events."""

from __future__ import annotations

import shlex
import subprocess

import pytest
from events_stack import Bridge, stop_all_bridges
from kafka_broker import KafkaBroker
from lnd_regtest import Network, wait_for
from sandbox import load_export

pytestmark = [pytest.mark.kafka, pytest.mark.lnd, pytest.mark.btcd, pytest.mark.repo]

PREFIX = "lnd-test"
TOPICS = ["lnd.channels", "lnd.invoices", "lnd.payments", "lnd.transactions"]


def module_permissions() -> list[str]:
    """What bcm.events has LND bake for the bridge, from the rendered lnd-post-start script."""
    (script,) = [text for path, text in load_export("events")["files"].items() if path.endswith("-lnd-post-start")]
    (line,) = [line for line in script.splitlines() if "bakemacaroon --save_to=/run/lnd/events.macaroon" in line]
    words = shlex.split(line)
    return words[words.index("--save_to=/run/lnd/events.macaroon") + 1 :]


@pytest.fixture(autouse=True)
def _stop_bridges():
    yield
    stop_all_bridges()


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    broker = KafkaBroker(tmp_path_factory.mktemp("kafka"))
    broker.start()
    broker.create_topics([f"{PREFIX}.{t}" for t in TOPICS], partitions=2)
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def network(tmp_path_factory):
    net = Network(tmp_path_factory.mktemp("lnd"))
    try:
        net.start(["alice", "bob"])
        yield net
    finally:
        net.stop()


def by_key(broker: KafkaBroker, topic: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for key, value in broker.read_all(f"{PREFIX}.{topic}"):
        out.setdefault(key.decode(), []).append(value)
    return out


def test_channel_payment_and_invoice_events_arrive(network, broker, tmp_path):
    alice, bob = network.nodes
    macaroon = tmp_path / "events.macaroon"
    permissions = module_permissions()
    assert permissions and all(p.startswith("uri:/") for p in permissions)
    alice.cli("bakemacaroon", f"--save_to={macaroon}", *permissions)
    bridge = Bridge(
        tmp_path / "bridge",
        [
            f"--kafka={broker.bootstrap}", f"--kafka-properties={broker.client_properties(tmp_path / 'events.properties')}",
            f"--topic-prefix={PREFIX}", f"--state={tmp_path / 'bridge' / 'state.json'}",
            f"--lnd-rpc={alice.rpc}", f"--lnd-tls-cert={alice.tls_cert}", f"--lnd-macaroon={macaroon}",
        ],
        env={"BCM_LND_STUBS": network.stubs},
    )  # fmt: skip
    # The macaroon reads the streams and nothing else: not even a channel list, nor an invoice.
    for refused in (["addinvoice", "--amt=1"], ["listchannels"], ["walletbalance"]):
        run = subprocess.run(
            [str(alice.bin_dir / "lncli"), "--network=regtest", f"--rpcserver={alice.rpc}", f"--tlscertpath={alice.tls_cert}", f"--macaroonpath={macaroon}", *refused],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert run.returncode != 0 and "permission denied" in run.stderr, (refused, run.stderr)
    bridge.start()
    # Each stream is followed once it has said nothing for a moment; none is down.
    wait_for("LND's streams followed", lambda: all(
        bridge.metric(f'bcm_events_source_up{{source="lnd-{s}"}}') == 1 for s in ("channels", "invoices", "payments", "transactions")
    ), timeout=30)  # fmt: skip

    network.fund(alice, 2_000_000, bob)
    point = network.open_channel(alice, bob, 1_000_000)
    wait_for("the channel's events", lambda: {"pending_open", "open", "active"} <= {m["event"] for m in by_key(broker, "lnd.channels").get(point, [])}, timeout=60, interval=1)
    channel = {m["event"]: m for m in by_key(broker, "lnd.channels")[point]}
    assert channel["open"]["remote_pubkey"] == bob.pubkey() and channel["open"]["capacity_sat"] == 1_000_000
    assert channel["open"]["node"] == alice.pubkey()

    funding_txid = point.split(":")[0]
    wait_for("the funding transaction, confirmed", lambda: any(m["num_confirmations"] >= 1 for m in by_key(broker, "lnd.transactions").get(funding_txid, [])), timeout=60, interval=1)

    # alice pays bob: her payment goes in flight, then succeeds. Until bob's channel_ready has
    # reached her, seconds after both list the channel active, LND gives her channel no local
    # balance and fails the payment (insufficient_balance): it is tried again until it goes.
    bob_invoice = bob.cli("addinvoice", "--amt=20000", "--memo=to bob")
    wait_for("alice's payment", lambda: alice.cli("payinvoice", "--force", bob_invoice["payment_request"]), timeout=60, interval=1)
    hash_out = bob_invoice["r_hash"]
    wait_for("the payment's success", lambda: "SUCCEEDED" in [m["status"] for m in by_key(broker, "lnd.payments").get(hash_out, [])], timeout=60, interval=1)
    payment = by_key(broker, "lnd.payments")[hash_out][-1]
    assert payment["status"] == "SUCCEEDED" and payment["value_msat"] == 20_000_000 and payment["schema"] == "lnd.payments/1"

    # bob pays alice: her invoice is added, then settled.
    alice_invoice = alice.cli("addinvoice", "--amt=5000", "--memo=to alice")
    hash_in = alice_invoice["r_hash"]
    wait_for("the invoice added", lambda: hash_in in by_key(broker, "lnd.invoices"), timeout=30, interval=1)
    wait_for("bob's payment", lambda: bob.cli("payinvoice", "--force", alice_invoice["payment_request"]), timeout=60, interval=1)
    wait_for("the invoice settled", lambda: "settled" in [m["event"] for m in by_key(broker, "lnd.invoices")[hash_in]], timeout=60, interval=1)
    invoice = by_key(broker, "lnd.invoices")[hash_in]
    assert [m["event"] for m in invoice] == ["added", "settled"]
    assert invoice[-1]["amt_paid_msat"] == 5_000_000 and invoice[-1]["memo"] == "to alice" and invoice[-1]["settle_index"] >= 1

    # Restarted, the bridge resumes the invoice stream where Kafka acknowledged it: an invoice
    # added while it was down arrives, the settled one is not sent again.
    bridge.stop()
    missed = alice.cli("addinvoice", "--amt=7000", "--memo=while down")["r_hash"]
    bridge.start()
    wait_for("the invoice added while down", lambda: missed in by_key(broker, "lnd.invoices"), timeout=60, interval=1)
    assert [m["event"] for m in by_key(broker, "lnd.invoices")[hash_in]] == ["added", "settled"]
    assert bridge.metric('bcm_events_malformed_total{source="lnd-invoices"}') == 0
    assert bridge.stop() == 0
