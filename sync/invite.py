"""Invite codes: everything a new node needs to join a group, short enough to type.

An invite carries the group secret (the group id is derived from it, eventlog/identity.py),
the group's name, where to reach the inviting node, and an optional expiry. It is shown
to people as ``potluck-`` followed by Crockford base32 in groups of four, for example
``potluck-0A8G-...-7K3``, and can be read aloud, typed, or scanned from a QR code.
Format, length and the limits of expiry: docs/decisions/0006-invites-and-bundles.md.

Why Crockford base32: no letter is ambiguous when read aloud or handwritten (no I, L,
O, U), decoding forgives case and the usual confusions (I and L read as 1, O as 0),
and the hyphens and spaces people add are ignored.

Why CRC-32 as the checksum: it is only there to catch typing mistakes, and unlike a
truncated hash it *guarantees* that any single wrong character, and any two adjacent
characters swapped, is caught (every such change is an error burst of at most 24 bits
in the CRC's bit order). A wrong code is refused with a hint of where the typo is.

Pure: no I/O; the clock is the caller's ``now``.
"""

from __future__ import annotations

import ipaddress
import math
import re
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime

from eventlog.errors import UsageError
from eventlog.identity import GROUP_SECRET_BYTES, Group

PREFIX = "potluck"
FORMAT_VERSION = 1
ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford base32
GROUP_CHARS = 4
CHECKSUM_BYTES = 4
MAX_NAME_CHARS = 100
MAX_ADDRESSES = 8
MAX_CODE_CHARS = 2000  # far above any valid invite; bounds the work on garbage input

_TAG_IPV4 = 1
_TAG_IPV6 = 2
_TAG_HOST = 3


def _decoding_table() -> dict[str, int]:
    """Character -> 5-bit value, forgiving case and the letters read as digits."""
    table = {char: value for value, char in enumerate(ALPHABET)}
    table.update({"I": 1, "L": 1, "O": 0})
    table.update({char.lower(): value for char, value in table.items()})
    return table


_VALUES = _decoding_table()

# What people put between groups: spaces, line breaks, and every kind of dash a word
# processor or chat app may turn a hyphen into.
_SEPARATORS = re.compile(r"[\s\-\u2010-\u2015\u2212]+")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
    r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)


@dataclass(frozen=True, slots=True)
class Invite:
    """What a code carries. Checked on construction: a bad field raises UsageError.

    ``addresses`` are ``host:port`` strings: ``192.168.1.20:7717``,
    ``[fe80::1]:7717`` or ``pantry.local:7717``. ``expires`` is unix seconds or None
    (never); codes store it to the minute, rounded up.
    """

    secret: bytes
    name: str
    addresses: tuple[str, ...] = ()
    expires: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.secret, bytes) or len(self.secret) != GROUP_SECRET_BYTES:
            raise UsageError(f"an invite needs the {GROUP_SECRET_BYTES}-byte group secret")
        _check_name(self.name)
        if len(self.addresses) > MAX_ADDRESSES:
            raise UsageError(
                f"an invite holds at most {MAX_ADDRESSES} addresses, not {len(self.addresses)}"
            )
        for address in self.addresses:
            parse_address(address)
        if self.expires is not None and not 0 < self.expires <= _MAX_EXPIRES:
            raise UsageError(f"expiry {self.expires} is not a time an invite can hold")


_MAX_EXPIRES = 0xFFFFFFFF * 60


def _check_name(name: str) -> None:
    if not isinstance(name, str) or name != name.strip() or not 0 < len(name) <= MAX_NAME_CHARS:
        raise UsageError(
            f"group name must be 1 to {MAX_NAME_CHARS} characters, without spaces at either end"
        )


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` -> (host, port) for the forms an invite can carry; UsageError if not.

    IPv6 needs brackets (``[fe80::1]:7717``). An unspecified address (0.0.0.0, ::) is
    refused: nobody else can dial it.
    """
    example = "use HOST:PORT, for example 192.168.1.20:7717"
    if not isinstance(text, str):
        raise UsageError(f"{text!r} is not an address: {example}")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not rest.startswith(":"):
            raise UsageError(f"'{text}' is not an address: {example}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep or ":" in host:
            raise UsageError(
                f"'{text}' is not an address: {example} "
                "(an IPv6 address goes in brackets: [fe80::1]:7717)"
            )
    if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise UsageError(f"'{text}' has no valid port (1 to 65535): {example}")
    port = int(port_text)
    ip = _ip(host)
    if text.startswith("[") and not isinstance(ip, ipaddress.IPv6Address):
        raise UsageError(f"'{text}' is not an address: only IPv6 goes in brackets")
    if ip is None:
        if not _HOSTNAME.match(host) or not host.isascii():
            raise UsageError(f"'{host}' is not a host name or IP address: {example}")
    elif ip.is_unspecified:
        raise UsageError(
            f"'{text}' cannot be dialled by another device: give this node's address on the network"
        )
    elif isinstance(ip, ipaddress.IPv6Address) and ip.scope_id:
        raise UsageError(
            f"'{text}' names a network interface of this machine only: give the address without '%'"
        )
    return host, port


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def group_of(invite: Invite) -> Group:
    """The group an invite is for; its id is the one the inviter has."""
    return Group.from_secret(invite.secret, invite.name)


def invite_for(
    group: Group,
    addresses: tuple[str, ...] | list[str] = (),
    *,
    valid_for: float | None = None,
    now: float,
) -> Invite:
    """An invite to ``group``, reachable at ``addresses``, for ``valid_for`` seconds."""
    if valid_for is not None and valid_for <= 0:
        raise UsageError("an invite must be valid for some time: give a positive duration")
    expires = None if valid_for is None else _ceil_minute(now + valid_for)
    return Invite(group.secret, group.name, tuple(addresses), expires)


def _ceil_minute(seconds: float) -> int:
    return math.ceil(seconds / 60) * 60


# -- encoding --------------------------------------------------------------------------


def encode(invite: Invite) -> str:
    """The code people see: ``potluck-`` and base32 in groups of four."""
    payload = _payload(invite)
    body = _base32(payload + zlib.crc32(payload).to_bytes(CHECKSUM_BYTES, "little"))
    groups = [body[i : i + GROUP_CHARS] for i in range(0, len(body), GROUP_CHARS)]
    return "-".join([PREFIX, *groups])


def _payload(invite: Invite) -> bytes:
    out = bytearray([FORMAT_VERSION])
    out += invite.secret
    minutes = 0 if invite.expires is None else -(-invite.expires // 60)
    out += minutes.to_bytes(4, "big")
    name = invite.name.encode("utf-8")
    out += _varint(len(name)) + name
    for address in invite.addresses:
        host, port = parse_address(address)
        ip = _ip(host)
        if isinstance(ip, ipaddress.IPv4Address):
            out += bytes([_TAG_IPV4]) + ip.packed
        elif isinstance(ip, ipaddress.IPv6Address):
            out += bytes([_TAG_IPV6]) + ip.packed
        else:
            raw = host.encode("ascii")
            out += bytes([_TAG_HOST]) + _varint(len(raw)) + raw
        out += port.to_bytes(2, "big")
    return bytes(out)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _base32(data: bytes) -> str:
    n_chars = -(-len(data) * 8 // 5)
    value = int.from_bytes(data, "big") << (n_chars * 5 - len(data) * 8)
    return "".join(ALPHABET[(value >> (5 * i)) & 31] for i in reversed(range(n_chars)))


def invite_length(code: str) -> int:
    """How many letters and digits a person reads out or types: the prefix and the body,
    not the hyphens or spaces between groups."""
    return len(_SEPARATORS.sub("", code.strip()))


# -- decoding --------------------------------------------------------------------------

_TYPO = "the invite code has a typo: check it letter by letter"


def decode(code: str, *, now: float) -> Invite:
    """The invite a code carries; UsageError saying what is wrong with it, if anything.

    ``now`` is unix seconds: an invite whose expiry has passed is refused.
    """
    text = _SEPARATORS.sub("", code.strip()) if isinstance(code, str) else ""
    if not text:
        raise UsageError("no invite code given: it starts with 'potluck-'")
    if len(text) > MAX_CODE_CHARS:
        raise UsageError("this is not a Potluck invite: it is far too long")
    if text[: len(PREFIX)].lower() != PREFIX:
        raise UsageError(
            f"this is not a Potluck invite: it does not start with '{PREFIX}-'"
            " (copy the whole code, including its first word)"
        )
    body = text[len(PREFIX) :]
    if not body:
        raise UsageError("the invite code stops after 'potluck': the rest of it is missing")
    values: list[int] = []
    for index, char in enumerate(body):
        value = _VALUES.get(char)
        if value is None:
            group = index // GROUP_CHARS + 1
            shown = char if char.isprintable() else repr(char)
            raise UsageError(f"{_TYPO} ('{shown}' in group {group} cannot be in an invite code)")
        values.append(value)
    data = _codeword(_number(values), len(values))
    if data is None:
        raise UsageError(_TYPO + _where(values))
    payload = data[:-CHECKSUM_BYTES]
    if payload[0] != FORMAT_VERSION:
        raise UsageError(
            f"this invite was made by a newer Potluck (invite format "
            f"{payload[0]}): update Potluck on this device to use it"
        )
    invite = _parse(payload)
    if invite.expires is not None and now >= invite.expires:
        when = datetime.fromtimestamp(invite.expires, UTC).strftime("%Y-%m-%d %H:%M UTC")
        raise UsageError(f"this invite expired on {when}: ask for a new one")
    return invite


def _codeword(number: int, n_chars: int) -> bytes | None:
    """The bytes if ``n_chars`` base32 characters whose values, 5 bits each, make up
    ``number`` are a well-formed codeword with a good CRC; else None."""
    n_bits = n_chars * 5
    n_bytes = n_bits // 8
    pad = n_bits - n_bytes * 8
    if pad >= 5 or n_bytes < CHECKSUM_BYTES + 1 or number >> n_bits:
        return None
    if number & ((1 << pad) - 1):
        return None  # a canonical code has zero padding bits: a change there is a typo
    data = (number >> pad).to_bytes(n_bytes, "big")
    if zlib.crc32(data[:-CHECKSUM_BYTES]) != int.from_bytes(data[-CHECKSUM_BYTES:], "little"):
        return None
    return data


def _number(values: list[int]) -> int:
    number = 0
    for value in values:
        number = (number << 5) | value
    return number


def _where(values: list[int]) -> str:
    """A hint of where the typo is, when exactly one place explains it.

    Tries every single-character mistake (a wrong letter, one missing, one extra, two
    neighbours swapped); the CRC makes a false match rare (about 1 in 650,000 for a
    typical code), and the result is only a hint: nothing is corrected.
    """
    n = len(values)
    if n > 400:
        return ""
    number = _number(values)
    found: set[tuple[str, int]] = set()
    for i in range(n + 1):
        shift = 5 * (n - i)  # bits after position i
        high, low = number >> shift, number & ((1 << shift) - 1)
        for v in range(32):  # a letter missing before position i
            if _codeword((((high << 5) | v) << shift) | low, n + 1):
                found.add(("missing", i // GROUP_CHARS))
        if i == n:
            break
        at = shift - 5  # bits after the character at i
        for v in range(32):  # the letter at i is wrong
            if v != values[i] and _codeword(number ^ ((v ^ values[i]) << at), n):
                found.add(("wrong", i // GROUP_CHARS))
        if _codeword((high << at) | (low & ((1 << at) - 1)), n - 1):  # the letter at i is extra
            found.add(("extra", i // GROUP_CHARS))
        if i + 1 < n and values[i] != values[i + 1]:  # letters i and i+1 swapped
            flip = values[i] ^ values[i + 1]
            if _codeword(number ^ (flip << at) ^ (flip << (at - 5)), n):
                found.add(("swapped", i // GROUP_CHARS))
        if len(found) > 1:
            return ""
    if len(found) != 1:
        return ""
    kind, group = found.pop()
    shown = "".join(ALPHABET[v] for v in values[group * GROUP_CHARS : (group + 1) * GROUP_CHARS])
    return {
        "wrong": f" (group {group + 1}, '{shown}', looks wrong)",
        "extra": f" (group {group + 1}, '{shown}', seems to have a letter too many)",
        "missing": f" (a letter seems to be missing in group {group + 1}, '{shown}')",
        "swapped": f" (two letters seem swapped in group {group + 1}, '{shown}')",
    }[kind]


class _Damaged(Exception):
    pass


def _parse(payload: bytes) -> Invite:
    """Fields of a v1 payload whose checksum is good; UsageError if it breaks the format
    (only a faulty or hostile encoder produces that)."""
    try:
        reader = _Reader(payload, 1)
        secret = reader.take(GROUP_SECRET_BYTES)
        minutes = int.from_bytes(reader.take(4), "big")
        name = reader.take(reader.varint()).decode("utf-8")
        addresses: list[str] = []
        while not reader.done():
            tag = reader.take(1)[0]
            if tag == _TAG_IPV4:
                host = str(ipaddress.IPv4Address(reader.take(4)))
            elif tag == _TAG_IPV6:
                host = f"[{ipaddress.IPv6Address(reader.take(16))}]"
            elif tag == _TAG_HOST:
                host = reader.take(reader.varint()).decode("ascii")
            else:
                raise _Damaged(f"unknown address kind {tag}")
            addresses.append(f"{host}:{int.from_bytes(reader.take(2), 'big')}")
        return Invite(secret, name, tuple(addresses), minutes * 60 or None)
    except (_Damaged, UnicodeDecodeError, UsageError) as exc:
        raise UsageError(f"the invite code is damaged ({exc}): ask for a new one") from None


class _Reader:
    def __init__(self, data: bytes, offset: int) -> None:
        self.data = data
        self.offset = offset

    def done(self) -> bool:
        return self.offset >= len(self.data)

    def take(self, n: int) -> bytes:
        if self.offset + n > len(self.data):
            raise _Damaged("it ends too early")
        chunk = self.data[self.offset : self.offset + n]
        self.offset += n
        return chunk

    def varint(self) -> int:
        value = shift = 0
        while True:
            byte = self.take(1)[0]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if byte == 0 and shift:
                    raise _Damaged("a length is not in its shortest form")
                return value
            shift += 7
            if shift > 14:
                raise _Damaged("a length is too large")
