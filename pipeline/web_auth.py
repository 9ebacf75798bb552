"""Who may read a worker's web pages: bearer tokens for ``/dashboard``, ``/fleet.json`` and ``/metrics``.

The worker's web server binds to ``Settings.web_host`` (``127.0.0.1`` unless
configured).  ``/dashboard`` and ``/fleet.json`` always need the dashboard
token: ``Settings.web_token``, or the first line of ``Settings.web_token_file``,
or, when neither is set, a random one the worker logs at start (like a
notebook server).  ``/metrics`` is open on the bound address unless
``Settings.metrics_token`` is set, as Prometheus exporters usually are.

A client shows the token as ``Authorization: Bearer TOKEN``.  A browser opens
``/dashboard?token=TOKEN`` once: the worker answers with an HttpOnly,
SameSite=Strict cookie and sends it back to ``/dashboard`` without the token in
the address; the page's own fetches of ``fleet.json`` then carry the cookie.

:func:`authorised` and :func:`resolve_token` are plain; :func:`guard` is the
Faust glue.
"""

from __future__ import annotations

import functools
import hmac
import logging
import secrets
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from faust.web import Request, Response, View

    from connectors.settings import Settings

log = logging.getLogger(__name__)

COOKIE = "metastream_token"
"""Cookie that carries the dashboard token after ``?token=``."""

Handler = Callable[["View", "Request"], Awaitable["Response"]]


def resolve_token(settings: Settings, generate: Callable[[], str] = lambda: secrets.token_urlsafe(24)) -> str:
    """The dashboard token: ``web_token``, else ``web_token_file``'s first line, else a generated one.

    Examples
    --------
    >>> from connectors.settings import Settings
    >>> resolve_token(Settings(web_token="s3cret")), resolve_token(Settings(), generate=lambda: "fresh")
    ('s3cret', 'fresh')
    """
    if settings.web_token:
        return settings.web_token
    if settings.web_token_file:
        path = Path(settings.web_token_file)
        if not path.is_file():
            raise ValueError(f"web_token_file: no such file {settings.web_token_file!r}")
        lines = path.read_text().splitlines()
        token = lines[0].strip() if lines else ""
        if not token:
            raise ValueError(f"web_token_file {settings.web_token_file!r} is empty")
        return token
    return generate()


def presented_token(headers: Mapping[str, str], cookies: Mapping[str, str]) -> str | None:
    """The token a request shows: its ``Authorization: Bearer`` header, else its cookie.

    Examples
    --------
    >>> presented_token({"Authorization": "Bearer abc"}, {}), presented_token({}, {COOKIE: "xyz"})
    ('abc', 'xyz')
    >>> presented_token({"Authorization": "Basic abc"}, {}) is None
    True
    """
    auth = headers.get("Authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return cookies.get(COOKIE) or None


def authorised(expected: str, headers: Mapping[str, str], cookies: Mapping[str, str]) -> bool:
    """Whether the request shows ``expected`` (compared in constant time); an empty ``expected`` allows all.

    Examples
    --------
    >>> authorised("t", {"Authorization": "Bearer t"}, {}), authorised("t", {}, {}), authorised("", {}, {})
    (True, False, True)
    """
    if not expected:
        return True
    shown = presented_token(headers, cookies)
    return shown is not None and hmac.compare_digest(shown.encode(), expected.encode())


def guard(token: str, handler: Handler, *, accept_query: bool = False) -> Handler:
    """``handler`` behind ``token``: 401 (with ``WWW-Authenticate: Bearer``) without it.

    With ``accept_query``, ``?token=TOKEN`` is also accepted: the answer is a
    303 to the same path without it, setting the cookie.
    """

    @functools.wraps(handler)
    async def checked(self: View, request: Request) -> Response:
        req: Any = request  # faust's aiohttp driver hands over aiohttp's request
        query = req.query.get("token") if accept_query else None
        if query is not None and token and hmac.compare_digest(query.encode(), token.encode()):
            response: Any = self.text("", status=303, headers={"Location": req.path})
            response.set_cookie(COOKIE, token, httponly=True, samesite="Strict", path="/")
            return response
        if not authorised(token, req.headers, req.cookies):
            return self.json(
                {"error": "a bearer token is required (Authorization: Bearer …, or ?token= once)"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="metastream"'},
            )
        return await handler(self, request)

    return checked
