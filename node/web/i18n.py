"""Every string a person reads in the web UI, in English and Spanish.

The strings live in data files, ``locales/<language>.json`` (one flat object each),
read once at import; this module looks them up and formats them. Why JSON and not
gettext: docs/decisions/0014-translations-as-json.md. A test checks that every
language has the same keys with the same ``{placeholders}``. Adding a language is
adding its file and its name to ``LANGUAGE_NAMES``.

Plurals: a key ``x`` with a count is looked up as ``x.one`` (n == 1) or ``x.other``;
English and Spanish both need no more forms than that.

Messages are formatted with ``str.format``: the templates escape the result, so a
parameter (a name typed by a member) can never become markup.

Errors of a body field: ``InvalidBody`` carries a stable ``problem`` (eventlog/errors.py
``BODY_PROBLEMS``) and its ``params``; its message is the key ``error.<problem>``
formatted with them, so no English is parsed to translate it.

Which language: ``?lang=xx`` (stored in a cookie by the app), else the cookie, else
the browser's ``Accept-Language``, else English.
"""

from __future__ import annotations

import datetime
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from eventlog.errors import BodyProblem, InvalidBody

DEFAULT_LANGUAGE = "en"
LANGUAGE_NAMES: dict[str, str] = {"en": "English", "es": "Español"}


@dataclass(frozen=True, slots=True)
class Message:
    """A catalog key and its parameters, translated only when shown."""

    key: str
    params: Mapping[str, object] = field(default_factory=dict)


LOCALES = Path(__file__).parent / "locales"
"""One ``<language>.json`` per language: a flat object, key -> ``str.format`` template."""


def read_catalog(language: str) -> dict[str, str]:
    """The strings of ``language`` from its catalogue file; a malformed file fails loudly."""
    strings = json.loads((LOCALES / f"{language}.json").read_text(encoding="utf-8"))
    if not isinstance(strings, dict) or not all(
        isinstance(key, str) and isinstance(text, str) for key, text in strings.items()
    ):
        raise ValueError(f"{language}.json must be an object of strings")
    return strings


CATALOG: dict[str, dict[str, str]] = {
    language: read_catalog(language) for language in LANGUAGE_NAMES
}
"""Every language's strings, read once when the web UI is imported."""
EN = CATALOG["en"]
ES = CATALOG["es"]


class Translator:
    """The strings of one language: ``t("key", name=...)``, ``t.plural("key", n)``."""

    def __init__(self, language: str) -> None:
        self.language = language if language in CATALOG else DEFAULT_LANGUAGE
        self._strings = CATALOG[self.language]

    def __call__(self, key: str | Message, /, **params: object) -> str:
        if isinstance(key, Message):
            params = {**key.params, **params}
            key = key.key
        # A missing key shows itself (tests catch it) rather than breaking the page.
        text = self._strings.get(key) or EN.get(key) or key
        return text.format(**params) if params else text

    def plural(self, key: str, n: int, /, **params: object) -> str:
        return self(f"{key}.{'one' if n == 1 else 'other'}", n=n, **params)

    def day(self, value: datetime.date, *, year: bool = False) -> str:
        """'Mon 24 Nov' (with the year when asked)."""
        return self(
            "time.day_year" if year else "time.day",
            weekday=self(f"weekday.{value.weekday()}"),
            day=value.day,
            month=self(f"month.{value.month}"),
            year=value.year,
        )

    def date_text(self, iso: str | None, today: datetime.date) -> str:
        """A stored 'YYYY-MM-DD' as a short day; the year only when it is not this year."""
        if not iso:
            return ""
        try:
            value = datetime.date.fromisoformat(iso[:10])
        except ValueError:
            return iso
        return self.day(value, year=value.year != today.year)

    def ago(self, moment: datetime.datetime, now: datetime.datetime) -> str:
        """How long ago ``moment`` was, coarsely; a day when over a day ago."""
        seconds = (now - moment).total_seconds()
        if seconds < 60:
            return self("time.just_now")
        if seconds < 3600:
            return self("time.minutes_ago", n=int(seconds // 60))
        if seconds < 86400:
            return self("time.hours_ago", n=int(seconds // 3600))
        local = moment.astimezone()
        return self.day(local.date(), year=local.year != now.astimezone().year)


def negotiate(accept_language: str | None) -> str:
    """The best of our languages for an ``Accept-Language`` header (RFC 9110 §12.5.4)."""
    best, best_q = DEFAULT_LANGUAGE, -1.0
    for position, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        primary = tag.strip().lower().split("-")[0]
        if primary not in CATALOG:
            continue
        q = 1.0
        match = re.search(r"q\s*=\s*([0-9.]+)", params)
        if match:
            try:
                q = float(match.group(1))
            except ValueError:
                q = 0.0
        q -= position * 1e-6  # equal weights: the earlier one wins
        if q > best_q and q > 0:
            best, best_q = primary, q
    return best


def problem_message(problem: BodyProblem, /, **params: object) -> Message:
    """The message for one of the body's problems: key ``error.<problem>``, the same
    whether eventlog/body.py found it or the form did before building the body."""
    return Message(f"error.{problem}", params)


def body_problem(exc: InvalidBody) -> Message:
    """How an ``InvalidBody`` reads to a person, from its values, not its English.

    The body stays the one place that decides what is valid; this only names the
    message for its ``problem`` with its ``params``.
    """
    return problem_message(exc.problem, **exc.params)
