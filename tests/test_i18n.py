"""The translation catalogues (node/web/locales/*.json) and the body's problems in them.

The catalogues are data files: these tests read them as files, so a key missing from
one language, a placeholder spelled differently, or a body problem nobody translated
fails here rather than on a page.
"""

from __future__ import annotations

import json
import string
from collections.abc import Callable
from pathlib import Path

import pytest

from eventlog import body as b
from eventlog.errors import BODY_PROBLEMS, InvalidBody
from node.web.i18n import CATALOG, LANGUAGE_NAMES, LOCALES, Translator, body_problem

KEY = bytes(32)
OFFER = {"title": "Beans", "category": "food"}
SHIFT = {"role": "driver", "location": "st-marys", "slots": 2}


def _files() -> dict[str, dict[str, str]]:
    return {
        path.stem: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(LOCALES.glob("*.json"))
    }


def _placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_every_language_has_its_file_and_every_file_its_language() -> None:
    assert set(_files()) == set(LANGUAGE_NAMES)


def test_catalogue_files_have_the_same_keys_and_placeholders() -> None:
    files = _files()
    english = files.pop("en")
    for language, strings in files.items():
        assert strings.keys() == english.keys(), language
        for key, text in english.items():
            assert _placeholders(strings[key]) == _placeholders(text), (language, key)


def test_the_module_serves_what_the_files_hold() -> None:
    assert _files() == CATALOG


def test_every_body_problem_has_a_message_in_every_language() -> None:
    for language, strings in _files().items():
        missing = [p for p in BODY_PROBLEMS if f"error.{p}" not in strings]
        assert not missing, (language, missing)


# One way to cause each problem eventlog/body.py can raise.
CAUSES: dict[str, Callable[[], object]] = {
    "not-a-map": lambda: b.parse("offer.posted", [1]),  # type: ignore[arg-type]
    "required": lambda: b.OfferPosted.from_body({"category": "food"}),
    "not-text": lambda: b.OfferPosted.from_body({**OFFER, "title": 5}),
    "too-long": lambda: b.OfferPosted(title="x" * 201),
    "control-character": lambda: b.OfferPosted(title="a\x01b"),
    "not-a-slug": lambda: b.LocationDefined(slug="Moon!", name="Moon", kind="other"),
    "not-a-language-tag": lambda: b.MemberJoined(name="Ana", languages=("EN",), proof=KEY),
    "not-a-positive-integer": lambda: b.ClaimMade(target=KEY, quantity=0),
    "not-a-non-negative-integer": lambda: b.StockCounted(item="rice", location="hub", count=-1),
    "not-a-non-zero-integer": lambda: b.StockAdjusted(
        item="rice", location="hub", delta=0, reason="donation"
    ),
    "out-of-range": lambda: b.ShiftScheduled.from_body(
        {**SHIFT, "start": "2030-01-07T09:00", "end": "2030-01-07T10:00", "slots": 1001}
    ),
    "bad-hours": lambda: b.ShiftCompleted(shift=KEY, hours=25),
    "not-a-choice": lambda: b.NeedPosted.from_body({**OFFER, "urgency": "panic"}),
    "bad-date": lambda: b.OfferPosted(title="Beans", until="2026-02-30"),
    "bad-datetime": lambda: b.ShiftScheduled.from_body(
        {**SHIFT, "start": "9am", "end": "2030-01-07T10:00"}
    ),
    "bad-bytes": lambda: b.OfferWithdrawn(offer=b"short"),
    "not-a-list": lambda: b.MemberJoined.from_body({"name": "Ana", "proof": KEY, "languages": 1}),
    "too-many-items": lambda: b.MemberJoined(name="Ana", languages=("en",) * 11, proof=KEY),
    "repeated-item": lambda: b.MemberJoined(name="Ana", languages=("en", "en"), proof=KEY),
    "bad-version": lambda: b.OfferPosted.from_body({**OFFER, "_v": 1}),
    "newer-version": lambda: b.OfferPosted.from_body({**OFFER, "_v": 2}),
    "mixed-timezones": lambda: b.ShiftScheduled.from_body(
        {**SHIFT, "start": "2030-01-07T09:00+01:00", "end": "2030-01-07T10:00"}
    ),
    "end-before-start": lambda: b.ShiftScheduled.from_body(
        {**SHIFT, "start": "2030-01-07T09:00", "end": "2030-01-07T08:00"}
    ),
}


def test_causes_cover_every_problem() -> None:
    assert sorted(CAUSES) == sorted(BODY_PROBLEMS)


def test_every_body_problem_is_raised_somewhere_in_the_body_module() -> None:
    source = (Path(b.__file__)).read_text(encoding="utf-8")
    assert [p for p in BODY_PROBLEMS if f'"{p}"' not in source] == []


@pytest.mark.parametrize("problem", sorted(CAUSES))
@pytest.mark.parametrize("language", sorted(LANGUAGE_NAMES))
def test_each_problem_reads_in_each_language_from_its_values(problem: str, language: str) -> None:
    with pytest.raises(InvalidBody) as caught:
        CAUSES[problem]()
    assert caught.value.problem == problem
    message = body_problem(caught.value)
    assert message.key == f"error.{problem}"
    text = Translator(language)(message)  # every placeholder is one of the error's params
    assert text and "{" not in text
    assert text != str(caught.value)  # a sentence for people, not the log's message


def test_english_message_is_the_template_filled_and_kept_for_the_cli() -> None:
    with pytest.raises(InvalidBody) as caught:
        b.OfferPosted(title="x" * 201)
    error = caught.value
    assert str(error) == "title: must be at most 200 characters, got 201"
    assert (error.field, error.problem, error.params) == (
        "title",
        "too-long",
        {"max": 200, "n": 201},
    )
    assert error.code == "invalid-body"  # the wire code of every body error stays
    spanish = Translator("es")(body_problem(error))
    assert spanish == "Demasiado largo: como máximo 200 caracteres (tiene 201)."
