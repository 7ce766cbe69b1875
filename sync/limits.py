"""Per-peer limits: how hard one peer may make this node work, and for how long.

A peer that completed the handshake holds the group secret, but it may still be
broken or hostile: it may flood frames or events, open many connections, never finish
the handshake, or take our events and never grant credit (docs/protocol.md §limits).
This module decides; sync/transport.py and sync/peers.py act. It is pure: no asyncio,
no sockets, and the clock is injected (``time.monotonic`` unless a test passes its own).

*Rates* are token buckets, one per quantity (frames, events, frame bytes, and bytes of
frames that carry no events), each with a sustained rate and a burst. The last one is
there because a ``have`` of 8192 entries costs about as much to read as an ``events``
frame of the same size, yet honest peers send ``have`` once per session, and nothing
else (credit) bounds it. Each received frame is accounted once its events are known
(``RateLimiter.account``). Within every bucket the verdict is "go on". Beyond one, the
verdict is a *pause*: how long the driver must stop reading from that peer for the
bucket to be back at zero. While it does not read, TCP's window closes, so the sender
is slowed at its end (backpressure); the node keeps serving everyone else. A pause
shorter than ``MIN_PAUSE`` is not slept but carried as debt to the next frame, so the
sleep calls stay few while the average rate holds. While a peer is over a limit
(``RateLimiter.over``) the driver also reads no more from its socket than the next
frame, so what it keeps sending waits in TCP, not in our memory.

*Cut off.* Throttling bounds the cost of a peer, but one that stays over its limit is
not merely bursty. A stretch *over the limit* starts with the first frame that finds a
bucket in debt and ends only once no frame found one for ``calm`` seconds (a single
frame that happens to fit, because our sleep overshot, does not end it). When such a
stretch has lasted longer than ``grace``, or when one frame alone would need a pause
over ``max_pause`` (a frame far beyond the limit: the "large factor"), the verdict is
to end the connection with ``rate-limit``. Under backpressure a peer that sends at
1.5x the limit and one at 100x look the same from here (both have a frame waiting
whenever we read), so persistence, not the ratio, is what is judged.

*Credit.* A peer that leaves us with events queued and no credit to send them
(``outgoing_backlog`` > 0 in the core means exactly that) makes us hold memory and a
connection for nothing. ``CreditWatch`` cuts it with ``credit-timeout`` once no
queued byte went out for ``credit_timeout`` seconds. A slow peer that grants credit as
it stores is not cut: every grant that lets an events frame out restarts the clock. A
grant too small for the next event does not (a peer dribbling 1-byte grants is cut).

*Handshake.* A connection that has not finished the Noise handshake within
``pending_timeout`` (short: it proves nothing yet), or not received the peer's whole
first vector within ``handshake_timeout``, is cut with ``handshake-timeout`` (before
the handshake, without a word): otherwise it holds a slot forever, because
websockets' pings keep any open socket alive.

*Vector.* What a peer's ``have`` messages make a session hold is bounded too: at most
``have_entries`` entries (its vector and fork points) and ``have_bytes`` bytes of
``have`` frames in the session; beyond either the core cuts it with ``have-limit``
(sync/protocol.py keeps the count; the figures are here).

*Connections.* Two budgets, because a stranger without the secret must not be able to
take a member's place. ``PendingLimits`` counts inbound connections that have not
finished the handshake, per address (an IPv6 /64 is one address) and in total: over
the first, a new one is refused; over the second, the oldest pending one is evicted,
so strangers cannot hold every slot and a member, whose handshake takes milliseconds,
gets in. ``ConnectionLimits`` counts the sessions of members (handshake done) per
address and in total; a member over them is refused after the handshake, with the
reason in an encrypted error frame (``too-many-connections``).

The defaults are far above what honest sync does (docs/protocol.md §limits has the
reasoning and figures): honest peers are never throttled.
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

from sync.errors import CreditTimeout, HandshakeTimeout, HaveLimit, RateLimited

Clock = Callable[[], float]

# Codes (docs/protocol.md §errors); the classes are in sync/errors.py.
RATE_LIMIT: Final = RateLimited.code
CREDIT_TIMEOUT: Final = CreditTimeout.code
HANDSHAKE_TIMEOUT: Final = HandshakeTimeout.code
HAVE_LIMIT: Final = HaveLimit.code
TOO_MANY_CONNECTIONS: Final = "too-many-connections"  # websocket close reason, code 1013
CLOSE_TRY_AGAIN_LATER: Final = 1013  # RFC 6455 §7.4.1 (IANA registry): try again later

MIN_PAUSE: Final = 0.005  # seconds; shorter pauses are carried as debt, not slept
_EPSILON: Final = 1e-9  # tokens: float rounding after sleeping exactly the debt
REPORT_EVERY: Final = 10.0  # seconds between two log lines about one refused address


@dataclass(frozen=True, slots=True)
class Rate:
    """A token bucket: ``per_second`` sustained, up to ``burst`` at once."""

    per_second: float
    burst: float

    def __post_init__(self) -> None:
        if not self.per_second > 0 or not self.burst > 0:
            raise ValueError("a rate and its burst must be positive")


@dataclass(frozen=True, slots=True)
class Limits:
    """Every per-peer limit; the defaults are documented in docs/protocol.md §limits."""

    frames: Rate = Rate(5_000, 20_000)  # frames/s, any message type
    events: Rate = Rate(100_000, 200_000)  # events/s, in events messages
    frame_bytes: Rate = Rate(64 << 20, 128 << 20)  # bytes/s of received frames
    other_bytes: Rate = Rate(1 << 20, 16 << 20)  # bytes/s of frames without events
    grace: float = 10.0  # seconds over a rate (see ``calm``) before the cut
    calm: float = 1.0  # seconds without debt that end a stretch over a rate
    max_pause: float = 5.0  # one frame needing a longer pause is cut at once
    credit_timeout: float = 60.0  # seconds with events queued and none sent
    handshake_timeout: float = 20.0  # seconds to handshake and send the whole vector
    pending_timeout: float = 5.0  # seconds to finish the Noise handshake alone
    per_address: int = 16  # open member sessions (handshake done) from one address
    inbound: int = 128  # open member sessions in total
    pending_per_address: int = 8  # inbound connections in their handshake, one address
    pending: int = 64  # inbound connections in their handshake in total (then evict)
    have_entries: int = 16_384  # peer vector entries and fork points a session holds
    have_bytes: int = 4 << 20  # bytes of have frames one session may receive

    def __post_init__(self) -> None:
        for name in (
            "grace",
            "calm",
            "max_pause",
            "credit_timeout",
            "handshake_timeout",
            "pending_timeout",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive")
        for name in (
            "per_address",
            "inbound",
            "pending_per_address",
            "pending",
            "have_entries",
            "have_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    @property
    def tick(self) -> float:
        """How often the timeouts are checked: a quarter of the shortest, at most 1 s."""
        return min(
            1.0, self.credit_timeout / 4, self.handshake_timeout / 4, self.pending_timeout / 4
        )


DEFAULT_LIMITS: Final = Limits()


@dataclass(frozen=True, slots=True)
class Verdict:
    """What the driver does after a frame or a tick: pause reading ``pause`` seconds,
    or, when ``code`` is set, end the connection with that code and ``reason``."""

    pause: float = 0.0
    code: str | None = None
    reason: str = ""


GO_ON: Final = Verdict()


class _Bucket:
    """Tokens refill at ``rate.per_second`` up to ``rate.burst``; may go into debt."""

    __slots__ = ("rate", "stamp", "tokens")

    def __init__(self, rate: Rate, now: float) -> None:
        self.rate = rate
        self.tokens = rate.burst
        self.stamp = now

    def take(self, cost: float, now: float) -> float:
        """Refill to ``now``, take ``cost``; return the debt in seconds (0: within)."""
        if now > self.stamp:
            self.tokens = min(
                self.rate.burst, self.tokens + (now - self.stamp) * self.rate.per_second
            )
            self.stamp = now
        self.tokens -= cost
        if self.tokens >= -_EPSILON:
            return 0.0
        return -self.tokens / self.rate.per_second


@dataclass(slots=True)
class RateStats:
    """What one peer sent, and what throttling it cost it."""

    frames: int = 0
    events: int = 0
    frame_bytes: int = 0
    throttled: int = 0  # stretches over a limit
    pauses: int = 0  # pauses prescribed
    paused: float = 0.0  # seconds of pauses prescribed
    over: float = 0.0  # seconds of the current stretch over a limit, else 0


class RateLimiter:
    """Token buckets for one peer's frames, events and bytes, and the cut-off policy."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS, clock: Clock = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        now = clock()
        self._buckets = {
            "frames": _Bucket(limits.frames, now),
            "events": _Bucket(limits.events, now),
            "frame bytes": _Bucket(limits.frame_bytes, now),
            "non-event bytes": _Bucket(limits.other_bytes, now),
        }
        self._over_since: float | None = None  # start of the stretch over a limit
        self._last_debt = 0.0  # when a frame last found a bucket in debt
        self.stats = RateStats()

    @property
    def over(self) -> bool:
        """True during a stretch over a limit: read no more than the next frame."""
        return self._over_since is not None

    def account(self, nbytes: int, events: int = 0, frames: int = 1) -> Verdict:
        """One received frame of ``nbytes`` holding ``events`` events: go on, pause, or
        cut. Call after the frame is read; pause before reading the next."""
        now = self._clock()
        stats = self.stats
        stats.frames += frames
        stats.events += events
        stats.frame_bytes += nbytes
        costs = (frames, events, nbytes, 0 if events else nbytes)
        debts = {
            name: bucket.take(cost, now)
            for (name, bucket), cost in zip(self._buckets.items(), costs, strict=True)
        }
        which = max(debts, key=lambda name: debts[name])
        debt = debts[which]
        calm = self._over_since is None or now - self._last_debt >= self.limits.calm
        if debt <= 0:
            if calm:
                self._over_since = None
                stats.over = 0.0
            return GO_ON
        if calm:
            self._over_since = now
            stats.throttled += 1
        assert self._over_since is not None
        self._last_debt = now
        stats.over = now - self._over_since
        rate = self._buckets[which].rate
        if debt > self.limits.max_pause:
            return Verdict(
                code=RATE_LIMIT,
                reason=(
                    f"one frame needs a {debt:.1f} s pause to fit {_figure(rate.per_second)} "
                    f"{which}/s (burst {_figure(rate.burst)}); "
                    f"cut beyond {self.limits.max_pause:g} s"
                ),
            )
        if stats.over > self.limits.grace:
            return Verdict(
                code=RATE_LIMIT,
                reason=(
                    f"over {_figure(rate.per_second)} {which}/s (burst {_figure(rate.burst)}) "
                    f"for {stats.over:.1f} s; throttled {stats.paused:.1f} s "
                    f"over {stats.pauses} pauses; {stats.frames} frames, {stats.events} events"
                ),
            )
        if debt < MIN_PAUSE:
            return GO_ON  # carried as debt: the next frame pays it
        stats.pauses += 1
        stats.paused += debt
        return Verdict(pause=debt)


class CreditWatch:
    """Cuts a peer that leaves our queued events without credit for ``timeout`` s."""

    def __init__(self, timeout: float, clock: Clock = time.monotonic) -> None:
        self.timeout = timeout
        self._clock = clock
        self._since: float | None = None  # start of the current wait without progress

    def progress(self) -> None:
        """The peer's credit let queued events out: the wait starts again."""
        if self._since is not None:
            self._since = self._clock()

    def check(self, backlog: int) -> Verdict:
        """``backlog``: event bytes queued and waiting for credit (the core's
        ``outgoing_backlog``)."""
        now = self._clock()
        if backlog <= 0:
            self._since = None
            return GO_ON
        if self._since is None:
            self._since = now
            return GO_ON
        waited = now - self._since
        if waited > self.timeout:
            return Verdict(
                code=CREDIT_TIMEOUT,
                reason=(
                    f"{backlog} event bytes queued for the peer and none sent for "
                    f"{waited:.1f} s: it grants no credit (limit {self.timeout:g} s)"
                ),
            )
        return GO_ON

    @property
    def waiting(self) -> float:
        """Seconds the current wait has lasted; 0 when not waiting."""
        return 0.0 if self._since is None else max(0.0, self._clock() - self._since)


class SessionGuard:
    """Every per-connection limit of one session: rates, credit, handshake time."""

    def __init__(self, limits: Limits = DEFAULT_LIMITS, clock: Clock = time.monotonic) -> None:
        self.limits = limits
        self._clock = clock
        self.started = clock()
        self.rates = RateLimiter(limits, clock)
        self.credit = CreditWatch(limits.credit_timeout, clock)

    def frame(self, nbytes: int, events: int = 0, *, sent: bool = False) -> Verdict:
        """A frame was received; ``sent``: it granted credit that let events out."""
        if sent:
            self.credit.progress()
        return self.rates.account(nbytes, events)

    def tick(self, *, ready: bool, backlog: int, authenticated: bool = True) -> Verdict:
        """Called every ``limits.tick`` s. ``ready``: the handshake is done and the
        peer's first vector is complete; ``backlog``: as for ``CreditWatch.check``;
        ``authenticated``: the Noise handshake is done (``pending_timeout``)."""
        if not ready:
            waited = self._clock() - self.started
            if not authenticated and waited > self.limits.pending_timeout:
                return Verdict(
                    code=HANDSHAKE_TIMEOUT,
                    reason=(
                        f"no handshake within {self.limits.pending_timeout:g} s ({waited:.1f} s)"
                    ),
                )
            if waited > self.limits.handshake_timeout:
                return Verdict(
                    code=HANDSHAKE_TIMEOUT,
                    reason=(
                        f"no handshake and vector within {self.limits.handshake_timeout:g} s "
                        f"({waited:.1f} s)"
                    ),
                )
            return GO_ON
        return self.credit.check(backlog)


# -- connections ---------------------------------------------------------------------


def address_key(host: str) -> str:
    """The remote address connections are counted by: the IPv4 address (an IPv4-mapped
    IPv6 address as its IPv4 form), the /64 of an IPv6 address (one LAN: a device picks
    any address in it at will), without a zone; anything else as given."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


@dataclass(frozen=True, slots=True)
class Refusal:
    """A connection refused. ``report``: say so in the log now (at most once per
    ``REPORT_EVERY`` s per address; ``reason`` then counts the others)."""

    reason: str
    report: bool


T = TypeVar("T", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Eviction(Generic[T]):
    """The new connection is admitted, ``evicted`` (the oldest pending one) must be
    closed with ``reason``; ``report`` as for ``Refusal``."""

    evicted: T
    address: str
    reason: str
    report: bool


@dataclass(slots=True)
class _Refused:
    said: float
    since_said: int = 0


class _Reports:
    """Refusals per address, said at most once per ``REPORT_EVERY`` s with a count."""

    def __init__(self, clock: Clock, bound: int) -> None:
        self._clock = clock
        self._bound = bound
        self._refused: dict[str, _Refused] = {}

    def refusal(self, key: str, why: str) -> Refusal:
        now = self._clock()
        seen = self._refused.get(key)
        if seen is None or now - seen.said >= REPORT_EVERY:
            more = seen.since_said if seen is not None else 0
            self._refused[key] = _Refused(now)
            if len(self._refused) > self._bound:  # bounded: forget the oldest
                oldest = min(self._refused, key=lambda k: self._refused[k].said)
                del self._refused[oldest]
            tail = f"; {more} more refused since the last report" if more else ""
            return Refusal(f"{TOO_MANY_CONNECTIONS}: {why}{tail}", True)
        seen.since_said += 1
        return Refusal(f"{TOO_MANY_CONNECTIONS}: {why}", False)


def _drop(counts: dict[str, int], key: str) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


class ConnectionLimits:
    """Open member sessions (handshake done) per remote address and in total."""

    def __init__(
        self,
        per_address: int = DEFAULT_LIMITS.per_address,
        total: int = DEFAULT_LIMITS.inbound,
        clock: Clock = time.monotonic,
    ) -> None:
        self.per_address = per_address
        self.total = total
        self.counts: dict[str, int] = {}  # address key -> open sessions
        self._reports = _Reports(clock, 4 * total)

    @property
    def count(self) -> int:
        return sum(self.counts.values())

    def admit(self, host: str) -> Refusal | None:
        """Count a new session from ``host``, or refuse it (nothing counted)."""
        key = address_key(host)
        here, total = self.counts.get(key, 0), self.count
        if here < self.per_address and total < self.total:
            self.counts[key] = here + 1
            return None
        why = (
            f"{here} sessions open from {key} (limit {self.per_address})"
            if here >= self.per_address
            else f"{total} inbound sessions open (limit {self.total})"
        )
        return self._reports.refusal(key, why)

    def release(self, host: str) -> None:
        """A session admitted from ``host`` ended."""
        _drop(self.counts, address_key(host))


class PendingLimits(Generic[T]):
    """Inbound connections that have not finished the handshake, each a ``T`` (the
    session): per address, refused beyond ``per_address``; in total, the oldest is
    evicted beyond ``total``. Strangers can hold no slot longer than it takes
    ``total`` newer connections to arrive, and never a member's (``ConnectionLimits``)."""

    def __init__(
        self,
        per_address: int = DEFAULT_LIMITS.pending_per_address,
        total: int = DEFAULT_LIMITS.pending,
        clock: Clock = time.monotonic,
    ) -> None:
        self.per_address = per_address
        self.total = total
        self.counts: dict[str, int] = {}  # address key -> pending connections
        self._open: dict[T, str] = {}  # pending connection -> address key, oldest first
        self._reports = _Reports(clock, 4 * total)

    @property
    def count(self) -> int:
        return len(self._open)

    def __contains__(self, token: object) -> bool:
        return token in self._open

    def admit(self, host: str, token: T) -> Refusal | Eviction[T] | None:
        """Count ``token`` from ``host`` (None, or an Eviction to carry out), or refuse it."""
        key = address_key(host)
        here = self.counts.get(key, 0)
        if here >= self.per_address:
            why = f"{here} connections from {key} in their handshake (limit {self.per_address})"
            return self._reports.refusal(key, why)
        eviction: Eviction[T] | None = None
        if len(self._open) >= self.total:
            oldest, its_key = next(iter(self._open.items()))
            self.release(oldest)
            said = self._reports.refusal(
                its_key,
                f"evicted: {self.total} connections in their handshake "
                f"(limit {self.total}), this one the oldest",
            )
            eviction = Eviction(oldest, its_key, said.reason, said.report)
        self._open[token] = key
        self.counts[key] = self.counts.get(key, 0) + 1
        return eviction

    def release(self, token: T) -> None:
        """``token`` finished its handshake or ended (no-op when it was not counted)."""
        key = self._open.pop(token, None)
        if key is not None:
            _drop(self.counts, key)


def _figure(value: float) -> str:
    """1,000 / 64 MiB / 2.5: a limit as people read it."""
    if value >= 1 << 20 and value % (1 << 20) == 0:
        return f"{int(value) >> 20} MiB"
    if value == int(value):
        return f"{int(value):,}"
    return f"{value:g}"
