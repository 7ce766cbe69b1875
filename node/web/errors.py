"""Errors of the web UI, as a tree.

Why a tree: each branch is one HTTP answer. A form whose values cannot become a
valid event is re-rendered with the message beside the field (400); a form posted
without this session's CSRF token is refused (403); a request without the access
token, when the UI is exposed beyond this machine, is refused (401). Nothing is
written in any of these cases.

    PotluckError                 (eventlog/errors.py)
    └── WebError
        ├── FormInvalid          a field's value is wrong (names the fields; 400)
        └── CsrfRejected         the form's CSRF token is missing or wrong (403)

Errors raised by the node while posting (``InvalidBody``, ``UsageError``) keep their
own classes: the web layer turns them into messages beside the fields in
``Fields.build`` (node/web/form.py) and ``Web.submit`` (node/web/app.py). An
``InvalidBody`` is translated from its ``problem`` and ``params``
(``i18n.body_problem``), not from its English text.
"""

from __future__ import annotations

from collections.abc import Mapping

from eventlog.errors import PotluckError
from node.web.i18n import Message


class WebError(PotluckError):
    """Root of the errors the web UI raises on purpose."""


class FormInvalid(WebError):
    """The submitted form cannot become an event; ``errors`` maps field -> message.

    The key ``""`` holds a message about the whole form (shown above it).
    """

    def __init__(self, errors: Mapping[str, Message]) -> None:
        super().__init__(", ".join(errors) or "form")
        self.errors = dict(errors)


class CsrfRejected(WebError):
    """The form did not carry the CSRF token of the session that loaded it."""
