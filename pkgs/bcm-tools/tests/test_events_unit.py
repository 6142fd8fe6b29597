"""The events bridge as bcm.events renders it (the `events` fixture host: regtest1 with the bridge
on), run under its unit's sandbox (tests/sandbox.py) against a real Kafka broker and a real
monerod, itself run from its own unit.

What runs is what the modules render: the secrets step derives the Kafka client credentials,
`kafka-topics.service` creates the declared topics with Kafka's own tools, monerod runs from its
unit, and the bridge's unit follows it through the restricted RPC and the ZMQ publisher. Changed
for the test, in memory: the Kafka broker listens on free ports, not the rendered 9092/9093
(tests/kafka_broker.py), so the topics script and the bridge's command line get its port, and
the broker's client passwords are put where the secrets step keeps them, before it runs.
bitcoind has no binary on these machines and LND is not started here: their sources are down
and retried, which the test checks too, while monerod's events flow.

monerod's ports and the bridge's metrics port are moved to free ones the same way (in
monerod.conf, monerod's start script and the bridge's command line), so the test does not
depend on the rendered ones being free on a machine that runs other tests at the same time.
"""

from __future__ import annotations

import copy
import json
import shutil
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from kafka_broker import KafkaBroker, kafka_env
from lnd_regtest import free_port, wait_for
from sandbox import Host, load_export, wait_port
from test_units_sandboxed import generate_blocks, http_json, publish_onion, require_sandbox

pytestmark = [pytest.mark.sandbox, pytest.mark.repo, pytest.mark.kafka, pytest.mark.monerod]

PREFIX = "vmtest"
SECRETS = "/var/lib/bcm-secrets"
# monerod's P2P, RPC, ZMQ RPC, onion inbound, ZMQ publisher and restricted RPC ports, and the
# bridge's metrics port, as rendered.
RENDERED_PORTS = (18080, 18081, 18082, 18083, 18084, 18089, 9121)
# Kafka's command-line tools the topics script calls, and their main classes (Kafka 4.3's
# bin/kafka-topics.sh and bin/kafka-configs.sh run these).
KAFKA_TOOLS = {"kafka-topics.sh": "org.apache.kafka.tools.TopicCommand", "kafka-configs.sh": "kafka.admin.ConfigCommand"}


def kafka_tools(export: dict[str, Any], work: Path) -> dict[str, Path]:
    """bin/kafka-*.sh for the apacheKafka stub: the JVM with the jars 18-kafka resolved, which
    the host's store holds (copied in by `install_kafka_jars`; the cache is under /root, which
    ProtectHome hides)."""
    env = kafka_env()
    package = Path(export["packages"]["apacheKafka"]).name
    work.mkdir(parents=True, exist_ok=True)
    tools = {}
    for name, main_class in KAFKA_TOOLS.items():
        script = work / name
        script.write_text(f'#!/bin/sh\nexec {env["JAVA"]} $KAFKA_HEAP_OPTS -cp "/nix/store/{package}/libs/*" {main_class} "$@"\n')
        script.chmod(0o555)
        tools[name] = script
    return tools


def install_kafka_jars(host: Host) -> None:
    libs = host.store / Path(host.export["packages"]["apacheKafka"]).name / "libs"
    shutil.copytree(Path(kafka_env()["KAFKA_HOME"]) / "lib", libs)


def move_ports(text: str, ports: dict[int, int]) -> str:
    for rendered, free in ports.items():
        text = text.replace(f"={rendered}\n", f"={free}\n").replace(f":{rendered}", f":{free}")
    return text


def metric(port: int, name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            text = reply.read().decode()
    except OSError:
        return 0.0
    values = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    return float(values.get(name, 0.0))


def topic_settings(broker: KafkaBroker, names: list[str]) -> dict[str, tuple[int, str, str]]:
    """Each topic's partitions, cleanup.policy and retention.ms, as the broker has them."""
    from confluent_kafka.admin import AdminClient, ConfigResource

    admin = AdminClient(broker.client_config("admin"))
    described = admin.list_topics(timeout=30).topics
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in names]
    out = {}
    for resource, future in admin.describe_configs(resources).items():
        config = future.result(30)
        out[resource.name] = (len(described[resource.name].partitions), config["cleanup.policy"].value, config["retention.ms"].value)
    return out


@pytest.fixture
def events_host(tmp_path):
    require_sandbox()
    export = copy.deepcopy(load_export("events"))
    broker = KafkaBroker(tmp_path / "kafka")
    broker.start()
    host = None
    ports = {rendered: free_port() for rendered in RENDERED_PORTS}
    try:
        config = export["units"]["bcm-events"]["serviceConfig"]
        assert "'--kafka=127.0.0.1:9092'" in config["ExecStart"]
        config["ExecStart"] = move_ports(config["ExecStart"].replace("127.0.0.1:9092", broker.bootstrap), ports)
        host = Host(export, tmp_path / "host", programs={"apacheKafka": kafka_tools(export, tmp_path / "kafka-tools")})
        host.apply_tmpfiles()
        install_kafka_jars(host)
        host.replace_file("-kafka-create-topics", lambda text: text.replace("127.0.0.1:9092", broker.bootstrap))
        host.replace_file("-monerod.conf", lambda text: move_ports(text, ports))
        host.replace_file("-monerod-start", lambda text: move_ports(text, ports))
        # The broker's passwords where the secrets step keeps each client's; it leaves an
        # existing password alone and derives the client properties from it.
        for client, password in broker.passwords.items():
            host.write(f"{SECRETS}/kafka-client-{client}-password", password)
        yield host, broker, ports
    finally:
        if host is not None:
            host.stop_all()
        broker.stop()


def start_monerod(host: Host, ports: dict[int, int]) -> None:
    publish_onion(host, "monerod")
    monerod = host.start("monerod")
    wait_port(ports[18089], "monerod's restricted RPC", monerod)
    wait_port(ports[18084], "monerod's ZMQ publisher", monerod, timeout=30)


def test_bridge_unit_publishes_monerods_blocks_into_the_declared_topics(events_host):
    host, broker, ports = events_host
    rpc, metrics = ports[18081], ports[9121]
    host.start("bcm-secrets")
    properties = host.path(f"{SECRETS}/kafka-client-events.properties")
    assert (properties.stat().st_uid, properties.stat().st_mode & 0o777) == (host.uid("bcm-events"), 0o600)

    # The module's topics, made by its own unit with Kafka's tools.
    host.start("kafka-topics", timeout=600)
    declared = topic_settings(broker, [f"{PREFIX}.{t}" for t in ("monero.blocks", "monero.txpool", "bitcoin.blocks", "lnd.invoices")])
    assert declared == {
        f"{PREFIX}.monero.blocks": (1, "compact,delete", "-1"),
        f"{PREFIX}.bitcoin.blocks": (1, "compact,delete", "-1"),
        f"{PREFIX}.lnd.invoices": (3, "compact,delete", "-1"),
        f"{PREFIX}.monero.txpool": (3, "delete", "604800000"),
    }, declared

    start_monerod(host, ports)
    bridge = host.start("bcm-events")
    wait_for("the bridge at monerod's tip", lambda: "monero: starting at the tip" in bridge.output(), timeout=120)
    mined = generate_blocks(rpc, 5)["result"]["blocks"]
    wait_for("5 blocks acknowledged", lambda: metric(metrics, 'bcm_events_published_total{topic="monero.blocks"}') >= 5, timeout=120)
    got = [value for _key, value in broker.read_all(f"{PREFIX}.monero.blocks")]
    assert [m["hash"] for m in got] == mined
    assert all(m["event"] == "connected" and m["nettype"] == "fakechain" for m in got)

    # bitcoind (no binary here) and LND (not started) are retried while monerod flows.
    assert metric(metrics, 'bcm_events_source_up{source="monerod"}') == 1
    wait_for("bitcoind and LND reported down", lambda: "bitcoind is down: " in bridge.output() and "lnd-invoices is down: " in bridge.output(), timeout=60)
    assert metric(metrics, 'bcm_events_source_failures_total{source="bitcoind"}') >= 1

    # The state lives in the unit's StateDirectory, for its user alone, and survives a restart
    # (bwrap ends the unit's processes with SIGKILL when it is stopped: a crash, not a clean stop).
    state = host.path("/var/lib/bcm-events/state.json")
    assert (state.stat().st_uid, state.stat().st_mode & 0o777) == (host.uid("bcm-events"), 0o600)
    assert json.loads(state.read_text())["chains"]["monero"]["blocks"][-1][1] == mined[-1]
    host.stop(bridge)
    mined += generate_blocks(rpc, 3)["result"]["blocks"]
    bridge = host.start("bcm-events")
    mined += generate_blocks(rpc, 2)["result"]["blocks"]
    wait_for("every block after the restart", lambda: [v["hash"] for _k, v in broker.read_all(f"{PREFIX}.monero.blocks")] == mined, timeout=120, interval=1)
    assert metric(metrics, 'bcm_events_backfilled_blocks_total{chain="monero"}') >= 3


def test_without_its_state_directory_the_bridge_cannot_record_what_it_published(events_host):
    """The module before its StateDirectory: /var/lib is read-only under ProtectSystem=strict."""
    host, _broker, ports = events_host
    del host.unit("bcm-events")["serviceConfig"]["StateDirectory"]
    host.start("bcm-secrets")
    host.start("kafka-topics", timeout=600)
    start_monerod(host, ports)
    bridge = host.start("bcm-events")
    wait_for("the refusal", lambda: "Read-only file system" in bridge.output(), timeout=120)
    assert metric(ports[9121], 'bcm_events_source_failures_total{source="monerod"}') >= 1
    assert not host.path("/var/lib/bcm-events/state.json").exists()
    assert http_json(f"http://127.0.0.1:{ports[18089]}/get_info")["restricted"] is True
