"""The live fleet dashboard of one stream worker: ``/dashboard`` and ``/fleet.json``.

Start a worker with ``--web-port PORT`` and open ``http://HOST:PORT/dashboard``.
The page (``pipeline/static/dashboard.html``: plain JS and inline SVG, no
build step, nothing fetched from elsewhere) polls ``/fleet.json`` every
second and draws the devices with their current error and model version,
the drift and adaptation timeline, the θ version history, each adaptation's
error before → after, and the error curves of the devices that drifted last.

Each worker shows the devices of the partitions it owns; with several
workers, open each one's page.
"""

from __future__ import annotations

import logging
import time
from functools import cache
from importlib import resources
from typing import TYPE_CHECKING, Any

from pipeline import metrics, web_auth

if TYPE_CHECKING:
    import faust
    from faust.web import Request, Response, View

    from pipeline.state import PipelineState

log = logging.getLogger(__name__)

TOP_DEVICES = 25
"""Devices listed on the dashboard (the worst by current error)."""


@cache
def page_html() -> str:
    """The dashboard page, shipped as package data (``pipeline/static/dashboard.html``).

    Examples
    --------
    >>> 'fetch("fleet.json"' in page_html()
    True
    """
    return resources.files("pipeline").joinpath("static/dashboard.html").read_text(encoding="utf-8")


def fleet_json(state: PipelineState, now: float, top_n: int = TOP_DEVICES) -> dict[str, Any]:
    """What ``/fleet.json`` serves: the worker, its counters and its fleet view."""
    snapshot = state.view.snapshot(
        state.core.device_errors(), state.core.model_versions(), state.stats(), now, top_n
    )
    return {"worker_id": state.worker_id, "app_id": state.settings.app_id, **snapshot}


def install(app: faust.App, state: PipelineState, top_n: int = TOP_DEVICES, *, token: str) -> None:
    """Serve the dashboard page and its JSON feed on ``app``'s web server, both behind ``token``.

    ``/dashboard?token=TOKEN`` once sets a cookie (:mod:`pipeline.web_auth`);
    the page's fetches of ``fleet.json`` carry it.
    """
    if not token:
        raise ValueError("the dashboard needs a token (pipeline.web_auth.resolve_token gives one)")
    log.warning(
        "dashboard: open http://%s:%s/dashboard?token=%s (/dashboard and /fleet.json need the token)",
        app.conf.web_bind,
        app.conf.web_port,
        token if not state.settings.web_token and not state.settings.web_token_file else "<configured token>",
    )

    async def dashboard(self: View, request: Request) -> Response:
        return self.html(page_html(), headers={"Cache-Control": "no-store"})

    async def fleet(self: View, request: Request) -> Response:
        body = fleet_json(state, time.time(), top_n)
        try:
            lag = await metrics.consumer_lag(app, state)
            body["lag"] = {f"{topic}:{partition}": n for (topic, partition), n in lag.items()}
        except Exception:  # the broker may be away: the page shows the rest
            body["lag"] = None
        return self.json(body, headers={"Cache-Control": "no-store"})

    app.page("/dashboard")(web_auth.guard(token, dashboard, accept_query=True))
    app.page("/fleet.json")(web_auth.guard(token, fleet))
