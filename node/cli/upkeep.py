"""Looking after the log and the tables folded from it: ``log``, ``rebuild``, ``digest``,
``doctor``; and ``demo``, which builds two throwaway nodes to show what they do."""

from __future__ import annotations

import asyncio
import sys

import click

from node.app import Node
from node.cli import render
from node.cli.common import EXIT_FAILED, data_dir, json_option, jsonable, print_json, with_node
from projections import views
from projections.views import hlc_time


@click.command()
@json_option
@click.option("--type", "type_", default=None, help="Only events of this type.")
@click.option("--author", default=None, help="Only events by this member (name or key).")
def log(as_json: bool, type_: str | None, author: str | None) -> None:
    """The events in this node's log, in canonical order."""

    async def run(node: Node) -> list[dict[str, object]]:
        who = await node.resolve_member(author) if author else None
        names = dict(
            (bytes.fromhex(m["key"]), m["name"]) for m in await node.store.read(views.members)
        )
        return [
            {
                "id": e.hash.hex(),
                "author": e.author.hex(),
                "author_name": names.get(e.author),
                "seq": e.seq,
                "hlc": e.hlc,
                "time": hlc_time(e.hlc),
                "type": e.type,
                "body": jsonable(e.body),
            }
            async for e in node.iter_log(type_=type_, author=who)
        ]

    entries = with_node(run)
    if as_json:
        print_json({"events": entries})
        return
    render.log(entries)


@click.command()
@json_option
def rebuild(as_json: bool) -> None:
    """Fold every event again into fresh projections."""

    async def run(node: Node) -> tuple[int, str]:
        async with render.busy("Rebuilding the tables from the log"):
            count = await node.store.write(node.runner.rebuild)
        return count, await node.store.read(node.runner.digest)

    count, digest = with_node(run)
    if as_json:
        print_json({"events": count, "digest": digest})
    else:
        render.echo(f"Rebuilt projections from {count} events.")
        render.echo(digest)


@click.command("digest")
@json_option
def digest_command(as_json: bool) -> None:
    """The projection digest: equal on every node holding the same events."""
    value = with_node(lambda node: node.store.read(node.runner.digest))
    print_json({"digest": value}) if as_json else render.echo(value)


@click.command()
@click.option(
    "--repair",
    "fix",
    is_flag=True,
    help="Rebuild projections, set aside events that do not verify, salvage a "
    "damaged file into a fresh one (stop 'potluck serve' first).",
)
@json_option
def doctor(fix: bool, as_json: bool) -> None:
    """Check the database in plain words; exit 1 while problems remain."""
    from node import doctor as checkup  # the node is not opened: it may be damaged

    check = checkup.repair if fix else checkup.examine

    async def run() -> checkup.Report:
        async with render.busy("Repairing" if fix else "Checking the database"):
            return await check(data_dir())

    report = asyncio.run(run())
    if as_json:
        print_json(report.to_json())
    else:
        for line in checkup.render(report, repaired=fix):
            render.echo(line)
    if not report.healthy:
        sys.exit(EXIT_FAILED)


@click.command()
@json_option
def demo(as_json: bool) -> None:
    """Two volunteers, an outage and the last 10 cans: see a conflict shown, not lost.

    Creates two nodes (ana/ and bo/) under --data-dir, makes them disagree offline,
    syncs them over 127.0.0.1 and prints what both now show.
    """
    from node.demo import run_demo

    lines: list[str] = []
    say = lines.append if as_json else render.echo
    report = asyncio.run(run_demo(data_dir(), say))
    if as_json:
        print_json({**report, "story": lines})
    else:
        render.echo(f"Look around: potluck --data-dir {report['nodes'][0]} board")  # type: ignore[index]


COMMANDS = (log, rebuild, digest_command, doctor, demo)
