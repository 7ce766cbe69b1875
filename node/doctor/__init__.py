"""``potluck doctor``: check a node's database and say in plain words what is wrong.

What it checks, in this order (each finding has a severity, a stable code and a message
a volunteer can act on):

1. the file: is it an SQLite database at all, ``PRAGMA quick_check`` and
   ``integrity_check``, the tables and the group of the log;
2. every row of ``events``: its wire bytes decode, belong to this group and match the
   columns stored next to them (hash, author, seq, hlc, type);
3. ``heads`` (each member's last event, which sync sends as "what I have") against the
   events themselves;
4. every member's chain, streamed 500 events at a time: seq continues, each ``prev``
   is the hash of the event before, and the last signature of each chunk verifies
   (``events.verify_chain``: the signed hash chain covers the rest); the first event is
   a ``member.joined`` with a valid membership proof. Where a chunk fails, each event is
   checked on its own to name the damaged one;
5. deps, in canonical order: every event's deps are in the log and older;
6. ``pending`` (events held for a missing predecessor or dep): readable, signed, how
   many and how old; ``forks`` (a member who wrote two versions of one event);
7. projections: the digest of the board, inventory and roster tables, and a hash of the
   fold states and index, against a rebuild from the log.

Each rule of the log is checked by the store's own function (eventlog), so doctor
keeps what the store would accept from a peer and nothing else.

How ``examine`` changes nothing: phases 2 to 7 run inside one ``BEGIN IMMEDIATE``
transaction that is rolled back. ``repair`` runs the same code and commits, so what
examine reports is exactly what repair does:

- an event that cannot be verified (unreadable, bad signature, another group, not
  continuing its chain) is moved to a ``quarantine`` table with the reason; nothing
  that verifies is ever deleted;
- a verified event whose predecessor or dep is no longer in the log is moved to
  ``pending``, exactly as if it had just arrived from a peer: the next sync that brings
  the missing event releases it (``Store.receive``);
- a row whose columns disagree with its (verified) bytes gets its columns rewritten;
- ``heads`` is recomputed from the events; projections are rebuilt.

If the SQLite file itself is damaged (integrity check fails and ``REINDEX`` does not
fix it, or it is not a database any more), ``repair`` *salvages*: it keeps the
damaged file as ``log.db.damaged-<time>``, reads every ``events``, ``pending`` and
``forks`` row it can, one range or one row at a time, then scans the raw bytes of the
damaged file and its WAL for anything shaped like an event (every candidate must
decode canonically and pass the store's checks, so nothing invented gets in), and
feeds them all to a fresh log through ``Store.receive``, the path a peer's events
take. Other tables (``peers``) and settings are copied where readable.

Doctor composes the store and the projections, as ``node.app`` does; it opens the
database with the standard ``sqlite3`` module (``database.connect``) because
``Store.open`` refuses a damaged file. Stop ``potluck serve`` before ``--repair``: a
salvage replaces the file.

The modules: ``report`` (Finding, Report, render), ``examination`` (examine, phase 1),
``check`` (phases 2 to 6 and 8), ``projection`` (phase 7), ``fix`` (repair in place),
``salvage`` (a damaged file into a fresh log), ``database`` (the raw file and the
quarantine table).
"""

from __future__ import annotations

from node.doctor.examination import examine
from node.doctor.fix import repair
from node.doctor.report import NOT_REPAIRABLE, Finding, Report, Severity, render

__all__ = ["NOT_REPAIRABLE", "Finding", "Report", "Severity", "examine", "render", "repair"]
