"""`bcm-tools status HOST`: the node at a glance, from its Prometheus."""

from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("host")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON, for scripts.")
@click.option("--local", is_flag=True, help="Run on the node itself: ask its Prometheus on 127.0.0.1 directly.")
@click.option("--user", default="operator", show_default=True, help="SSH login (the operator).")
@click.option("--ssh-port", type=click.IntRange(1, 65535), help="SSH port of HOST.")
@click.option("--identity", type=click.Path(dir_okay=False, path_type=Path), help="SSH private key to log in with.")
@click.option("--known-hosts", type=click.Path(dir_okay=False, path_type=Path), help="known_hosts file holding HOST's key.")
@click.option("--prometheus-port", default=9090, show_default=True, type=click.IntRange(1, 65535),
              help="bcm.monitoring.port on HOST.")
def status(host: str, as_json: bool, local: bool, user: str, ssh_port: int | None, identity: Path | None,
           known_hosts: Path | None, prometheus_port: int) -> None:
    """Chain tips, peers, channels, backups, storage tiers and alerts of HOST.

    Reads HOST's Prometheus (bcm.monitoring) through an SSH tunnel as the operator, or directly
    with --local on the node itself."""
    from bcm_tools import status as statuses

    def show(url: str) -> None:
        report = statuses.read_report(statuses.Prometheus(url), host)
        click.echo(report.model_dump_json(indent=1) if as_json else statuses.render(report))

    if local:
        show(f"http://127.0.0.1:{prometheus_port}")
        return
    options = statuses.ssh_options(ssh_port, identity, known_hosts)
    with statuses.ssh_tunnel(f"{user}@{host}", prometheus_port, options) as url:
        show(url)
