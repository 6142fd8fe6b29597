"""`bcm-tools provision`: the spec's hosts as LXD instances."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from bcm_tools import provision as provisioning
from bcm_tools.errors import ProvisionError, UsageError
from bcm_tools.spec import load_spec

_SPINNER = "|/-\\"


class TerminalReporter:
    """Shows the plan as a table and each step as it runs: a spinner with LXD's progress on a
    terminal, plain lines otherwise."""

    def __init__(self) -> None:
        self.out = click.get_text_stream("stdout")
        self.tty = self.out.isatty()

    def line(self, text: str) -> None:
        click.echo(text, file=self.out)

    def plan(self, plans: list[provisioning.HostPlan]) -> None:
        rows = [row for plan in plans for row in plan.rows]
        if rows:
            header = ("HOST", "WHAT", "NOW", "SPEC", "ACTION")
            table = [header] + [(r.host, r.what, r.now, r.want, r.action.value) for r in rows]
            widths = [max(len(cells[i]) for cells in table) for i in range(len(header) - 1)]
            for cells in table:
                self.line("  ".join(cell.ljust(width) for cell, width in zip(cells, widths)) + "  " + cells[-1])
        for plan in plans:
            if not plan.rows and not plan.problems:
                self.line(f"{plan.host}: matches the spec on {plan.server.label}")

    @contextmanager
    def step(self, text: str) -> Iterator[provisioning.Progress]:
        start = time.monotonic()
        if self.tty:
            frame = 0

            def progress(detail: str) -> None:
                nonlocal frame
                shown = f"{_SPINNER[frame % len(_SPINNER)]} {text}" + (f": {detail}" if detail else "")
                self.out.write("\r\x1b[K" + shown)
                self.out.flush()
                frame += 1

            progress("")
            try:
                yield progress
            except BaseException:
                self.out.write(f"\r\x1b[Kfailed: {text}\n")
                self.out.flush()
                raise
            self.out.write(f"\r\x1b[Kdone: {text} ({time.monotonic() - start:.1f} s)\n")
            self.out.flush()
            return
        self.line(f"{text} ...")
        last = ""

        def plain(detail: str) -> None:
            nonlocal last
            if detail and detail != last:
                self.line(f"  {detail}")
                last = detail

        try:
            yield plain
        except BaseException:
            self.line(f"failed: {text}")
            raise
        self.line(f"done: {text} ({time.monotonic() - start:.1f} s)")


_SPEC = click.option("--spec", "spec_path", type=click.Path(path_type=Path, dir_okay=False), help="Cluster spec (TOML).")
_ACCEPT = click.option(
    "--accept-fingerprint",
    metavar="SHA256",
    help="Trust an https LXD server whose certificate has this SHA-256 fingerprint, where the spec pins none.",
)


@click.group("provision", invoke_without_command=True)
@_SPEC
@click.option("--host", "hosts", multiple=True, metavar="NAME", help="Provision only this host; repeatable. Default: every host with [hosts.lxd].")
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("--apply", "apply_drift", is_flag=True, help="Also change what differs from the spec (drift).")
@_ACCEPT
@click.pass_context
def provision(
    ctx: click.Context,
    spec_path: Path | None,
    hosts: tuple[str, ...],
    dry_run: bool,
    apply_drift: bool,
    accept_fingerprint: str | None,
) -> None:
    """Create the spec's hosts as LXD instances.

    Each host with a [hosts.lxd] table gets an instance with the spec's CPUs and memory as
    limits, its root disk on the fast pool and, for a local bulk disk, a volume on the bulk pool
    at the bulk mount point. What is missing is created; what differs is shown as a plan and
    changed only with --apply. `provision destroy HOST` removes a host's instance.
    """
    if ctx.invoked_subcommand is not None:
        if spec_path or hosts or dry_run or apply_drift or accept_fingerprint:
            raise UsageError(f"give the options of `provision {ctx.invoked_subcommand}` after its name")
        return
    if spec_path is None:
        raise UsageError("--spec is required")
    if dry_run and apply_drift:
        raise UsageError("--dry-run and --apply exclude each other")
    cluster_spec = load_spec(spec_path)
    mode = provisioning.Mode.dry_run if dry_run else provisioning.Mode.apply if apply_drift else provisioning.Mode.create
    reporter = TerminalReporter()
    outcome = provisioning.provision(cluster_spec, spec_path.parent, list(hosts), mode, reporter, accept_fingerprint)
    if mode is provisioning.Mode.dry_run:
        click.echo("dry run: nothing was changed")
    for host in outcome.created:
        click.echo(f"created: {host}")
    for host in outcome.changed:
        click.echo(f"changed: {host}")
    if outcome.unchanged and not outcome.created and not outcome.changed and not outcome.drift_left:
        click.echo(f"no changes: {', '.join(outcome.unchanged)} {'matches' if len(outcome.unchanged) == 1 else 'match'} the spec")
    if accept_fingerprint:
        click.echo(f"accepted the server certificate {accept_fingerprint}; pin it with fingerprint = \"{accept_fingerprint}\" in [hosts.lxd]")
    if outcome.drift_left:
        raise ProvisionError(
            [f"{host} differs from the spec (the changes above); nothing of that was changed" for host in outcome.drift_left],
            ["run again with --apply to make those changes"],
        )


@provision.command()
@click.argument("host", metavar="HOST")
@_SPEC
@click.option("--yes", is_flag=True, help="Confirm: the instance is deleted.")
@click.option("--delete-data", is_flag=True, help="Also delete the host's bulk volume, and the chain data on it.")
@_ACCEPT
def destroy(host: str, spec_path: Path | None, yes: bool, delete_data: bool, accept_fingerprint: str | None) -> None:
    """Delete HOST's instance. Its bulk volume, which holds the chain, is kept unless
    --delete-data is given too."""
    if spec_path is None:
        raise UsageError("--spec is required")
    if not yes:
        what = "its instance and its bulk volume with the chain data" if delete_data else "its instance (the bulk volume is kept)"
        raise UsageError(f"destroying {host} deletes {what}; pass --yes to confirm")
    cluster_spec = load_spec(spec_path)
    result = provisioning.destroy(cluster_spec, spec_path.parent, host, delete_data, TerminalReporter(), accept_fingerprint)
    if result.instance:
        click.echo(f"deleted: instance {result.instance}")
    else:
        click.echo(f"no instance {host} to delete")
    if result.volume_deleted:
        click.echo(f"deleted: volume {result.volume_deleted}")
    if result.volume_kept:
        click.echo(f"kept: volume {result.volume_kept} (chain data); `provision` attaches it again, --delete-data deletes it")
