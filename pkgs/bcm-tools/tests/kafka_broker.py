"""A real Apache Kafka broker (KRaft, broker and controller in one JVM) on 127.0.0.1 for tests.

The jars come from `scripts/test.d/18-kafka`, which resolves the Kafka version the flake's
nixpkgs packages from Maven Central into $BCM_CACHE. The broker runs with the server.properties
the `bcm.kafka` module renders for the regtest1 host (read from the committed export), with only
the ports and the log directory moved to the test's, and the JAAS lines the module's secrets
step appends at start: SASL/PLAIN on both listeners, auto-creation off. Every process is started
here and ended here by its PID.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

from lnd_regtest import CACHE, free_port, stop_process, wait_for

REPO = Path(__file__).resolve().parents[3]
EXPORTED = REPO / "nixos-tests" / "eval" / "exported" / "regtest1.json"


def kafka_env() -> dict[str, str]:
    """What 18-kafka resolved (KAFKA_HOME, JAVA); fails, never skips, when it has not run."""
    env_file = CACHE / "kafka.env"
    if not env_file.is_file():
        raise RuntimeError(f"Kafka not resolved in {CACHE}: run scripts/test.d/18-kafka (scripts/test runs it)")
    return dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)


def rendered_server_properties() -> str:
    """The server.properties text the bcm.kafka module renders for regtest1."""
    files = json.loads(EXPORTED.read_text())["files"]
    (text,) = [text for path, text in files.items() if path.endswith("-server.properties")]
    return text


def java_command(env: dict[str, str], main_class: str, *args: str, heap: str = "-Xmx256m") -> list[str]:
    home = Path(env["KAFKA_HOME"])
    return [
        env["JAVA"],
        heap,
        "-XX:+UseSerialGC",
        f"-Dlog4j2.configurationFile={home / 'log4j2.properties'}",
        "-cp",
        f"{home / 'lib'}/*",
        main_class,
        *args,
    ]


class KafkaBroker:
    """One broker from the module's configuration, SASL/PLAIN clients `admin` and `events`."""

    CLIENTS = ("admin", "events", "operator")

    def __init__(self, directory: Path):
        self.env = kafka_env()
        self.directory = directory
        self.port = free_port()
        self.controller_port = free_port()
        self.passwords = {name: secrets.token_hex(16) for name in self.CLIENTS}
        self.proc: subprocess.Popen[bytes] | None = None
        self.properties = directory / "server.properties"
        self.log = directory / "broker.log"
        self.cluster_id = uuid.uuid4().bytes
        self._write_config()
        self._format()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        text = rendered_server_properties()
        text = text.replace("127.0.0.1:9092", self.bootstrap).replace("127.0.0.1:9093", f"127.0.0.1:{self.controller_port}")
        text = re.sub(r"(?m)^log\.dirs = .*$", f"log.dirs = {self.directory / 'logs'}", text)
        # What the module's kafka-jaas secret script writes (modules/kafka.nix).
        jaas = 'org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="{}"'.format(self.passwords["admin"])
        jaas += "".join(f' user_{name}="{password}"' for name, password in self.passwords.items())
        text += f"listener.name.client.plain.sasl.jaas.config={jaas};\nlistener.name.controller.plain.sasl.jaas.config={jaas};\n"
        self.properties.write_text(text)

    def _format(self) -> None:
        import base64

        cluster = base64.urlsafe_b64encode(self.cluster_id).decode().rstrip("=")
        run = subprocess.run(
            # "=": a base64 id may start with "-", which would be read as an option.
            java_command(self.env, "kafka.tools.StorageTool", "format", f"--cluster-id={cluster}", "-c", str(self.properties)),
            capture_output=True,
            text=True,
            timeout=120,
        )
        if run.returncode != 0:
            raise RuntimeError(f"kafka-storage format failed:\n{run.stdout}\n{run.stderr}")

    def start(self) -> None:
        # "Kafka Server started" is looked for in what this process writes only.
        if self.log.exists():
            self.log.rename(self.log.with_suffix(f".{secrets.token_hex(4)}.log"))
        sink = self.log.open("ab")
        self.proc = subprocess.Popen(
            java_command(self.env, "kafka.Kafka", str(self.properties), heap="-Xmx512m"), stdout=sink, stderr=subprocess.STDOUT
        )
        wait_for("Kafka broker started", self._started, timeout=120, interval=0.3)

    def _started(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"Kafka exited with {self.proc.returncode}:\n{self.log.read_text()[-4000:]}")
        return "Kafka Server started" in self.log.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.proc, timeout=60)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def client_config(self, client: str = "events") -> dict[str, Any]:
        """librdkafka settings for one of the SASL clients."""
        return {
            "bootstrap.servers": self.bootstrap,
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "PLAIN",
            "sasl.username": client,
            "sasl.password": self.passwords[client],
        }

    def client_properties(self, path: Path, client: str = "events") -> Path:
        """The client properties file the module writes (`bcm.kafka.clients.<name>.propertiesFile`)."""
        path.write_text(
            "security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\n"
            "sasl.jaas.config=org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{client}" password="{self.passwords[client]}";\n'
        )
        path.chmod(0o600)
        return path

    def create_topics(self, names: list[str], partitions: int = 1, config: dict[str, str] | None = None) -> None:
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient(self.client_config("admin"))
        futures = admin.create_topics([NewTopic(name, partitions, 1, config=config or {}) for name in names])
        for future in futures.values():
            future.result(60)

    def read_all(self, topic: str, timeout: float = 30) -> list[tuple[bytes | None, dict[str, Any]]]:
        """Every message in `topic` from the beginning, as (key, decoded JSON value)."""
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({**self.client_config("operator"), "group.id": f"test-{secrets.token_hex(4)}", "enable.auto.commit": False})
        try:
            metadata = consumer.list_topics(topic, timeout=30)
            partitions = list(metadata.topics[topic].partitions)
            ends = {}
            for p in partitions:
                _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
                ends[p] = high
            consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
            out: list[tuple[bytes | None, dict[str, Any]]] = []
            remaining = {p for p, high in ends.items() if high > 0}
            import time

            deadline = time.monotonic() + timeout
            while remaining and time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is None or message.error():
                    continue
                out.append((message.key(), json.loads(message.value())))
                if message.offset() + 1 >= ends[message.partition()]:
                    remaining.discard(message.partition())
            if remaining:
                raise TimeoutError(f"{topic}: did not read to the end of partitions {sorted(remaining)}")
            return out
        finally:
            consumer.close()
