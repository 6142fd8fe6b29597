"""The event messages' schemas, the committed JSON Schema files and the documented examples
agree; the bridge's state file and Kafka client settings; bad input to `bcm-tools events` is
one clear line and a non-zero exit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bcm_tools.events import schemas
from bcm_tools.events.state import KEEP_BLOCKS, StateFile
from bcm_tools.kafka import client_config, read_properties

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.repo
def test_committed_json_schemas_are_the_models():
    committed = {p.name: p.read_text() for p in (ROOT / "schemas").glob("*.schema.json")}
    assert committed == schemas.all_schema_files(), "run: bcm-tools events schemas --out schemas"


@pytest.mark.repo
def test_documented_examples_are_valid_messages_of_every_topic():
    text = (ROOT / "docs" / "events.md").read_text()
    block = text.split("<!-- examples:", 1)[1].split("```json\n", 1)[1].split("```", 1)[0]
    seen = set()
    for line in block.strip().splitlines():
        data = json.loads(line)
        topic = data["schema"].split("/")[0]
        model, _ = schemas.TOPICS[topic]
        message = model.model_validate(data)
        assert json.loads(schemas.encode(message)) == data
        seen.add(topic)
    assert seen == set(schemas.TOPICS)


def test_a_message_from_a_newer_schema_is_refused_by_this_one():
    with pytest.raises(ValueError):
        schemas.MoneroTx.model_validate({"schema": "monero.txpool/2", "seen_at": 1, "nettype": "x", "id": "a" * 64, "blob_size": 1, "weight": 1, "fee": 0})


def test_schemas_check_names_the_stale_file_and_exits_1(run_cli, tmp_path):
    assert run_cli("events", "schemas", "--out", str(tmp_path)).returncode == 0
    (tmp_path / "bitcoin.txs.v1.schema.json").write_text("{}\n")
    checked = run_cli("events", "schemas", "--out", str(tmp_path), "--check")
    assert checked.returncode == 1 and "Traceback" not in checked.stderr
    assert checked.stderr.splitlines()[0].startswith("error: the JSON Schemas in")
    assert str(tmp_path / "bitcoin.txs.v1.schema.json") in checked.stderr


@given(st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(["connected", "disconnected"])), max_size=300))
def test_state_keeps_a_contiguous_window_of_the_newest_blocks(steps):
    from bcm_tools.events.state import ChainTip

    tip = ChainTip()
    for start, event in steps:
        if event == "connected" or not tip.blocks:
            tip.push((tip.height + 1) if tip.height is not None else start, f"{start:064x}")
        else:
            tip.pop()
        heights = [h for h, _ in tip.blocks]
        assert heights == list(range(heights[0], heights[0] + len(heights))) if heights else True
        assert len(heights) <= KEEP_BLOCKS


def test_state_file_round_trips_and_is_replaced_whole(tmp_path):
    path = tmp_path / "state.json"
    state = StateFile(path)
    for height in range(200):
        state.chain("bitcoin").push(height, f"{height:064x}")
    state.set_cursor("lnd/node", add_index=4, settle_index=2)
    again = StateFile(path)
    assert again.chain("bitcoin").blocks == state.chain("bitcoin").blocks and len(again.chain("bitcoin").blocks) == KEEP_BLOCKS
    assert again.cursor("lnd/node") == {"add_index": 4, "settle_index": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_kafka_client_properties_as_the_module_writes_them(tmp_path):
    path = tmp_path / "events.properties"
    path.write_text(
        "# written by bcm-secrets\nsecurity.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\n"
        'sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required username="events" password="p#ss=w:rd";\n'
    )
    assert read_properties(path)["sasl.mechanism"] == "PLAIN"
    config = client_config("127.0.0.1:9092", path)
    assert config == {
        "bootstrap.servers": "127.0.0.1:9092", "security.protocol": "SASL_PLAINTEXT", "sasl.mechanism": "PLAIN",
        "sasl.username": "events", "sasl.password": "p#ss=w:rd",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--topic-prefix", "home", "--state", "{tmp}/s.json"], "error: no source to bridge"),
        (["--topic-prefix", "home/x", "--state", "{tmp}/s.json", "--monerod-rpc", "http://127.0.0.1:1", "--monerod-zmq", "tcp://127.0.0.1:2"], "error: --topic-prefix: String should match pattern"),
        (["--topic-prefix", "home", "--state", "{tmp}/s.json", "--monerod-rpc", "http://127.0.0.1:1"], "error: --monerod-rpc and --monerod-zmq go together"),
        (["--topic-prefix", "home", "--state", "{tmp}/s.json", "--monerod-rpc", "127.0.0.1:1", "--monerod-zmq", "tcp://127.0.0.1:2"], "error: monerod RPC URL must look like http://HOST:PORT"),
        (["--topic-prefix", "home", "--state", "{tmp}/s.json", "--bitcoind-rpc", "http://127.0.0.1:1", "--bitcoind-zmq-block", "tcp://127.0.0.1:2"], "error: --bitcoind-rpc needs --bitcoind-cookie"),
        (["--topic-prefix", "home", "--state", "{tmp}/damaged.json", "--monerod-rpc", "http://127.0.0.1:1", "--monerod-zmq", "tcp://127.0.0.1:2"], "error: the bridge's state file"),
        (["--topic-prefix", "home", "--state", "{tmp}/s.json", "--kafka-properties", "{tmp}/missing", "--monerod-rpc", "http://127.0.0.1:1", "--monerod-zmq", "tcp://127.0.0.1:2"], "error: cannot read Kafka client properties"),
        (["--topic-prefix", "home", "--state", "{tmp}/s.json", "--metrics", "nowhere", "--monerod-rpc", "http://127.0.0.1:1", "--monerod-zmq", "tcp://127.0.0.1:2"], "error: --metrics must be HOST:PORT"),
    ],
)
def test_bad_bridge_input_is_one_line_and_a_non_zero_exit(run_cli, tmp_path, args, message):
    (tmp_path / "damaged.json").write_text('{"version": 1, "chains": {"bitcoin": {"blocks": "x"}}')
    result = run_cli("events", "bridge", *(a.replace("{tmp}", str(tmp_path)) for a in args))
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith(message) and len(result.stderr.strip().splitlines()) == 1, result.stderr
