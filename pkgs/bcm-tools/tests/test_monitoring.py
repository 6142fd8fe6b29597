"""The real Prometheus, loaded with the configuration and rules bcm.monitoring renders, scraping
real LND, btcd (as LND's chain), monerod, Tor, the node exporter and the backup watcher through
`bcm-tools exporter`; bitcoind and Fulcrum are stand-ins (no binaries here). What is real, what
stands in and what the tests change in the rendered files is in tests/monitoring_stack.py.
"""

from __future__ import annotations

import json
import time

import pytest

from lnd_regtest import Network, wait_for
from monitoring_stack import Stack, http_json

pytestmark = [pytest.mark.prometheus, pytest.mark.lnd, pytest.mark.btcd, pytest.mark.monerod, pytest.mark.tor, pytest.mark.repo]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    network = Network(tmp_path_factory.mktemp("regtest"))
    node = None
    try:
        alice, bob = network.start(["alice", "bob"])
        network.fund(alice, 5_000_000, bob)
        node = Stack(tmp_path_factory.mktemp("monitoring"), network)
        node.start()
        yield node
    finally:
        if node is not None:
            node.stop()
        network.stop()


def value(stack: Stack, expr: str) -> float:
    """The one value `expr` has, once Prometheus has it."""
    result = wait_for(f"Prometheus to answer {expr}", lambda: stack.query(expr), timeout=60, interval=0.5)
    assert len(result) == 1, result
    return float(result[0]["value"][1])


def test_every_rendered_scrape_job_is_up(stack):
    jobs = [job["job_name"] for job in stack.prometheus_config()["scrape_configs"]]
    assert sorted(jobs) == ["bitcoind", "fulcrum", "lnd", "monerod", "node", "prometheus", "tor"]

    def all_up() -> dict[str, float] | None:
        up = {r["metric"]["job"]: float(r["value"][1]) for r in stack.query("up")}
        return up if sorted(up) == sorted(jobs) and all(v == 1 for v in up.values()) else None

    try:
        wait_for("every job up", all_up, timeout=60, interval=0.5)
    except TimeoutError:
        raise AssertionError(f"up: {stack.query('up')}; exporter log: {stack.exporter.log.read_text()[-2000:]}") from None
    for daemon in ("bitcoind", "lnd", "monerod", "tor", "fulcrum"):
        assert value(stack, f'bcm_up{{daemon="{daemon}"}}') == 1, daemon


def test_a_query_for_each_daemon_shows_its_data(stack):
    # LND: synced, and the channel opened with its balances (alice funded it, so it is all hers).
    assert value(stack, "bcm_lnd_synced_to_chain") == 1
    assert value(stack, "bcm_lnd_block_height") == stack.network.btcd.height()
    point = stack.channel
    capacity = value(stack, f'bcm_lnd_channel_capacity_sat{{chan_point="{point}"}}')
    local = value(stack, f'bcm_lnd_channel_local_balance_sat{{chan_point="{point}"}}')
    channel = next(c for c in stack.alice.cli("listchannels")["channels"] if c["channel_point"] == point)
    assert (capacity, local) == (float(channel["capacity"]), float(channel["local_balance"]))
    assert value(stack, f'bcm_lnd_channel_active{{chan_point="{point}"}}') == 1

    # monerod: the three blocks mined on top of genesis.
    assert value(stack, "bcm_monerod_height") == 4
    # Tor is offline (DisableNetwork), so it never gets past the start of its bootstrap.
    assert value(stack, "bcm_tor_bootstrap_percent") < 100
    # The stand-ins answer what they were given.
    assert value(stack, "bcm_bitcoind_headers - bcm_bitcoind_blocks") == 2
    assert value(stack, "bcm_fulcrum_height") == 840_000
    assert stack.bitcoind.refused == []

    # The node exporter: memory, both tiers, and the backup watcher's textfile.
    assert value(stack, "node_memory_MemAvailable_bytes") > 0
    fast = value(stack, 'node_filesystem_avail_bytes{mountpoint="/srv/fast"} / node_filesystem_size_bytes{mountpoint="/srv/fast"}')
    bulk = value(stack, 'node_filesystem_avail_bytes{mountpoint="/srv/bulk"} / node_filesystem_size_bytes{mountpoint="/srv/bulk"}')
    assert fast < 0.1 < 0.9 < bulk
    # Under the unit's umask 0077 the textfile is still readable by the watcher's group, of
    # which the module makes the node exporter a member.
    assert (stack.textfile_dir / "lnd_backups.prom").stat().st_mode & 0o777 == 0o640
    # The watcher labels a local target "local:" and its directory, as the module's rules expect.
    backup = value(stack, f'bcm_lnd_backup_channels{{target="local:{stack.backup_target}"}}')
    assert backup == 1
    assert value(stack, f'bcm_lnd_backup_behind{{target="local:{stack.backup_target}"}}') == 0


def test_the_rules_are_loaded_and_alerts_follow_the_real_daemons(stack):
    rules = http_json(f"{stack.prometheus_url}/api/v1/rules")["data"]["groups"]
    loaded = {rule["name"] for group in rules for rule in group["rules"] if rule["type"] == "alerting"}
    rendered = {rule["alert"] for group in json.loads(stack.rendered.file("bcm-alerts.rules.yml"))["groups"] for rule in group["rules"] if "alert" in rule}
    assert loaded == rendered
    assert all(rule["health"] == "ok" for group in rules for rule in group["rules"]), rules

    def pending() -> set[str]:
        alerts = http_json(f"{stack.prometheus_url}/api/v1/alerts")["data"]["alerts"]
        return {(a["labels"]["alertname"], a["labels"].get("tier", "")) for a in alerts}

    # Real conditions: Tor offline is not bootstrapped; the fast tier is 95 % full. Each alert
    # waits out its `for` as pending.
    wait_for("TorNotBootstrapped and TierLowOnSpace pending", lambda: {("TorNotBootstrapped", ""), ("TierLowOnSpace", "fast")} <= pending(), timeout=60, interval=0.5)
    time.sleep(3)
    names = {name for name, _ in pending()}
    # Nothing that holds here is alerted: LND is synced, its channel active, monerod level.
    assert not names & {"LndNotSyncedToChain", "LndChannelInactive", "MonerodBehind", "BcmDaemonUnreachable", "BcmScrapeFailing"}
    assert ("TierLowOnSpace", "bulk") not in pending()


# --- bcm-tools status ---------------------------------------------------------------------------


def status(run_cli, stack, *args):
    return run_cli("status", "regtest1", "--prometheus-port", str(stack.ports["prometheus"]), *args)


def wait_status(run_cli, stack, *args) -> dict:
    """`status --json` once Prometheus has scraped everything the report shows."""

    def complete():
        run = status(run_cli, stack, *args, "--json")
        assert run.returncode == 0, run.stderr
        report = json.loads(run.stdout)
        return report if report["lnd"] and report["backups"] and len(report["tiers"]) == 2 and report["alerts"] else None

    return wait_for("a complete status report", complete, timeout=90, interval=1)


def test_status_on_the_node_shows_chains_channels_backups_tiers_and_alerts(run_cli, stack):
    report = wait_status(run_cli, stack, "--local")
    # bitcoind's figures come from the stand-in; the rest from the real daemons.
    assert (report["bitcoind"]["blocks"], report["bitcoind"]["headers"]) == (stack.bitcoind.blocks, stack.bitcoind.headers)
    assert (report["bitcoind"]["peers_in"], report["bitcoind"]["peers_out"]) == (2, 8)
    assert report["monerod"]["height"] == 4
    assert report["tor_bootstrap_percent"] < 100
    info = stack.alice.cli("getinfo")
    assert report["lnd"]["block_height"] == info["block_height"] and report["lnd"]["synced_to_chain"] is True
    [channel] = report["lnd"]["channels"]
    listed = next(c for c in stack.alice.cli("listchannels")["channels"] if c["channel_point"] == stack.channel)
    assert (channel["chan_point"], channel["remote_pubkey"]) == (stack.channel, listed["remote_pubkey"])
    assert (channel["local_balance_sat"], channel["remote_balance_sat"], channel["capacity_sat"]) == (
        int(listed["local_balance"]), int(listed["remote_balance"]), int(listed["capacity"]))
    assert report["lnd"]["wallet_confirmed_sat"] == int(stack.alice.cli("walletbalance")["confirmed_balance"])
    [backup] = report["backups"]
    assert backup["target"] == f"local:{stack.backup_target}" and backup["channels"] == 1 and backup["behind"] is False
    tiers = {t["tier"]: t for t in report["tiers"]}
    assert tiers["fast"]["mountpoint"] == "/srv/fast" and tiers["fast"]["size_bytes"] == 64 << 20
    assert tiers["fast"]["avail_bytes"] < 0.1 * tiers["fast"]["size_bytes"]
    assert (tiers["fast"]["planned_bytes"], tiers["bulk"]["planned_bytes"]) == (5e9, 2e9)
    alerts = {(a["name"], a["labels"].get("tier")) for a in report["alerts"]}
    assert {("TierLowOnSpace", "fast"), ("TorNotBootstrapped", None)} <= alerts
    assert all(a["summary"] for a in report["alerts"])

    screen = status(run_cli, stack, "--local")
    assert screen.returncode == 0, screen.stderr
    text = screen.stdout
    assert f"height {report['lnd']['block_height']:,}" in text and "synced to chain yes" in text
    assert f"{int(listed['local_balance']):,}" in text
    assert f"backup     local:{stack.backup_target}: 1 channels" in text
    assert "tier       fast (/srv/fast)" in text and "plan 5.0 GB" in text
    assert any(line.startswith("  pending  TierLowOnSpace{") and "tier=fast" in line for line in text.splitlines())
    print(text)  # the screen the README shows


def test_status_over_ssh_as_the_operator(run_cli, stack, tmp_path):
    from sshd_loopback import LoopbackSshd

    sshd = LoopbackSshd(tmp_path / "sshd")
    sshd.start()
    try:
        args = ["--user", sshd.user, "--ssh-port", str(sshd.port), "--identity", str(sshd.client_key),
                "--known-hosts", str(sshd.known_hosts)]
        run = run_cli("status", "127.0.0.1", "--prometheus-port", str(stack.ports["prometheus"]), "--json", *args)
        assert run.returncode == 0, run.stderr
        report = json.loads(run.stdout)
        assert report["host"] == "127.0.0.1" and report["lnd"]["channels"][0]["chan_point"] == stack.channel
        assert report["prometheus"].startswith("http://127.0.0.1:") and not report["prometheus"].endswith(f":{stack.ports['prometheus']}")
        assert sshd.logins() >= 1
    finally:
        sshd.stop()


def test_status_errors_are_one_line(run_cli, stack, tmp_path):
    from lnd_regtest import free_port

    unreachable = run_cli("status", "127.0.0.1", "--ssh-port", str(free_port()), "--known-hosts", str(tmp_path / "none"))
    assert unreachable.returncode == 3
    assert unreachable.stderr.startswith("error: ssh to operator@127.0.0.1 failed: ") and unreachable.stderr.count("\n") == 1
    no_prometheus = run_cli("status", "regtest1", "--local", "--prometheus-port", str(free_port()))
    assert no_prometheus.returncode == 3
    assert no_prometheus.stderr.startswith("error: cannot reach Prometheus at http://127.0.0.1:") and "Traceback" not in no_prometheus.stderr
