"""Every command says what it does in ``--help`` (the claim and shift steps had no help
text: their docstrings were set after click had read them)."""

from __future__ import annotations

from collections.abc import Iterator

import click

from node.cli import cli


def commands(group: click.Group, path: str = "potluck") -> Iterator[tuple[str, click.Command]]:
    for name, command in group.commands.items():
        yield f"{path} {name}", command
        if isinstance(command, click.Group):
            yield from commands(command, f"{path} {name}")


def test_every_command_has_help_text() -> None:
    silent = [path for path, command in commands(cli) if not (command.help or "").strip()]
    assert silent == []
