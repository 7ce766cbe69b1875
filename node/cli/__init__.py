"""The ``potluck`` command: every action a volunteer takes, from a terminal.

Contract (docs/cli.md): a command that creates something prints its id alone on the last
line of stdout; ids are accepted back as any unique prefix of at least 6 hex characters;
``--json`` prints one JSON document with a documented schema; an error is one line on
stderr, the exit code is non-zero, and nothing is written (each write is one
transaction, taken only after every argument was checked).

This module holds the root group and ``main``; the commands live in one module per group
(membership, stock, board, roster, peer, upkeep), the shared plumbing in ``common`` and
everything printed for people in ``render``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import click

from eventlog.errors import InvalidBody, PotluckError, UsageError
from node.cli import board, membership, peer, render, roster, stock, upkeep
from node.cli.common import EXIT_FAILED, EXIT_USAGE

__all__ = ["cli", "main"]


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, no_args_is_help=True)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="POTLUCK_HOME",
    help="Where this node keeps its key and log (default: $POTLUCK_HOME or the "
    "user's data directory).",
)
@click.version_option(package_name="potluck")
def cli(data_dir: Path | None) -> None:
    """Potluck: offers, needs, stock and shifts for a mutual-aid network, offline-first."""


for _group in (membership, stock, board, roster, upkeep, peer):
    for _command in _group.COMMANDS:
        cli.add_command(_command)


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: errors become one line on stderr and a non-zero exit code."""
    try:
        cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="potluck",
            standalone_mode=False,
        )
    except click.exceptions.Abort:
        render.echo("potluck: interrupted", err=True)
        sys.exit(130)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        message = exc.format_message().replace("\n", " ")
        render.echo(f"potluck: {message}", err=True)
        sys.exit(exc.exit_code)
    except InvalidBody as exc:
        render.echo(
            f"potluck: {exc.field.replace('_', ' ')}: {str(exc).split(': ', 1)[1]}", err=True
        )
        sys.exit(EXIT_USAGE)
    except UsageError as exc:
        render.echo(f"potluck: {exc}", err=True)
        sys.exit(EXIT_USAGE)
    except PotluckError as exc:
        render.echo(f"potluck: {exc}", err=True)
        sys.exit(EXIT_FAILED)
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        render.echo(f"potluck: {exc.strerror or exc}{where}", err=True)
        sys.exit(EXIT_FAILED)
    except KeyboardInterrupt:
        render.echo("potluck: interrupted", err=True)
        sys.exit(130)
