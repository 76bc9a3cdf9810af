"""CSRF protection of the dashboard's actions by double submit: a random token in a
cookie (HttpOnly, SameSite=Strict) that every page also writes into its forms and into
htmx's ``X-CSRF-Token`` header; a POST must send it back, equal, in one of the two. A page
of another site can neither read the token nor make the browser send the cookie."""

from __future__ import annotations

import hmac
import secrets

from starlette.requests import Request
from starlette.responses import Response

COOKIE = "futurecalls_csrf"
HEADER = "X-CSRF-Token"
FIELD = "csrf_token"
_TOKEN_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")

REFUSED = (
    "Refused: this request carries no CSRF token, or not the one of the futurecalls_csrf "
    "cookie, so it may come from another site. Nothing was changed. Reload the dashboard "
    "and try again."
)


def _valid(token: str | None) -> bool:
    return token is not None and 32 <= len(token) <= 128 and set(token) <= _TOKEN_CHARS


def token_of(request: Request) -> tuple[str, bool]:
    """The request's token, and whether it is new (then :func:`set_cookie` must send it)."""
    token = request.cookies.get(COOKIE)
    if _valid(token):
        assert token is not None
        return token, False
    return secrets.token_urlsafe(32), True


def set_cookie(response: Response, token: str, path: str, *, secure: bool) -> None:
    response.set_cookie(COOKIE, token, path=path, httponly=True, samesite="strict", secure=secure)


def verified(request: Request, form: dict[str, str]) -> bool:
    """Whether the POST sent back the cookie's token (header or form field)."""
    cookie = request.cookies.get(COOKIE)
    sent = request.headers.get(HEADER) or form.get(FIELD)
    if not _valid(cookie) or sent is None:
        return False
    assert cookie is not None
    return hmac.compare_digest(cookie.encode(), sent.encode())
