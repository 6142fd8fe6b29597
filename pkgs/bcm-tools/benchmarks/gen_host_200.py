"""Wall time of `spec validate` and `gen-host` on a generated 200-host cluster spec.

    .venv/bin/python pkgs/bcm-tools/benchmarks/gen_host_200.py [--hosts N] [--runs R]

Prints, for each command, the median and worst of R runs of the real CLI in a fresh process
(what a user waits for, interpreter start-up included), and the same work measured in-process.
Target: under 1 s for 200 hosts. Creating and fsyncing 600 files is most of gen-host's time on a
real disk, and varies with it; `--dir /dev/shm` shows the rest.
"""

from __future__ import annotations

import argparse
import base64
import copy
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import tomli_w

from bcm_tools import gen_host
from bcm_tools.spec import load_spec


def make_spec(hosts: int) -> dict:
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + bytes(range(32))
    key = f"ssh-ed25519 {base64.b64encode(blob).decode()} bench"
    host = {
        "system": "x86_64-linux",
        "cpus": 4,
        "memory_mb": 16384,
        "storage": {
            "fast": {"device": "/dev/disk/by-id/nvme-fast", "fs": "ext4", "size_gb": 400},
            "bulk": {"nfs": "nas:/hdd/chain", "size_gb": 2000},
        },
        "services": {
            "bitcoind": {"dbcache_mb": 2048},
            "fulcrum": {},
            "lnd": {"alias": "node"},
            "monerod": {"prune": True},
            "tor": {},
            "kafka": {},
        },
    }
    return {
        "version": 1,
        "cluster": {"name": "bench", "network": "mainnet"},
        "operator": {"user": "operator", "ssh_authorized_keys": [key]},
        "hosts": [dict(copy.deepcopy(host), name=f"node{i:03d}", address=f"10.1.{i // 250}.{i % 250 + 1}") for i in range(hosts)],
    }


def cli_seconds(*args: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-c", "from bcm_tools.cli import main; main()", *args], check=True, capture_output=True)
    return time.perf_counter() - started


def in_process_seconds(spec_path: Path, out: Path) -> tuple[float, float]:
    started = time.perf_counter()
    spec = load_spec(spec_path)
    validated = time.perf_counter()
    gen_host.write(gen_host.plan_files(spec, out))
    return validated - started, time.perf_counter() - started


def summary(label: str, samples: list[float]) -> str:
    return f"{label:<44} median {statistics.median(samples):6.3f} s   worst {max(samples):6.3f} s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--dir", type=Path, default=None, help="Where to write (default: the system's temporary directory). /dev/shm separates the tool's own time from the disk's.")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bcm-bench-", dir=args.dir))
    try:
        spec_path = work / "cluster.toml"
        spec_path.write_text(tomli_w.dumps(make_spec(args.hosts)))
        validate, generate_fresh, generate_again, in_validate, in_generate = [], [], [], [], []
        for run in range(args.runs):
            out = work / f"hosts{run}"
            validate.append(cli_seconds("spec", "validate", str(spec_path)))
            generate_fresh.append(cli_seconds("gen-host", "--spec", str(spec_path), "--out", str(out)))
            generate_again.append(cli_seconds("gen-host", "--spec", str(spec_path), "--out", str(out)))
            shutil.rmtree(out)
            v, g = in_process_seconds(spec_path, out)
            in_validate.append(v)
            in_generate.append(g)
            shutil.rmtree(out)
        print(f"{args.hosts} hosts, {args.runs} runs, Python {sys.version.split()[0]}, writing under {work.parent}")
        print(summary("spec validate (CLI process)", validate))
        print(summary(f"gen-host, empty DIR, {args.hosts * 3} files (CLI process)", generate_fresh))
        print(summary("gen-host, nothing to change (CLI process)", generate_again))
        print(summary("load + validate (in process)", in_validate))
        print(summary("load + validate + render + write (in process)", in_generate))
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
