"""The cluster spec: invalid specs are refused with the right field paths, valid ones load."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings

from bcm_tools.cli import cli
from bcm_tools.errors import SpecError
from bcm_tools.spec import parse_spec
from specs import FAULTS, base_spec, faulty_specs, spoiled, to_toml, two_host_spec

CORPUS = sorted((Path(__file__).parent / "invalid_specs").glob("*.toml"))
EXAMPLES = Path(__file__).parents[3] / "examples"


def expected_paths(spec_file: Path) -> list[str]:
    return re.findall(r"^# expect: (.+)$", spec_file.read_text(), re.MULTILINE)


def expected_notes(spec_file: Path) -> list[str]:
    return re.findall(r"^# note: (.+)$", spec_file.read_text(), re.MULTILINE)


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_corpus_is_not_empty():
    assert len(CORPUS) >= 30


@pytest.mark.parametrize("spec_file", CORPUS, ids=lambda p: p.stem)
def test_invalid_spec_names_its_field(spec_file: Path, tmp_path: Path):
    expects = expected_paths(spec_file)
    assert expects, f"{spec_file.name} has no '# expect:' line"
    result = CliRunner().invoke(cli, ["spec", "validate", str(spec_file)], standalone_mode=False, catch_exceptions=True)
    err = result.exception
    assert isinstance(err, SpecError), f"expected a SpecError, got {err!r}"
    lines = err.lines()
    for path in expects:
        if path.startswith("line "):
            assert any(path in line for line in lines), lines
        else:
            assert any(line.startswith(f"{path}: ") for line in lines), (path, lines)
    assert len(lines) == len(expects), lines
    # What was held back because of another problem is said, once per cause, and only that.
    notes = err.notes()
    for note in expected_notes(spec_file):
        assert note in notes, (note, notes)
    assert len(notes) == len(expected_notes(spec_file)), notes


def test_corpus_has_specs_with_several_problems():
    assert len([f for f in CORPUS if len(expected_paths(f)) >= 3]) >= 4


@pytest.mark.parametrize("spec_file", CORPUS, ids=lambda p: p.stem)
def test_invalid_spec_exits_2_and_writes_nothing(spec_file: Path, tmp_path: Path, run_cli):
    out = tmp_path / "hosts"
    (out / "existing").mkdir(parents=True)
    (out / "existing" / "default.nix").write_text("{ ... }: { }\n")
    before = tree(out)
    result = run_cli("gen-host", "--spec", str(spec_file), "--out", str(out))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("error: ")
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    notes = [line for line in result.stderr.splitlines() if line.startswith("note: ")]
    assert len(errors) == len(expected_paths(spec_file)), result.stderr
    assert len(errors) + len(notes) == len(result.stderr.splitlines()), result.stderr
    for path in expected_paths(spec_file):
        assert path in result.stderr
    for note in expected_notes(spec_file):
        assert f"note: {note}" in notes
    assert tree(out) == before


@pytest.mark.repo
def test_examples_are_valid():
    examples = sorted(EXAMPLES.glob("*.toml"))
    assert [e.name for e in examples] == ["cluster.toml", "regtest.toml"]
    for example in examples:
        parse_spec(example.read_text(), str(example))


def test_a_missing_spec_file_is_one_line(run_cli, tmp_path):
    result = run_cli("spec", "validate", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "no such file" in result.stderr


def test_a_spec_that_is_not_utf8_is_one_line(run_cli, tmp_path):
    spec_file = tmp_path / "binary.toml"
    spec_file.write_bytes(b"\xff\xfe\x00version = 1")
    result = run_cli("spec", "validate", str(spec_file))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0


def test_ssh_key_comment_and_options_are_kept():
    spec = base_spec()
    key = spec["operator"]["ssh_authorized_keys"][0]
    spec["operator"]["ssh_authorized_keys"] = [key + " with spaces in comment"]
    loaded = parse_spec(to_toml(spec))
    assert loaded.operator.ssh_authorized_keys == [key + " with spaces in comment"]


def test_capacity_is_checked_against_the_network():
    """The same disks that are far too small for mainnet are plenty for regtest."""
    spec = base_spec()
    spec["hosts"][0]["storage"]["fast"]["size_gb"] = 30
    spec["hosts"][0]["storage"]["bulk"]["size_gb"] = 10
    spec["hosts"][0]["memory_mb"] = 6144
    with pytest.raises(SpecError) as raised:
        parse_spec(to_toml(spec))
    paths = {path for path, _ in raised.value.problems}
    assert paths == {"hosts[0].storage.fast.size_gb", "hosts[0].storage.bulk.size_gb", "hosts[0].memory_mb"}
    spec["cluster"]["network"] = "regtest"
    parse_spec(to_toml(spec))


def test_pruning_shrinks_the_block_files_need():
    spec = base_spec()
    host = spec["hosts"][0]
    del host["services"]["fulcrum"]
    host["storage"]["bulk"]["size_gb"] = 120
    with pytest.raises(SpecError):
        parse_spec(to_toml(spec))
    host["services"]["bitcoind"]["prune_mb"] = 10_000
    parse_spec(to_toml(spec))


@pytest.mark.repo
def test_validate_prints_the_capacity_plan(run_cli):
    result = run_cli("spec", "validate", str(EXAMPLES / "cluster.toml"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "host btc1" in out
    assert re.search(r"fulcrum\s+index\s+170 GB", out)
    assert re.search(r"has 300 GB, headroom 76 GB", out)
    assert re.search(r"has 12288 MB, headroom 1960 MB", out)
    assert "2026-11-22" in out


@pytest.mark.repo
def test_readme_sizing_table_matches_the_code():
    """The README shows the sizing table users plan with; it must be the one the code uses."""
    from bcm_tools.sizing import DISK_GB, MEMORY_MB, SIZES_TAKEN
    from bcm_tools.spec import Network

    readme = (Path(__file__).parents[3] / "README.md").read_text()
    assert SIZES_TAKEN in readme
    for table in (DISK_GB, MEMORY_MB):
        for item in table[Network.mainnet]:
            row = f"| {item} | " + " | ".join(f"{table[n][item]:g}" for n in Network) + " |"
            assert row in readme, row


def test_port_clashes_follow_the_network_defaults():
    """On regtest bitcoind's RPC defaults to 18443, so LND's REST port may not take it there,
    while on mainnet the same port is free."""
    spec = base_spec()
    spec["hosts"][0]["services"]["lnd"]["rest_port"] = 18443
    parse_spec(to_toml(spec))
    spec["cluster"]["network"] = "regtest"
    spec["hosts"][0]["memory_mb"] = 8192
    with pytest.raises(SpecError) as raised:
        parse_spec(to_toml(spec))
    assert raised.value.problems == [("hosts[0].services.lnd.rest_port", "port 18443 is already used by bitcoind.rpc_port")]


def test_the_two_host_base_spec_is_valid():
    parse_spec(to_toml(two_host_spec()))


@pytest.mark.parametrize("fault", FAULTS, ids=repr)
def test_each_fault_alone_gives_exactly_its_problems(fault):
    spec = two_host_spec()
    fault.apply(spec)
    with pytest.raises(SpecError) as raised:
        parse_spec(to_toml(spec))
    assert sorted(path for path, _ in raised.value.problems) == sorted(fault.expect)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(faulty_specs())
def test_every_independent_fault_is_reported(built):
    """Several independent faults in one spec: each one's problems are reported, in one run, with
    nothing else; one that another fault makes meaningless is held back and named in a note."""
    spec, faults = built
    with pytest.raises(SpecError) as raised:
        parse_spec(to_toml(spec))
    reported = sorted(path for path, _ in raised.value.problems)
    expected = sorted(path for f in faults if not spoiled(f, faults) for path in f.expect)
    assert reported == expected, faults
    notes = raised.value.notes()
    for fault in faults:
        if spoiled(fault, faults) and fault.capacity:
            assert any("capacity of" in note and fault.capacity in note for note in notes), (fault, notes)


def test_type_errors_come_before_cross_field_and_capacity_problems():
    spec = two_host_spec()
    spec["hosts"][1]["storage"]["fast"]["size_gb"] = 10
    spec["hosts"][1]["services"]["bitcoind"].update(prune_mb=2000, txindex=True)
    spec["hosts"][1]["cpus"] = "two"
    with pytest.raises(SpecError) as raised:
        parse_spec(to_toml(spec))
    assert [path for path, _ in raised.value.problems] == [
        "hosts[1].cpus",
        "hosts[1].services.bitcoind",
        "hosts[1].services.bitcoind.prune_mb",
        "hosts[1].storage.fast.size_gb",
    ]


def test_an_unknown_key_is_named_as_written():
    """A capitalised key used to lose its name (taken for a pydantic union tag) and blame its table."""
    spec = base_spec()
    spec["hosts"][0]["storage"]["bulk"]["Colour"] = "red"
    with pytest.raises(SpecError) as raised:
        parse_spec(to_toml(spec))
    assert raised.value.problems == [("hosts[0].storage.bulk.Colour", "unknown key")]
    assert raised.value.notes() == []
