"""`bcm-tools secrets`: operator secrets in secrets/*.age, for the hosts and the operator's device."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from bcm_tools.cli.trezor import device_option, open_announced

repo_option = click.option(
    "--repo",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=".",
    show_default=True,
    help="The bcm repository (holds secrets/ and hosts/).",
)


@click.group()
def secrets() -> None:
    """Encrypted operator secrets: readable by each host's SSH host key and by your Trezor."""


@secrets.command()
@repo_option
@device_option
def init(repo: Path, device_spec: str) -> None:
    """Derive your operator recipient on the device and write secrets/operator.pub."""
    from bcm_tools.secrets import SecretsRepo, init_operator

    with open_announced(device_spec) as device:
        recipient = init_operator(SecretsRepo(repo), device)
    click.echo(recipient)


@secrets.command()
@click.argument("name")
@click.option("--input", "input_path", type=click.Path(exists=True, dir_okay=False, allow_dash=True), default="-", show_default=True, help="Plaintext to encrypt ('-' for standard input).")
@repo_option
def encrypt(name: str, input_path: str, repo: Path) -> None:
    """Encrypt plaintext into secrets/NAME.age (no device needed: only public keys are used)."""
    from bcm_tools.secrets import SecretsRepo, encrypt_secret

    data = sys.stdin.buffer.read() if input_path == "-" else Path(input_path).read_bytes()
    click.echo(encrypt_secret(SecretsRepo(repo), name, data))


@secrets.command()
@click.argument("name")
@click.option("--output", type=click.Path(dir_okay=False, allow_dash=True), default="-", show_default=True, help="Where to write the plaintext ('-' for standard output).")
@repo_option
@device_option
def decrypt(name: str, output: str, repo: Path, device_spec: str) -> None:
    """Decrypt secrets/NAME.age with the operator key (a button press on the Trezor)."""
    from bcm_tools.secrets import SecretsRepo, decrypt_secret, write_private

    with open_announced(device_spec) as device:
        plaintext = decrypt_secret(SecretsRepo(repo), name, device)
    if output == "-":
        sys.stdout.buffer.write(plaintext)
        sys.stdout.buffer.flush()
    else:
        write_private(Path(output), plaintext)


@secrets.command()
@click.argument("name")
@repo_option
@device_option
def edit(name: str, repo: Path, device_spec: str) -> None:
    """Edit secrets/NAME.age in $EDITOR (creating it if new); re-encrypt if it changed."""
    from bcm_tools.secrets import SecretsRepo, edit_secret

    with open_announced(device_spec) as device:
        changed = edit_secret(SecretsRepo(repo), name, device)
    click.echo(f"secrets/{name.removesuffix('.age')}.age {'updated' if changed else 'unchanged'}")


@secrets.command()
@click.argument("names", nargs=-1)
@repo_option
@device_option
def rekey(names: tuple[str, ...], repo: Path, device_spec: str) -> None:
    """Re-encrypt secrets (default: all) to the current operator and host keys."""
    from bcm_tools.secrets import SecretsRepo, rekey as rekey_secrets

    with open_announced(device_spec) as device:
        paths = rekey_secrets(SecretsRepo(repo), device, list(names) or None)
    for path in paths:
        click.echo(path)
