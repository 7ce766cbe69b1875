"""Who this node is and how people join its group: ``init``, ``invite``, ``whoami``."""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import click
import segno

from eventlog.errors import UsageError
from eventlog.identity import Group, write_private
from node.app import Node
from node.cli import render
from node.cli.common import data_dir, json_option, print_json, with_node
from projections import views
from sync.invite import invite_length


@click.command()
@click.option("--name", required=True, help="Your name, as others will see it.")
@click.option("--new-group", "group_name", default=None, help="Start a new group with this name.")
@click.option(
    "--join",
    "code",
    default=None,
    metavar="CODE",
    help="Join the group of an invite code (from 'potluck invite').",
)
@json_option
def init(name: str, group_name: str | None, code: str | None, as_json: bool) -> None:
    """Create this node: start a new group, or join one with an invite code."""
    if (group_name is None) == (code is None):
        raise click.UsageError("give either --new-group NAME or --join CODE")

    async def run() -> dict[str, str]:
        if code is not None:
            node = await Node.join(data_dir(), name, code)
        else:
            assert group_name is not None
            node = await Node.init(data_dir(), name, Group.new(group_name))
        try:
            return {
                "name": name,
                "key": node.author.hex(),
                "group": node.group.name,
                "group_id": node.group.id.hex(),
                "data_dir": str(node.data_dir),
            }
        finally:
            await node.close()

    info = asyncio.run(run())
    if as_json:
        print_json(info)
        return
    if code is not None:
        render.echo(
            f"Joined group '{info['group']}' as {name}. Run 'potluck serve' to catch "
            "up with the group (it dials the addresses in the invite)."
        )
    else:
        render.echo(f"Created group '{info['group']}' with you, {name}, as its first member.")
    render.echo(f"Your node lives in {info['data_dir']}.")
    render.echo(info["key"])


@click.command()
@click.option(
    "--address",
    "addresses",
    multiple=True,
    metavar="HOST:PORT",
    help="Where others can reach this node (default: this machine's addresses "
    "and the port 'potluck serve' listens on).",
)
@click.option(
    "--expires-in",
    "expires_in",
    default=None,
    metavar="DURATION",
    help="Stop the code working after this long: 30m, 12h, 7d.",
)
@click.option("--qr", is_flag=True, help="Also print the code as a QR code.")
@click.option(
    "--qr-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the QR code as an image (.png or .svg).",
)
@json_option
def invite(
    addresses: tuple[str, ...],
    expires_in: str | None,
    qr: bool,
    qr_file: Path | None,
    as_json: bool,
) -> None:
    """Print an invite code for a new neighbour (it holds the group's secret)."""
    valid_for = _duration(expires_in) if expires_in else None
    code = with_node(lambda node: node.invite(addresses, valid_for=valid_for))
    symbol = segno.make(code.upper(), error="m") if (qr or qr_file) else None
    if symbol is not None and qr_file is not None:
        # the picture holds the group secret: written 0600, like the key files
        picture = io.BytesIO()
        kind = qr_file.suffix.lstrip(".").lower() or "png"
        try:
            symbol.save(picture, kind=kind, scale=8, border=4)
        except ValueError:
            raise UsageError(
                f"cannot write a QR code as '.{kind}': name the file .png or .svg"
            ) from None
        try:
            write_private(qr_file, picture.getvalue())
        except OSError as exc:
            raise UsageError(f"cannot write {qr_file}: {exc.strerror or exc}") from None
    if as_json:
        print_json(
            {
                "code": code,
                "length": invite_length(code),
                "expires_in_seconds": valid_for,
                "qr_file": str(qr_file) if qr_file else None,
            }
        )
        return
    render.echo(
        "Anyone with this code can join the group and read everything in it: share it in person."
    )
    if symbol is not None and qr:
        symbol.terminal(compact=True)
    render.echo(code)


def _duration(text: str) -> float:
    """Seconds in a duration like 30m, 12h or 7d (the value of ``--expires-in``)."""
    units = {"m": 60, "h": 3600, "d": 86400}
    try:
        value = float(text[:-1])
        unit = units[text[-1]]
    except (KeyError, ValueError, IndexError):
        raise click.BadParameter(
            f"'{text}' is not a duration like 30m, 12h or 7d", param_hint="--expires-in"
        ) from None
    if value <= 0:
        raise click.BadParameter("must be positive", param_hint="--expires-in")
    return value * unit


@click.command()
@json_option
def whoami(as_json: bool) -> None:
    """Who this node is, and in which group."""

    async def run(node: Node) -> dict[str, object]:
        members = await node.store.read(views.members)
        me = next((m for m in members if m["key"] == node.author.hex()), None)
        return {
            "name": me["name"] if me else None,
            "key": node.author.hex(),
            "group": node.group.name,
            "group_id": node.group.id.hex(),
            "members": len(members),
            "events": await node.store.count(),
            "data_dir": str(node.data_dir),
            "forks": await node.forks(),
        }

    info = with_node(run)
    if as_json:
        print_json(info)
        return
    render.whoami(info)


COMMANDS = (init, invite, whoami)
