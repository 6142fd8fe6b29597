"""The `bcm-tools` command line.

Each subcommand lives in a module of this package and does three things: parse
its arguments, call one domain function, render the result. Errors from the
library are converted here, once, into a message and an exit code.
"""

from __future__ import annotations

import importlib
import sys

import click

from bcm_tools.errors import BcmError

# name -> "module:attribute". A subcommand's module is imported only when that subcommand runs,
# so `gen-host` never pays for loading gRPC or a hardware-wallet library.
COMMANDS = {
    "spec": "bcm_tools.cli.spec:spec",
    "gen-host": "bcm_tools.cli.gen_host:gen_host",
    "backup": "bcm_tools.cli.backup:backup",
    "lnd": "bcm_tools.cli.lnd:lnd",
    "trezor": "bcm_tools.cli.trezor:trezor",
    "secrets": "bcm_tools.cli.secrets:secrets",
    "provision": "bcm_tools.cli.provision:provision",
    "events": "bcm_tools.cli.events:events",
    "exporter": "bcm_tools.cli.exporter:exporter",
    "status": "bcm_tools.cli.status:status",
    "connect": "bcm_tools.cli.connect:connect",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMANDS) | set(self.commands))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return super().get_command(ctx, name)
        module, attribute = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attribute)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bcm-tools")
def cli() -> None:
    """Bitcoin Cache Machine: declarative, private Bitcoin, Lightning and Monero nodes on NixOS."""


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except BcmError as err:
        for line in err.lines():
            click.echo(f"error: {line}" if not line.startswith("  ") else line, err=True)
        for note in err.notes():
            click.echo(f"note: {note}", err=True)
        sys.exit(err.exit_code)
    except click.exceptions.Abort:
        click.echo("error: aborted", err=True)
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except click.exceptions.Exit as exit_:
        sys.exit(exit_.exit_code)
    except KeyboardInterrupt:
        click.echo("error: interrupted", err=True)
        sys.exit(130)
