"""The regtest1 host's units, as the modules render them, run by real daemons under the sandbox
their units declare (tests/sandbox.py says how, and what it does not emulate).

Each scenario also shows the failure its fix prevents: the same unit with the fix taken back out
of the export (in memory) fails the way it would on a NixOS host.

Ports are the rendered ones (monerod 18080-18089, Tor 9050, LND 8080/9735/10009): the tests
run one unit at a time and need those ports free.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lnd_regtest import BURN_ADDRESS, Btcd, require_daemons, wait_for
from sandbox import Host, UnitFailed, load_export, sandbox_tools_missing, wait_port

pytestmark = [pytest.mark.sandbox, pytest.mark.repo]

# A mainnet-format address that monerod's regtest accepts for coinbase outputs.
MONERO_ADDRESS = "44AFFq5kSiGBoZ4NMDwYtN18obc8AemS33DBLWs3H7otXft3XjrpDtQGv7SqSsaBYBb98uNbr2VBBEt7f2wfn3RVGQBEP3A"


def require_sandbox() -> None:
    """Fails (never skips): scripts/test.d/10-sandbox installs what the launcher needs."""
    missing = sandbox_tools_missing()
    if missing:
        raise RuntimeError(missing)
    if os.geteuid() != 0:
        raise RuntimeError("the sandbox launcher runs units as their own users: run the tests as root")


@pytest.fixture
def export() -> dict[str, Any]:
    """regtest1's export, a private copy each test may change."""
    require_sandbox()
    return copy.deepcopy(load_export("regtest1"))


@pytest.fixture
def make_host(tmp_path: Path) -> Iterator[Any]:
    hosts: list[Host] = []

    def make(export: dict[str, Any]) -> Host:
        host = Host(export, tmp_path / f"host{len(hosts)}")
        hosts.append(host)
        host.apply_tmpfiles()
        return host

    yield make
    for host in hosts:
        host.stop_all()


def http_json(url: str, body: Any = None, context: ssl.SSLContext | None = None, headers: dict[str, str] | None = None, timeout: float = 300) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers or {})
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
        return json.load(response)


# -- the secrets generator -----------------------------------------------------------------


def test_secrets_generator_runs_in_its_sandbox_and_keeps_secrets_on_rerun(export, make_host):
    host = make_host(export)
    host.start("bcm-secrets")
    secrets_dir = host.path(export["bcm"]["secretsDir"])
    lnd_password = secrets_dir / "bitcoind-rpc-lnd-password"
    wallet_password = secrets_dir / "lnd-wallet-password"
    assert lnd_password.stat().st_uid == host.uid("lnd") and (lnd_password.stat().st_mode & 0o777) == 0o600
    assert wallet_password.stat().st_uid == host.uid("lnd") and len(wallet_password.read_text()) >= 32

    def generated() -> dict[str, bytes]:
        # Files derived from the secrets (rpcauth lines, client properties) are rewritten with
        # fresh salts at each start; the secrets themselves must never change.
        return {p.name: p.read_bytes() for p in secrets_dir.iterdir() if p.is_file() and p.suffix not in (".conf", ".properties")}

    first = generated()
    assert len(first) >= 6
    host.start("bcm-secrets")
    assert generated() == first


# -- Tor -----------------------------------------------------------------------------------


def offline_tor(host: Host) -> None:
    # Tests never reach the Tor network; the rendered settings gain this one line.
    host.replace_file("-torrc-settings", lambda text: text + "DisableNetwork 1\n")


@pytest.mark.tor
def test_tor_accepts_the_rendered_torrc_and_publishes_onion_addresses_offline(export, make_host):
    host = make_host(export)
    offline_tor(host)
    tor_start = export["units"]["tor"]["serviceConfig"]["ExecStart"]
    checked = host.run_command("tor", f"{tor_start} --verify-config")
    assert "Configuration was valid" in checked.stdout

    host.start("tor", timeout=120)
    addresses = sorted(path.name for path in host.path("/var/lib/bcm-onion").iterdir())
    # Every onion service the rendered torrc declares (bcm.connect adds LND's REST port).
    torrc = next(text for path, text in export["files"].items() if path.endswith("-torrc"))
    declared = sorted(line.split()[1].rsplit("/", 1)[1] for line in torrc.splitlines() if line.startswith("HiddenServiceDir "))
    assert addresses == declared == ["bitcoind", "fulcrum", "lnd", "lnd-rest", "monerod", "monerod-rpc"]
    for name in addresses:
        published = host.path(f"/var/lib/bcm-onion/{name}")
        assert published.read_text().strip().endswith(".onion")
        assert published.stat().st_gid == host.gid("bcm-operator") and (published.stat().st_mode & 0o777) == 0o640


@pytest.mark.tor
def test_tor_control_port_serves_the_exporter_with_its_group_readable_cookie(make_host):
    """The monitoring host's torrc (control port, cookie in the unit's RuntimeDirectory) under
    Tor's sandbox: the cookie is tor-group readable, and the exporter's client reads the
    bootstrap state with it (short of 100 %, offline)."""
    from bcm_tools.tor import TorControl

    require_sandbox()
    host = make_host(copy.deepcopy(load_export("monitoring")))
    offline_tor(host)
    host.start("tor", timeout=120)
    cookie = host.path("/run/tor/control.authcookie")
    assert cookie.stat().st_gid == host.gid("tor") and cookie.stat().st_mode & 0o777 == 0o640
    assert host.path("/run/tor").stat().st_mode & 0o777 == 0o750
    boot = TorControl("127.0.0.1:9051", cookie).bootstrap()
    assert boot.progress < 100 and boot.circuit_established is False


# -- monerod -------------------------------------------------------------------------------


def publish_onion(host: Host, name: str) -> None:
    """What tor.service's post-start writes (the Tor test above runs the real one)."""
    host.write(f"/var/lib/bcm-onion/{name}", "a" * 56 + ".onion\n", mode=0o640, group="bcm-operator")


def generate_blocks(port: int, count: int) -> Any:
    return http_json(f"http://127.0.0.1:{port}/json_rpc", {"jsonrpc": "2.0", "id": "0", "method": "generateblocks", "params": {"amount_of_blocks": count, "wallet_address": MONERO_ADDRESS}})


@pytest.mark.monerod
def test_monerod_mines_and_verifies_randomx_blocks_under_its_sandbox(export, make_host):
    host = make_host(export)
    publish_onion(host, "monerod")
    monerod = host.start("monerod")
    wait_port(18089, "monerod's restricted RPC", monerod)
    for port in (18081, 18082, 18084):  # RPC, ZMQ RPC, ZMQ publisher
        wait_port(port, f"monerod on {port}", monerod, timeout=30)

    # Each block's RandomX hash is computed to mine it and again to accept it.
    mined = generate_blocks(18081, 3)
    assert "error" not in mined, mined
    assert mined["result"]["height"] == 3

    info = http_json("http://127.0.0.1:18089/get_info")
    assert info["height"] == 4 and info["restricted"] is True
    assert generate_blocks(18089, 1).get("error"), "the restricted RPC must refuse to mine"
    assert monerod.process.poll() is None


@pytest.mark.monerod
def test_monerod_with_randomx_jit_fails_under_memory_deny_write_execute(export, make_host):
    """The module before its fix: no MONERO_RANDOMX_UMASK, MemoryDenyWriteExecute on."""
    del export["units"]["monerod"]["environment"]["MONERO_RANDOMX_UMASK"]
    host = make_host(export)
    # Log level 1 prints why the RPC call failed; nothing else changes.
    host.replace_file("-monerod.conf", lambda text: text.replace("log-level=0", "log-level=1"))
    publish_onion(host, "monerod")
    monerod = host.start("monerod")
    wait_port(18081, "monerod's RPC", monerod)
    refused = generate_blocks(18081, 1)
    assert "error" in refused
    wait_for("monerod's reason", lambda: "mprotect failed" in monerod.output(), timeout=10)
    assert http_json("http://127.0.0.1:18081/get_info")["height"] == 1


@pytest.mark.monerod
def test_monerod_aborts_without_netlink(export, make_host):
    """The module before its fix: RestrictAddressFamilies without AF_NETLINK. libzmq lists the
    interfaces on every TCP bind and aborts when it cannot."""
    config = export["units"]["monerod"]["serviceConfig"]
    config["RestrictAddressFamilies"] = [family for family in config["RestrictAddressFamilies"] if family != "AF_NETLINK"]
    host = make_host(export)
    publish_onion(host, "monerod")
    monerod = host.start("monerod")
    status = monerod.process.wait(120)
    assert status != 0
    assert "Address family not supported" in monerod.output() or "ip_resolver" in monerod.output()


# -- directories on tiers mounted late -----------------------------------------------------


def mount_empty_tier(host: Host, tier: str) -> None:
    """A nofail or network mount comes up after boot's tmpfiles: the unit sees an empty tier."""
    mount_point = host.path(host.export["bcm"]["storage"][tier])
    subprocess.run(["rm", "-rf", str(mount_point)], check=True)
    mount_point.mkdir()


@pytest.mark.monerod
def test_unit_creates_its_directory_on_a_tier_mounted_after_boot(export, make_host):
    host = make_host(export)
    publish_onion(host, "monerod")
    mount_empty_tier(host, "bulk")
    monerod = host.start("monerod")
    wait_port(18081, "monerod's RPC", monerod)
    data = host.path("/srv/bulk/monerod")
    assert (data.stat().st_uid, data.stat().st_gid, data.stat().st_mode & 0o777) == (host.uid("monerod"), host.gid("monerod"), 0o750)


def test_without_the_directories_step_a_late_tier_fails_the_unit_with_226(export, make_host):
    """The module before its fix: directories from tmpfiles at boot, nothing after the mount."""
    config = export["units"]["monerod"]["serviceConfig"]
    del config["ExecStartPre"]
    host = make_host(export)
    publish_onion(host, "monerod")
    mount_empty_tier(host, "bulk")
    with pytest.raises(UnitFailed) as failed:
        host.start("monerod")
    assert failed.value.status == 226


def test_directories_step_on_a_root_squashed_tier_says_what_to_run_on_the_server(export, make_host):
    host = make_host(export)
    tier = host.path("/srv/bulk")
    os.chown(tier, host.uid("nobody"), host.gid("nogroup"))
    tier.chmod(0o755)
    (dirs_step,) = [line for line in [export["units"]["monerod"]["serviceConfig"]["ExecStartPre"]] if "monerod-dirs" in line]
    host.root_squash = True
    with pytest.raises(UnitFailed) as failed:
        host.run_command("monerod", dirs_step)
    assert failed.value.status == 1
    uid, gid = host.uid("monerod"), host.gid("monerod")
    assert f"create it on the server: mkdir -p /srv/bulk/monerod && chown {uid}:{gid} /srv/bulk/monerod && chmod 0750 /srv/bulk/monerod" in failed.value.output

    # Done on the server as the line says, the step passes without needing root's powers.
    (tier / "monerod").mkdir()
    os.chown(tier / "monerod", uid, gid)
    (tier / "monerod").chmod(0o750)
    host.run_command("monerod", dirs_step)


# -- LND -----------------------------------------------------------------------------------

LND_REST = "https://127.0.0.1:8080"


@pytest.fixture
def lnd_host(export, make_host, tmp_path) -> Iterator[tuple[Host, Btcd]]:
    """regtest1 with its secrets generated and btcd in place of bitcoind.

    bitcoind has no binary on these machines (the VM tests run the real pairing): the rendered
    lnd.conf gets `bitcoin.node=btcd` and a [Btcd] section; every other line is the module's.
    lndinit is the stand-in scripts/test.d/20-daemons builds (tests/lndinit_standin)."""
    daemons = require_daemons()
    host = make_host(export)
    btcd = Btcd(Path(daemons["BTCD_BIN"]), host.path("/var/lib/btcd-for-tests"))
    btcd.start(mining_address=BURN_ADDRESS)
    btcd.mine(3)
    # The private /tmp of the unit hides the test's; the cert is read from the host's /var.
    host.path("/var/lib/btcd-for-tests").chmod(0o755)
    host.replace_file(
        "-lnd.conf",
        lambda text: text.replace("bitcoin.node=bitcoind", "bitcoin.node=btcd")
        + f"\n[Btcd]\nbtcd.rpchost=127.0.0.1:{btcd.rpc_port}\nbtcd.rpcuser={btcd.user}\nbtcd.rpcpass={btcd.password}\nbtcd.rpccert=/var/lib/btcd-for-tests/rpc.cert\n",
    )
    host.start("bcm-secrets")
    publish_onion(host, "lnd")
    yield host, btcd
    host.stop_all()
    btcd.stop()


def lnd_tls(host: Host) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(host.path("/srv/fast/lnd-tls/tls.cert")))


def rest_error(call) -> str | None:
    """The error an LND REST call answers with, or None if it succeeded."""
    try:
        call()
    except urllib.error.HTTPError as err:
        return f"{err.code} {err.read().decode(errors='replace')}"
    return None


def plant_wallet(host: Host) -> Any:
    """What any local user can try: LND's WalletUnlocker needs no macaroon."""
    context = lnd_tls(host)
    seed = http_json(f"{LND_REST}/v1/genseed", context=context)["cipher_seed_mnemonic"]
    password = base64.b64encode(b"an attacker's password").decode()
    return http_json(f"{LND_REST}/v1/initwallet", {"wallet_password": password, "cipher_seed_mnemonic": seed}, context=context)


def lncli(host: Host, daemons: dict[str, str], macaroon: str, *args: str) -> Any:
    run = subprocess.run(
        [
            f"{daemons['LND_BIN']}/lncli",
            "--network=regtest",
            "--rpcserver=127.0.0.1:10009",
            f"--tlscertpath={host.path('/srv/fast/lnd-tls/tls.cert')}",
            f"--macaroonpath={host.path(macaroon)}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.lnd
@pytest.mark.btcd
def test_lnd_creates_its_wallet_before_listening_and_bakes_the_operator_macaroon(lnd_host):
    host, btcd = lnd_host
    daemons = require_daemons()
    host.start("lnd", timeout=300)

    seed = host.path("/srv/fast/lnd/seed-mnemonic")
    assert seed.stat().st_uid == host.uid("lnd") and (seed.stat().st_mode & 0o777) == 0o600
    assert len(seed.read_text().split()) == 24
    assert host.path("/srv/fast/lnd/data/chain/bitcoin/regtest/wallet.db").is_file()

    operator_macaroon = "/var/lib/bcm-secrets/lnd-macaroons/operator.macaroon"
    baked = host.path(operator_macaroon)
    assert (baked.stat().st_uid, baked.stat().st_gid, baked.stat().st_mode & 0o777) == (0, host.gid("bcm-operator"), 0o640)
    info = lncli(host, daemons, operator_macaroon, "getinfo")
    assert info["alias"] == "regtest1" and len(info["identity_pubkey"]) == 66
    # A macaroon for the operator, not the admin one: it cannot bake more macaroons.
    refused = subprocess.run(
        [f"{daemons['LND_BIN']}/lncli", "--network=regtest", "--rpcserver=127.0.0.1:10009", f"--tlscertpath={host.path('/srv/fast/lnd-tls/tls.cert')}", f"--macaroonpath={baked}", "bakemacaroon", "info:read"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode != 0 and "permission denied" in refused.stderr

    # The WalletUnlocker is never open to a local user: the wallet existed before LND listened.
    assert rest_error(lambda: plant_wallet(host)) is not None

    # A restart unlocks the same wallet with the same seed: lndinit leaves it alone.
    (running,) = host.running
    host.stop(running)
    words = seed.read_text()
    host.start("lnd", timeout=300)
    assert seed.read_text() == words
    assert lncli(host, daemons, operator_macaroon, "getinfo")["identity_pubkey"] == info["identity_pubkey"]


@pytest.mark.lnd
@pytest.mark.btcd
def test_with_wallet_unlock_allow_create_any_local_user_plants_the_wallet(lnd_host):
    """The module before its fix: no lnd-init-wallet step, `wallet-unlock-allow-create` on, and
    the wallet left for the post-start script to create."""
    host, _ = lnd_host
    config = host.unit("lnd")["serviceConfig"]
    config["ExecStartPre"] = [line for line in config["ExecStartPre"] if "lnd-init-wallet" not in line]
    host.replace_file("-lnd.conf", lambda text: text.replace("[Application Options]\n", "[Application Options]\nwallet-unlock-allow-create=true\n", 1))
    lnd = host.start("lnd", post=False)
    wait_port(8080, "LND's REST port", lnd)
    wait_for("LND's certificate", host.path("/srv/fast/lnd-tls/tls.cert").is_file, timeout=60)
    planted = wait_for("the unlocker", lambda: plant_wallet(host), timeout=60, interval=0.5)
    assert planted.get("admin_macaroon"), "a stranger's seed became the node's wallet"


@pytest.mark.lnd
@pytest.mark.btcd
def test_lnd_dies_at_start_when_it_lists_interfaces_without_netlink(lnd_host):
    """The module before its fix: no `tlsdisableautofill`, so LND lists every interface address
    for its certificate, over netlink, which RestrictAddressFamilies refuses."""
    host, _ = lnd_host
    host.replace_file("-lnd.conf", lambda text: text.replace("tlsdisableautofill=true\n", ""))
    lnd = host.start("lnd", post=False)
    assert lnd.process.wait(120) != 0
    assert "netlinkrib: address family not supported by protocol" in lnd.output()
