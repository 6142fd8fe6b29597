"""`bcm-tools spec ...`: checking a cluster spec and showing its capacity plan."""

from __future__ import annotations

from pathlib import Path

import click

from bcm_tools.sizing import SIZES_TAKEN, HostPlan, plan_host
from bcm_tools.spec import load_spec


@click.group()
def spec() -> None:
    """Work with a cluster spec."""


@spec.command()
@click.argument("spec_path", metavar="SPEC", type=click.Path(path_type=Path, dir_okay=False))
def validate(spec_path: Path) -> None:
    """Validate SPEC and print each host's capacity plan."""
    cluster_spec = load_spec(spec_path)
    network = cluster_spec.cluster.network
    click.echo(f"{spec_path}: valid; cluster {cluster_spec.cluster.name!r} on {network.value}, {len(cluster_spec.hosts)} host(s)")
    click.echo(f"needs are planning estimates taken {SIZES_TAKEN}; see the README's sizing table")
    for host in cluster_spec.hosts:
        click.echo("")
        click.echo(render_plan(plan_host(network, host), host.mount_point))


def _row(service: str, what: str, amount: str) -> str:
    return f"    {service:<9} {what:<36} {amount:>10}"


def _headroom(headroom: float, size: float, unit: str) -> str:
    share = 100 * headroom / size if size else 0
    return f"headroom {headroom:g} {unit} ({share:.0f}%)"


def render_plan(plan: HostPlan, mount_point) -> str:
    lines = [f"host {plan.host}"]
    for tier in plan.tiers:
        if tier.size_gb is None and not tier.needs:
            continue
        lines.append(f"  {tier.tier.value} storage at {mount_point(tier.tier)}")
        lines += [_row(n.service, n.what, f"{n.amount:g} GB") for n in tier.needs] or ["    (nothing placed here)"]
        lines.append(_row("total", "", f"{tier.total:g} GB"))
        lines.append(f"    has {tier.size_gb} GB, {_headroom(tier.headroom, tier.size_gb, 'GB')}")
    memory = plan.memory
    lines.append("  memory")
    lines += [_row(n.service, n.what, f"{n.amount:g} MB") for n in memory.needs]
    lines.append(_row("total", "", f"{memory.total} MB"))
    lines.append(f"    has {memory.memory_mb} MB, {_headroom(memory.headroom, memory.memory_mb, 'MB')}")
    return "\n".join(lines)
