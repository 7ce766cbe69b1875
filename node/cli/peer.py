"""Exchanging events with the group's other nodes: live (``serve``), once (``sync``), on a
USB stick (``bundle``), and who they are (``peers``)."""

from __future__ import annotations

import asyncio
import datetime
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from eventlog.identity import write_private
from node.app import Node
from node.cli import render
from node.cli.common import json_option, print_json, with_node
from sync.bundle import export_bundle, import_bundle, read_vector_file, write_vector_file

if TYPE_CHECKING:
    from node.web.server import UiServer


@click.command()
@click.option(
    "--listen",
    default="0.0.0.0:7717",
    show_default=True,
    metavar="HOST:PORT",
    help="Where to accept other nodes.",
)
@click.option(
    "--peer",
    "peers",
    multiple=True,
    metavar="HOST:PORT",
    help="A node to keep in sync with (repeatable).",
)
@click.option(
    "--ui",
    "ui",
    default="127.0.0.1:7718",
    show_default=True,
    metavar="HOST:PORT",
    help="Where to show the web page. Another host than 127.0.0.1 prints a "
    "login link with a new access token (valid until serve stops).",
)
@click.option("--no-ui", is_flag=True, help="Do not show the web page.")
@click.option(
    "--no-discovery",
    is_flag=True,
    help="Neither advertise this node nor look for the group's nodes on the local network (mDNS).",
)
def serve(listen: str, peers: tuple[str, ...], ui: str, no_ui: bool, no_discovery: bool) -> None:
    """Run this node: accept peers, dial known ones, push and relay events live."""

    def say(line: str) -> None:
        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        render.echo(f"{stamp} {line}")

    async def run(node: Node) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signame in ("SIGINT", "SIGTERM"):
            loop.add_signal_handler(getattr(signal, signame), stop.set)
        page = None if no_ui else _web_server(node, ui, say)
        page_task = asyncio.create_task(page.serve()) if page is not None else None
        try:
            await node.serve(
                listen=listen, peers=peers, stop=stop, say=say, discover=not no_discovery
            )
        finally:
            if page is not None and page_task is not None:
                page.should_exit = True
                await page_task
        say("stopped")

    with_node(run)


LOGIN_FILE = "web-login.txt"
"""Where ``serve`` writes the web page's login link when standard output is no terminal."""


def _web_server(node: Node, address: str, say: Callable[[str], None]) -> UiServer:
    """The web page of ``serve --ui``, with an access token unless it is only on loopback."""
    from node.web import create_server, new_token
    from node.web.server import is_loopback, parse_address

    host, port = parse_address(address)
    token = None if is_loopback(host) else new_token()
    page = create_server(node, host, port, token=token, peer_vectors=node.peer_vectors)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    if token is None:
        say(f"web page on http://{shown}:{port}/")
    elif sys.stdout.isatty():
        say(
            f"web page on http://{shown}:{port}/ : log in once per device with "
            f"http://{shown}:{port}/?token={token}"
        )
    else:
        # standard output is a log a service manager keeps: the token stays out of it
        where = node.data_dir / LOGIN_FILE
        write_private(where, f"http://{shown}:{port}/?token={token}\n".encode())
        say(
            f"web page on http://{shown}:{port}/ : the login link (valid until serve "
            f"stops) is in {where}, readable by you only"
        )
    return page


@click.command("sync")
@click.argument("address", metavar="HOST:PORT")
@json_option
def sync_command(address: str, as_json: bool) -> None:
    """Catch up both ways with one node, then exit."""
    report = with_node(lambda node: node.sync_once(address))
    if as_json:
        print_json(report)
        return
    render.synced(report)


@click.command()
@json_option
def peers(as_json: bool) -> None:
    """Known and connected peers, when each was last seen, and how far behind."""
    rows = with_node(lambda node: node.peers())
    if as_json:
        print_json({"peers": rows})
        return
    render.peers(rows)


@click.group()
def bundle() -> None:
    """Carry the log on a USB stick when there is no network between two places."""


@bundle.command("export")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--since",
    "since_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="VECTOR_FILE",
    help="Only what the other node lacks (its 'potluck bundle have' file).",
)
@json_option
def bundle_export(file: Path, since_file: Path | None, as_json: bool) -> None:
    """Write this node's events (encrypted for the group) to FILE."""
    since = read_vector_file(since_file) if since_file else None
    info = with_node(lambda node: export_bundle(node.store, file, since=since))
    if as_json:
        print_json(
            {
                "file": str(file),
                "events": info.events,
                "bytes": info.bytes,
                "authors": info.authors,
                "evidence": info.evidence,
            }
        )
    else:
        render.bundle_exported(file, info)


@bundle.command("import")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@json_option
def bundle_import(file: Path, as_json: bool) -> None:
    """Add the events of a bundle FILE to this node (checked like any peer's)."""
    result = with_node(lambda node: import_bundle(node.store, file))
    if as_json:
        print_json(
            {
                "file": str(file),
                "stored": result.stored,
                "duplicates": result.duplicates,
                "held": result.held,
                "rejected": result.rejected,
                "reasons": result.reasons,
                "forks": [[a.hex(), seq] for a, seq in result.forks],
                "evidence": result.evidence,
            }
        )
        return
    render.bundle_imported(result)


@bundle.command("have")
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def bundle_have(file: Path) -> None:
    """Write what this node has (a vector file) for the other side's --since."""
    vector = with_node(lambda node: write_vector_file(node.store, file))
    render.echo(f"Wrote what this node has ({len(vector)} members' logs) to {file}.")


COMMANDS = (serve, sync_command, peers, bundle)
