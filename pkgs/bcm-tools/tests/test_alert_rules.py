"""The alert rules bcm.monitoring renders, checked and unit-tested by the real promtool.

The rules file is the one the module renders for the monitoring fixture host (regtest1 with
every service, channel backups and Alertmanager), taken from its committed export
(nixos-tests/eval/exported/monitoring.json). `promtool check rules` must accept it, and
`promtool test rules` runs the cases below against it: each feeds input series and says which
alerts must be firing at a given time, and that none fire where the condition does not hold.
Every alert in the file must have at least one case where it fires and one where it does not.

Expected annotations are the rule's own summary with the labels and value of that case filled
in, so a case checks the alert's labels and that its summary renders; what the summary says is
reviewed in the module.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sandbox import load_export

pytestmark = pytest.mark.repo

RULES_NAME = "bcm-alerts.rules.yml"
NODE = {"job": "node", "instance": "127.0.0.1:9100"}
LND = {"job": "lnd", "instance": "127.0.0.1:9120"}
# Targets as the watcher labels them ("local:" and the directory).
BULK_TARGET = "local:/srv/bulk/lnd-backups"
FAST_TARGET = "local:/srv/fast/lnd-backups"  # 60 s limit of its own in the fixture host


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return {"series": f"{name}{{{inner}}}", "values": values}


def fires(alert: str, at: str, *label_sets: dict[str, str], value: float | None = None) -> dict:
    return {"eval_time": at, "alertname": alert, "exp": list(label_sets), "value": value}


def silent(alert: str, at: str) -> dict:
    return {"eval_time": at, "alertname": alert, "exp": [], "value": None}


def fs(mount: str, avail: str, size: str) -> list[dict[str, str]]:
    labels = {**NODE, "mountpoint": mount, "device": "/dev/vdb", "fstype": "ext4"}
    return [series("node_filesystem_avail_bytes", labels, avail), series("node_filesystem_size_bytes", labels, size)]


def channel(point: str, local: int, remote: int, instance: dict[str, str] = LND, active: str = "1x80") -> list[dict[str, str]]:
    labels = {**instance, "chan_point": point, "remote_pubkey": "02" + "ab" * 32}
    return [
        series("bcm_lnd_channel_local_balance_sat", labels, f"{local}x80"),
        series("bcm_lnd_channel_remote_balance_sat", labels, f"{remote}x80"),
        series("bcm_lnd_channel_capacity_sat", labels, f"{local + remote}x80"),
        series("bcm_lnd_channel_active", labels, active),
    ]


OTHER_LND = {"job": "lnd", "instance": "127.0.0.2:9120"}

# (description, input series, expectations); the interval is one minute unless given.
CASES: list[tuple[str, list[dict[str, str]], list[dict]]] = [
    (
        "a bcm unit down for 5 minutes; a unit bcm does not watch is ignored",
        [
            series("node_systemd_unit_state", {**NODE, "name": "lnd.service", "state": "active"}, "1 0x10"),
            series("node_systemd_unit_state", {**NODE, "name": "sshd.service", "state": "active"}, "0x10"),
            series("node_systemd_unit_state", {**NODE, "name": "bitcoind.service", "state": "active"}, "1x10"),
        ],
        [
            silent("BcmServiceDown", "4m"),
            fires("BcmServiceDown", "10m", {**NODE, "name": "lnd.service", "state": "active", "severity": "critical"}),
        ],
    ),
    (
        "a scrape target down; the others up",
        [series("up", LND, "0x10"), series("up", NODE, "1x10")],
        [silent("BcmScrapeFailing", "3m"), fires("BcmScrapeFailing", "10m", {**LND, "severity": "warning"})],
    ),
    (
        "bcm-exporter cannot reach monerod; LND answers",
        [
            series("bcm_up", {"job": "monerod", "instance": "127.0.0.1:9120", "daemon": "monerod"}, "0x10"),
            series("bcm_up", {**LND, "daemon": "lnd"}, "1x10"),
        ],
        [
            silent("BcmDaemonUnreachable", "2m"),
            fires(
                "BcmDaemonUnreachable",
                "10m",
                {"job": "monerod", "instance": "127.0.0.1:9120", "daemon": "monerod", "severity": "critical"},
            ),
        ],
    ),
    (
        "memory available falls from 25 % to 5 %",
        [
            series("node_memory_MemAvailable_bytes", NODE, "2000000000x10 400000000x20"),
            series("node_memory_MemTotal_bytes", NODE, "8000000000x30"),
        ],
        [silent("MemoryPressure", "10m"), silent("MemoryPressure", "20m"), fires("MemoryPressure", "30m", {**NODE, "severity": "warning"})],
    ),
    (
        "the fast tier at 5 % free, the bulk tier at 50 %",
        fs("/srv/fast", "5x15", "100x15") + fs("/srv/bulk", "50x15", "100x15"),
        [
            silent("TierLowOnSpace", "5m"),
            fires(
                "TierLowOnSpace",
                "15m",
                {**NODE, "mountpoint": "/srv/fast", "device": "/dev/vdb", "fstype": "ext4", "tier": "fast", "severity": "critical"},
            ),
        ],
    ),
    (
        "the bulk tier at 8 % free",
        fs("/srv/bulk", "8x15", "100x15"),
        [
            fires(
                "TierLowOnSpace",
                "15m",
                {**NODE, "mountpoint": "/srv/bulk", "device": "/dev/vdb", "fstype": "ext4", "tier": "bulk", "severity": "critical"},
            )
        ],
    ),
    (
        "the bulk tier loses 1 GB an hour of its 100 GB (full in 4 days); the fast tier stays level",
        # One sample every 10 minutes over 3 hours.
        fs("/srv/bulk", "100000000000-166666667x18", "200000000000x18") + fs("/srv/fast", "50000000000x18", "200000000000x18"),
        [
            silent("TierFillingUp", "30m"),
            fires(
                "TierFillingUp",
                "180m",
                {**NODE, "mountpoint": "/srv/bulk", "device": "/dev/vdb", "fstype": "ext4", "tier": "bulk", "severity": "warning"},
            ),
        ],
    ),
    (
        "bitcoind 10 blocks behind its headers for 20 minutes, then caught up",
        [
            series("bcm_bitcoind_headers", {"job": "bitcoind", "instance": "127.0.0.1:9120"}, "110x20 120x20"),
            series("bcm_bitcoind_blocks", {"job": "bitcoind", "instance": "127.0.0.1:9120"}, "100x20 120x20"),
        ],
        [
            silent("BitcoindBehind", "10m"),
            fires("BitcoindBehind", "20m", {"job": "bitcoind", "instance": "127.0.0.1:9120", "severity": "warning"}),
            silent("BitcoindBehind", "40m"),
        ],
    ),
    (
        "monerod 100 blocks behind its peers; then synced (monerod reports target height 0)",
        [
            series("bcm_monerod_target_height", {"job": "monerod", "instance": "127.0.0.1:9120"}, "200x20 0x20"),
            series("bcm_monerod_height", {"job": "monerod", "instance": "127.0.0.1:9120"}, "100x20 200x20"),
        ],
        [
            fires("MonerodBehind", "20m", {"job": "monerod", "instance": "127.0.0.1:9120", "severity": "warning"}),
            silent("MonerodBehind", "40m"),
        ],
    ),
    (
        "LND not synced to chain for 20 minutes",
        [series("bcm_lnd_synced_to_chain", LND, "0x20"), series("bcm_lnd_synced_to_chain", OTHER_LND, "1x20")],
        [silent("LndNotSyncedToChain", "10m"), fires("LndNotSyncedToChain", "20m", {**LND, "severity": "critical"})],
    ),
    (
        "LND without the channel graph for 70 minutes",
        [series("bcm_lnd_synced_to_graph", LND, "0x70"), series("bcm_lnd_synced_to_graph", OTHER_LND, "1x70")],
        [silent("LndNotSyncedToGraph", "30m"), fires("LndNotSyncedToGraph", "70m", {**LND, "severity": "warning"})],
    ),
    (
        "a channel inactive for 70 minutes beside an active one",
        channel("aa:0", 50_000, 50_000, active="0x80") + channel("bb:1", 50_000, 50_000),
        [
            silent("LndChannelInactive", "30m"),
            fires(
                "LndChannelInactive",
                "70m",
                {**LND, "chan_point": "aa:0", "remote_pubkey": "02" + "ab" * 32, "severity": "warning"},
            ),
        ],
    ),
    (
        "one node with 2.5 % of its capacity outbound (97.5 % inbound); another balanced",
        channel("aa:0", 5_000, 95_000) + channel("bb:1", 0, 100_000) + channel("cc:0", 50_000, 50_000, OTHER_LND),
        [
            silent("LndOutboundLiquidityLow", "30m"),
            fires("LndOutboundLiquidityLow", "70m", {**LND, "severity": "warning"}),
            silent("LndInboundLiquidityLow", "70m"),
        ],
    ),
    (
        "one node with 4 % of its capacity inbound; another balanced",
        channel("aa:0", 96_000, 4_000) + channel("cc:0", 50_000, 50_000, OTHER_LND),
        [fires("LndInboundLiquidityLow", "70m", {**LND, "severity": "warning"}), silent("LndOutboundLiquidityLow", "70m")],
    ),
    (
        "a backup target behind for 20 minutes, the other current",
        [
            series("bcm_lnd_backup_behind", {**NODE, "target": BULK_TARGET}, "1x20"),
            series("bcm_lnd_backup_behind", {**NODE, "target": FAST_TARGET}, "0x20"),
        ],
        [
            silent("LndBackupTargetBehind", "10m"),
            fires("LndBackupTargetBehind", "20m", {**NODE, "target": BULK_TARGET, "severity": "critical"}),
        ],
    ),
    (
        "the bulk target's copy 1000 s older than LND's last change (limit 600 s), the fast one's 50 s (limit 60 s)",
        [
            series("bcm_lnd_backup_last_change_timestamp_seconds", NODE, "10000x5"),
            series("bcm_lnd_backup_last_success_timestamp_seconds", {**NODE, "target": BULK_TARGET}, "9000x5"),
            series("bcm_lnd_backup_last_success_timestamp_seconds", {**NODE, "target": FAST_TARGET}, "9950x5"),
        ],
        [fires("LndBackupTooOld", "5m", {**NODE, "target": BULK_TARGET, "severity": "critical"})],
    ),
    (
        "the fast target's copy 100 s behind (its own limit is 60 s), the bulk one's 500 s (limit 600 s)",
        [
            series("bcm_lnd_backup_last_change_timestamp_seconds", NODE, "10000x5"),
            series("bcm_lnd_backup_last_success_timestamp_seconds", {**NODE, "target": BULK_TARGET}, "9500x5"),
            series("bcm_lnd_backup_last_success_timestamp_seconds", {**NODE, "target": FAST_TARGET}, "9900x5"),
        ],
        [fires("LndBackupTooOld", "5m", {**NODE, "target": FAST_TARGET, "severity": "critical"})],
    ),
    (
        "every target's copy within its limit",
        [
            series("bcm_lnd_backup_last_change_timestamp_seconds", NODE, "10000x5"),
            series("bcm_lnd_backup_last_success_timestamp_seconds", {**NODE, "target": BULK_TARGET}, "9500x5"),
            series("bcm_lnd_backup_last_success_timestamp_seconds", {**NODE, "target": FAST_TARGET}, "9950x5"),
        ],
        [silent("LndBackupTooOld", "5m")],
    ),
    (
        "Tor stuck at 50 % bootstrapped, then done",
        [series("bcm_tor_bootstrap_percent", {"job": "tor", "instance": "127.0.0.1:9120"}, "50x20 100x10")],
        [
            silent("TorNotBootstrapped", "10m"),
            fires("TorNotBootstrapped", "20m", {"job": "tor", "instance": "127.0.0.1:9120", "severity": "critical"}, value=50),
            silent("TorNotBootstrapped", "30m"),
        ],
    ),
    (
        "Kafka with 2 under-replicated partitions",
        [series("kafka_server_replicamanager_underreplicatedpartitions", {"job": "kafka", "instance": "127.0.0.1:9404"}, "0x5 2x15")],
        [silent("KafkaUnderReplicated", "10m"), fires("KafkaUnderReplicated", "20m", {"job": "kafka", "instance": "127.0.0.1:9404", "severity": "warning"}, value=2)],
    ),
    (
        "Kafka loses its active controller; partitions stay online",
        [
            series("kafka_controller_kafkacontroller_activecontrollercount", {"job": "kafka", "instance": "127.0.0.1:9404"}, "1x5 0x10"),
            series("kafka_controller_kafkacontroller_offlinepartitionscount", {"job": "kafka", "instance": "127.0.0.1:9404"}, "0x15"),
        ],
        [silent("KafkaOffline", "5m"), fires("KafkaOffline", "15m", {"job": "kafka", "instance": "127.0.0.1:9404", "severity": "critical"})],
    ),
    (
        "Kafka with an offline partition",
        [
            series("kafka_controller_kafkacontroller_activecontrollercount", {"job": "kafka", "instance": "127.0.0.1:9404"}, "1x10"),
            series("kafka_controller_kafkacontroller_offlinepartitionscount", {"job": "kafka", "instance": "127.0.0.1:9404"}, "1x10"),
        ],
        [fires("KafkaOffline", "10m", {"job": "kafka", "instance": "127.0.0.1:9404", "severity": "critical"})],
    ),
]
INTERVALS = {"the bulk tier loses 1 GB an hour of its 100 GB (full in 4 days); the fast tier stays level": "10m"}


def exported_file(suffix: str) -> str:
    files = load_export("monitoring")["files"]
    matches = [text for path, text in files.items() if path.endswith(suffix)]
    assert len(matches) == 1, f"{suffix}: {len(matches)} files in the export"
    return matches[0]


def rules() -> list[dict]:
    return [rule for group in json.loads(exported_file(RULES_NAME))["groups"] for rule in group["rules"] if "alert" in rule]


def render(template: str, labels: dict[str, str], value: float | None) -> str:
    """The subset of Go templating the summaries use: {{ $labels.NAME }} and {{ $value }}."""
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], template)
    if value is not None:
        text = text.replace("{{ $value }}", f"{value:g}")
    return text


def promtool_tests() -> dict:
    by_name: dict[str, list[dict]] = {}
    for rule in rules():
        by_name.setdefault(rule["alert"], []).append(rule)
    tests = []
    for description, inputs, expectations in CASES:
        alert_tests = []
        for e in expectations:
            exp = []
            for labels in e["exp"]:
                # The rule that produced it: the most specific one whose own labels it carries.
                candidates = [r for r in by_name[e["alertname"]] if all(labels.get(k) == v for k, v in r["labels"].items())]
                rule = max(candidates, key=lambda r: len(r["labels"]))
                exp.append({"exp_labels": labels, "exp_annotations": {k: render(v, labels, e["value"]) for k, v in rule["annotations"].items()}})
            alert_tests.append({"eval_time": e["eval_time"], "alertname": e["alertname"], "exp_alerts": exp})
        tests.append({"name": description, "interval": INTERVALS.get(description, "1m"), "input_series": inputs, "alert_rule_test": alert_tests})
    return {"rule_files": [RULES_NAME], "evaluation_interval": "1m", "tests": tests}


@pytest.fixture
def rules_dir(tmp_path):
    if shutil.which("promtool") is None:
        raise RuntimeError("promtool is not installed (scripts/test.d/12-monitoring installs Debian's prometheus)")
    (tmp_path / RULES_NAME).write_text(exported_file(RULES_NAME))
    return tmp_path


def test_promtool_accepts_the_rendered_rules(rules_dir):
    run = subprocess.run(["promtool", "check", "rules", str(rules_dir / RULES_NAME)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    every = [rule for group in json.loads(exported_file(RULES_NAME))["groups"] for rule in group["rules"]]
    assert f"SUCCESS: {len(every)} rules found" in run.stdout


def test_every_alert_has_a_case_that_fires_it_and_one_that_does_not():
    names = {rule["alert"] for rule in rules()}
    firing = {e["alertname"] for _, _, expectations in CASES for e in expectations if e["exp"]}
    silence = {e["alertname"] for _, _, expectations in CASES for e in expectations if not e["exp"]}
    assert names - firing == set(), "alerts no case fires"
    assert names - silence == set(), "alerts no case shows silent"
    assert (firing | silence) - names == set(), "cases for alerts the rules file does not have"


def test_promtool_runs_every_case(rules_dir):
    tests = rules_dir / "bcm-alerts.test.json"
    tests.write_text(json.dumps(promtool_tests(), indent=1))
    run = subprocess.run(["promtool", "test", "rules", str(tests)], capture_output=True, text=True, cwd=rules_dir)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-6000:]
    assert "SUCCESS" in run.stdout


def test_a_wrong_expectation_fails(rules_dir):
    """promtool really compares: the same cases with one expected alert dropped must fail."""
    data = promtool_tests()
    data["tests"][0]["alert_rule_test"][1]["exp_alerts"] = []
    tests = rules_dir / "broken.test.json"
    tests.write_text(json.dumps(data))
    run = subprocess.run(["promtool", "test", "rules", str(tests)], capture_output=True, text=True, cwd=rules_dir)
    assert run.returncode != 0
    assert "BcmServiceDown" in run.stdout + run.stderr


def test_amtool_accepts_the_rendered_alertmanager_config(tmp_path):
    """Alertmanager's configuration as the unit's envsubst step leaves it (the variables filled
    with stand-in values, as the operator's secret would), checked by the real amtool."""
    if shutil.which("amtool") is None:
        raise RuntimeError("amtool is not installed (scripts/test.d/12-monitoring installs Debian's prometheus-alertmanager)")
    text = exported_file("-alertmanager.yml")
    variables = set(re.findall(r"\$\{([A-Z_][A-Z0-9_]*)\}", text))
    assert variables == {"NTFY_TOKEN", "SMTP_PASSWORD"}
    for name in variables:
        text = text.replace("${" + name + "}", f"stand-in-{name.lower()}")
    config = tmp_path / "alertmanager.yml"
    config.write_text(text)
    run = subprocess.run(["amtool", "check-config", str(config)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "3 receivers" in run.stdout
