"""What every command shares, so that each keeps the contract of docs/cli.md the same way.

One node per command (the one of ``--data-dir``), opened and closed around one action; one
transaction per write; a created thing's id alone on the last line; ``--json`` as one document.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

import click

from eventlog import body as b
from eventlog.errors import UsageError
from node.app import Node, default_data_dir
from node.cli import phrase, render
from projections import views

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
        node = await Node.open(data_dir(), render.busy)
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


Describe = Callable[[sqlite3.Connection, b.BaseBody], str]
"""Words for what a written body did, read from the projections right after it."""


def act(
    build: b.BaseBody | Callable[[Node], Awaitable[b.BaseBody]], describe: Describe
) -> tuple[str, str]:
    """Append a body (or build one, resolving what it names, then append it) and describe
    what it did in the words of ``phrase``: (the new event's id, the sentence)."""

    async def run(node: Node) -> tuple[str, str]:
        body = build if isinstance(build, b.BaseBody) else await build(node)
        envelope = await node.post(body)
        text = await node.store.read(lambda db: describe(db, body))
        return envelope.hash.hex(), text

    return with_node(run)


def act_on(
    build: Callable[[bytes], b.BaseBody], prefix: str, types: Sequence[str], describe: Describe
) -> tuple[str, str]:
    """``act`` on the entity whose id starts with ``prefix``."""

    async def resolved(node: Node) -> b.BaseBody:
        return build(await node.resolve(prefix, types))

    return act(resolved, describe)


def define(
    what: str,
    slug: str,
    given: dict[str, object | None],
    defaults: dict[str, object],
    make: Callable[[dict[str, object]], b.BaseBody],
) -> str:
    """Define an item, location or role, or change a defined one (issue 19, item 10):
    a field left out (None in ``given``) keeps its current value, else takes its
    default, else is asked for. Returns the sentence saying which it was."""
    table = what + "s"

    async def run(node: Node) -> tuple[phrase.Row | None, dict[str, object]]:
        before = await node.store.read(lambda db: phrase.definition(db, table, slug))
        fields: dict[str, object] = {}
        for key, value in given.items():
            if value is not None:
                fields[key] = value
            elif before is not None and before.get(key) is not None:
                fields[key] = before[key]
            elif key in defaults:
                fields[key] = defaults[key]
            else:
                option = "--" + key.replace("_", "-")
                raise UsageError(f"a new {what} needs {option} (there is no {what} '{slug}' yet)")
        await node.post(make(fields))
        return before, fields

    before, fields = with_node(run)
    if before is None:
        return f"New {what} {slug}: {_fields_text(fields)}."
    changed = [k for k in fields if fields[k] != before.get(k)]
    kept = [k for k in fields if k not in changed]
    if not changed:
        return f"The {what} {slug} was already defined so: nothing changed."
    return (
        f"Changed the existing {what} {slug}: "
        + ", ".join(_change_text(k, before.get(k), fields[k]) for k in changed)
        + (f"; kept its {', '.join(_label(k) for k in kept)}" if kept else "")
        + "."
    )


def _label(key: str) -> str:
    return key.replace("_", " ")


def _value_text(key: str, value: object) -> str:
    if key == "description":
        return "(none)" if not value else f"{len(str(value))} characters"
    if isinstance(value, float):
        return f"{value:g}"
    return f'"{value}"' if key == "name" else str(value)


def _change_text(key: str, old: object, new: object) -> str:
    return f"{_label(key)} {_value_text(key, old)} -> {_value_text(key, new)}"


def _fields_text(fields: dict[str, object]) -> str:
    return ", ".join(
        f"{_label(k)} {_value_text(k, v)}" for k, v in fields.items() if k != "description"
    )


Report = dict[str, list[dict[str, object]]]


def show(
    view: Callable[[sqlite3.Connection], Report],
    draw: Callable[[Report, phrase.Names], None],
    as_json: bool,
) -> None:
    """Print one of the read models: ``view``'s document as JSON, or drawn by ``draw``
    with the names of the slugs it holds, both read in one transaction."""
    data, names = with_node(lambda node: node.store.read(views.together(view, phrase.names)))
    if as_json:
        print_json(data)
        return
    draw(data, names)
