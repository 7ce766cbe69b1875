"""Who may use this node's page: the ASGI middleware in front of every request.

Why it matters: the page acts with this node's signing key, so whoever can post a form
can speak for this member. Four rules, checked in order:

1. **Host** (only when there is no access token, i.e. loopback): the ``Host`` header
   must name this machine (127.0.0.1, localhost, [::1]). A web page elsewhere could
   otherwise point its own domain at 127.0.0.1 ("DNS rebinding") and read and post
   here as if it were this origin.
2. **Access token** (when the app was made with ``token=...``, which exposing beyond
   the machine requires): ``Authorization: Bearer <token>``, or the token's cookie.
   ``?token=<token>`` once sets that cookie and redirects to the same address without
   it, so the token does not stay in the address bar or the history. The static assets
   are open: they hold nothing of the group.
3. **Size**: a request body larger than ``MAX_BODY`` is refused before it is read.
4. **Session**: every browser gets a random session cookie; forms carry a CSRF token
   derived from it (``csrf_token``) that ``node/web/app.py`` checks on each POST.

Cookies are named after the node (``potluck_<8 hex of its key>_...``) because browsers
do not separate cookies by port: two nodes on one machine must not share a session.
Every response gets headers that keep the page out of frames and other origins
(Content-Security-Policy allows only this origin's scripts and styles).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable
from http.cookies import SimpleCookie
from urllib.parse import urlencode

from starlette.datastructures import URL, MutableHeaders
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_BODY = 64 * 1024
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "[::1]", "::1"})
SESSION_MAX_AGE = 400 * 24 * 3600  # browsers cap cookie lifetimes at 400 days

SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

ErrorPage = Callable[[Request, str, int], Response]
"""Renders the page for a refusal: (request, catalog key prefix, HTTP status)."""


class Cookies:
    """The names of this node's cookies and the secret its CSRF tokens derive from."""

    def __init__(self, node_key_hex: str, secret: bytes) -> None:
        prefix = f"potluck_{node_key_hex[:8]}"
        self.session = f"{prefix}_session"
        self.token = f"{prefix}_token"
        self.flash = f"{prefix}_flash"
        self.language = "potluck_lang"  # one choice for every node on this browser
        self._secret = secret

    def csrf_token(self, session: str) -> str:
        """The token that forms of ``session`` carry; stable across restarts."""
        return hmac.new(self._secret, session.encode(), hashlib.sha256).hexdigest()[:32]

    def csrf_ok(self, session: str | None, token: str | None) -> bool:
        if not session or not token:
            return False
        return hmac.compare_digest(self.csrf_token(session), token)


class Guard:
    """The ASGI middleware applying the rules of this module's docstring."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        cookies: Cookies,
        token: str | None,
        error_page: ErrorPage,
        allowed_hosts: frozenset[str] | None = None,
    ) -> None:
        self.app = app
        self.cookies = cookies
        self.token = token
        self.error_page = error_page
        # With a token anyone who has it may come from any address; without one, only
        # this machine's own names are allowed (rule 1).
        self.allowed_hosts = (
            allowed_hosts if allowed_hosts is not None else (None if token else LOOPBACK_HOSTS)
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        refusal = self._refusal(request)
        if refusal is not None:
            await self._with_headers(refusal)(scope, receive, send)
            return
        if self._token_matches(request.query_params.get("token")):
            await self._with_headers(self._accept_token(request))(scope, receive, send)
            return
        session = request.cookies.get(self.cookies.session)
        new_session = None
        if not session or len(session) > 64:
            session = new_session = secrets.token_urlsafe(24)
        scope.setdefault("state", {})["session"] = session

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
                if new_session is not None:
                    headers.append(
                        "set-cookie", _cookie(self.cookies.session, new_session, SESSION_MAX_AGE)
                    )
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _refusal(self, request: Request) -> Response | None:
        host = _host_name(request.headers.get("host", ""))
        if self.allowed_hosts is not None and host not in self.allowed_hosts:
            return self.error_page(request, "page.host", 403)
        if (
            self.token
            and not request.url.path.startswith("/static/")
            and not self._has_token(request)
            and not self._token_matches(request.query_params.get("token"))
        ):
            return self.error_page(request, "page.auth", 401)
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None or not length.isdigit() or int(length) > MAX_BODY:
                return self.error_page(request, "page.too_large", 413)
        return None

    def _has_token(self, request: Request) -> bool:
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and self._token_matches(value.strip()):
            return True
        return self._token_matches(request.cookies.get(self.cookies.token))

    def _token_matches(self, value: str | None) -> bool:
        if not value or self.token is None:
            return False
        return hmac.compare_digest(value.encode(), self.token.encode())

    def _accept_token(self, request: Request) -> Response:
        """Remember the token in a cookie and reload the address without it."""
        query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
        target = URL(path=request.url.path, query=query)
        response = RedirectResponse(str(target), status_code=303)
        assert self.token is not None
        response.headers.append(
            "set-cookie", _cookie(self.cookies.token, self.token, SESSION_MAX_AGE)
        )
        return response

    @staticmethod
    def _with_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        return response


def _host_name(host: str) -> str:
    """The Host header without its port: 'localhost:7718' -> 'localhost'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _cookie(name: str, value: str, max_age: int | None) -> str:
    """A Set-Cookie value: HttpOnly, SameSite=Lax, for the whole site."""
    cookie: SimpleCookie = SimpleCookie()
    cookie[name] = value
    morsel = cookie[name]
    morsel["path"] = "/"
    morsel["httponly"] = True
    morsel["samesite"] = "Lax"
    if max_age is not None:
        morsel["max-age"] = max_age
    return morsel.OutputString()
