"""Finding the nodes of our group on the local network by mDNS/DNS-SD (docs/discovery.md).

Every ``potluck serve`` advertises a ``_potluck._tcp.local.`` service under a random
instance name, with its port and IPv4 addresses, and a TXT record of exactly two keys:

    v=1                 the sync protocol version
    h=<48 hex digits>   the blinded group hint: salt (8 bytes) ‖ tag (16 bytes)

    tag = first 16 bytes of BLAKE2b(key = group secret,
                                     "potluck mdns hint v2" ‖ BE64(window) ‖ salt
                                     ‖ BE16(port) ‖ count ‖ the IPv4 addresses, sorted)
    window = floor(unix time / 3600)

Only a holder of the group secret can make or recognise a tag, the window makes it
change every hour, and the salt, fresh at every re-announce, makes two members' adverts
differ even within one hour, so an observer cannot even tell which adverts belong to
the same group (decision 0008). The tag also covers the advertised port and addresses:
a stranger who copies a member's TXT record into an advert of their own address gets
an advert no member recognises, so members never dial it (docs/discovery.md §binding).
A browsing member accepts the windows before and after its own (clock skew) and reports
every advert whose hint it recognises, for the address and port it advertises, through
``on_found``; every other advert is ignored and never dialed.

The instance name and the host name are drawn afresh whenever the hint is (every
window, every change of address), so a passer-by cannot follow a laptop through the
day by its advert's name: the old name is withdrawn and the new one announced.

The multicast work is python-zeroconf's; this module decides what to advertise and
whom to report. It polls the machine's addresses (``ifaddr``) every ``poll_seconds``:
when they change (Wi-Fi rejoined) the sockets and the advert follow, and when the
window turns the advert is re-announced under a new name with a fresh hint. ``stop``
withdraws the advert (goodbye packets), so the other members see it go at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import ipaddress
import logging
import math
import secrets
import time
from collections.abc import Callable, Coroutine, Sequence

import ifaddr
from zeroconf import (
    IPVersion,
    NonUniqueNameException,
    ServiceInfo,
    ServiceStateChange,
    Zeroconf,
)
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from eventlog.identity import Group

SERVICE_TYPE = "_potluck._tcp.local."
PROTOCOL_VERSION = "1"
WINDOW_SECONDS = 3600
HINT_CONTEXT = b"potluck mdns hint v2"
SALT_BYTES = 8
TAG_BYTES = 16
HINT_HEX_LENGTH = 2 * (SALT_BYTES + TAG_BYTES)
POLL_SECONDS = 10.0
RESOLVE_MS = 3000
# Time-to-live of our PTR and TXT records: the shortest python-zeroconf accepts from
# others (it raises a shorter PTR TTL to this), so a node that vanished without a
# goodbye is reported lost after about 19 minutes rather than RFC 6762's 75.
OTHER_TTL = 1125
LOST_GRACE = 1.0
"""Seconds a withdrawn advert's address waits before it is reported lost: a member
renaming its advert announces the new name first, and resolving it takes a moment."""

log = logging.getLogger(__name__)


def window_of(now: float) -> int:
    """The hint window that contains the unix time ``now``."""
    return math.floor(now / WINDOW_SECONDS)


def hint(
    secret: bytes,
    window: int,
    salt: bytes | None = None,
    *,
    port: int,
    addresses: Sequence[str],
) -> str:
    """The blinded hint of the group with ``secret`` for ``window``, bound to the advert's
    ``port`` and IPv4 ``addresses``, as hex.

    ``salt`` (8 bytes) is random unless given: each advert carries its own, so equal
    hints never reveal that two adverts come from one group.
    """
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    if len(salt) != SALT_BYTES:
        raise ValueError(f"a hint salt is {SALT_BYTES} bytes")
    return (salt + _tag(secret, window, salt, binding(port, addresses))).hex()


def binding(port: int, addresses: Sequence[str]) -> bytes:
    """Where an advert says its node listens, as the bytes its tag covers: BE16(port),
    the number of addresses, then each IPv4 address (4 bytes) in ascending order.
    Order and duplicates do not matter: an advert's records carry no order."""
    if not 0 < port < 1 << 16:
        raise ValueError(f"a port is 1 to 65535, not {port}")
    unique = sorted({ipaddress.IPv4Address(a) for a in addresses})
    if len(unique) > 255:
        raise ValueError("an advert binds at most 255 addresses")
    return port.to_bytes(2, "big") + bytes([len(unique)]) + b"".join(a.packed for a in unique)


def _tag(secret: bytes, window: int, salt: bytes, bound: bytes) -> bytes:
    message = HINT_CONTEXT + window.to_bytes(8, "big", signed=True) + salt + bound
    return hashlib.blake2b(message, key=secret).digest()[:TAG_BYTES]


def matches(
    secret: bytes, hint: object, now: float, *, port: int, addresses: Sequence[str]
) -> bool:
    """Whether ``hint`` was made with ``secret`` in the window of ``now`` or next to it,
    for an advert of exactly this ``port`` and these ``addresses``.

    Anything that is not a well-formed hint (wrong type, length, not hex), and any
    port or address that is not one, is False.
    """
    if not isinstance(hint, str) or len(hint) != HINT_HEX_LENGTH:
        return False
    try:
        raw = bytes.fromhex(hint)
        bound = binding(port, addresses)
    except ValueError:
        return False
    salt, tag = raw[:SALT_BYTES], raw[SALT_BYTES:]
    current = window_of(now)
    found = False
    for window in (current - 1, current, current + 1):  # no early exit: constant time
        found |= hmac.compare_digest(tag, _tag(secret, window, salt, bound))
    return found


def txt_record(
    secret: bytes,
    now: float,
    salt: bytes | None = None,
    *,
    port: int,
    addresses: Sequence[str],
) -> dict[str, str]:
    """The whole TXT record of our advert: the protocol version and the hint, nothing else."""
    hint_ = hint(secret, window_of(now), salt, port=port, addresses=addresses)
    return {"v": PROTOCOL_VERSION, "h": hint_}


def local_addresses() -> list[str]:
    """This machine's IPv4 addresses, loopback excepted, sorted."""
    found: set[str] = set()
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            if isinstance(ip.ip, str) and not ipaddress.IPv4Address(ip.ip).is_loopback:
                found.add(ip.ip)
    return sorted(found, key=ipaddress.IPv4Address)


def networks_of(addresses: Sequence[str]) -> list[str]:
    """The subnets of our ``addresses`` as "address/prefix" (a /32 for one that ``ifaddr``
    does not list)."""
    prefixes = {
        ip.ip: ip.network_prefix
        for adapter in ifaddr.get_adapters()
        for ip in adapter.ips
        if isinstance(ip.ip, str)
    }
    return [f"{a}/{prefixes.get(a, 32)}" for a in addresses]


def pick_address(candidates: Sequence[str], networks: Sequence[str]) -> str | None:
    """The advertised address to dial: one on a subnet of ``networks`` (ours, as
    "address/prefix"), else any routable one. Loopback is taken only from the first rule,
    that is when we ourselves advertise on loopback (tests).
    """
    parsed: list[ipaddress.IPv4Address] = []
    for text in candidates:
        with contextlib.suppress(ValueError):
            parsed.append(ipaddress.IPv4Address(text))
    subnets = [ipaddress.IPv4Network(n, strict=False) for n in networks]
    for address in parsed:
        if any(address in subnet for subnet in subnets):
            return str(address)
    for address in parsed:
        if not (address.is_loopback or address.is_unspecified or address.is_multicast):
            return str(address)
    return None


def interfaces_for(listen_host: str | None) -> list[str] | None:
    """The ``interfaces`` for a node listening on ``listen_host``.

    None (every address, followed as it changes) for a wildcard host; the address
    itself for an IPv4 literal, since the node is reachable there only.
    """
    if listen_host in (None, "", "0.0.0.0", "::"):
        return None
    try:
        return [str(ipaddress.IPv4Address(listen_host))]
    except ValueError:
        return None


class Discovery:
    """Advertise this node to, and find, the members of ``group`` on the local network.

    ``on_found(address, instance)`` is called once per recognised advert ("host:port"
    to dial and its instance name), and again if its address changes (after an
    ``on_lost`` of the old one); ``on_lost(address)`` when an advert reported before is
    withdrawn or expires. Both run in the event loop and must not block.

    ``port`` None: browse only, advertise nothing (a node that does not listen).
    ``interfaces``: None for every IPv4 address of the machine except loopback,
    re-read every ``poll_seconds``; a list of IPv4 addresses to use only those.
    """

    def __init__(
        self,
        group: Group,
        port: int | None,
        on_found: Callable[[str, str], None],
        on_lost: Callable[[str], None],
        *,
        interfaces: Sequence[str] | None = None,
        poll_seconds: float = POLL_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.group = group
        self.port = port
        self.on_found = on_found
        self.on_lost = on_lost
        self.poll_seconds = poll_seconds
        self.clock = clock
        self._fixed = list(interfaces) if interfaces is not None else None
        self.instance = secrets.token_hex(8)  # never the person's or the machine's name
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: ServiceInfo | None = None
        self._addresses: list[str] = []
        self._networks: list[str] = []
        self._window = window_of(clock())
        self._peers: dict[str, str] = {}  # service name -> "host:port" reported found
        self._generation: dict[str, int] = {}  # service name -> count of changes seen
        self._tasks: set[asyncio.Task[None]] = set()
        self._poller: asyncio.Task[None] | None = None
        self._own: set[str] = set()  # every name we advertised: never a peer

    @property
    def name(self) -> str:
        """Our advert's full service name (it may change on a name conflict)."""
        return self._info.name if self._info is not None else f"{self.instance}.{SERVICE_TYPE}"

    @property
    def addresses(self) -> list[str]:
        """The addresses we advertise and listen for mDNS on right now."""
        return list(self._addresses)

    @property
    def peers(self) -> dict[str, str]:
        """Recognised adverts: service name -> address reported to ``on_found``."""
        return dict(self._peers)

    async def start(self) -> None:
        """Begin browsing and advertising; returns once both are running (or, with no
        network yet, once the poll that will start them when one appears is)."""
        addresses = self._wanted_addresses()
        if addresses:
            await self._open(addresses)
        self._poller = asyncio.ensure_future(self._poll())

    async def stop(self) -> None:
        """Withdraw the advert, stop browsing and close the sockets."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        await self._close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    # -- advertising ---------------------------------------------------------------

    def _wanted_addresses(self) -> list[str]:
        return list(self._fixed) if self._fixed is not None else local_addresses()

    def _service_info(self) -> ServiceInfo:
        assert self.port is not None
        return ServiceInfo(
            SERVICE_TYPE,
            f"{self.instance}.{SERVICE_TYPE}",
            port=self.port,
            properties=txt_record(
                self.group.secret, self.clock(), port=self.port, addresses=self._addresses
            ),
            server=f"{self.instance}.local.",
            other_ttl=OTHER_TTL,
            parsed_addresses=self._addresses,
        )

    def _set_addresses(self, addresses: list[str]) -> None:
        self._addresses = addresses
        self._networks = networks_of(addresses)

    async def _open(self, addresses: list[str]) -> None:
        self._set_addresses(addresses)
        self._window = window_of(self.clock())
        zc = AsyncZeroconf(interfaces=addresses, ip_version=IPVersion.V4Only)
        self._zc = zc
        # Browse first: finding others need not wait for our own name's probing.
        self._browser = AsyncServiceBrowser(zc.zeroconf, SERVICE_TYPE, handlers=[self._on_change])
        if self.port is None:
            return
        for _attempt in range(3):
            self._info = self._service_info()
            self._own.add(self._info.name)
            try:
                await zc.async_register_service(self._info)
                return
            except NonUniqueNameException:  # another node drew the same 64 random bits
                self.instance = secrets.token_hex(8)
                self._info = None
        log.warning("mDNS: could not register a unique service name; not advertising")

    async def _close(self) -> None:
        zc, self._zc = self._zc, None
        browser, self._browser = self._browser, None
        if zc is None:
            return
        if browser is not None:
            with contextlib.suppress(Exception):
                await browser.async_cancel()
        # async_close unregisters (sends the goodbyes) before closing the sockets.
        with contextlib.suppress(Exception):
            await zc.async_close()
        self._info = None

    async def _reannounce(self) -> None:
        """Publish the advert under a new instance and host name, with the current
        addresses and a fresh hint, then withdraw the old one: nothing of it stays the
        same across windows, so it cannot be followed through the day
        (docs/discovery.md §names). The new name goes out first, so members that see
        the old one withdrawn already know the address again (``LOST_GRACE``)."""
        if self._zc is None or self._info is None:
            return
        old = self._info
        for _attempt in range(3):
            self.instance = secrets.token_hex(8)
            info = self._service_info()
            self._own.add(info.name)
            try:
                await self._zc.async_register_service(info)
            except NonUniqueNameException:
                continue
            self._info = info
            break
        else:
            log.warning("mDNS: could not register a unique service name; not advertising")
            self._info = None
        await self._zc.async_unregister_service(old)

    async def _poll(self) -> None:
        """Follow address changes and hint windows until cancelled."""
        while True:
            until_window = (self._window + 1) * WINDOW_SECONDS - self.clock()
            await asyncio.sleep(max(0.05, min(self.poll_seconds, until_window + 0.05)))
            try:
                await self._check()
            except Exception:  # a failed check must not end discovery; try again later
                log.exception("mDNS: updating the advert failed")

    async def _check(self) -> None:
        addresses = self._wanted_addresses()
        if addresses != self._addresses:
            log.debug("mDNS: our addresses changed from %s to %s", self._addresses, addresses)
            if not addresses:
                await self._close()
                self._set_addresses([])
                for name in list(self._peers):
                    self._lose(name)
            elif self._zc is None:
                await self._open(addresses)
            else:
                self._set_addresses(addresses)
                await self._zc.async_update_interfaces(addresses, IPVersion.V4Only)
                self._window = window_of(self.clock())
                await self._reannounce()
            return
        window = window_of(self.clock())
        if window != self._window:
            self._window = window
            await self._reannounce()

    # -- browsing ------------------------------------------------------------------

    def _on_change(
        self, zeroconf: Zeroconf, service_type: str, name: str, state_change: ServiceStateChange
    ) -> None:
        if name == self.name or name in self._own or service_type != SERVICE_TYPE:
            return
        log.debug("mDNS: %s %s", state_change.name, name)
        self._generation[name] = self._generation.get(name, 0) + 1
        if state_change is ServiceStateChange.Removed:
            self._spawn(self._lose_later(name, self._generation[name]))
        else:
            self._spawn(self._resolve(zeroconf, name, self._generation[name]))

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, zeroconf: Zeroconf, name: str, generation: int) -> None:
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(zeroconf, RESOLVE_MS):
            log.debug("mDNS: %s did not answer", name)
            return
        if self._generation.get(name) != generation or zeroconf is not self._zc_core():
            return  # a later change of this advert (or a restart) superseded this one
        properties = info.decoded_properties
        advertised = info.parsed_addresses(IPVersion.V4Only)
        # the hint must cover the very port and addresses we would dial: a copied TXT
        # record in a stranger's advert is not ours (docs/discovery.md §binding)
        ours = (
            properties.get("v") == PROTOCOL_VERSION
            and info.port is not None
            and matches(
                self.group.secret,
                properties.get("h"),
                self.clock(),
                port=info.port,
                addresses=advertised,
            )
        )
        host = pick_address(advertised, self._networks)
        log.debug(
            "mDNS: %s at %s port %s: %s",
            name,
            info.parsed_addresses(),
            info.port,
            "ours" if ours else "not ours",
        )
        if not ours or host is None or not info.port:
            self._lose(name)  # a stranger's advert, or one of ours that stopped matching
            return
        address = f"{host}:{info.port}"
        if self._peers.get(name) == address:
            return
        self._lose(name)
        self._peers[name] = address
        self.on_found(address, name.removesuffix("." + SERVICE_TYPE))

    async def _lose_later(self, name: str, generation: int) -> None:
        await asyncio.sleep(LOST_GRACE)
        if self._generation.get(name) == generation:
            self._lose(name)

    def _zc_core(self) -> Zeroconf | None:
        return self._zc.zeroconf if self._zc is not None else None

    def _lose(self, name: str) -> None:
        """Forget advert ``name``; report its address lost unless another advert still
        offers it (a node that renamed its advert may announce the new name first)."""
        address = self._peers.pop(name, None)
        if address is not None and address not in self._peers.values():
            self.on_lost(address)
