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
