"""`bcm-tools events`: the node's events on Kafka (`bridge`), read back (`tail`), and the
messages' JSON Schemas (`schemas`)."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path

import click

from bcm_tools.errors import CredentialError, DriftError, GenerateError, UsageError


def _read_secret(path: Path, what: str) -> str:
    try:
        return path.read_text().strip()
    except OSError as err:
        raise CredentialError(f"cannot read {what} {path}: {err.strerror}") from None


def _kafka_options(f):  # type: ignore[no-untyped-def]
    f = click.option(
        "--kafka-properties",
        envvar="BCM_EVENTS_KAFKA_PROPERTIES",
        type=click.Path(dir_okay=False, path_type=Path),
        help="Kafka client properties (SASL) as bcm.kafka writes them for a client.",
    )(f)
    f = click.option("--kafka", "kafka_bootstrap", envvar="BCM_EVENTS_KAFKA", default="127.0.0.1:9092", show_default=True, help="Kafka bootstrap servers.")(f)
    return f


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(_signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


@click.group()
def events() -> None:
    """Chain and Lightning events on Kafka."""


@events.command()
@_kafka_options
@click.option("--topic-prefix", envvar="BCM_EVENTS_TOPIC_PREFIX", required=True, help="Prefix of every topic, the cluster's name: <prefix>.bitcoin.blocks.")
@click.option("--state", "state_file", envvar="BCM_EVENTS_STATE", required=True, type=click.Path(dir_okay=False, path_type=Path), help="The bridge's state file (last block published per chain).")
@click.option("--metrics", envvar="BCM_EVENTS_METRICS", help="HOST:PORT to serve Prometheus metrics on.")
@click.option("--bitcoind-rpc", envvar="BCM_EVENTS_BITCOIND_RPC", help="bitcoind's RPC, http://HOST:PORT, for backfill.")
@click.option("--bitcoind-rpc-user", envvar="BCM_EVENTS_BITCOIND_RPC_USER", help="RPC user (whitelisted for the backfill calls).")
@click.option("--bitcoind-rpc-password-file", envvar="BCM_EVENTS_BITCOIND_RPC_PASSWORD_FILE", type=click.Path(dir_okay=False, path_type=Path), help="File holding its password.")
@click.option("--bitcoind-cookie", envvar="BCM_EVENTS_BITCOIND_COOKIE", type=click.Path(dir_okay=False, path_type=Path), help="bitcoind's cookie file, instead of a user and password.")
@click.option("--bitcoind-zmq-block", envvar="BCM_EVENTS_BITCOIND_ZMQ_BLOCK", help="bitcoind's zmqpubrawblock (and zmqpubhashblock) address, tcp://HOST:PORT.")
@click.option("--bitcoind-zmq-tx", envvar="BCM_EVENTS_BITCOIND_ZMQ_TX", help="bitcoind's zmqpubrawtx address, tcp://HOST:PORT.")
@click.option("--monerod-rpc", envvar="BCM_EVENTS_MONEROD_RPC", help="monerod's RPC, http://HOST:PORT, for backfill.")
@click.option("--monerod-zmq", envvar="BCM_EVENTS_MONEROD_ZMQ", help="monerod's --zmq-pub address, tcp://HOST:PORT.")
@click.option("--lnd-rpc", envvar="BCM_EVENTS_LND_RPC", help="LND's gRPC HOST:PORT.")
@click.option("--lnd-tls-cert", envvar="BCM_EVENTS_LND_TLS_CERT", type=click.Path(dir_okay=False, path_type=Path), help="LND's tls.cert.")
@click.option("--lnd-macaroon", envvar="BCM_EVENTS_LND_MACAROON", type=click.Path(dir_okay=False, path_type=Path), help="A read-only macaroon (docs/events.md lists the calls).")
@click.option("-v", "--verbose", is_flag=True, help="Log every published block.")
def bridge(kafka_bootstrap: str, kafka_properties: Path | None, topic_prefix: str, state_file: Path, metrics: str | None,
           bitcoind_rpc: str | None, bitcoind_rpc_user: str | None, bitcoind_rpc_password_file: Path | None,
           bitcoind_cookie: Path | None, bitcoind_zmq_block: str | None, bitcoind_zmq_tx: str | None,
           monerod_rpc: str | None, monerod_zmq: str | None, lnd_rpc: str | None, lnd_tls_cert: Path | None,
           lnd_macaroon: Path | None, verbose: bool) -> None:
    """Publish bitcoind's, monerod's and LND's events to Kafka until stopped."""
    from pydantic import ValidationError

    from bcm_tools.events import runner

    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("bcm.events").setLevel(logging.DEBUG if verbose else logging.INFO)
    bitcoind = monerod = lnd = None
    if bitcoind_rpc:
        if not bitcoind_zmq_block:
            raise UsageError("--bitcoind-rpc needs --bitcoind-zmq-block")
        if bitcoind_cookie is None and (not bitcoind_rpc_user or bitcoind_rpc_password_file is None):
            raise UsageError("--bitcoind-rpc needs --bitcoind-cookie, or --bitcoind-rpc-user and --bitcoind-rpc-password-file")
        password = _read_secret(bitcoind_rpc_password_file, "bitcoind's RPC password file") if bitcoind_rpc_password_file else None
        bitcoind = runner.BitcoindSettings(rpc_url=bitcoind_rpc, rpc_user=bitcoind_rpc_user, rpc_password=password, rpc_cookie=bitcoind_cookie, zmq_block=bitcoind_zmq_block, zmq_tx=bitcoind_zmq_tx)
    if monerod_rpc or monerod_zmq:
        if not (monerod_rpc and monerod_zmq):
            raise UsageError("--monerod-rpc and --monerod-zmq go together")
        monerod = runner.MonerodSettings(rpc_url=monerod_rpc, zmq_url=monerod_zmq)
    if lnd_rpc:
        if lnd_tls_cert is None or lnd_macaroon is None:
            raise UsageError("--lnd-rpc needs --lnd-tls-cert and --lnd-macaroon")
        lnd = runner.LndSettings(rpc=lnd_rpc, tls_cert=lnd_tls_cert, macaroon=lnd_macaroon)
    try:
        settings = runner.BridgeSettings(
            kafka_bootstrap=kafka_bootstrap, kafka_properties=kafka_properties, topic_prefix=topic_prefix,
            state_file=state_file, metrics=metrics, bitcoind=bitcoind, monerod=monerod, lnd=lnd,
        )
    except ValidationError as err:
        problem = err.errors()[0]
        raise UsageError(f"--{'-'.join(str(p) for p in problem['loc']).replace('_', '-')}: {problem['msg']}") from None
    runner.run_bridge(settings, _stop_on_signals())


@events.command()
@_kafka_options
@click.argument("topic")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line: topic, partition, offset, timestamp, key, value.")
@click.option("--from-beginning", is_flag=True, help="Start at the oldest message kept, not at the newest.")
@click.option("-n", "--limit", type=click.IntRange(min=1), help="Stop after this many messages.")
def tail(kafka_bootstrap: str, kafka_properties: Path | None, topic: str, as_json: bool, from_beginning: bool, limit: int | None) -> None:
    """Print the messages of TOPIC (a full name, e.g. home.bitcoin.blocks) as they arrive."""
    from bcm_tools.events import runner

    for line in runner.tail(kafka_bootstrap, kafka_properties, topic, from_beginning, _stop_on_signals(), limit):
        click.echo(line.model_dump_json() if as_json else runner.readable(line))


@events.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Directory to write <topic>.v<N>.schema.json into.")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if the files differ from the models.")
def schemas(out: Path, check: bool) -> None:
    """Write every topic's JSON Schema, from the message models."""
    from bcm_tools.events import schemas as models

    wanted = models.all_schema_files()
    if check:
        present = {p.name: p.read_text() for p in out.glob("*.schema.json")} if out.is_dir() else {}
        differ = sorted(name for name in set(wanted) | set(present) if wanted.get(name) != present.get(name))
        if differ:
            raise DriftError(f"the JSON Schemas in {out} differ from the message models; run bcm-tools events schemas --out {out}", [str(out / n) for n in differ])
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
        for stale in out.glob("*.schema.json"):
            if stale.name not in wanted:
                stale.unlink()
        for name, text in wanted.items():
            (out / name).write_text(text)
    except OSError as err:
        raise GenerateError(f"cannot write the JSON Schemas into {out}: {err.strerror}") from None
    click.echo(json.dumps(sorted(wanted)))
