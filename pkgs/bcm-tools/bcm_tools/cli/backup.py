"""`bcm-tools backup`: continuous encrypted LND channel backups, their verification and restore."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

from bcm_tools import backup as backups
from bcm_tools.lnd import Endpoint

if TYPE_CHECKING:
    from bcm_tools.devices.base import KeyDevice


def _lnd_options(f):  # type: ignore[no-untyped-def]
    f = click.option(
        "--lnd-macaroon",
        envvar="BCM_LND_MACAROON",
        type=click.Path(dir_okay=False, path_type=Path),
        required=True,
        help="Macaroon allowing the LND calls this command makes (docs/backups.md).",
    )(f)
    f = click.option(
        "--lnd-tls-cert",
        envvar="BCM_LND_TLS_CERT",
        type=click.Path(dir_okay=False, path_type=Path),
        required=True,
        help="LND's tls.cert.",
    )(f)
    f = click.option(
        "--lnd-rpc", envvar="BCM_LND_RPC", default="127.0.0.1:10009", show_default=True, help="LND's gRPC host:port."
    )(f)
    return f


def _endpoint(rpc: str, tls_cert: Path, macaroon: Path) -> Endpoint:
    return Endpoint(rpc=rpc, tls_cert=tls_cert, macaroon=macaroon)


def _decrypt_options(f):  # type: ignore[no-untyped-def]
    f = click.option(
        "--device",
        "device_spec",
        envvar="BCM_DEVICE",
        default=None,
        help="Decrypt with the operator's key derived on this device: `trezor` or `mnemonic:PATH`.",
    )(f)
    f = click.option(
        "-i",
        "--identity",
        "identities",
        multiple=True,
        type=click.Path(dir_okay=False, path_type=Path),
        help="age identity file to decrypt with (repeatable).",
    )(f)
    return f


@contextmanager
def _device(device_spec: str | None) -> Iterator[KeyDevice | None]:
    if device_spec is None:
        yield None
        return
    # The device code is only loaded when a device is asked for.
    from bcm_tools.cli.trezor import open_announced

    with open_announced(device_spec) as device:
        yield device


@click.group()
def backup() -> None:
    """Encrypted, verified copies of LND's static channel backup."""


@backup.command()
@_lnd_options
@click.option("-r", "--recipient", "recipients", multiple=True, required=True,
              help="age recipient (public key or file of them) to encrypt to; repeatable.")
@click.option("-t", "--target", "targets", multiple=True, required=True,
              help="/absolute/dir or ssh://[user@]host[:port]/absolute/dir; repeatable.")
@click.option("--keep", default=30, show_default=True, type=click.IntRange(min=1), help="Versions kept per target.")
@click.option("--ssh-identity", type=click.Path(dir_okay=False, path_type=Path), help="SSH key for ssh:// targets.")
@click.option("--ssh-known-hosts", type=click.Path(dir_okay=False, path_type=Path),
              help="known_hosts holding the ssh:// targets' host keys (checked strictly).")
@click.option("--metrics", type=click.Path(dir_okay=False, path_type=Path),
              help="Prometheus textfile to write (node-exporter textfile collector).")
@click.option("--journal", type=click.Path(dir_okay=False, path_type=Path),
              help="Append one JSON line per durable copy.")
@click.option("--check-identity", type=click.Path(dir_okay=False, path_type=Path),
              help="age identity kept on the node; each copy is also encrypted to it, read back, "
                   "decrypted and verified by LND.")
@click.option("--retry-max", default=60.0, show_default=True, help="Longest wait between retries of a failing target, s.")
def watch(lnd_rpc: str, lnd_tls_cert: Path, lnd_macaroon: Path, recipients: tuple[str, ...],
          targets: tuple[str, ...], keep: int, ssh_identity: Path | None, ssh_known_hosts: Path | None,
          metrics: Path | None, journal: Path | None, check_identity: Path | None, retry_max: float) -> None:
    """Back up on every channel change, to every target, until stopped.

    SIGTERM or SIGINT stops it cleanly: the copies in flight finish (or, after 10 s, are cut off
    whole), and it exits 0."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    config = backups.WatchConfig(
        recipients=list(recipients),
        targets=list(targets),
        keep=keep,
        ssh=backups.SshOptions(identity=ssh_identity, known_hosts=ssh_known_hosts),
        metrics=metrics,
        journal=journal,
        check_identity=check_identity,
        retry_max=retry_max,
    )
    watcher = backups.Watcher(config, _endpoint(lnd_rpc, lnd_tls_cert, lnd_macaroon))
    watcher.run(
        on_ready=lambda: click.echo(f"watching; targets: {', '.join(t.label for t in watcher.targets)}", err=True),
        stop_on=(signal.SIGTERM, signal.SIGINT),
    )


@backup.command()
@_lnd_options
@_decrypt_options
@click.argument("file", type=click.Path(path_type=Path))
def verify(lnd_rpc: str, lnd_tls_cert: Path, lnd_macaroon: Path, identities: tuple[Path, ...],
           device_spec: str | None, file: Path) -> None:
    """Decrypt FILE and have the running LND verify it."""
    with _device(device_spec) as device:
        check = backups.verify_file(file, identities, _endpoint(lnd_rpc, lnd_tls_cert, lnd_macaroon), device)
    click.echo(f"{file}: good backup of {len(check.chan_points)} channel(s) for node {check.node}")
    for point in check.chan_points:
        click.echo(f"  {point}")


@backup.command()
@_lnd_options
@_decrypt_options
@click.argument("file", type=click.Path(path_type=Path))
def restore(lnd_rpc: str, lnd_tls_cert: Path, lnd_macaroon: Path, identities: tuple[Path, ...],
            device_spec: str | None, file: Path) -> None:
    """Hand FILE to LND's channel recovery, after the wallet is restored from its seed.

    LND then asks each peer to force-close; the funds return on chain once those close."""
    with _device(device_spec) as device:
        check = backups.restore_file(file, identities, _endpoint(lnd_rpc, lnd_tls_cert, lnd_macaroon), device)
    click.echo(f"{file}: recovery started for {len(check.chan_points)} channel(s) on node {check.node}")
    for point in check.chan_points:
        click.echo(f"  {point}")
