"""The composition root: one running node = identity + store + projections (+ sync later).

Why here: ``sync`` and ``projections`` may not import each other (docs/architecture.md
§dependency-rule); this module is where they meet. Commands of the CLI and pages of the
web UI call ``Node`` and nothing below it.

Writing: ``Node.post(body)`` validates the typed body, checks what only this node can
check (the referenced item exists, the person confirming is the holder), then appends.
The event is durable when ``post`` returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Protocol

import click
import ifaddr
from nacl.signing import SigningKey

from eventlog import body as b
from eventlog import gc_tuning
from eventlog.errors import UsageError
from eventlog.events import Envelope
from eventlog.identity import (
    Group,
    load_device_key,
    load_group,
    save_device_key,
    save_group,
    tighten,
)
from eventlog.store import Store
from node.port import first_free
from projections import projector, views
from projections.board import ALLOWED_FROM
from projections.runner import Runner
from sync import invite
from sync.discovery import Discovery, interfaces_for
from sync.errors import RemoteError
from sync.peers import PeerManager
from sync.protocol import State
from sync.transport import DialError, Session, connect_session, parse_address

DEFAULT_PORT = 7717

LOG_FILE = "log.db"
log = logging.getLogger(__name__)


def default_data_dir() -> Path:
    """POTLUCK_HOME, else the platform's per-user data directory.

    Linux and BSD: $XDG_DATA_HOME/potluck or ~/.local/share/potluck; macOS and
    Windows: click's per-user application directory (Application Support, %APPDATA%).
    """
    env = os.environ.get("POTLUCK_HOME")
    if env:
        return Path(env)
    if sys.platform.startswith(("linux", "freebsd", "openbsd", "netbsd")):
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(base) / "potluck"
    return Path(click.get_app_dir("potluck"))


class Node:
    """A participant's node, opened on a data directory."""

    def __init__(self, data_dir: Path, key: SigningKey, store: Store, runner: Runner) -> None:
        self.data_dir = data_dir
        self.key = key
        self.author = bytes(key.verify_key)
        self.store = store
        self.runner = runner
        self.peer_manager: PeerManager | None = None  # while serve() runs
        self._projector: projector.Projector | None = None  # inside folding_behind()
        self._folding_behind = 0
        store.on_change(self._wake_projector)

    @property
    def group(self) -> Group:
        return self.store.group

    @classmethod
    async def open(cls, data_dir: Path, busy: Busy | None = None) -> Node:
        """Open the node of ``data_dir``; ``busy`` shows the progress of a long rebuild
        or catch-up on the way (the CLI's progress bar)."""
        key = load_device_key(data_dir)
        group = load_group(data_dir)
        loose = tighten(data_dir)  # before the log is opened: it holds the group's events
        if loose:
            log.info("made readable by this user only: %s", ", ".join(loose))
        return await cls._start(data_dir, key, group, busy or quiet)

    @classmethod
    async def _start(
        cls, data_dir: Path, key: SigningKey, group: Group, busy: Busy | None = None
    ) -> Node:
        busy = busy or quiet
        gc_tuning.tune()
        store = await Store.open(data_dir / LOG_FILE, group)
        runner = Runner()
        runner.attach(store)  # before any write: its before_commit saves what folds wrote
        try:
            if not await store.read(runner.ready):
                stale = await store.write(runner.setup)
                if stale:
                    async with busy("Rebuilding the tables after an upgrade"):
                        await store.write(runner.rebuild)
            await _catch_up(store, runner, busy)  # stopped while a projector was behind
        except BaseException:
            await store.close()
            raise
        return cls(data_dir, key, store, runner)

    @classmethod
    async def init(cls, data_dir: Path, name: str, group: Group) -> Node:
        """Create a node in an empty ``data_dir`` and append its ``member.joined``."""
        if (data_dir / LOG_FILE).exists() or (data_dir / "device.key").exists():
            raise UsageError(f"{data_dir} already holds a Potluck node")
        joined = b.MemberJoined(name=name, proof=bytes(32))  # validates the name first
        try:
            if not data_dir.exists():
                data_dir.mkdir(parents=True, mode=0o700)
            elif not data_dir.is_dir():
                raise UsageError(f"{data_dir} is a file, not a directory")
        except OSError as exc:
            raise UsageError(f"cannot create {data_dir}: {exc.strerror or exc}") from None
        key = SigningKey.generate()
        save_device_key(data_dir, key)
        save_group(data_dir, group)
        node = await cls._start(data_dir, key, group)
        first = node.store.first_event_body(joined.name, node.author)
        await node.store.append(key, [("member.joined", first)])
        return node

    async def close(self) -> None:
        await self._stop_projector()
        await self.store.close()

    @contextlib.asynccontextmanager
    async def folding_behind(self) -> AsyncIterator[None]:
        """While inside, a second process folds what large receives store
        (projections/projector.py, decision 0012); on the way out it stops and this
        process folds whatever it left, so the projections match the log again."""
        self._folding_behind += 1
        if self._folding_behind == 1:
            self.store.fold_behind(self._projector_ready)
        try:
            yield
        finally:
            self._folding_behind -= 1
            if self._folding_behind == 0:
                await self._stop_projector()
                await self.catch_up()

    def _projector_ready(self) -> bool:
        """The store's question before a large receive: the first one starts the
        projector, and receives fold in place until it is up (a short sync ends
        before it would be). One that died is not started again here."""
        if self._projector is None:
            self._projector = projector.Projector(self.data_dir / LOG_FILE)
        return self._projector.alive and self._projector.ready()

    async def _stop_projector(self) -> None:
        """Detach it here, on the event loop (so no wake-up reaches a closed pipe), then
        wait off the loop while it finishes its transaction."""
        self.store.fold_behind(None)
        running, self._projector = self._projector, None
        if running is not None:
            await asyncio.to_thread(running.close)

    def _wake_projector(self) -> None:
        if self._projector is not None:
            self._projector.wake()

    async def catch_up(self, busy: Busy | None = None) -> int:
        """Fold here what the log holds beyond the projections; how many events."""
        return await _catch_up(self.store, self.runner, busy)

    # -- writing -------------------------------------------------------------------

    async def post(self, body: b.BaseBody) -> Envelope:
        """Check ``body`` against what this node knows, then append it durably."""
        await self._check_references(body)
        [envelope] = await self.store.append(self.key, [body])
        return envelope

    async def _check_references(self, body: b.BaseBody) -> None:
        known = await self.store.read(lambda db: views.known_slugs(db))
        for field, kind in (("item", "items"), ("location", "locations"), ("role", "roles")):
            slug = getattr(body, field, None)
            defines = isinstance(body, (b.ItemDefined, b.LocationDefined, b.RoleDefined))
            if isinstance(slug, str) and not defines and slug not in known[kind]:
                raise UsageError(
                    f"unknown {field} '{slug}': add it first with 'potluck {field} add'"
                )
        if isinstance(body, b.ClaimMade):
            await self._check_claimable(body)
        elif isinstance(body, b.ClaimStep):
            await self._check_claim_step(body)
        elif isinstance(body, (b.OfferWithdrawn, b.NeedWithdrawn)):
            target = body.offer if isinstance(body, b.OfferWithdrawn) else body.need
            entry = await self.store.read(lambda db: views.board_entry(db, target))
            if entry is None:
                raise UsageError("that offer or need is not on this node's board")
            if entry["author"] != self.author:
                raise UsageError(f"only the person who posted the {entry['kind']} can withdraw it")

    async def _check_claimable(self, body: b.ClaimMade) -> None:
        entry = await self.store.read(lambda db: views.board_entry(db, body.target))
        if entry is None:
            raise UsageError("that offer or need is not on this node's board")
        if entry["status"] != "open":
            raise UsageError(f"that {entry['kind']} was {entry['status']}")  # withdrawn, met

    async def _check_claim_step(self, body: b.ClaimStep) -> None:
        claim = await self.store.read(lambda db: views.claim(db, body.claim))
        if claim is None:
            raise UsageError("that claim is not on this node's board")
        step = body.TYPE.split(".")[1]
        holder = claim["holder"] == self.author
        claimant = claim["claimant"] == self.author
        if step in ("confirmed", "declined") and not holder:
            verb = "confirm" if step == "confirmed" else "decline"
            raise UsageError(
                f"only the person who posted the {claim['kind']} can {verb} its claims"
            )
        if step == "released" and not claimant:
            raise UsageError("only the person who made the claim can release it")
        if step == "fulfilled" and not (holder or claimant):
            raise UsageError("only the holder or the claimant can mark a claim fulfilled")
        if claim["status"] not in ALLOWED_FROM[step]:
            raise UsageError(f"that claim is already {claim['status']}")

    # -- finding things ------------------------------------------------------------

    async def resolve(self, prefix: str, types: Sequence[str]) -> bytes:
        """The id (hash) of the entity whose id starts with ``prefix``."""
        return (await self.store.resolve(prefix, types)).hash

    async def resolve_member(self, who: str) -> bytes:
        """A member by exact name (case-insensitive) or by key prefix."""
        members = await self.store.read(views.members)
        by_name = [m for m in members if m["name"].lower() == who.strip().lower()]
        if len(by_name) == 1:
            return bytes.fromhex(by_name[0]["key"])
        by_key = [m for m in members if m["key"].startswith(who.strip().lower())]
        if len(by_name) > 1 or (len(by_key) > 1 and len(who) >= 6):
            raise UsageError(f"'{who}' matches more than one member: use their key")
        if len(by_key) == 1 and len(who) >= 6:
            return bytes.fromhex(by_key[0]["key"])
        raise UsageError(f"no member called '{who}'")

    async def iter_log(
        self, *, type_: str | None = None, author: bytes | None = None
    ) -> AsyncIterator[Envelope]:
        async for envelope in self.store.iter_events(type_=type_, author=author):
            yield envelope

    # -- sync ----------------------------------------------------------------------

    async def forks(self) -> list[dict[str, object]]:
        """Members who wrote two different events at the same seq (a copied data dir or
        worse): their events from that seq on are left out of every projection."""
        names = await self.names()
        return [
            {"key": author.hex(), "name": names.get(author), "seq": seq, "versions": versions}
            for author, seq, versions in await self.store.forks()
        ]

    async def names(self) -> dict[bytes, str]:
        return {bytes.fromhex(m["key"]): m["name"] for m in await self.store.read(views.members)}

    async def sync_once(
        self, address: str, on_session: Callable[[Session], None] | None = None
    ) -> dict[str, object]:
        """Catch up both ways with the node at ``address``, then close: ``potluck sync``.
        ``on_session`` sees the session before it runs (to show its progress)."""
        host, port = _address(address)
        async with self.folding_behind():
            try:
                session = await connect_session(
                    f"{host}:{port}", self.key, self.store, one_shot=True
                )
            except DialError as exc:
                raise UsageError(str(exc)) from None
            if on_session is not None:
                on_session(session)
            await session.run()
        key = session.peer_key
        if key == self.author:  # its own serve: nothing to exchange, and not a peer
            raise UsageError(
                f"{address} is this node itself (its own 'potluck serve'): sync with "
                "another member's node"
            )
        error = session.protocol.error
        if isinstance(error, RemoteError) and error.code == "not-a-member":
            raise UsageError(
                f"sync with {address} failed: that node does not know you as a member "
                f"of this group: {error.reason}"
            )
        if session.error is not None or session.protocol.state != State.CLOSED:
            raise UsageError(f"sync with {address} failed: {session.error or 'connection lost'}")
        return {
            "address": f"{host}:{port}",
            "peer": key.hex() if key else None,
            "peer_name": session.member.name if session.member else None,
            "received": session.stats.events_in,
            "sent": session.stats.events_out,
            "held_future": session.stats.future,
            "bytes_in": session.stats.bytes_in,
            "bytes_out": session.stats.bytes_out,
            "evidence_in": session.stats.evidence_in,
            "evidence_out": session.stats.evidence_out,
        }

    async def _discover(
        self, manager: PeerManager, port: int | None, host: str | None, say: Callable[[str], None]
    ) -> Discovery | None:
        """Start mDNS discovery: dial each member's node it finds; None if it cannot run."""

        def found(address: str, instance: str) -> None:
            say(f"discovered a node of this group at {address} (mdns {instance})")
            manager.add_peer(address, "mdns")

        def lost(address: str) -> None:
            say(f"mdns: {address} is no longer advertised")
            manager.drop_peer(address, "mdns")

        discovery = Discovery(self.group, port, found, lost, interfaces=interfaces_for(host))
        say("looking for this group's nodes on the local network (mdns)")
        try:
            await discovery.start()
        except Exception as exc:  # no multicast here: sync by --peer or bundle still works
            say(f"local discovery is off: {exc}")
            await discovery.stop()
            return None
        return discovery

    async def serve(
        self,
        *,
        listen: str | None,
        peers: Sequence[str],
        stop: asyncio.Event,
        say: Callable[[str], None],
        discover: bool = False,
        listen_tries: int = 1,
    ) -> None:
        """Run sessions until ``stop`` is set: listen, dial ``peers``, push, relay; with
        ``discover`` (on in ``potluck serve``), also advertise this node on the local
        network and dial the group's nodes found there (docs/discovery.md). With
        ``listen_tries`` > 1, a taken port gives way to the next free one (said)."""
        names: dict[bytes, str] = await self.names()

        def refresh() -> None:
            task = asyncio.get_running_loop().create_task(self.names())
            task.add_done_callback(
                lambda t: names.update(t.result()) if not t.exception() else None
            )

        self.store.on_change(refresh)
        manager = PeerManager(self.store, self.key, say=say, name_of=names.get)
        self.peer_manager = manager
        host, port = _address(listen) if listen else (None, None)
        if host is not None and port:  # before the manager starts anything
            free = first_free(host, port, tries=listen_tries)
            if free != port:
                say(f"port {port} is taken (another node on this computer?): using {free}")
                port = free
        try:
            bound = await manager.start(host, port)
        except OSError as exc:
            raise UsageError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
        if bound is not None:
            await self.store.set_meta("listen-port", bound)  # what `potluck invite` offers
        for address in peers:
            peer_host, peer_port = _address(address)
            manager.add_peer(f"{peer_host}:{peer_port}", "manual")
        discovery: Discovery | None = None
        async with self.folding_behind():
            try:
                if discover:
                    discovery = await self._discover(manager, bound, host, say)
                await stop.wait()
            finally:
                if discovery is not None:
                    await discovery.stop()
                await manager.stop()
                self.peer_manager = None

    def peer_vectors(self) -> list[dict[bytes, tuple[int, bytes]]]:
        """What each connected peer device has of the log, as sync knows it (one vector
        per device, however many sessions): the web page's "shared with N peers"."""
        by_peer: dict[bytes, dict[bytes, tuple[int, bytes]]] = {}
        for session in list(self.peer_manager.sessions if self.peer_manager else ()):
            if session.open and session.peer_key and session.protocol.peer_vector_complete:
                vector = by_peer.setdefault(session.peer_key, {})
                for author, head in session.protocol.peer_vector.items():
                    if head[0] > vector.get(author, (0, b""))[0]:
                        vector[author] = head
        return list(by_peer.values())

    async def invite(self, addresses: Sequence[str] = (), *, valid_for: float | None = None) -> str:
        """An invite code for this group that dials this node (docs/decisions/0006)."""
        if not addresses:
            port = await self.store.get_meta("listen-port") or DEFAULT_PORT
            addresses = [f"{ip}:{port}" for ip in local_addresses()] or [f"127.0.0.1:{port}"]
        code_addresses = []
        for text in addresses[: invite.MAX_ADDRESSES]:
            host, port = _address(text)
            code_addresses.append(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        made = invite.invite_for(self.group, code_addresses, valid_for=valid_for, now=time.time())
        return invite.encode(made)

    @classmethod
    async def join(cls, data_dir: Path, name: str, code: str) -> Node:
        """Create a node in the group of an invite; its addresses become known peers."""
        accepted = invite.decode(code, now=time.time())
        node = await cls.init(data_dir, name, invite.group_of(accepted))
        for address in accepted.addresses:
            await node.remember_peer(address, "invite")
        return node

    async def remember_peer(self, address: str, found: str) -> None:
        host, port = _address(address)
        await self.store.remember_peer(f"{host}:{port}", found)

    async def peers(self) -> list[dict[str, object]]:
        """Known and connected peers: the schema of ``potluck peers --json``."""
        names = await self.names()
        rows = await self.store.known_peers()
        rows = [r for r in rows if r.key != self.author]  # a sync with itself, refused
        return [
            {
                "address": r.remote if r.address.startswith("inbound:") else r.address,
                "key": r.key.hex() if r.key else None,
                "name": names.get(r.key) if r.key else None,
                "found": r.found,
                "connected": r.connected,
                "last_seen": views.ms_time(r.last_seen) if r.last_seen else None,
                "behind": r.behind,
                "ahead": r.ahead,
                "last_error": r.last_error,
            }
            for r in rows
        ]


def local_addresses() -> list[str]:
    """This machine's IPv4 addresses other devices may reach (loopback excluded)."""
    found: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if ip.is_IPv4 and isinstance(ip.ip, str) and not ip.ip.startswith("127."):
                found.append(ip.ip)
    return found


async def _catch_up(store: Store, runner: Runner, busy: Busy | None = None) -> int:
    """Fold the backlog as it stands, ``projector.CHUNK`` events a transaction: a
    ``serve`` writing beside this waits for one chunk at most, never for all of it,
    and what arrives meanwhile is its projector's to fold."""
    backlog = await store.read(runner.behind)
    folded = 0
    if not backlog:
        return 0
    async with (busy or quiet)("Folding events into the tables", lambda: (folded, backlog)):
        while folded < backlog:
            step = await store.write(functools.partial(runner.catch_up, limit=projector.CHUNK))
            if step <= 0:
                break
            folded += step
    return folded


Poll = Callable[[], tuple[int, int | None]]
"""How far a long step is: (done, total or None when it is not known)."""


class Busy(Protocol):
    """Shows the progress of a step that may take long, while inside (render.busy)."""

    def __call__(
        self, what: str, poll: Poll | None = None, unit: str = "events"
    ) -> contextlib.AbstractAsyncContextManager[None]: ...


@contextlib.asynccontextmanager
async def quiet(what: str, poll: Poll | None = None, unit: str = "events") -> AsyncIterator[None]:
    """A ``Busy`` that shows nothing: the web page and tests open nodes without one."""
    yield


def _address(text: str) -> tuple[str, int]:
    try:
        return parse_address(text, DEFAULT_PORT)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
