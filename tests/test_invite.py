"""Invite codes (sync/invite.py): round trip, typo detection, expiry, normalisation."""

from __future__ import annotations

import re
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventlog.errors import UsageError
from eventlog.identity import Group
from sync.invite import (
    ALPHABET,
    MAX_NAME_CHARS,
    Invite,
    decode,
    encode,
    group_of,
    invite_for,
    invite_length,
    parse_address,
)

NOW = 1_790_000_000.0  # 2026-09-21
SECRET = bytes(range(32))
TYPO = "the invite code has a typo: check it letter by letter"


def sample() -> str:
    return encode(Invite(SECRET, "Eastside Pantry", ("192.168.1.20:7717",), None))


def body_positions(code: str) -> list[int]:
    """Indexes of the base32 characters of a shown code (after 'potluck-')."""
    return [i for i, char in enumerate(code) if i > len("potluck") and char != "-"]


def typo_group(message: str) -> int | None:
    match = re.search(r"group (\d+)", message)
    return int(match.group(1)) if match else None


# -- round trip -------------------------------------------------------------------------

names = (
    st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=MAX_NAME_CHARS)
    .map(str.strip)
    .filter(lambda name: 0 < len(name) <= MAX_NAME_CHARS)
)
ports = st.integers(1, 65535)
ipv4 = st.builds(
    lambda ip, port: f"{ip}:{port}",
    st.ip_addresses(v=4).filter(lambda ip: not ip.is_unspecified),
    ports,
)
ipv6 = st.builds(
    lambda ip, port: f"[{ip}]:{port}",
    st.ip_addresses(v=6).filter(lambda ip: not ip.is_unspecified),
    ports,
)
label = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)  # not an IP
hostnames = st.builds(
    lambda labels, port: f"{'.'.join(labels)}:{port}",
    st.lists(label, min_size=1, max_size=4),
    ports,
)
invites = st.builds(
    Invite,
    secret=st.binary(min_size=32, max_size=32),
    name=names,
    addresses=st.lists(st.one_of(ipv4, ipv6, hostnames), max_size=4).map(tuple),
    expires=st.one_of(st.none(), st.integers(1, 2**32 - 1).map(lambda m: m * 60)),
)


@given(invites)
@settings(max_examples=300)
def test_decode_returns_the_invite_that_was_encoded(invite: Invite) -> None:
    code = encode(invite)
    assert decode(code, now=0) == invite


@given(invites)
@settings(max_examples=100)
def test_a_code_is_potluck_then_groups_of_four_base32_characters(invite: Invite) -> None:
    code = encode(invite)
    prefix, *groups = code.split("-")
    assert prefix == "potluck"
    assert all(len(group) == 4 for group in groups[:-1]) and 1 <= len(groups[-1]) <= 4
    assert set("".join(groups)) <= set(ALPHABET)
    assert invite_length(code) == len(code) - code.count("-")


def test_a_typical_invite_is_110_characters_to_type() -> None:
    code = sample()
    assert invite_length(code) == 110  # stated in docs/decisions/0006
    assert len(code) == 136


def test_expiry_is_rounded_up_to_the_minute() -> None:
    invite = Invite(SECRET, "Eastside Pantry", (), 1_790_000_001)
    assert decode(encode(invite), now=0).expires == 1_790_000_040


def test_invite_for_sets_the_expiry_from_now() -> None:
    group = Group.from_secret(SECRET, "Eastside Pantry")
    invite = invite_for(group, ["10.0.0.2:7717"], valid_for=3600, now=NOW)
    assert invite.expires is not None and NOW + 3600 <= invite.expires < NOW + 3660
    assert invite_for(group, now=NOW).expires is None


def test_group_of_gives_the_inviters_group_id() -> None:
    inviter = Group.new("Eastside Pantry")
    code = encode(invite_for(inviter, ["192.168.1.20:7717"], valid_for=86400, now=NOW))
    joined = group_of(decode(code, now=NOW + 60))
    assert joined == inviter
    assert joined.id == inviter.id and joined.secret == inviter.secret


# -- typos ------------------------------------------------------------------------------


def test_every_single_wrong_character_at_every_place_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # All 31 wrong letters at every place; the hint search is switched off to keep this
    # fast (the next test checks the hint at every place).
    monkeypatch.setattr("sync.invite._where", lambda values: "")
    code = sample()
    for i in body_positions(code):
        for char in ALPHABET.replace(code[i], ""):
            with pytest.raises(UsageError) as caught:
                decode(code[:i] + char + code[i + 1 :], now=NOW)
            assert str(caught.value) == TYPO


def test_every_swap_of_two_neighbouring_characters_is_caught(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("sync.invite._where", lambda values: "")
    body = sample()[len("potluck-") :].replace("-", "")
    for i in range(len(body) - 1):
        if body[i] != body[i + 1]:
            swapped = body[:i] + body[i + 1] + body[i] + body[i + 2 :]
            with pytest.raises(UsageError, match="typo"):
                decode("potluck" + swapped, now=NOW)


def test_a_wrong_character_is_caught_and_its_group_named() -> None:
    code = sample()
    for i in body_positions(code):
        char = ALPHABET[(ALPHABET.index(code[i]) + 7) % 32]
        with pytest.raises(UsageError) as caught:
            decode(code[:i] + char + code[i + 1 :], now=NOW)
        message = str(caught.value)
        assert message.startswith(TYPO) and "looks wrong" in message, message
        assert typo_group(message) == code[:i].count("-"), message  # numbered from 1


def test_every_position_of_the_shown_code_detects_a_substituted_character() -> None:
    code = sample()
    for i, original in enumerate(code):
        char = "X" if original not in "Xx" else "Y"
        with pytest.raises(UsageError) as caught:
            decode(code[:i] + char + code[i + 1 :], now=NOW)
        message = str(caught.value)
        if i < len("potluck"):
            assert "not a Potluck invite" in message
        else:
            assert message.startswith(TYPO), (i, message)


def test_a_missing_extra_or_swapped_character_is_caught_with_a_hint() -> None:
    code = sample()
    i = body_positions(code)[9]  # third group, second letter
    swapped_at = next(
        j for j in body_positions(code) if j > i and code[j] != code[j + 1] and code[j + 1] != "-"
    )
    cases = {
        "missing": code[:i] + code[i + 1 :],
        "too many": code[:i] + ("7" if code[i] != "7" else "8") + code[i:],
        "swapped": (
            code[:swapped_at] + code[swapped_at + 1] + code[swapped_at] + code[swapped_at + 2 :]
        ),
    }
    for hint, typo in cases.items():
        with pytest.raises(UsageError) as caught:
            decode(typo, now=NOW)
        assert str(caught.value).startswith(TYPO)
        assert hint in str(caught.value), str(caught.value)


def test_a_character_that_is_not_in_the_alphabet_is_named() -> None:
    code = sample()
    i = body_positions(code)[5]
    with pytest.raises(UsageError, match=r"'U' in group 2 cannot be in an invite code"):
        decode(code[:i] + "U" + code[i + 1 :], now=NOW)


def test_padding_bits_are_part_of_the_code() -> None:
    # A code whose last character differs only in its unused bits is a typo too.
    code = sample()
    last = ALPHABET.index(code[-1])
    for other in range(32):
        if other != last:
            with pytest.raises(UsageError, match="typo"):
                decode(code[:-1] + ALPHABET[other], now=NOW)


def test_a_cut_short_code_is_refused() -> None:
    code = sample()
    for cut in (len("potluck"), len("potluck-"), 20, len(code) - 5):
        with pytest.raises(UsageError):
            decode(code[:cut], now=NOW)


# -- normalisation ----------------------------------------------------------------------


def test_case_spaces_and_dashes_do_not_matter() -> None:
    code = sample()
    expected = decode(code, now=NOW)
    spaced = code.replace("-", " ")
    unbroken = "potluck" + code[len("potluck") :].replace("-", "")
    dashed = code.replace("-", "\u2013")  # a word processor's en dash
    for variant in (code.lower(), code.upper(), spaced, unbroken, dashed, f"  {code}\n"):
        assert decode(variant, now=NOW) == expected


def test_i_and_l_read_as_one_and_o_as_zero() -> None:
    code = encode(Invite(bytes(32), "Zeros", (), None))  # many 0 characters
    assert "0" in code[8:]
    misread = "potluck" + code[7:].replace("0", "O")
    assert decode(misread, now=NOW) == decode(code, now=NOW)
    ones = next(
        encode(Invite(bytes([n]) * 32, "Ones", (), None))
        for n in range(256)
        if "1" in encode(Invite(bytes([n]) * 32, "Ones", (), None))[8:]
    )
    for letter in "IiLl":
        assert decode("potluck" + ones[7:].replace("1", letter), now=NOW).name == "Ones"


# -- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text", ["hello", "https://example.org/join", "P0TLUCK-1234", "0439-XT4J-H6HV"]
)
def test_something_else_is_not_an_invite(text: str) -> None:
    with pytest.raises(UsageError, match="not a Potluck invite: it does not start with"):
        decode(text, now=NOW)


def test_an_empty_code_is_refused() -> None:
    with pytest.raises(UsageError, match="no invite code given"):
        decode("  ", now=NOW)


def test_an_expired_invite_is_refused_with_its_date() -> None:
    expires = 1_796_047_200  # 2026-11-30 14:00 UTC
    code = encode(Invite(SECRET, "Eastside Pantry", ("192.168.1.20:7717",), expires))
    assert decode(code, now=expires - 1).expires == expires
    with pytest.raises(UsageError) as caught:
        decode(code, now=expires)
    assert str(caught.value) == ("this invite expired on 2026-11-30 14:00 UTC: ask for a new one")


def _with_checksum(payload: bytes) -> str:
    """A code for an arbitrary payload, as a faulty or future encoder would make it."""
    data = payload + zlib.crc32(payload).to_bytes(4, "little")
    n_chars = -(-len(data) * 8 // 5)
    number = int.from_bytes(data, "big") << (n_chars * 5 - len(data) * 8)
    return "potluck" + "".join(ALPHABET[(number >> (5 * i)) & 31] for i in reversed(range(n_chars)))


def test_a_newer_invite_format_asks_for_an_update() -> None:
    code = _with_checksum(bytes([2]) + SECRET + bytes(4) + b"\x01A")
    with pytest.raises(UsageError, match=r"newer Potluck \(invite format 2\): update"):
        decode(code, now=NOW)


@pytest.mark.parametrize(
    "payload",
    [
        bytes([1]) + SECRET + bytes(4) + b"\x05Ab",  # name cut short
        bytes([1]) + SECRET + bytes(4) + b"\x01A\x09" + bytes(6),  # unknown address kind
        bytes([1]) + SECRET + bytes(4) + b"\x02\xff\xfe",  # name is not UTF-8
        bytes([1]) + SECRET + bytes(4) + b"\x00",  # empty name
    ],
)
def test_a_well_checksummed_but_malformed_code_is_damaged(payload: bytes) -> None:
    with pytest.raises(UsageError, match=r"the invite code is damaged .*ask for a new one"):
        decode(_with_checksum(payload), now=NOW)


# -- addresses --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, expected",
    [
        ("192.168.1.20:7717", ("192.168.1.20", 7717)),
        ("[fe80::1]:7717", ("fe80::1", 7717)),
        ("pantry.local:80", ("pantry.local", 80)),
    ],
)
def test_addresses_in_every_form_parse(address: str, expected: tuple[str, int]) -> None:
    assert parse_address(address) == expected


@pytest.mark.parametrize(
    "address, problem",
    [
        ("192.168.1.20", "not an address"),
        ("fe80::1:7717", "brackets"),
        ("0.0.0.0:7717", "cannot be dialled"),
        ("[::]:7717", "cannot be dialled"),
        ("pantry.local:0", "no valid port"),
        ("pantry.local:70000", "no valid port"),
        ("bad host:7717", "not a host name"),
        ("[fe80::1%eth0]:7717", "interface"),
    ],
)
def test_an_invite_refuses_an_address_nobody_can_dial(address: str, problem: str) -> None:
    with pytest.raises(UsageError, match=problem):
        Invite(SECRET, "Eastside Pantry", (address,), None)


def test_an_invite_refuses_a_bad_secret_or_name() -> None:
    with pytest.raises(UsageError, match="32-byte"):
        Invite(b"short", "Eastside Pantry")
    with pytest.raises(UsageError, match="group name"):
        Invite(SECRET, " ")
    with pytest.raises(UsageError, match="group name"):
        Invite(SECRET, "x" * (MAX_NAME_CHARS + 1))
