"""gen-host: rendering properties over generated specs, and the command driven end to end."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from bcm_tools import gen_host
from bcm_tools.errors import GenerateError
from bcm_tools.spec import Tier, parse_spec
from specs import base_spec, to_toml, valid_specs

REPO = Path(__file__).parents[3]

# These evaluate what gen-host writes with nix-instantiate (Debian's nix-bin; scripts/test installs it).
pytestmark = pytest.mark.nix


def nix_eval(path: Path) -> dict:
    """Evaluates a generated module (a function of `{ ... }`) to JSON, leaving out `imports`,
    whose path values Nix would try to copy into a store."""
    expr = f"builtins.removeAttrs (import {path} {{ lib = {{ optional = c: x: if c then [ x ] else [ ]; }}; }}) [ \"imports\" ]"
    out = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--option", "substituters", "", "-E", expr],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


def nix_parses(*paths: Path) -> None:
    result = subprocess.run(["nix-instantiate", "--parse", *map(str, paths)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def generate(spec_dict: dict, out: Path, **kwargs) -> list[gen_host.FilePlan]:
    spec = parse_spec(to_toml(spec_dict))
    plans = gen_host.plan_files(spec, out, kwargs.pop("hosts", None))
    gen_host.write(plans, **kwargs)
    return plans


# --- properties over generated valid specs ------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec_dict=valid_specs())
def test_generated_files_parse_carry_the_spec_and_regenerate_identically(spec_dict, tmp_path_factory):
    out = tmp_path_factory.mktemp("hosts")
    spec = parse_spec(to_toml(spec_dict))
    generate(spec_dict, out)
    first = tree(out)
    nix_parses(*(out / name for name in first))

    for host in spec.hosts:
        config = nix_eval(out / host.name / "default.nix")
        bcm = config["bcm"]
        assert config["networking"]["hostName"] == host.name
        assert config["nixpkgs"]["hostPlatform"] == host.system.value
        assert bcm["network"] == spec.cluster.network.value
        assert bcm["operator"] == {"name": spec.operator.user, "sshAuthorizedKeys": spec.operator.ssh_authorized_keys}
        assert bcm["deploy"]["sshAuthorizedKeys"] == spec.operator.deploy_keys
        assert sorted(k for k in bcm if k not in ("network", "operator", "deploy")) == sorted(host.services.enabled())
        if (b := host.services.bitcoind) is not None:
            assert (bcm["bitcoind"]["prune"], bcm["bitcoind"]["txindex"], bcm["bitcoind"]["dbcache"]) == (b.prune_mb, b.txindex, b.dbcache_mb)
            if b.blocks_tier is Tier.fast:
                assert bcm["bitcoind"]["blocksDir"] == f"{host.mount_point(Tier.fast)}/bitcoind/blocks"
            else:
                assert "blocksDir" not in bcm["bitcoind"]
        if (l := host.services.lnd) is not None and l.alias is not None:
            assert bcm["lnd"]["alias"] == l.alias  # survives quotes, backslashes and `${`
        if (m := host.services.monerod) is not None:
            assert bcm["monerod"]["prune"] == m.prune

        storage = nix_eval(out / host.name / "storage.nix")
        fast = host.storage.fast
        assert storage["bcm"]["storage"]["fast"] == host.mount_point(Tier.fast)
        mounted = storage["fileSystems"][host.mount_point(Tier.fast)]
        assert mounted["device"] == (fast.device or fast.nfs)
        assert mounted["fsType"] == (fast.fs.value if fast.fs else "nfs")
        assert "noatime" in mounted["options"]

    # Regenerating changes nothing, byte for byte.
    plans = generate(spec_dict, out)
    assert {p.state for p in plans} <= {gen_host.State.unchanged, gen_host.State.kept}
    assert tree(out) == first
    gen_host.check(gen_host.plan_files(spec, out))


# --- the command, end to end --------------------------------------------------------------------


@pytest.fixture
def spec_file(tmp_path: Path) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(to_toml(base_spec()))
    return path


def test_gen_host_writes_a_parseable_host(run_cli, spec_file, tmp_path):
    out = tmp_path / "hosts"
    result = run_cli("gen-host", "--spec", str(spec_file), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(tree(out)) == ["btc1/default.nix", "btc1/hardware-configuration.nix", "btc1/storage.nix"]
    nix_parses(*out.glob("btc1/*.nix"))
    storage = nix_eval(out / "btc1" / "storage.nix")
    bulk = storage["fileSystems"]["/srv/bulk"]
    assert bulk["fsType"] == "nfs" and "hard" in bulk["options"] and "_netdev" in bulk["options"]
    assert "x-systemd.device-timeout=30s" in storage["fileSystems"]["/srv/fast"]["options"]


def test_check_reports_drift_and_writes_nothing(run_cli, spec_file, tmp_path):
    out = tmp_path / "hosts"
    result = run_cli("gen-host", "--spec", str(spec_file), "--out", str(out), "--check")
    assert result.returncode == 1 and not out.exists()
    assert "btc1/default.nix (new)" in result.stderr
    assert run_cli("gen-host", "--spec", str(spec_file), "--out", str(out)).returncode == 0
    assert run_cli("gen-host", "--spec", str(spec_file), "--out", str(out), "--check").returncode == 0

    spec = base_spec()
    spec["hosts"][0]["services"]["bitcoind"]["dbcache_mb"] = 1536
    spec_file.write_text(to_toml(spec))
    before = tree(out)
    result = run_cli("gen-host", "--spec", str(spec_file), "--out", str(out), "--check")
    assert result.returncode == 1 and "btc1/default.nix (outdated)" in result.stderr
    assert tree(out) == before


def test_regeneration_follows_the_spec_but_never_overwrites_edits(run_cli, spec_file, tmp_path):
    out = tmp_path / "hosts"
    assert run_cli("gen-host", "--spec", str(spec_file), "--out", str(out)).returncode == 0

    # A changed spec updates files nobody edited.
    spec = base_spec()
    spec["hosts"][0]["services"]["bitcoind"]["dbcache_mb"] = 1536
    spec_file.write_text(to_toml(spec))
    result = run_cli("gen-host", "--spec", str(spec_file), "--out", str(out))
    assert result.returncode == 0 and "updated" in result.stdout
    assert nix_eval(out / "btc1" / "default.nix")["bcm"]["bitcoind"]["dbcache"] == 1536

    # An edited file is refused, with its name, and nothing at all is written.
    storage = out / "btc1" / "storage.nix"
    storage.write_text(storage.read_text().replace('"noatime"', '"noatime"\n      "discard"'))
    spec["hosts"][0]["services"]["bitcoind"]["dbcache_mb"] = 1024
    spec_file.write_text(to_toml(spec))
    before = tree(out)
    result = run_cli("gen-host", "--spec", str(spec_file), "--out", str(out))
    assert result.returncode == 1
    assert str(storage) in result.stderr and "--force" in result.stderr
    assert tree(out) == before

    result = run_cli("gen-host", "--spec", str(spec_file), "--out", str(out), "--force")
    assert result.returncode == 0
    assert '"discard"' not in storage.read_text()
    assert nix_eval(out / "btc1" / "default.nix")["bcm"]["bitcoind"]["dbcache"] == 1024


def test_hardware_configuration_is_a_placeholder_only_where_none_exists(run_cli, spec_file, tmp_path):
    out = tmp_path / "hosts"
    hardware = out / "btc1" / "hardware-configuration.nix"
    hardware.parent.mkdir(parents=True)
    hardware.write_text("# from nixos-generate-config\n{ ... }: { }\n")
    for flags in ([], ["--force"]):
        assert run_cli("gen-host", "--spec", str(spec_file), "--out", str(out), *flags).returncode == 0
        assert hardware.read_text() == "# from nixos-generate-config\n{ ... }: { }\n"
    hardware.unlink()
    assert run_cli("gen-host", "--spec", str(spec_file), "--out", str(out)).returncode == 0
    assert "Placeholder" in hardware.read_text()


def test_host_selection(run_cli, tmp_path):
    spec = base_spec()
    second = dict(spec["hosts"][0], name="btc2", address="10.0.3.9")
    spec["hosts"].append(second)
    spec_file = tmp_path / "cluster.toml"
    spec_file.write_text(to_toml(spec))
    out = tmp_path / "hosts"
    assert run_cli("gen-host", "--spec", str(spec_file), "--out", str(out), "--host", "btc2").returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["btc2"]
    result = run_cli("gen-host", "--spec", str(spec_file), "--out", str(out), "--host", "nope")
    assert result.returncode == 2 and "--host nope: no such host" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_failure_part_way_leaves_the_directory_as_it_was(tmp_path, monkeypatch):
    out = tmp_path / "hosts"
    spec = base_spec()
    generate(spec, out)
    spec["hosts"][0]["services"]["bitcoind"]["dbcache_mb"] = 1536
    spec["hosts"][0]["storage"]["fast"]["size_gb"] = 400
    spec["hosts"].append(dict(spec["hosts"][0], name="btc2", address="10.0.3.9"))
    before = tree(out)

    real_replace, calls = os.replace, []

    def failing_replace(src, dst):
        calls.append(dst)
        if len(calls) == 3:  # after two files are already in place
            raise OSError(28, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(gen_host.os, "replace", failing_replace)
    with pytest.raises(GenerateError, match="nothing was changed"):
        generate(spec, out)
    monkeypatch.undo()
    assert tree(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["btc1"]  # btc2's new directory was removed again
    assert not [p for p in out.rglob(".*")]  # no staged or backup files left behind


def test_refuses_to_write_through_a_symlink(tmp_path, run_cli, spec_file):
    out = tmp_path / "hosts"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out.mkdir()
    (out / "btc1").symlink_to(elsewhere)
    result = run_cli("gen-host", "--spec", str(spec_file), "--out", str(out))
    assert result.returncode == 1 and "symbolic link" in result.stderr
    assert list(elsewhere.iterdir()) == []


def test_output_directory_that_is_a_file(tmp_path, run_cli, spec_file):
    out = tmp_path / "hosts"
    out.write_text("not a directory")
    result = run_cli("gen-host", "--spec", str(spec_file), "--out", str(out))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert out.read_text() == "not a directory"


# --- the repository's own hosts ---------------------------------------------------------------


@pytest.mark.repo
@pytest.mark.parametrize("example", ["cluster", "regtest"])
def test_repository_hosts_match_the_example_specs(run_cli, example):
    """hosts/ is generated from examples/; CI fails when they drift apart."""
    result = run_cli("gen-host", "--spec", str(REPO / "examples" / f"{example}.toml"), "--out", str(REPO / "hosts"), "--check")
    assert result.returncode == 0, result.stderr


def test_default_output_directory_is_hosts(run_cli, spec_file, tmp_path):
    result = run_cli("gen-host", "--spec", str(spec_file), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "hosts" / "btc1" / "default.nix").is_file()


MNEMONIC = "abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon abandon about\n"


def test_operator_key_from_a_device_goes_into_spec_and_hosts(run_cli, tmp_path):
    """The software (mnemonic) device stands in for a Trezor here; both derive the same key."""
    from bcm_tools.keys.operator import ssh_public_key_for

    mnemonic = tmp_path / "words.txt"
    mnemonic.write_text(MNEMONIC)
    spec_file = tmp_path / "cluster.toml"
    spec_file.write_text("# my cluster, hand-written\n" + to_toml(base_spec()))
    out = tmp_path / "hosts"
    expected = ssh_public_key_for(f"mnemonic:{mnemonic}", "operator@home")

    for _ in range(2):  # a second run adds nothing
        result = run_cli("gen-host", "--spec", str(spec_file), "--out", str(out), "--operator-key-from", f"mnemonic:{mnemonic}")
        assert result.returncode == 0, result.stderr
        assert "INSECURE" in result.stderr
    text = spec_file.read_text()
    assert text.startswith("# my cluster, hand-written\n")
    assert text.count(expected.split()[1]) == 1
    keys = nix_eval(out / "btc1" / "default.nix")["bcm"]["operator"]["sshAuthorizedKeys"]
    assert keys == [base_spec()["operator"]["ssh_authorized_keys"][0], expected]
    assert run_cli("gen-host", "--spec", str(spec_file), "--out", str(out), "--check").returncode == 0


def test_operator_key_with_a_bad_identity_changes_nothing(run_cli, tmp_path):
    mnemonic = tmp_path / "words.txt"
    mnemonic.write_text(MNEMONIC)
    spec_file = tmp_path / "cluster.toml"
    spec_file.write_text(to_toml(base_spec()))
    before = spec_file.read_text()
    result = run_cli(
        "gen-host", "--spec", str(spec_file), "--out", str(tmp_path / "hosts"),
        "--operator-key-from", f"mnemonic:{mnemonic}", "--identity", "two words@host",
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert spec_file.read_text() == before and not (tmp_path / "hosts").exists()
