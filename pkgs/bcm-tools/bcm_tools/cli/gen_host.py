"""`bcm-tools gen-host`: NixOS host configurations from a cluster spec."""

from __future__ import annotations

from pathlib import Path

import click

from bcm_tools import gen_host as generator
from bcm_tools.errors import UsageError
from bcm_tools.spec import add_operator_key, load_spec


def operator_ssh_key(device_spec: str, identity: str, curve: str) -> str:
    # Imported here: the device libraries are only loaded when a device is asked for.
    from bcm_tools.cli.trezor import open_announced
    from bcm_tools.keys.operator import ssh_public_key

    with open_announced(device_spec) as device:
        return ssh_public_key(device, identity, curve)


@click.command("gen-host")
@click.option("--spec", "spec_path", required=True, type=click.Path(path_type=Path, dir_okay=False), help="Cluster spec (TOML).")
@click.option("--host", "hosts", multiple=True, metavar="NAME", help="Generate only this host; repeatable. Default: every host.")
@click.option("--out", "out", default=Path("hosts"), show_default=True, type=click.Path(path_type=Path, file_okay=False), help="Directory holding one folder per host.")
@click.option("--force", is_flag=True, help="Overwrite generated files even where they were edited by hand.")
@click.option("--check", "check_only", is_flag=True, help="Write nothing; exit 1 if the files on disk differ from the spec.")
@click.option(
    "--operator-key-from",
    "key_device",
    metavar="DEVICE",
    help="Add the operator's SSH key from this device (trezor | mnemonic:PATH) to the spec and the hosts.",
)
@click.option("--identity", metavar="USER@HOST", help="trezor-agent identity of that key. Default: <operator>@<cluster>.")
@click.option("--curve", type=click.Choice(["ed25519", "nist256p1"]), default="ed25519", show_default=True)
def gen_host(
    spec_path: Path,
    hosts: tuple[str, ...],
    out: Path,
    force: bool,
    check_only: bool,
    key_device: str | None,
    identity: str | None,
    curve: str,
) -> None:
    """Write NixOS host configurations from the cluster spec.

    For each host: DIR/<host>/default.nix, storage.nix and, where none exists, a placeholder
    hardware-configuration.nix.
    """
    cluster_spec = load_spec(spec_path)
    if key_device is not None:
        if check_only:
            raise UsageError("--operator-key-from changes the spec; it cannot be combined with --check")
        identity = identity or f"{cluster_spec.operator.user}@{cluster_spec.cluster.name}"
        key = operator_ssh_key(key_device, identity, curve)
        cluster_spec = add_operator_key(spec_path, key)
        click.echo(f"operator key for {identity} is in {spec_path}: {key}")
    plans = generator.plan_files(cluster_spec, out, list(hosts))
    if check_only:
        generator.check(plans)
        click.echo(f"{len(plans)} files up to date with {spec_path}")
        return
    generator.write(plans, force=force)
    for plan in plans:
        state = plan.state
        verb = {
            generator.State.new: "wrote",
            generator.State.outdated: "updated",
            generator.State.edited: "overwrote (--force)",
            generator.State.unchanged: "unchanged",
            generator.State.kept: "kept",
        }[state]
        click.echo(f"{verb:<20} {plan.path}")
