"""The real Prometheus, loaded with the configuration and rules bcm.monitoring renders, scraping
real LND, btcd (as LND's chain), monerod, Tor, the node exporter and the backup watcher through
`bcm-tools exporter`; bitcoind and Fulcrum are stand-ins (no binaries here). What is real, what
stands in and what the tests change in the rendered files is in tests/monitoring_stack.py.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from lnd_regtest import Network, wait_for
from monitoring_stack import CLI, Stack, http_json, onion_of

pytestmark = [pytest.mark.prometheus, pytest.mark.lnd, pytest.mark.btcd, pytest.mark.monerod, pytest.mark.tor, pytest.mark.repo]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    network = Network(tmp_path_factory.mktemp("regtest"), rest=True)
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


# --- bcm-tools connect ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wallet_env(stack, tmp_path_factory):
    """The environment `connect --local` runs in on the node: `bcm-connect-info` on PATH."""
    from monitoring_stack import connect_info

    bin_dir = connect_info(stack, tmp_path_factory.mktemp("connect"))
    return {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}


def connect(env, *args, cwd=None):
    return subprocess.run([*CLI, "connect", *args, "--host", "regtest1", "--local"], capture_output=True, text=True, env=env, timeout=120, cwd=cwd)


def fields(stdout: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in stdout.splitlines() if ": " in line and not line.startswith(" "))


def lnd_rest(port: int, cert_pem: str, macaroon: bytes, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """One REST call to LND, trusting only the certificate given, as a wallet would."""
    context = ssl.create_default_context(cadata=cert_pem)
    request = urllib.request.Request(f"https://127.0.0.1:{port}{path}", method=method, headers={"Grpc-Metadata-macaroon": macaroon.hex()},
                                     data=None if body is None else json.dumps(body).encode())
    try:
        with urllib.request.urlopen(request, context=context, timeout=60) as reply:
            return reply.status, json.load(reply)
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_zeus_uri_authenticates_against_lnd_and_can_do_no_more_than_its_permissions(stack, wallet_env):
    run = connect(wallet_env, "zeus")
    assert run.returncode == 0, run.stderr
    assert "is a credential" in run.stderr
    uri = urllib.parse.urlsplit(fields(run.stdout)["uri"])
    assert uri.scheme == "lndconnect" and uri.hostname == onion_of(stack, "lnd-rest") and uri.port == stack.alice.rest_port
    query = urllib.parse.parse_qs(uri.query)
    unpad = lambda text: base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))  # noqa: E731
    cert_pem = ssl.DER_cert_to_PEM_cert(unpad(query["cert"][0]))
    macaroon = unpad(query["macaroon"][0])
    assert "█" in run.stdout or "▀" in run.stdout, "no QR code printed"

    # The macaroon carries exactly the permissions the module renders (LND's own reading of it).
    path = stack.root / "decoded.macaroon"
    path.write_bytes(macaroon)
    printed = stack.alice.cli("printmacaroon", "--macaroon_file", str(path))
    assert sorted(printed["permissions"]) == sorted(stack.rendered.macaroon_permissions("wallet"))

    # The onion address cannot be reached here (Tor is offline): the test calls the same REST
    # port on 127.0.0.1, trusting only the certificate from the URI.
    port = stack.alice.rest_port
    status, info = lnd_rest(port, cert_pem, macaroon, "GET", "/v1/getinfo")
    assert status == 200 and info["identity_pubkey"] == stack.alice.pubkey()
    status, invoice = lnd_rest(port, cert_pem, macaroon, "POST", "/v1/invoices", {"value": "1000", "memo": "zeus"})
    assert status == 200 and invoice["payment_request"].startswith("lnbcrt")
    status, channels = lnd_rest(port, cert_pem, macaroon, "GET", "/v1/channels")
    assert status == 200 and [c["channel_point"] for c in channels["channels"]] == [stack.channel]

    admin = stack.alice.admin_macaroon.read_bytes()
    refused = {
        "sign with the node's key": ("POST", "/v1/signmessage", {"msg": base64.b64encode(b"hello").decode()}),
        "mint a macaroon": ("POST", "/v1/macaroon", {"permissions": [{"entity": "info", "action": "read"}]}),
        "change LND's log level": ("POST", "/v1/debuglevel", {"show": True}),
    }
    for what, (method, call, body) in refused.items():
        status, reply = lnd_rest(port, cert_pem, macaroon, method, call, body)
        assert status != 200 and "permission denied" in json.dumps(reply), (what, status, reply)
        # The call itself is fine: the admin macaroon may make it.
        assert lnd_rest(port, cert_pem, admin, method, call, body)[0] == 200, what


def test_zeus_uri_goes_to_a_new_0600_file_with_out(stack, wallet_env, tmp_path):
    out = tmp_path / "zeus.uri"
    run = connect(wallet_env, "zeus", "--out", str(out))
    assert run.returncode == 0, run.stderr
    assert "lndconnect://" not in run.stdout and out.stat().st_mode & 0o777 == 0o600
    assert out.read_text().startswith(f"lndconnect://{onion_of(stack, 'lnd-rest')}:")
    again = connect(wallet_env, "zeus", "--out", str(out))
    assert again.returncode == 2 and again.stderr.strip().endswith("exists; choose another --out or remove it first")
    assert connect(wallet_env, "feather", "--out", str(tmp_path / "x")).returncode == 2


@pytest.mark.parametrize("wallet", ["sparrow", "electrum"])
def test_electrum_wallets_get_fulcrums_onion_ssl_port_and_fingerprint(stack, wallet_env, wallet):
    run = connect(wallet_env, wallet, "--no-qr")
    assert run.returncode == 0, run.stderr
    got = fields(run.stdout)
    assert got["server"] == f"{onion_of(stack, 'fulcrum')}:{stack.manifest['electrum']['sslPort']}" and got["ssl"] == "yes"
    manifest = Path(wallet_env["PATH"].split(":")[0]).parent / "manifest.json"
    cert = json.loads(manifest.read_text())["electrum"]["certFile"]
    openssl = subprocess.run(["openssl", "x509", "-noout", "-fingerprint", "-sha256", "-in", cert], capture_output=True, text=True, check=True)
    assert got["certificate sha256"] == openssl.stdout.strip().split("=", 1)[1]
    assert "▀" not in run.stdout
    print(run.stdout)  # the README shows it


def test_feather_gets_monerods_restricted_rpc_onion(stack, wallet_env):
    run = connect(wallet_env, "feather")
    assert run.returncode == 0, run.stderr
    assert fields(run.stdout)["node"] == f"{onion_of(stack, 'monerod-rpc')}:{stack.manifest['monero']['port']}"
    print(run.stdout)  # the README shows it


# --- the dashboard ---------------------------------------------------------------------------------


def test_every_dashboard_panel_query_parses_and_returns_data(stack):
    """Grafana is not in Debian: the dashboard the module provisions is checked query by query
    against the real Prometheus. The Kafka panel is left out: no broker runs in this stack."""
    board = json.loads(stack.rendered.file("bcm-dashboard-regtest1.json"))
    datasource = json.loads(stack.rendered.file("datasource.yaml"))["datasources"][0]
    checked = []
    for panel in board["panels"]:
        if panel["title"].startswith("Kafka"):
            continue
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == datasource["uid"]
            expr = target["expr"]
            result = wait_for(f"data for {panel['title']}: {expr}", lambda: stack.query(expr), timeout=60, interval=0.5)
            checked.append((panel["title"], expr, len(result)))
    titles = {title for title, _, _ in checked}
    assert {"Storage tiers against the capacity plan", "LND: balances (sat)", "Channel backups: age of the newest verified copy"} <= titles
    assert len(titles) == len(board["panels"]) - 1
