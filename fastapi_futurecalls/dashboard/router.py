"""The dashboard's routes: server-rendered pages, live fragments for htmx, and actions
(POST, CSRF-checked, answered by a redirect back with a flash message)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime, timedelta
from importlib.resources import files
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, quote, unquote, urlencode

from fastapi import APIRouter, params
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, StrictUndefined
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ..errors import ConfigurationError, DatabaseError, InvalidScheduleError
from ..estimates import COUNT_CAP
from ..session import Session
from . import csrf
from .figures import Count
from .queries import FILTER_STATES, BadInput, Filters, Queries

if TYPE_CHECKING:
    from ..futurecalls import FutureCalls
    from ..store import Store

logger = logging.getLogger("fastapi_futurecalls")

FLASH = "futurecalls_flash"
MAX_FORM_BYTES = 16_384
STATIC = {"htmx.min.js": "text/javascript", "dashboard.css": "text/css"}
NEEDS_DEPENDENCIES = (
    "dashboard() needs dependencies=[Depends(...)] that let only operators in: the "
    "dashboard shows every call's payload and can retry, delete, cancel and pause calls. "
    "Pass allow_anonymous=True to serve it without any (local development only)."
)


def build_router(
    futurecalls: FutureCalls,
    store: Callable[[], Store],
    dependencies: Sequence[params.Depends] | None,
    *,
    allow_anonymous: bool,
) -> APIRouter:
    """The dashboard of ``futurecalls``; ``store`` gives its Store once started."""
    if not dependencies and not allow_anonymous:
        raise ConfigurationError(NEEDS_DEPENDENCIES)
    if not dependencies:
        logger.warning("the future calls dashboard is served without authentication")
    pages = Pages(futurecalls, store)
    router = APIRouter(dependencies=list(dependencies or ()), route_class=pages.route_class())
    pages.add_routes(router)
    return router


class Pages:
    """Renders the pages and runs the actions of one dashboard."""

    def __init__(self, futurecalls: FutureCalls, store: Callable[[], Store]) -> None:
        self._futurecalls = futurecalls
        self._store = store
        settings = futurecalls.settings
        self._queries = Queries(settings.schema, settings.lock_namespace)
        self._env = _environment()
        self._static = {
            name: files(__package__).joinpath("static", name).read_bytes() for name in STATIC
        }
        self._version = hashlib.sha256(b"".join(self._static.values())).hexdigest()[:12]
        self._paths: dict[str, str] = {}

    # -- routes ------------------------------------------------------------------------------

    def add_routes(self, router: APIRouter) -> None:
        get, post = router.get, router.post
        html: dict[str, Any] = {"response_class": HTMLResponse, "include_in_schema": False}
        get("/", name="futurecalls_overview", **html)(self.overview)
        get("/calls", name="futurecalls_calls", **html)(self.calls)
        get("/calls/{call_id}", name="futurecalls_call", **html)(self.call)
        get("/chains", name="futurecalls_chains", **html)(self.chains)
        get("/workers", name="futurecalls_workers", **html)(self.workers)
        get("/static/{filename}", name="futurecalls_static", include_in_schema=False)(self.static)
        post("/calls/{call_id}/retry", name="futurecalls_retry", **html)(self.retry)
        post("/calls/{call_id}/delete", name="futurecalls_delete", **html)(self.delete)
        post("/cancel", name="futurecalls_cancel", **html)(self.cancel)
        post("/pause", name="futurecalls_pause", **html)(self.pause)
        post("/resume", name="futurecalls_resume", **html)(self.resume)
        # Route paths by name, to build links under the mount point found once per request
        # (url_for walks the whole app's routes: once per link would cost a page dearly).
        self._paths = {
            route.name: route.path for route in router.routes if isinstance(route, APIRoute)
        }

    def route_class(self) -> type[APIRoute]:
        """Routes that answer with a page saying what was wrong: bad input (400, 422), or
        FutureCalls not started or its database down (503)."""
        pages = self

        class DashboardRoute(APIRoute):
            def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
                handler = super().get_route_handler()

                async def route(request: Request) -> Response:
                    try:
                        return await handler(request)
                    except RequestValidationError as exc:
                        errors = "; ".join(_describe(error) for error in exc.errors())
                        return pages.error(request, 422, errors)
                    except (BadInput, InvalidScheduleError) as exc:
                        return pages.error(request, 400, str(exc))
                    except (ConfigurationError, DatabaseError) as exc:  # not started, or down
                        return pages.error(request, 503, f"Future calls are unavailable: {exc}")

                return route

        return DashboardRoute

    async def overview(self, request: Request, fragment: str | None = None) -> Response:
        async with self._store().connection() as conn:
            overview = await self._queries.overview(conn)
        if fragment == "live":
            return self.render(request, "_overview_live.html", {"o": overview}, page=False)
        return self.render(request, "overview.html", {"o": overview, "nav": "overview"})

    async def calls(
        self,
        request: Request,
        state: str | None = None,
        name: str | None = None,
        identifier: str | None = None,
        after: str | None = None,
    ) -> Response:
        filters = Filters.parse(state, name, identifier)
        async with self._store().connection() as conn:
            listing = await self._queries.calls(conn, filters, after)
        context = {
            "filters": filters,
            "listing": listing,
            "states": FILTER_STATES,
            "first_page": not after,
            "nav": "calls",
        }
        return self.render(request, "calls.html", context)

    async def call(self, request: Request, call_id: int) -> Response:
        async with self._store().connection() as conn:
            call = await self._queries.call(conn, call_id)
            now = await conn.fetchval(self._queries.sql["db_now"])
        if call is None:
            message = f"No call {call_id}: completed calls are deleted, so it may have run."
            return self.error(request, 404, message)
        return self.render(request, "call.html", {"c": call, "now": now, "nav": "calls"})

    async def chains(self, request: Request, after: str | None = None) -> Response:
        async with self._store().connection() as conn:
            listing = await self._queries.chains(conn, after)
            now = await conn.fetchval(self._queries.sql["db_now"])
        context = {"listing": listing, "now": now, "first_page": not after, "nav": "chains"}
        return self.render(request, "chains.html", context)

    async def workers(self, request: Request, fragment: str | None = None) -> Response:
        async with self._store().connection() as conn:
            now, workers = await self._queries.workers(conn)
        context = {"now": now, "workers": workers, "nav": "workers"}
        if fragment == "live":
            return self.render(request, "_workers_live.html", context, page=False)
        return self.render(request, "workers.html", context)

    async def static(self, filename: str) -> Response:
        if filename not in STATIC:
            return Response("not found", status_code=404, media_type="text/plain")
        headers = {"Cache-Control": "private, max-age=86400"}
        return Response(self._static[filename], media_type=STATIC[filename], headers=headers)

    # -- actions ---------------------------------------------------------------------------

    async def retry(self, request: Request, call_id: int) -> Response:
        async def act(session: Session, form: dict[str, str]) -> tuple[bool, str]:
            if await session.reschedule_future_call(call_id):
                return True, f"Call {call_id} is scheduled again, due now."
            return False, (
                f"Call {call_id} is not parked (failed or interrupted), so it was not "
                "run again: it may be scheduled, running, or gone."
            )

        return await self._action(request, act)

    async def delete(self, request: Request, call_id: int) -> Response:
        async def act(session: Session, form: dict[str, str]) -> tuple[bool, str]:
            if await session.delete_future_call(call_id):
                return True, f"Call {call_id} is deleted."
            return False, f"Call {call_id} was not deleted: it is running, or gone already."

        return await self._action(request, act, default_next="futurecalls_calls")

    async def cancel(self, request: Request) -> Response:
        async def act(session: Session, form: dict[str, str]) -> tuple[bool, str]:
            identifier = _field(form, "identifier")
            removed = await session.cancel_future_call(identifier)
            if removed:
                return True, f"Cancelled {removed} pending call(s) with identifier {identifier!r}."
            return False, f"No pending call has the identifier {identifier!r}: nothing cancelled."

        return await self._action(request, act)

    async def pause(self, request: Request) -> Response:
        async def act(session: Session, form: dict[str, str]) -> tuple[bool, str]:
            name = _field(form, "name")
            if await session.pause_future_calls(name):
                return True, f"Paused {name!r}: no worker starts its calls until it is resumed."
            return False, f"{name!r} was paused already."

        return await self._action(request, act)

    async def resume(self, request: Request) -> Response:
        async def act(session: Session, form: dict[str, str]) -> tuple[bool, str]:
            name = _field(form, "name")
            if await session.resume_future_calls(name):
                return True, f"Resumed {name!r}: workers start its calls again."
            return False, f"{name!r} was not paused."

        return await self._action(request, act)

    async def _action(
        self,
        request: Request,
        act: Callable[[Session, dict[str, str]], Coroutine[Any, Any, tuple[bool, str]]],
        default_next: str = "futurecalls_overview",
    ) -> Response:
        form = await _form(request)
        if not csrf.verified(request, form):
            return self.error(request, 403, csrf.REFUSED)
        session = self._futurecalls.session()
        ok, message = await act(session, form)
        target = self._next(request, form.get("next"), default_next)
        response = RedirectResponse(target, status_code=303)
        flash = quote(("ok:" if ok else "no:") + message)
        response.set_cookie(
            FLASH,
            flash,
            max_age=60,
            path=self._base(request),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )
        return response

    def _next(self, request: Request, wanted: str | None, default: str) -> str:
        """Where to go after an action: the page it was sent from, if it is one of ours."""
        base = self._base(request)
        path = (wanted or "").partition("?")[0]
        if path.startswith(base) and not any(bad in path for bad in ("//", "\\", "/..")):
            return str(wanted)
        return request.url_for(default).path

    # -- rendering -------------------------------------------------------------------------

    def _base(self, request: Request) -> str:
        return request.url_for("futurecalls_overview").path

    def render(
        self,
        request: Request,
        template: str,
        context: dict[str, Any],
        *,
        page: bool = True,
        status: int = 200,
    ) -> Response:
        token, new = csrf.token_of(request)
        flash = request.cookies.get(FLASH) if page else None
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")

        base = self._base(request).removesuffix("/")

        def url(route: str, query: dict[str, Any] | None = None, **path: Any) -> str:
            target = base + self._paths[route].format(
                **{k: quote(str(v), safe="") for k, v in path.items()}
            )
            kept = {k: v for k, v in (query or {}).items() if v is not None}
            return target + ("?" + urlencode(kept) if kept else "")

        html = self._env.get_template(template).render(
            **context,
            url=url,
            here=here,
            csrf_token=token,
            csrf_header=csrf.HEADER,
            flash=_flash(flash),
            static_version=self._version,
        )
        response = HTMLResponse(html, status_code=status)
        if new:
            csrf.set_cookie(
                response, token, self._base(request), secure=request.url.scheme == "https"
            )
        if flash is not None:
            response.delete_cookie(FLASH, path=self._base(request))
        return response

    def error(self, request: Request, status: int, message: str) -> Response:
        context = {"status": status, "message": message, "nav": None}
        return self.render(request, "error.html", context, status=status)


def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("fastapi_futurecalls.dashboard", "templates"),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = _when
    env.filters["since"] = _since
    env.filters["interval"] = _interval
    env.filters["count"] = lambda value: str(value) if isinstance(value, Count) else f"{value:,}"
    env.globals["count_cap"] = COUNT_CAP
    return env


async def _form(request: Request) -> dict[str, str]:
    """The fields of an urlencoded POST body (plain forms and htmx send that)."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("application/x-www-form-urlencoded"):
        return {}
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise BadInput(f"the form is over {MAX_FORM_BYTES} bytes")
    return dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))


def _field(form: dict[str, str], name: str) -> str:
    value = form.get(name, "").strip()
    if not value:
        raise BadInput(f"the form field {name!r} is missing or empty")
    return value


def _flash(raw: str | None) -> dict[str, Any] | None:
    if not raw:
        return None
    text = unquote(raw)
    return {"ok": text.startswith("ok:"), "message": text[3:]}


def _describe(error: Any) -> str:
    location = [str(part) for part in error.get("loc", ())]
    where = ".".join(location[1:]) or "request"
    got = error.get("input")
    return f"{where} ({location[0] if location else 'input'}): {error.get('msg')}, got {got!r:.80}"


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    if value in (datetime.max.replace(tzinfo=UTC), datetime.min.replace(tzinfo=UTC)):
        return "infinity" if value.year == 9999 else "-infinity"
    return value.astimezone(UTC).isoformat(" ", "seconds")[:19] + " UTC"


def _since(value: datetime | None, now: datetime) -> str:
    """``value`` relative to ``now``: "in 5 min", "3 h ago"."""
    if value is None:
        return ""
    try:
        delta = (value - now).total_seconds()
    except OverflowError:
        return ""
    text = _interval(timedelta(seconds=round(abs(delta))))
    return "now" if abs(delta) < 1 else (f"in {text}" if delta > 0 else f"{text} ago")


def _interval(value: timedelta | None) -> str:
    if value is None:
        return "—"
    seconds = value.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            amount = seconds / size
            return (
                f"{amount:.0f} {unit}"
                if amount >= 10 or amount == int(amount)
                else (f"{amount:.1f} {unit}")
            )
    return f"{seconds * 1000:.3g} ms" if seconds < 1 else f"{seconds:.3g} s"
