"""`bcm-tools lnd`: LND's data tied to the LND version that ran on it (snapshots, rollback)."""

from __future__ import annotations

import os
from pathlib import Path

import click

from bcm_tools import lnd_rollback
from bcm_tools.errors import StartRefused, UsageError
from bcm_tools.lnd import Endpoint, Lnd


def _layout_options(f):  # type: ignore[no-untyped-def]
    f = click.option(
        "--snapshots-dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="Where the snapshots are. Default: DATA_DIR-snapshots.",
    )(f)
    f = click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        required=True,
        help="LND's data directory (bcm.lnd.dataDir).",
    )(f)
    return f


def _layout(data_dir: Path, snapshots_dir: Path | None) -> lnd_rollback.Layout:
    return lnd_rollback.Layout.of(data_dir, snapshots_dir)


@click.group()
def lnd() -> None:
    """LND's data and the LND version that ran on it: snapshots and rollback."""


@lnd.command("prepare-start")
@_layout_options
@click.option("--lnd", "lnd_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="The lnd binary about to start; its --version decides.")
@click.option("--keep", default=3, show_default=True, type=click.IntRange(min=1), help="Snapshots kept.")
@click.option("--reserve-mb", default=1024, show_default=True, type=click.IntRange(min=0),
              help="Space left free on the snapshots' file system after a plain copy, MB.")
@click.option("--refusal-file", type=click.Path(dir_okay=False, path_type=Path),
              help="Write a refusal here and exit 0, for the unit's start command to report (and fail with "
                   f"{lnd_rollback.EXIT_REFUSED}); without it a refusal exits {lnd_rollback.EXIT_REFUSED}.")
def prepare_start(data_dir: Path, snapshots_dir: Path | None, lnd_path: Path, keep: int, reserve_mb: int,
                  refusal_file: Path | None) -> None:
    """Before LND starts: snapshot its data when another version starts, refuse an older one."""
    decision = lnd_rollback.prepare_start(
        _layout(data_dir, snapshots_dir),
        lnd_rollback.installed_version(lnd_path),
        lnd_path=str(lnd_path),
        keep=keep,
        reserve=reserve_mb * 1_000_000,
        system=lnd_rollback.current_generation(),
    )
    for message in decision.messages:
        click.echo(message, err=True)
    if decision.refusal is not None:
        if refusal_file is None:
            raise StartRefused(decision.refusal)
        refusal_file.write_text(decision.refusal + "\n")


@lnd.command("record-state")
@_layout_options
@click.option("--lnd-rpc", default="127.0.0.1:10009", show_default=True, help="LND's gRPC host:port.")
@click.option("--lnd-tls-cert", required=True, type=click.Path(dir_okay=False, path_type=Path), help="LND's tls.cert.")
@click.option("--lnd-macaroon", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="A macaroon allowing GetInfo, ListChannels, PendingChannels, ClosedChannels, ListPayments "
                   "and ForwardingHistory.")
@click.option("--final", is_flag=True, help="The last record before LND stops (the unit's stop step).")
def record_state(data_dir: Path, snapshots_dir: Path | None, lnd_rpc: str, lnd_tls_cert: Path, lnd_macaroon: Path,
                 final: bool) -> None:
    """Record LND's channel state in its data directory, for a later rollback to judge."""
    with Lnd(Endpoint(rpc=lnd_rpc, tls_cert=lnd_tls_cert, macaroon=lnd_macaroon)) as node:
        state = node.channel_state()
    for note in lnd_rollback.record_state(_layout(data_dir, snapshots_dir).data_dir, state, final=final):
        click.echo(note, err=True)


@lnd.command()
@_layout_options
def snapshots(data_dir: Path, snapshots_dir: Path | None) -> None:
    """List the snapshots of LND's data, oldest first."""
    layout = _layout(data_dir, snapshots_dir)
    found = lnd_rollback.list_snapshots(layout)
    if not found:
        click.echo(f"no snapshots in {layout.snapshots_dir}")
    for meta in found:
        generation = f", generation {meta.system.generation}" if meta.system.generation is not None else ""
        click.echo(f"{meta.name}: LND {meta.version}'s data before {meta.next_version} started, "
                   f"taken {meta.taken:%Y-%m-%d %H:%M:%S} UTC ({meta.method}{generation})")


@lnd.command()
@_layout_options
@click.option("--snapshot", help="Snapshot to restore. Default: the one the last refusal to start named.")
@click.option("--unit", default="lnd.service", show_default=True, help="LND's systemd unit.")
@click.option("--force", is_flag=True,
              help="Restore even though the channels may have moved; asks for the node's alias.")
def rollback(data_dir: Path, snapshots_dir: Path | None, snapshot: str | None, unit: str, force: bool) -> None:
    """Stop LND, restore the snapshot of the version about to start, start LND (as root).

    Refuses when LND's records show, or cannot rule out, that the channels moved since the
    snapshot: restoring it could broadcast revoked state."""
    if os.geteuid() != 0:
        raise UsageError("bcm-tools lnd rollback runs as root: it stops and starts the LND unit and restores files of the lnd user")

    def confirm(alias: str, reasons: list[str]) -> str:
        click.echo("The channels may have moved since the snapshot:", err=True)
        for reason in reasons:
            click.echo(f"  {reason}", err=True)
        click.echo("Restoring it can broadcast revoked state and lose the channels' funds.", err=True)
        return str(click.prompt(f"Type the node's alias ({alias}) to restore anyway", default="", show_default=False, err=True))

    layout = _layout(data_dir, snapshots_dir)
    result = lnd_rollback.rollback(layout, lnd_rollback.Systemd(unit), snapshot=snapshot, force=force, confirm=confirm)
    meta = result.snapshot
    click.echo(f"restored {layout.snapshot(meta.name)} (LND {meta.version}'s data, taken {meta.taken:%Y-%m-%d %H:%M:%S} UTC) "
               f"into {layout.data_dir}{' (forced)' if result.forced else ''}")
    click.echo(f"the data it replaced is kept in {result.replaced}; remove it once LND {meta.version} runs well")
    click.echo(f"started {unit}")
