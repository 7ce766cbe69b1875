"""What every command shares, so that each keeps the contract of docs/cli.md the same way.

One node per command (the one of ``--data-dir``), opened and closed around one action; one
transaction per write; a created thing's id alone on the last line; ``--json`` as one document.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import click

from eventlog import body as b
from node.app import Node, default_data_dir
from node.cli import render

T = TypeVar("T")
EXIT_USAGE = 2
EXIT_FAILED = 1

json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")


def data_dir() -> Path:
    """The root command's ``--data-dir`` (or $POTLUCK_HOME), else the user's data directory."""
    ctx = click.get_current_context()
    root = ctx.find_root()
    value = root.params.get("data_dir")
    return Path(value) if value else default_data_dir()


def with_node(action: Callable[[Node], Awaitable[T]]) -> T:
    """Open the node of ``--data-dir``, run ``action``, close it."""

    async def run() -> T:
        node = await Node.open(data_dir())
        try:
            return await action(node)
        finally:
            await node.close()

    return asyncio.run(run())


def print_json(data: object) -> None:
    render.echo(render.json_text(data))


def jsonable(value: object) -> object:
    """``value`` with every ``bytes`` inside it as hex, so that it can be printed as JSON."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [jsonable(v) for v in value]
    return value


def created(what: str, id_: str, summary: str, as_json: bool) -> None:
    """Report a created thing: its summary then its id alone on the last line, or JSON."""
    if as_json:
        print_json({"id": id_, "type": what})
        return
    render.echo(summary)
    render.echo(id_)


def post(body: b.BaseBody) -> str:
    """Append ``body`` as this node's next event; return the new event's id (hex)."""

    async def run(node: Node) -> str:
        return (await node.post(body)).hash.hex()

    return with_node(run)


def post_ref(build: Callable[[bytes], b.BaseBody], prefix: str, types: Sequence[str]) -> str:
    """Resolve ``prefix`` to an entity id, build the body with it and append it."""

    async def run(node: Node) -> str:
        target = await node.resolve(prefix, types)
        return (await node.post(build(target))).hash.hex()

    return with_node(run)
