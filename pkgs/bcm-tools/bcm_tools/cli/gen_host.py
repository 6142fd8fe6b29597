"""`bcm-tools gen-host`: NixOS host configurations from a cluster spec."""

from __future__ import annotations

from pathlib import Path

import click

from bcm_tools import gen_host as generator
from bcm_tools.spec import load_spec


@click.command("gen-host")
@click.option("--spec", "spec_path", required=True, type=click.Path(path_type=Path, dir_okay=False), help="Cluster spec (TOML).")
@click.option("--host", "hosts", multiple=True, metavar="NAME", help="Generate only this host; repeatable. Default: every host.")
@click.option("--out", "out", default=Path("hosts"), show_default=True, type=click.Path(path_type=Path, file_okay=False), help="Directory holding one folder per host.")
@click.option("--force", is_flag=True, help="Overwrite generated files even where they were edited by hand.")
@click.option("--check", "check_only", is_flag=True, help="Write nothing; exit 1 if the files on disk differ from the spec.")
def gen_host(spec_path: Path, hosts: tuple[str, ...], out: Path, force: bool, check_only: bool) -> None:
    """Write NixOS host configurations from the cluster spec.

    For each host: DIR/<host>/default.nix, storage.nix and, where none exists, a placeholder
    hardware-configuration.nix.
    """
    cluster_spec = load_spec(spec_path)
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
