"""What doctor found, and how it reads on a terminal or as JSON.

Kept apart from the checks so that ``potluck doctor``'s words (the text and the
``--json`` output the command promises) live in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from node.doctor.database import LOG_FILE

Severity = Literal["ok", "info", "warning", "error"]

MAX_DETAILS = 12
"""Findings of one kind listed one by one; the rest are counted in one more line."""


@dataclass(frozen=True, slots=True)
class Finding:
    """One thing doctor found. ``author``/``seq`` name the event when there is one."""

    severity: Severity
    code: str
    message: str
    author: bytes | None = None
    seq: int | None = None

    def to_json(self) -> dict[str, object]:
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "author": self.author.hex() if self.author else None,
            "seq": self.seq,
        }


@dataclass(slots=True)
class Report:
    """What ``examine`` found, or what ``repair`` did and what remains."""

    data_dir: Path
    findings: list[Finding] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)
    found: list[Finding] = field(default_factory=list)
    """For a repair: what the examination before it found."""
    events: int = 0
    authors: int = 0
    pending: int = 0
    opened: bool = False
    """Whether the log could be read at all (the counts mean something)."""

    @property
    def healthy(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    @property
    def exit_code(self) -> int:
        return 0 if self.healthy else 1

    def codes(self, severity: Severity | None = None) -> set[str]:
        return {f.code for f in self.findings if severity is None or f.severity == severity}

    def to_json(self) -> dict[str, object]:
        return {
            "data_dir": str(self.data_dir),
            "healthy": self.healthy,
            "events": self.events,
            "authors": self.authors,
            "pending": self.pending,
            "findings": [f.to_json() for f in self.findings],
            "repairs": list(self.repairs),
            "found": [f.to_json() for f in self.found],
        }


_MARK = {"ok": "ok      ", "info": "note    ", "warning": "warning ", "error": "PROBLEM "}
NOT_REPAIRABLE = frozenset(
    {"no-log", "identity", "wrong-group", "schema-version", "busy", "unreadable", "own-chain"}
)
"""Problems --repair leaves alone: they need a person (or a sync), not a rewrite."""


def render(report: Report, *, repaired: bool = False) -> list[str]:
    """The report as lines for a terminal."""
    where = report.data_dir / LOG_FILE
    lines = [
        f"Checked {where}: {plural(report.events, 'event')} from "
        f"{plural(report.authors, 'member')}, {report.pending:,} held."
        if report.opened
        else f"Checked {where}."
    ]
    if repaired:
        if report.repairs:
            lines.append("Repairs:")
            lines += [f"  done    {text}" for text in report.repairs]
        else:
            lines.append("Nothing needed repairing.")
    lines += [f"  {_MARK[f.severity]}{f.message}" for f in report.findings]
    if report.healthy:
        lines.append("The database is healthy." if not repaired else "The database is healthy now.")
    elif not repaired and report.codes("error") - NOT_REPAIRABLE:
        lines.append("Problems found: run 'potluck doctor --repair' (stop 'potluck serve' first).")
    else:
        lines.append("Problems remain: see above.")
    return lines


def plural(count: int, noun: str) -> str:
    """'1 event', '1,204 events'."""
    return f"{count:,} {noun}" + ("" if count == 1 else "s")
