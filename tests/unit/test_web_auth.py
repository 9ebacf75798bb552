"""Tokens of the worker's web pages (pipeline/web_auth.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.settings import Settings
from pipeline.web_auth import COOKIE, authorised, resolve_token


def test_the_token_comes_from_the_setting_then_the_file_then_is_generated(tmp_path: Path) -> None:
    # Prepare
    secret = tmp_path / "token"
    secret.write_text("from-file\n")

    # Execute / Assert
    assert resolve_token(Settings(web_token="set", web_token_file=str(secret))) == "set"
    assert resolve_token(Settings(web_token_file=str(secret))) == "from-file"
    assert resolve_token(Settings(), generate=lambda: "generated") == "generated"
    a, b = resolve_token(Settings()), resolve_token(Settings())
    assert a != b and len(a) >= 32


def test_a_missing_or_empty_token_file_is_an_error(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="no such file"):
        resolve_token(Settings(web_token_file=str(tmp_path / "absent")))
    with pytest.raises(ValueError, match="is empty"):
        resolve_token(Settings(web_token_file=str(empty)))


def test_only_the_exact_token_in_the_header_or_cookie_is_authorised() -> None:
    assert authorised("t0k", {"Authorization": "Bearer t0k"}, {})
    assert authorised("t0k", {}, {COOKIE: "t0k"})
    assert not authorised("t0k", {"Authorization": "Bearer t0"}, {})
    assert not authorised("t0k", {"Authorization": "Basic t0k"}, {})
    assert not authorised("t0k", {}, {COOKIE: ""})
    assert authorised("", {}, {})  # an empty expected token: open (the /metrics default)


def test_settings_hide_the_tokens_from_their_repr() -> None:
    text = repr(Settings(web_token="dash-secret", metrics_token="scrape-secret"))
    assert "dash-secret" not in text and "scrape-secret" not in text and "web_host='127.0.0.1'" in text


class _Response:
    def __init__(self, status: int, headers: dict[str, str]) -> None:
        self.status, self.headers, self.cookies = status, headers, {}

    def set_cookie(self, name: str, value: str, **options: object) -> None:
        self.cookies[name] = (value, options)


class _View:
    """The two response builders of faust's View that the guard uses."""

    def text(self, body: str, status: int = 200, headers: dict[str, str] | None = None) -> _Response:
        return _Response(status, headers or {})

    def json(self, body: object, status: int = 200, headers: dict[str, str] | None = None) -> _Response:
        return _Response(status, headers or {})


class _Request:
    def __init__(self, path: str, query: dict[str, str], headers: dict[str, str], cookies: dict[str, str]):
        self.path, self.query, self.headers, self.cookies = path, query, headers, cookies


def _call(handler: object, request: _Request) -> _Response:
    import asyncio

    return asyncio.run(handler(_View(), request))  # type: ignore[operator, arg-type, no-any-return]


def test_the_guard_answers_401_redirects_a_query_token_once_and_passes_the_rest() -> None:
    # Prepare: a metrics-like handler behind "m-tok", and a dashboard-like one that accepts ?token=.
    from pipeline.web_auth import guard

    async def ok(view: _View, request: _Request) -> _Response:
        return _Response(200, {})

    metrics = guard("m-tok", ok)  # type: ignore[arg-type]
    dashboard = guard("d-tok", ok, accept_query=True)  # type: ignore[arg-type]
    open_metrics = guard("", ok)  # type: ignore[arg-type]

    # Execute
    bare = _call(metrics, _Request("/metrics", {}, {}, {}))
    bearer = _call(metrics, _Request("/metrics", {}, {"Authorization": "Bearer m-tok"}, {}))
    other_token = _call(metrics, _Request("/metrics", {}, {"Authorization": "Bearer d-tok"}, {}))
    query_on_metrics = _call(metrics, _Request("/metrics", {"token": "m-tok"}, {}, {}))
    redirect = _call(dashboard, _Request("/dashboard", {"token": "d-tok"}, {}, {}))
    anyone = _call(open_metrics, _Request("/metrics", {}, {}, {}))

    # Assert
    assert (bare.status, bare.headers["WWW-Authenticate"]) == (401, 'Bearer realm="metastream"')
    assert bearer.status == 200 and other_token.status == 401
    assert query_on_metrics.status == 401  # only the dashboard page takes ?token=
    assert (redirect.status, redirect.headers) == (303, {"Location": "/dashboard"})
    value, options = redirect.cookies[COOKIE]
    assert value == "d-tok" and options == {"httponly": True, "samesite": "Strict", "path": "/"}
    assert anyone.status == 200
