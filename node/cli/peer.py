"""Exchanging events with the group's other nodes: live (``serve``), once (``sync``), on a
USB stick (``bundle``), and who they are (``peers``)."""

from __future__ import annotations

import asyncio
import datetime
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from eventlog.identity import write_private
from node.app import Node
from node.cli import change, render
from node.cli.common import json_option, print_json, with_node
from node.port import TRIES, bind
from sync.bundle import (
    ImportResult,
    export_bundle,
    import_bundle,
    read_vector_file,
    write_vector_file,
)

if TYPE_CHECKING:
    from node.web.server import UiServer
    from sync.transport import Session


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
    """Run this node: accept peers, dial known ones, push and relay events live.

    A web page port that is taken gives way to the next free one, and so does the sync
    port unless --listen was given (others may dial that one by number)."""
    source = click.get_current_context().get_parameter_source("listen")
    listen_given = source is not click.core.ParameterSource.DEFAULT

    def say(line: str) -> None:
        stamp = datetime.datetime.now().strftime("%H:%M:%S")
        render.echo(f"{stamp} {line}")

    async def run(node: Node) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signame in ("SIGINT", "SIGTERM"):
            loop.add_signal_handler(getattr(signal, signame), stop.set)
        page, sock = (None, None) if no_ui else _web_server(node, ui, say)
        page_task = (
            asyncio.create_task(page.serve(sockets=[sock]))
            if page is not None and sock is not None
            else None
        )
        try:
            await node.serve(
                listen=listen,
                peers=peers,
                stop=stop,
                say=say,
                discover=not no_discovery,
                listen_tries=1 if listen_given else TRIES,
            )
        finally:
            if page is not None and page_task is not None:
                page.should_exit = True
                await page_task
        say("stopped")

    with_node(run)


LOGIN_FILE = "web-login.txt"
"""Where ``serve`` writes the web page's login link when standard output is no terminal."""


def _web_server(
    node: Node, address: str, say: Callable[[str], None]
) -> tuple[UiServer, socket.socket]:
    """The web page of ``serve --ui``, with an access token unless it is only on
    loopback, and the socket it listens on: the asked port or the next free one."""
    from node.web import create_server, new_token
    from node.web.server import is_loopback, parse_address

    host, asked = parse_address(address)
    token = None if is_loopback(host) else new_token()
    page = create_server(node, host, asked, token=token, peer_vectors=node.peer_vectors)
    sock = bind(host, asked)
    port = sock.getsockname()[1]
    if port != asked and asked:
        say(f"port {asked} is taken (another node's web page?): using {port}")
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
    return page, sock


@click.command("sync")
@click.argument("address", metavar="HOST:PORT")
@json_option
def sync_command(address: str, as_json: bool) -> None:
    """Catch up both ways with one node, then exit; say what changed on the board."""

    async def run(node: Node) -> dict[str, object]:
        before = await node.store.read(lambda db: change.snapshot(db, node.author))
        sessions: list[Session] = []

        def moved() -> tuple[int, int | None]:
            stats = sessions[0].stats if sessions else None
            return (stats.events_in + stats.events_out, None) if stats else (0, None)

        async with render.busy(f"Syncing with {address}", moved):
            report = await node.sync_once(address, on_session=sessions.append)
        after = await node.store.read(lambda db: change.snapshot(db, node.author))
        return {**report, "changes": change.compare(before, after)}

    report = with_node(run)
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

    async def run(node: Node) -> ImportResult:
        async with render.busy(f"Importing {file.name}"):
            return await import_bundle(node.store, file)

    result = with_node(run)
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
