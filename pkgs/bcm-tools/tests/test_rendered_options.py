"""Every key the modules hand bitcoind, bitcoin-cli and Fulcrum exists in the versions nixpkgs pins.

Neither daemon can run here, and both quietly ignore a key they do not know, so the committed
exports (nixos-tests/eval/exported/*.json, kept current by test_exports_current.py) are checked
against option lists read from the daemons' source (nixos-tests/daemon-options/, whose headers
say which tag and files). Checked: bitcoin.conf and bitcoin-cli.conf (global section, chain
sections, the files they `includeconf` where the export shows what writes them), fulcrum.conf
with the lines appended to it at start, and the `-flags` the generated scripts and unit commands
pass to bitcoind and bitcoin-cli."""

from __future__ import annotations

import json
import re
import shlex
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
OPTIONS_DIR = ROOT / "nixos-tests" / "daemon-options"
EXPORTS = sorted((ROOT / "nixos-tests" / "eval" / "exported").glob("*.json"))

pytestmark = pytest.mark.repo

# Section names bitcoind recognizes in a configuration file (ArgsManager::GetUnrecognizedSections,
# names from ChainTypeToString in src/util/chaintype.cpp, at the commit bitcoind.txt names).
BITCOIN_SECTIONS = frozenset({"main", "test", "testnet4", "signet", "regtest"})
# Which option list each rendered file is read by, from its store name.
BITCOIN_CONFS = {"bitcoin.conf": "bitcoind", "bitcoin-cli.conf": "bitcoin-cli"}


@dataclass(frozen=True)
class BitcoinOptions:
    version: str
    # program -> option name -> whether it is network-only
    programs: dict[str, dict[str, bool]]


@dataclass(frozen=True)
class FulcrumKeys:
    version: str
    kinds: dict[str, str]  # key (lower case) -> "repeatable" | "single" | "rejected"


def _version(text: str, path: Path) -> str:
    match = re.search(r"^# Version: (.+)$", text, re.M)
    assert match, f"{path} has no '# Version:' header line"
    return match.group(1).strip()


def _rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        rows.append(line.split("  #", 1)[0].split())
    return rows


def load_bitcoin_options(path: Path = OPTIONS_DIR / "bitcoind.txt") -> BitcoinOptions:
    text = path.read_text()
    programs: dict[str, dict[str, bool]] = {}
    for row in _rows(text):
        name, section, progs = row[0], row[1], row[2]
        assert section in ("network-only", "any-section"), f"{path}: bad section column in {row}"
        for program in progs.split(","):
            programs.setdefault(program, {})[name] = section == "network-only"
    return BitcoinOptions(_version(text, path), programs)


def load_fulcrum_keys(path: Path = OPTIONS_DIR / "fulcrum.txt") -> FulcrumKeys:
    text = path.read_text()
    kinds = {}
    for row in _rows(text):
        assert row[1] in ("repeatable", "single", "rejected"), f"{path}: bad kind column in {row}"
        kinds[row[0].lower()] = row[1]
    return FulcrumKeys(_version(text, path), kinds)


@pytest.fixture(scope="module")
def bitcoin() -> BitcoinOptions:
    return load_bitcoin_options()


@pytest.fixture(scope="module")
def fulcrum() -> FulcrumKeys:
    return load_fulcrum_keys()


# --- bitcoind / bitcoin-cli ------------------------------------------------------------------


def bitcoin_conf_lines(text: str) -> list[tuple[int, str, str, str]]:
    """(line number, section, key, value) as ArgsManager reads them (common/config.cpp,
    GetConfigOptions): `#` starts a comment, `[name]` opens a section, `section.key=` names one
    inline. A line it would refuse is returned with the key "<parse error>"."""
    entries = []
    section = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip(" \t\r\n")
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            entries.append((number, section, "[section]", ""))
        elif line.startswith("-") or "=" not in line:
            entries.append((number, section, "<parse error>", line))
        else:
            key, value = (part.strip(" \t\r\n") for part in line.split("=", 1))
            # InterpretKey splits "<section>.<key>" at the first dot of the full name, which
            # inside a [section] is that section's own name.
            if not section and "." in key:
                entries.append((number, *key.split(".", 1), value))
            else:
                entries.append((number, section, key, value))
    return entries


def option_name(key: str) -> str:
    """The registered name behind a key: a leading `no` negates (InterpretKey), `--x` is `-x`."""
    key = key.lstrip("-")
    return key[2:] if key.startswith("no") else key


def bitcoin_conf_problems(text: str, program: str, options: BitcoinOptions, where: str) -> list[str]:
    known = options.programs[program]
    problems = []
    for number, section, key, value in bitcoin_conf_lines(text):
        at = f"{where}:{number}"
        if key == "[section]":
            if section not in BITCOIN_SECTIONS:
                problems.append(f"{at}: [{section}] is not a section {program} of {options.version} reads")
            continue
        if key == "<parse error>":
            problems.append(f"{at}: {program} of {options.version} refuses the line `{value}`")
            continue
        name = option_name(key)
        if name == "conf":
            problems.append(f"{at}: `conf` cannot be set in a configuration file ({program} of {options.version})")
        elif name not in known:
            problems.append(
                f"{at}: `{key}` is not a {program} option in {options.version}; {program} ignores it "
                "(\"Ignoring unknown configuration value\")"
            )
        elif known[name] and not section:
            problems.append(
                f"{at}: `{key}` is network-only in {options.version}: in the global section {program} "
                "ignores it on every chain but main; it belongs in the chain's [section]"
            )
    return problems


def includes(text: str) -> list[str]:
    return [value for _, _, key, value in bitcoin_conf_lines(text) if key == "includeconf"]


_INVOKES = {"bitcoind": re.compile(r"/bin/bitcoind(?=[\s\"']|$)"), "bitcoin-cli": re.compile(r"/bin/bitcoin-cli(?=[\s\"']|$)")}


def command_line_flags(script: str) -> list[tuple[str, str]]:
    """(program, flag) for each `-flag` a script or unit command gives bitcoind or bitcoin-cli:
    the words after the binary on its (backslash-continued) line, and, in a script that starts
    exactly one of them, the entries it collects in a bash array (`args+=("-externalip=...")`)."""
    joined = script.replace("\\\n", " ")
    found = []
    started = set()
    for line in joined.splitlines():
        for program, pattern in _INVOKES.items():
            match = pattern.search(line)
            if not match:
                continue
            started.add(program)
            rest = line[match.end():]
            try:
                words = shlex.split(rest, comments=True)
            except ValueError:
                words = rest.split()
            for word in words:
                word = word.strip("\"'")
                if word.startswith("-") and len(word) > 1:
                    found.append((program, word.split("=", 1)[0]))
    if len(started) == 1:
        program = next(iter(started))
        for match in re.finditer(r"\b\w+\+=\(\s*[\"']?(-[A-Za-z0-9_.?-]+)", joined):
            found.append((program, match.group(1)))
    return found


def command_line_problems(flags: list[tuple[str, str]], options: BitcoinOptions, where: str) -> list[str]:
    problems = []
    for program, flag in flags:
        name = option_name(flag)
        if "." in name:  # -regtest.rpcport=...: the part after the chain
            name = name.split(".", 1)[1]
        if name not in options.programs[program]:
            problems.append(f"{where}: `{flag}` is not a {program} option in {options.version}")
        elif name == "includeconf":
            problems.append(f"{where}: `{flag}` cannot be given on the command line ({program} of {options.version})")
    return problems


# --- Fulcrum ------------------------------------------------------------------------------------


def fulcrum_conf_keys(text: str) -> list[tuple[int, str]]:
    """(line number, key) as Fulcrum's ConfigFile::open reads them: `[section]` lines skipped,
    `#` starts a comment, `name = value` or a bare `name`."""
    keys = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if line.startswith("["):
            continue
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name = line.split("=", 1)[0].strip()
        if name:
            keys.append((number, name))
    return keys


def fulcrum_conf_problems(keys: list[tuple[str, str]], fulcrum: FulcrumKeys) -> list[str]:
    """`keys` is (where, key) for every line Fulcrum will read, in order."""
    problems = []
    counts = Counter(key.lower() for _, key in keys)
    reported = set()
    for where, key in keys:
        kind = fulcrum.kinds.get(key.lower())
        if kind is None:
            problems.append(f"{where}: `{key}` is not a Fulcrum key in {fulcrum.version}")
        elif kind == "rejected":
            problems.append(f"{where}: `{key}` was removed; {fulcrum.version} refuses to start with it")
        elif kind == "single" and counts[key.lower()] > 1 and key.lower() not in reported:
            reported.add(key.lower())
            problems.append(f"{where}: `{key}` appears {counts[key.lower()]} times; {fulcrum.version} reads it once")
    return problems


# --- the exports --------------------------------------------------------------------------------


def store_name(path: str) -> str:
    return re.sub(r"^/nix/store/[0-9a-z]{32}-", "", path)


def scripts(export: dict) -> dict[str, str]:
    """Every script text of an export, by a name for messages: generated files, unit commands and
    unit scripts, activation scripts."""
    found = {f"files[{store_name(path)}]": text for path, text in export["files"].items()}
    for unit, data in export["units"].items():
        for key, value in data.get("serviceConfig", {}).items():
            if key.startswith("Exec"):
                for i, command in enumerate(value if isinstance(value, list) else [value]):
                    if isinstance(command, str):
                        found[f"units.{unit}.serviceConfig.{key}[{i}]"] = command
        for key in ("script", "preStart", "postStart"):
            if data.get(key):
                found[f"units.{unit}.{key}"] = data[key]
    for name, script in export.get("activationScripts", {}).items():
        found[f"activationScripts.{name}"] = script["text"]
    return found


def included_file_lines(export: dict, target: str) -> list[str] | None:
    """The lines a script of the export writes to `target`, cut to `key=` (a
    bcm.lib.generatedSecrets generator: `secret_file=<target>`, then `echo "key=..."`), or None
    when no script writes it."""
    for text in scripts(export).values():
        for block in re.split(r"(?m)^\s*secret_file=", text)[1:]:
            if block.split(None, 1)[0].strip("\"'") == target:
                return re.findall(r"""(?:echo|printf)\s+["']([A-Za-z0-9_.-]+=)""", block)
    return None


def export_ids() -> list[str]:
    return [path.stem for path in EXPORTS]


@pytest.fixture(params=EXPORTS, ids=export_ids())
def export(request) -> dict:
    return json.loads(request.param.read_text())


def rendered(export: dict, suffix: str) -> dict[str, str]:
    return {path: text for path, text in export["files"].items() if store_name(path) == suffix}


def test_there_are_exports_to_check():
    assert EXPORTS, "no nixos-tests/eval/exported/*.json"


def test_bitcoin_configuration_keys_exist_in_the_pinned_version(export, bitcoin):
    """bitcoin.conf and bitcoin-cli.conf, and what they include: every key is an option of the
    program reading it, and none that counts only in a chain section sits in the global one."""
    host = export["host"]
    problems = []
    checked = 0
    for suffix, program in BITCOIN_CONFS.items():
        for path, text in rendered(export, suffix).items():
            checked += 1
            problems += bitcoin_conf_problems(text, program, bitcoin, f"{host}: {path}")
            for target in includes(text):
                lines = included_file_lines(export, target)
                if lines is None:
                    continue  # written by the operator, not by the modules
                problems += bitcoin_conf_problems("\n".join(lines), program, bitcoin, f"{host}: {target} (included)")
    if "bitcoind" in export["units"]:
        assert rendered(export, "bitcoin.conf"), f"{host} runs bitcoind but its export has no bitcoin.conf"
    elif not checked:
        pytest.skip(f"{host} does not run bitcoind")
    assert not problems, "\n".join(problems)


def test_includes_of_bitcoin_conf_are_found_and_checked(export):
    """The rpcauth file bitcoin.conf includes is written by a script of the export, so the check
    above really reads its keys (a change in how secrets are generated must not silently stop it)."""
    confs = rendered(export, "bitcoin.conf")
    if not confs:
        pytest.skip(f"{export['host']} does not run bitcoind")
    for text in confs.values():
        for target in includes(text):
            assert included_file_lines(export, target), f"{export['host']}: nothing in the export writes {target}"


def test_bitcoin_command_line_flags_exist_in_the_pinned_version(export, bitcoin):
    host = export["host"]
    problems = []
    flags_seen = 0
    for where, text in scripts(export).items():
        flags = command_line_flags(text)
        flags_seen += len(flags)
        problems += command_line_problems(flags, bitcoin, f"{host}: {where}")
    if "bitcoind" in export["units"]:
        assert flags_seen, f"{host} runs bitcoind but no script passes it a flag (is the scan still finding the start script?)"
    assert not problems, "\n".join(problems)


def test_fulcrum_configuration_keys_exist_in_the_pinned_version(export, fulcrum):
    """fulcrum.conf plus the lines a script appends to it at start (the RPC password)."""
    host = export["host"]
    confs = rendered(export, "fulcrum.conf")
    if "fulcrum" not in export["units"] and not confs:
        pytest.skip(f"{host} does not run Fulcrum")
    assert confs, f"{host} runs Fulcrum but its export has no fulcrum.conf"
    problems = []
    for path, text in confs.items():
        keys = [(f"{host}: {path}:{number}", key) for number, key in fulcrum_conf_keys(text)]
        for where, script in scripts(export).items():
            if path in script:
                appended = re.findall(r"""(?:printf|echo)\s+["']\s*([A-Za-z0-9_-]+)\s*=""", script)
                keys += [(f"{host}: {where} (appended)", key) for key in appended]
        problems += fulcrum_conf_problems(keys, fulcrum)
    assert not problems, "\n".join(problems)


# --- the checkers reject what they should -------------------------------------------------------

IGNORED = 'bitcoind ignores it ("Ignoring unknown configuration value")'


def test_the_lists_are_read_from_their_files(bitcoin, fulcrum):
    assert bitcoin.version.startswith("Bitcoin Core ") and fulcrum.version.startswith("Fulcrum ")
    assert {"bitcoind", "bitcoin-cli"} <= bitcoin.programs.keys()
    assert len(bitcoin.programs["bitcoind"]) > 150 and len(bitcoin.programs["bitcoin-cli"]) > 20
    assert bitcoin.programs["bitcoind"]["rpcbind"] is True and bitcoin.programs["bitcoind"]["server"] is False
    assert "rpcconnect" not in bitcoin.programs["bitcoind"] and "includeconf" not in bitcoin.programs["bitcoin-cli"]
    assert fulcrum.kinds["tcp"] == "repeatable" and fulcrum.kinds["datadir"] == "single"


def test_bitcoin_checker_rejects_an_unknown_key_and_a_network_only_key_in_the_global_section(bitcoin):
    text = "chain=regtest\nrpcbind=127.0.0.1\nrpcbnid=127.0.0.1\n\n[regtest]\nport=18444\nnolisten=1\ntxindexx=1\n"
    problems = bitcoin_conf_problems(text, "bitcoind", bitcoin, "sample.conf")
    assert problems == [
        f"sample.conf:2: `rpcbind` is network-only in {bitcoin.version}: in the global section bitcoind "
        "ignores it on every chain but main; it belongs in the chain's [section]",
        f"sample.conf:3: `rpcbnid` is not a bitcoind option in {bitcoin.version}; {IGNORED}",
        f"sample.conf:8: `txindexx` is not a bitcoind option in {bitcoin.version}; {IGNORED}",
    ]


def test_bitcoin_checker_knows_the_programs_apart_and_sections(bitcoin):
    assert bitcoin_conf_problems("[regtest]\nrpcconnect=127.0.0.1\n", "bitcoin-cli", bitcoin, "cli.conf") == []
    assert bitcoin_conf_problems("[regtest]\nrpcconnect=127.0.0.1\n", "bitcoind", bitcoin, "d.conf") == [
        f"d.conf:2: `rpcconnect` is not a bitcoind option in {bitcoin.version}; {IGNORED}"
    ]
    assert bitcoin_conf_problems("regtest.port=1\nrpcbind=::1\n[mainnet]\n", "bitcoind", bitcoin, "d.conf") == [
        f"d.conf:2: `rpcbind` is network-only in {bitcoin.version}: in the global section bitcoind "
        "ignores it on every chain but main; it belongs in the chain's [section]",
        f"d.conf:3: [mainnet] is not a section bitcoind of {bitcoin.version} reads",
    ]


def test_command_line_scan_finds_binary_flags_and_array_entries(bitcoin):
    script = (
        'args=()\nargs+=("-externalip=$(cat x)")\nargs+=("-bogusflag=1")\n'
        'exec /nix/store/0-bitcoind/bin/bitcoind -conf=/nix/store/a-bitcoin.conf \\\n  --datadir=/d "${args[@]}"\n'
    )
    flags = command_line_flags(script)
    assert sorted(flags) == sorted(
        [("bitcoind", "-conf"), ("bitcoind", "--datadir"), ("bitcoind", "-externalip"), ("bitcoind", "-bogusflag")]
    )
    assert command_line_problems(flags, bitcoin, "start") == [f"start: `-bogusflag` is not a bitcoind option in {bitcoin.version}"]


def test_fulcrum_checker_rejects_unknown_removed_and_repeated_keys(fulcrum):
    text = "# comment\ntcp = 127.0.0.1:50001\ntcp = 127.0.0.1:50011\ndatadir = /a\nDatadir = /b\nutxo_cache = 100\nssl_port = 1\n"
    keys = [(f"f.conf:{number}", key) for number, key in fulcrum_conf_keys(text)]
    assert fulcrum_conf_problems(keys, fulcrum) == [
        f"f.conf:4: `datadir` appears 2 times; {fulcrum.version} reads it once",
        f"f.conf:6: `utxo_cache` was removed; {fulcrum.version} refuses to start with it",
        f"f.conf:7: `ssl_port` is not a Fulcrum key in {fulcrum.version}",
    ]
