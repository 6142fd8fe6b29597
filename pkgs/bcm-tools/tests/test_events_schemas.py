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


# -- the monero.txpool fast path -----------------------------------------------------------------

_hex64 = st.text("0123456789abcdef", min_size=64, max_size=64)
_entry = st.fixed_dictionaries({"id": _hex64, "blob_size": st.integers(1, 2**64 - 1), "weight": st.integers(1, 2**64 - 1), "fee": st.integers(0, 2**64 - 1)})
# Anything JSON can carry in those fields, right or wrong.
_json_value = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=70), _hex64, _hex64.map(str.upper))
_any_entry = st.dictionaries(st.sampled_from(["id", "blob_size", "weight", "fee", "extra"]), _json_value)


@given(st.lists(_entry, max_size=5), st.floats(0, 2**32, allow_nan=False), st.sampled_from(["mainnet", "fakechain", 'odd "net"\\']))
def test_pool_messages_are_what_the_model_encodes(entries, seen_at, nettype):
    """A json-minimal-txpool_add body validated and encoded without building models gives the
    bytes the model gives, key for key."""
    from bcm_tools.events.monero import pool_messages

    got = pool_messages(json.dumps(entries).encode(), nettype, seen_at)
    expected = [(e["id"].encode(), schemas.encode(schemas.MoneroTx(seen_at=seen_at, nettype=nettype, **e))) for e in entries]
    assert got == expected


@given(st.one_of(st.lists(_any_entry, max_size=4), _json_value, st.dictionaries(st.text(max_size=5), _json_value, max_size=3)))
def test_pool_messages_accept_nothing_the_model_refuses(body):
    """Validation is no weaker than the model's: a body the fast path takes holds only entries the
    model takes (it is stricter: a number must be a JSON integer, not a string or a float)."""
    from pydantic import ValidationError

    from bcm_tools.events.bridge import Malformed
    from bcm_tools.events.monero import pool_messages

    try:
        messages = pool_messages(json.dumps(body).encode(), "mainnet", 1.0)
    except Malformed:
        return
    assert isinstance(body, list) and len(messages) == len(body)
    for entry, (key, value) in zip(body, messages):
        fields = {k: v for k, v in entry.items() if k != "extra"}
        try:
            model = schemas.MoneroTx(seen_at=1.0, nettype="mainnet", **fields)
        except ValidationError as err:
            raise AssertionError(f"the fast path took {entry!r}, which the model refuses: {err}") from None
        assert key == model.id.encode() and value == schemas.encode(model)


_GOOD = {"id": "b" * 64, "blob_size": 1, "weight": 1, "fee": 0}


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"not json", "txpool_add: Invalid JSON"),
        (b'{"id": "x"}', "txpool_add: Input should be a valid array"),
        ([_GOOD, {**_GOOD, "id": "B" * 64}], "txpool_add: 1.id: String should match pattern"),
        ([_GOOD, {**_GOOD, "fee": -1}], "txpool_add: 1.fee: Input should be greater than or equal to 0"),
        ([_GOOD, {**_GOOD, "fee": "5"}], "txpool_add: 1.fee: Input should be a valid integer"),
        ([_GOOD, {**_GOOD, "weight": 1.0}], "txpool_add: 1.weight: Input should be a valid integer"),
        ([_GOOD, {k: v for k, v in _GOOD.items() if k != "fee"}], "txpool_add: 1.fee: Field required"),
    ],
)
def test_a_malformed_pool_frame_is_refused_whole_naming_what_failed(body, reason):
    """One bad entry refuses the frame, the good entry before it too: nothing of it is sent."""
    from bcm_tools.events.bridge import Malformed
    from bcm_tools.events.monero import pool_messages

    with pytest.raises(Malformed) as refused:
        pool_messages(body if isinstance(body, bytes) else json.dumps(body).encode(), "mainnet", 1.0)
    assert str(refused.value).startswith(reason)
