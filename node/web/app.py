"""The Starlette app: pages, forms and the live feed of one node.

How a page works: a GET reads the node once (node/web/page.py) and renders a Jinja2
template into plain HTML that works without JavaScript. The part of the page that
shows data sits in ``<div id="live" data-log-id=N>``; static/live.js listens to
``/events`` (server-sent events from node/web/feed.py) and, when the log's counter
differs from N, re-fetches the same address and swaps that part in with htmx.

How a form works ("forms never lie"): a POST checks the CSRF token, turns the fields
into a typed body (node/web/form.py), and calls ``Node.post``, which returns only once
the event is on disk. Then, and only then, it redirects (303) to the page with a flash
that says "saved on this device". Any problem re-renders the page with the message
beside the field and status 400 (500 when the disk failed), and nothing is written:
the event is built completely before the one call that appends it.

"Shared with N peers" follows the flash only when the node gave ``peer_vectors`` (it
is serving sync): N is the number of connected peers whose vector holds the saved
event's (author, seq), first when the page renders, then live on ``/events?seq=``
(node/web/feed.py ``ShareWatch``).
"""

from __future__ import annotations

import datetime
import functools
import hashlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from eventlog import body as b
from eventlog.errors import InvalidBody, StorageError, UsageError
from node.app import Node
from node.web import form as f
from node.web import page
from node.web.errors import CsrfRejected, FormInvalid
from node.web.feed import ChangeFeed, PeerVectors, ShareWatch, merged
from node.web.guard import Cookies, Guard
from node.web.i18n import CATALOG, LANGUAGE_NAMES, Message, Translator, body_problem, negotiate
from node.web.page import FormState
from projections import views

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
PAGES = ("board", "inventory", "roster", "people", "sync")
FLASHES = frozenset(
    key.split(".", 1)[1]
    for key in CATALOG["en"]
    if key.startswith("flash.") and key != "flash.saved"
)
LANGUAGE_MAX_AGE = 400 * 24 * 3600
TARGET_TYPES = ("offer.posted", "need.posted")
SHIFT_TYPES = ("shift.scheduled",)
CLAIM_STEPS: dict[str, type[b.ClaimStep]] = {
    "confirm": b.ClaimConfirmed,
    "decline": b.ClaimDeclined,
    "release": b.ClaimReleased,
    "fulfil": b.ClaimFulfilled,
}

Build = Callable[[f.Fields, f.Known], Awaitable[b.BaseBody]]
Target = str | Callable[[Mapping[str, str]], str]
"""Where a form goes once saved: a path, or a function of the submitted values."""
Flash = str | Callable[[], str]
"""The flash key a saved form shows: a key, or a function called once it is saved."""


def create_app(
    node: Node,
    *,
    token: str | None = None,
    peer_vectors: PeerVectors | None = None,
    allowed_hosts: frozenset[str] | None = None,
) -> Starlette:
    """The web UI of ``node``.

    Without ``token`` the page answers only requests addressed to this machine's own
    names (127.0.0.1, localhost, [::1]); bind it to loopback. With ``token`` it answers
    any host, but only to a browser that presented the token once (``?token=``) or a
    client sending ``Authorization: Bearer <token>``. ``allowed_hosts`` overrides the
    Host names accepted (tests, or a name given on the LAN).

    ``peer_vectors``, when the node serves sync, returns what each connected peer
    device has of the log (one vector per peer, author -> (seq, head)); it is called
    on the node's event loop and must be quick. With it, a saved form also says
    "shared with N peers", live; without it, the page never says "shared".
    """
    web = Web(node, peer_vectors)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        web.close()

    routes: list[BaseRoute] = [
        Route("/", web.home),
        Route("/board", web.board),
        Route("/inventory", web.inventory),
        Route("/roster", web.roster),
        Route("/people", web.people),
        Route("/sync", web.sync),
        Route("/events", web.events),
        Route("/board/offer", web.post_offer, methods=["POST"]),
        Route("/board/need", web.post_need, methods=["POST"]),
        Route("/board/{entry}/claim", web.post_claim, methods=["POST"]),
        Route("/board/{entry}/withdraw", web.post_withdraw, methods=["POST"]),
        Route("/claims/{claim}/{step}", web.post_claim_step, methods=["POST"]),
        Route("/inventory/adjust", web.post_adjust, methods=["POST"]),
        Route("/inventory/count", web.post_count, methods=["POST"]),
        Route("/inventory/item", web.post_item, methods=["POST"]),
        Route("/inventory/location", web.post_location, methods=["POST"]),
        Route("/roster/shift", web.post_shift, methods=["POST"]),
        Route("/roster/{shift}/signup", web.post_signup, methods=["POST"]),
        Route("/roster/{shift}/withdraw", web.post_shift_withdraw, methods=["POST"]),
        Route("/roster/{shift}/hours", web.post_hours, methods=["POST"]),
        Route("/people/role", web.post_role, methods=["POST"]),
        Route("/people/assign", web.post_assign, methods=["POST"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(
                Guard,
                cookies=web.cookies,
                token=token,
                error_page=web.error_page,
                allowed_hosts=allowed_hosts,
            )
        ],
        exception_handlers={HTTPException: web.http_error, CsrfRejected: web.csrf_error},
        lifespan=lifespan,
    )
    app.state.web = web
    app.state.feed = web.feed
    return app


class Web:
    """The handlers of one node's pages; ``create_app`` routes to them."""

    def __init__(self, node: Node, peer_vectors: PeerVectors | None = None) -> None:
        self.node = node
        # CSRF tokens derive from the node's key, so a form opened before a restart of
        # `potluck serve` still posts after it (old laptops restart often).
        secret = hashlib.blake2b(
            b"potluck web csrf v1", key=bytes(node.key), digest_size=32
        ).digest()
        self.cookies = Cookies(node.author.hex(), secret)
        self.templates = Jinja2Templates(env=_environment())
        self.feed = ChangeFeed(lambda: node.store.read(page.last_id))
        on_change = getattr(node.store, "on_change", None)
        if callable(on_change):  # wake the feed at once on this process's own commits
            on_change(self.feed.notify)
        self.shares = ShareWatch(peer_vectors, node.author) if peer_vectors else None

    def close(self) -> None:
        """End every open live stream (server shutdown)."""
        self.feed.close()
        if self.shares is not None:
            self.shares.close()

    # -- rendering ---------------------------------------------------------------

    def translator(self, request: Request) -> tuple[Translator, str | None]:
        """The reader's language, and the language to remember when ``?lang=`` chose it."""
        chosen = request.query_params.get("lang")
        if chosen in CATALOG:
            return Translator(chosen), chosen
        stored = request.cookies.get(self.cookies.language)
        if stored in CATALOG:
            return Translator(stored), None
        return Translator(negotiate(request.headers.get("accept-language"))), None

    def _frame(self, request: Request, t: Translator, current: str) -> dict[str, Any]:
        """What every page's frame (base.html) needs."""

        def lang_url(code: str) -> str:
            params = [(k, v) for k, v in request.query_params.multi_items() if k != "lang"]
            return f"{request.url.path}?{urlencode([*params, ('lang', code)])}"

        return {
            "_": t,
            "t": t,
            "lang": t.language,
            "languages": LANGUAGE_NAMES,
            "lang_url": lang_url,
            "current": current,
            "options": _options,
        }

    async def show(
        self, request: Request, name: str, *, status: int = 200, form: FormState | None = None
    ) -> Response:
        """Render page ``name``: the whole page, or only its live part for htmx."""
        t, remember = self.translator(request)
        now = datetime.datetime.now(datetime.UTC)
        today = datetime.date.today()
        if name == "board":
            data = await page.board_view(self.node, t, now)
        elif name == "inventory":
            data = await page.inventory_view(self.node, t, today)
        elif name == "roster":
            week = page.parse_week(
                request.query_params.get("week") or (form.values.get("week") if form else None),
                today,
            )
            data = await page.roster_view(self.node, t, week, today)
        elif name == "people":
            data = await page.people_view(self.node, t, today)
        else:
            data = await page.sync_view(self.node, t, now)
        session = request.state.session
        forms = {form.name: form} if form else {}
        live_only = (
            request.headers.get("hx-request") == "true"
            and status == 200
            and "hx-boosted" not in request.headers
        )
        flash = shared = None
        flash_cookie = request.cookies.get(self.cookies.flash)
        flash_key, seq = _flash_of(flash_cookie)
        if not live_only and flash_key is not None:
            flash = f"{t(f'flash.{flash_key}')} {t('flash.saved')}"
            if seq is not None and self.shares is not None:
                peers = self.shares.count(seq)
                shared = {"seq": seq, "peers": peers, "text": _shared_text(t, peers)}
        context = {
            **self._frame(request, t, name),
            **data,
            "csrf": self.cookies.csrf_token(session),
            "form": lambda form_name: forms.get(form_name) or FormState(form_name),
            "failed": form,
            "flash": flash,
            "shared": shared,
            "me": await page.me_of(self.node),
            "me_key": self.node.author.hex()[:8],
            "group": self.node.group.name,
            "today": today.isoformat(),
            # Where live.js re-fetches this page: never the address of a POST whose
            # form came back with a problem.
            "live_url": f"/{name}" + (f"?week={data['week']}" if name == "roster" else ""),
        }
        template = f"{name}_live.html" if live_only else f"{name}.html"
        response = self.templates.TemplateResponse(request, template, context, status_code=status)
        response.headers["Cache-Control"] = "no-store"
        if remember:
            response.set_cookie(
                self.cookies.language,
                remember,
                max_age=LANGUAGE_MAX_AGE,
                httponly=True,
                samesite="lax",
            )
        if flash_cookie is not None and not live_only:
            response.delete_cookie(self.cookies.flash, httponly=True, samesite="lax")
        return response

    def error_page(self, request: Request, key: str, status: int) -> Response:
        """A page that says why the request was refused (no data of the group on it)."""
        t, _ = self.translator(request)
        context = {
            **self._frame(request, t, ""),
            "title": t(f"{key}.title"),
            "text": t(f"{key}.text"),
            "show_home": status != 401,
        }
        response = self.templates.TemplateResponse(
            request, "error.html", context, status_code=status
        )
        response.headers["Cache-Control"] = "no-store"
        return response

    async def http_error(self, request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        if status == 405:
            return Response("Method Not Allowed", status_code=405)
        key = "page.not_found" if status == 404 else "page.bad_request"
        return self.error_page(request, key, status)

    async def csrf_error(self, request: Request, exc: Exception) -> Response:
        return self.error_page(request, "page.csrf", 403)

    def redirect(self, target: str, flash: str, seq: int | None = None) -> Response:
        """To ``target``, which then says ``flash`` once (and, with the ``seq`` of the
        event this node just saved, how many peers have it)."""
        response = RedirectResponse(target, status_code=303)
        value = flash if seq is None else f"{flash}.{seq}"
        response.set_cookie(self.cookies.flash, value, max_age=60, httponly=True, samesite="lax")
        return response

    # -- pages -------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(f"/board{query}", status_code=303)

    async def board(self, request: Request) -> Response:
        return await self.show(request, "board")

    async def inventory(self, request: Request) -> Response:
        return await self.show(request, "inventory")

    async def roster(self, request: Request) -> Response:
        return await self.show(request, "roster")

    async def people(self, request: Request) -> Response:
        return await self.show(request, "people")

    async def sync(self, request: Request) -> Response:
        return await self.show(request, "sync")

    async def events(self, request: Request) -> Response:
        """Server-sent events: ``change`` with the log's counter each time it moves.

        With ``?seq=N`` (the page that just saved this node's event N), also ``shared``
        with ``{"peers": n, "text": ...}`` now and each time more peers have it.
        """
        seq = _seq_of(request.query_params.get("seq"))
        shares = self.shares if seq is not None else None
        t, _ = self.translator(request)

        async def changes() -> AsyncGenerator[str]:
            async for value in self.feed.listen():
                yield ": keepalive\n\n" if value is None else f"event: change\ndata: {value}\n\n"

        async def shared(watch: ShareWatch, seq: int) -> AsyncGenerator[str]:
            async for peers in watch.watch(seq):
                data = json.dumps({"peers": peers, "text": _shared_text(t, peers)})
                yield f"event: shared\ndata: {data}\n\n"

        async def stream() -> AsyncIterator[str]:
            yield "retry: 2000\n\n"
            source = changes()
            if shares is not None and seq is not None:
                source = merged(source, shared(shares, seq))
            async for chunk in source:
                yield chunk

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    # -- forms -------------------------------------------------------------------

    async def _fields(self, request: Request) -> dict[str, str]:
        """The form's text fields, once its CSRF token matched this session's."""
        data = await request.form(max_files=0, max_fields=64)
        values = {k: v for k, v in data.items() if isinstance(v, str)}
        if not self.cookies.csrf_ok(request.state.session, values.get("csrf")):
            raise CsrfRejected("the form's CSRF token does not match this session")
        values.pop("csrf", None)
        return values

    async def submit(
        self,
        request: Request,
        *,
        name: str,
        form: str,
        build: Build,
        flash: Flash,
        target: Target | None = None,
    ) -> Response:
        """Build the body, post it, redirect with ``flash``; or re-render ``name``."""
        values = await self._fields(request)
        fields = f.Fields(values)
        errors: dict[str, Message]
        status = 400
        try:
            body = await build(fields, await page.known(self.node))
            saved = await self.node.post(body)  # durable when it returns
        except FormInvalid as exc:
            errors = exc.errors
        except InvalidBody as exc:
            errors = {exc.field: body_problem(exc)}
        except UsageError as exc:
            errors = {"": Message("error.node", {"text": str(exc)})}
        except StorageError as exc:
            errors, status = {"": Message("error.node", {"text": str(exc)})}, 500
        else:
            where = target(values) if callable(target) else target
            key = flash() if callable(flash) else flash
            return self.redirect(where or f"/{name}", key, saved.seq)
        state = FormState(form, values, errors)
        return await self.show(request, name, status=status, form=state)

    async def post_offer(self, request: Request) -> Response:
        async def build(fields: f.Fields, known: f.Known) -> b.BaseBody:
            return f.offer_body(fields, known)

        return await self.submit(
            request, name="board", form="offer", build=build, flash="offer_posted"
        )

    async def post_need(self, request: Request) -> Response:
        async def build(fields: f.Fields, known: f.Known) -> b.BaseBody:
            return f.need_body(fields, known)

        return await self.submit(
            request, name="board", form="need", build=build, flash="need_posted"
        )

    async def _open_entry(self, hex_id: str) -> Mapping[str, object]:
        id_ = _entity_id(hex_id)
        entry = await self.node.store.read(functools.partial(views.board_entry, id_=id_))
        if entry is None or entry["status"] != "open":
            raise FormInvalid({"": Message("error.gone_entry")})
        return entry

    async def post_claim(self, request: Request) -> Response:
        hex_id = request.path_params["entry"]
        kind = "offer"

        async def build(fields: f.Fields, known: f.Known) -> b.BaseBody:
            nonlocal kind
            entry = await self._open_entry(hex_id)
            kind = str(entry["kind"])
            return f.claim_body(fields, bytes.fromhex(hex_id))

        return await self.submit(
            request,
            name="board",
            form=f"claim-{hex_id}",
            build=build,
            flash=lambda: "pledged" if kind == "need" else "claimed",
            target=f"/board#entry-{hex_id}",
        )

    async def post_withdraw(self, request: Request) -> Response:
        hex_id = request.path_params["entry"]

        async def build(fields: f.Fields, known: f.Known) -> b.BaseBody:
            entry = await self._open_entry(hex_id)
            if entry["author"] != self.node.author:
                raise FormInvalid({"": Message("error.not_yours")})
            id_ = bytes.fromhex(hex_id)
            return (
                b.OfferWithdrawn(offer=id_)
                if entry["kind"] == "offer"
                else b.NeedWithdrawn(need=id_)
            )

        return await self.submit(
            request, name="board", form=f"withdraw-{hex_id}", build=build, flash="withdrawn"
        )

    async def post_claim_step(self, request: Request) -> Response:
        hex_id = request.path_params["claim"]
        step = CLAIM_STEPS.get(request.path_params["step"])
        if step is None:
            raise HTTPException(404)
        id_ = _entity_id(hex_id)

        async def build(fields: f.Fields, known: f.Known) -> b.BaseBody:
            claim = await self.node.store.read(functools.partial(views.claim, id_=id_))
            if claim is None:
                raise FormInvalid({"": Message("error.gone_claim")})
            assert step is not None
            return step(claim=id_)

        return await self.submit(
            request,
            name="board",
            form=f"step-{hex_id}",
            build=build,
            flash=f"claim_{step.TYPE.split('.')[1]}",
        )

    async def post_adjust(self, request: Request) -> Response:
        async def build(fields: f.Fields, known: f.Known) -> b.BaseBody:
            return f.adjust_body(fields, known)

        return await self.submit(
            request, name="inventory", form="adjust", build=build, flash="stock_adjusted"
        )

    async def post_count(self, request: Request) -> Response:
        async def build(fields: f.Fields, known: f.Known) -> b.BaseBody:
            return f.count_body(fields, known)

        return await self.submit(
            request, name="inventory", form="count", build=build, flash="stock_counted"
        )

    async def post_item(self, request: Request) -> Response:
        async def build(fields: f.Fields, known: f.Known) -> b.BaseBody:
            return f.item_body(fields)

        return await self.submit(
            request, name="inventory", form="item", build=build, flash="item_added"
        )

    async def post_location(self, request: Request) -> Response:
        async def build(fields: f.Fields, known: f.Known) -> b.BaseBody:
            return f.location_body(fields)

        return await self.submit(
            request, name="inventory", form="location", build=build, flash="location_added"
        )

    async def post_shift(self, request: Request) -> Response:
        async def build(fields: f.Fields, known: f.Known) -> b.BaseBody:
            return f.shift_body(fields, known)

        return await self.submit(
            request,
            name="roster",
            form="shift",
            build=build,
            flash="shift_scheduled",
            target=_roster_target(),
        )

    async def _shift(self, hex_id: str) -> bytes:
        id_ = _entity_id(hex_id)
        try:
            return await self.node.resolve(id_.hex(), SHIFT_TYPES)
        except UsageError:
            raise FormInvalid({"": Message("error.gone_shift")}) from None

    async def post_signup(self, request: Request) -> Response:
        hex_id = request.path_params["shift"]

        async def build(fields: f.Fields, known: f.Known) -> b.BaseBody:
            return b.ShiftSignedUp(shift=await self._shift(hex_id))

        return await self.submit(
            request,
            name="roster",
            form=f"signup-{hex_id}",
            build=build,
            flash="signed_up",
            target=_roster_target(hex_id),
        )

    async def post_shift_withdraw(self, request: Request) -> Response:
        hex_id = request.path_params["shift"]

        async def build(fields: f.Fields, known: f.Known) -> b.BaseBody:
            return b.ShiftWithdrawn(shift=await self._shift(hex_id))

        return await self.submit(
            request,
            name="roster",
            form=f"withdraw-{hex_id}",
            build=build,
            flash="shift_withdrawn",
            target=_roster_target(hex_id),
        )

    async def post_hours(self, request: Request) -> Response:
        hex_id = request.path_params["shift"]

        async def build(fields: f.Fields, known: f.Known) -> b.BaseBody:
            return f.hours_body(fields, await self._shift(hex_id))

        return await self.submit(
            request,
            name="roster",
            form=f"hours-{hex_id}",
            build=build,
            flash="hours_recorded",
            target=_roster_target(hex_id),
        )

    async def post_role(self, request: Request) -> Response:
        async def build(fields: f.Fields, known: f.Known) -> b.BaseBody:
            return f.role_body(fields)

        return await self.submit(
            request, name="people", form="role", build=build, flash="role_added"
        )

    async def post_assign(self, request: Request) -> Response:
        async def build(fields: f.Fields, known: f.Known) -> b.BaseBody:
            return f.assign_body(fields, known)

        return await self.submit(
            request, name="people", form="assign", build=build, flash="role_assigned"
        )


@functools.cache
def _environment() -> jinja2.Environment:
    """One Jinja2 environment per process: templates compile once, not once per app."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def _options(
    rows: Sequence[Mapping[str, Any]], value: str = "slug", label: str = "name"
) -> list[tuple[str, str]]:
    """(value, label) pairs of ``rows`` for a select or radio group."""
    return [(str(row[value]), str(row[label])) for row in rows]


def _flash_of(cookie: str | None) -> tuple[str | None, int | None]:
    """The flash cookie 'offer_posted.17' -> ('offer_posted', 17): what was saved and
    this node's seq of it; (None, None) for anything we did not set."""
    key, _, seq_text = (cookie or "").partition(".")
    if key not in FLASHES:
        return None, None
    return key, _seq_of(seq_text)


def _seq_of(text: str | None) -> int | None:
    """A seq given back by the browser (cookie, query): a positive int, else None."""
    if not text or not (text.isascii() and text.isdigit()) or len(text) > 18:
        return None
    return int(text) or None


def _shared_text(t: Translator, peers: int) -> str:
    return t.plural("share", peers) if peers else t("share.none")


def _entity_id(hex_id: str) -> bytes:
    """The 32-byte id in a URL; anything else is not a page here (404)."""
    try:
        id_ = bytes.fromhex(hex_id)
    except ValueError:
        raise HTTPException(404) from None
    if len(id_) != b.ID_BYTES:
        raise HTTPException(404)
    return id_


def _roster_target(anchor: str | None = None) -> Callable[[Mapping[str, str]], str]:
    """Back to the week the form was posted from (a hidden field), at the shift."""

    def target(values: Mapping[str, str]) -> str:
        week = values.get("week", "")
        path = "/roster"
        if week and page.parse_week(week, datetime.date.today()) == week:
            path += f"?week={week}"
        return path + (f"#shift-{anchor}" if anchor else "")

    return target
