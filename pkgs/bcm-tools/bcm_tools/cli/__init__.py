"""The `bcm-tools` command line.

Each subcommand lives in a module of this package and does three things: parse
its arguments, call one domain function, render the result. Errors from the
library are converted here, once, into a message and an exit code.
"""

from __future__ import annotations

import sys

import click

from bcm_tools.errors import BcmError
from bcm_tools.cli import gen_host, spec
from bcm_tools.cli import backup


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="bcm-tools")
def cli() -> None:
    """Bitcoin Cache Machine: declarative, private Bitcoin, Lightning and Monero nodes on NixOS."""


cli.add_command(spec.spec)
cli.add_command(gen_host.gen_host)
cli.add_command(backup.backup)


def main() -> None:
    try:
        cli.main(standalone_mode=False)
    except BcmError as err:
        for line in err.lines():
            click.echo(f"error: {line}" if not line.startswith("  ") else line, err=True)
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
