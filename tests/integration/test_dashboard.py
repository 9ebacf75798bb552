"""The fleet dashboard of a real worker on a real Apache Kafka broker, rendered by headless Chromium.

Chromium is Debian's package (``scripts/install_chromium.sh``, run by ``make test``),
driven over the DevTools protocol (:mod:`tests.integration.headless`).
"""

from __future__ import annotations

import http.client
import io
import re
import socket
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from pipeline.tools.brokers import ApacheKafkaBroker
from tests.integration.headless import Rendered, render
from tests.integration.web_worker import FedWorker, fed_worker

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DRIFT_RGB = (0xD6, 0x45, 0x3D)  # --drift in dashboard.html
ADAPT_RGB = (0x2A, 0x9D, 0x5C)  # --adapt
READY = "document.body !== null && document.body.dataset.loaded === '1'"


@pytest.fixture(scope="module")
def worker(kafka_broker: ApacheKafkaBroker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FedWorker]:
    with fed_worker(kafka_broker, Path(tmp_path_factory.mktemp("dashboard"))) as w:
        yield w


@pytest.fixture(scope="module")
def page(worker: FedWorker, tmp_path_factory: pytest.TempPathFactory) -> Rendered:
    """The dashboard as Chromium drew it (the screenshot is also saved as ``dashboard.png``)."""
    work = Path(tmp_path_factory.mktemp("chromium"))
    # ?token= once: the worker sets a cookie and redirects; the page's fetches carry the cookie.
    rendered = render(f"{worker.url}/dashboard?token={worker.token}", work, READY)
    (work / "dashboard.png").write_bytes(rendered.png)
    return rendered


def test_dashboard_shows_the_fleet(worker: FedWorker, page: Rendered) -> None:
    # Prepare: what the worker knows, from the same JSON the page reads (nothing changes any more).
    fleet = worker.fleet()
    dom = page.dom

    # Assert: the script ran and drew every part from /fleet.json.
    assert re.search(r'<body[^>]*data-loaded="1"', dom), dom[-2000:]
    shown = set(re.findall(r'<td class="device-id">([^<]+)</td>', dom))
    assert shown == set(worker.stream.device_ids)  # 10 devices, all within the top 25
    versions = dict(
        re.findall(r'<td class="device-id">([^<]+)</td>.*?<td class="num version">v(\d+)</td>', dom)
    )
    assert {d: int(v) for d, v in versions.items()} == {
        r["device_id"]: r["model_version"] for r in fleet["devices"]
    }
    kpi_drifts = re.search(r'id="kpi-drifts"><div class="v">([\d,]+)</div>', dom)
    assert kpi_drifts and int(kpi_drifts.group(1).replace(",", "")) == fleet["stats"]["drifts"]
    assert f">θ v{fleet['meta'][-1]['version']}</text>" in dom
    drifts_in_timeline = sum(1 for e in fleet["timeline"] if e["type"] == "drift")
    assert dom.count('class="drift-mark"') == drifts_in_timeline >= 1
    assert dom.count('class="adapt-mark"') >= 10
    assert dom.count('class="before"') == dom.count('class="after"') == min(40, len(fleet["results"]))
    assert dom.count('class="curve"') >= 1
    assert re.search(r'<span id="status"[^>]*>updated \d\d:\d\d:\d\d</span>', dom)  # no fetch error


def test_dashboard_screenshot_is_a_real_picture(page: Rendered) -> None:
    # Assert: a full-size PNG with content, and the drift and adaptation marks drawn in their colours.
    image = Image.open(io.BytesIO(page.png))
    assert image.format == "PNG" and image.size == (1280, 900)
    rgb = image.convert("RGB")
    colours = rgb.getcolors(maxcolors=1 << 20)
    assert colours is not None and len(colours) > 200  # text, charts and bars, not a blank page
    background = max(colours)[0] / (1280 * 900)
    assert background < 0.8
    pixels = [c for _, c in colours]
    assert any(_near(c, DRIFT_RGB) for c in pixels)
    assert any(_near(c, ADAPT_RGB) for c in pixels)


def _near(c: tuple[int, ...], target: tuple[int, int, int], tolerance: int = 6) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(c, target, strict=False))


def _status(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str]]:
    """Status and headers of GET ``url``, without following redirects."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""), headers=headers or {})
        response = conn.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        conn.close()


def test_dashboard_and_fleet_json_need_the_token(worker: FedWorker) -> None:
    # Execute: without a token, with a wrong one, with the right one; /metrics needs none by default.
    without = [_status(worker.url + p)[0] for p in ("/dashboard", "/fleet.json")]
    wrong = [
        _status(worker.url + p, {"Authorization": "Bearer nope"})[0] for p in ("/dashboard", "/fleet.json")
    ]
    bad_query = _status(worker.url + "/dashboard?token=nope")[0]
    right = [
        _status(worker.url + p, {"Authorization": f"Bearer {worker.token}"})[0]
        for p in ("/dashboard", "/fleet.json")
    ]
    metrics = _status(worker.url + "/metrics")[0]
    # ?token= once: a redirect without the token that sets an HttpOnly cookie, which then suffices.
    status, headers = _status(f"{worker.url}/dashboard?token={worker.token}")
    cookie = headers.get("set-cookie", "")
    with_cookie = _status(worker.url + "/fleet.json", {"Cookie": cookie.split(";")[0]})[0]

    # Assert
    assert without == wrong == [401, 401] and bad_query == 401
    assert right == [200, 200] and metrics == 200
    assert status == 303 and headers["location"] == "/dashboard"
    assert cookie.startswith(f"metastream_token={worker.token};") and "HttpOnly" in cookie
    assert "samesite=strict" in cookie.lower()
    assert with_cookie == 200


def _listening(port: int) -> set[str]:
    """Local IPv4/IPv6 addresses with a TCP socket listening on ``port`` (from /proc/net/tcp{,6})."""
    found = set()
    for name in ("tcp", "tcp6"):
        path = Path("/proc/net") / name
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if int(hex_port, 16) == port and state == "0A":  # 0A: LISTEN
                raw = bytes.fromhex(address)
                # The kernel prints each 32-bit word in host (little-endian) order.
                words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                family = socket.AF_INET if len(words) == 4 else socket.AF_INET6
                found.add(socket.inet_ntop(family, words))
    return found


def _non_loopback_address() -> str | None:
    """An IPv4 address of this machine that is not loopback (the one its default route uses), if any."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: a UDP connect only picks the route, sends nothing
        except OSError:
            return None
        address = str(s.getsockname()[0])
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def test_the_web_port_listens_on_loopback_only_by_default(worker: FedWorker) -> None:
    # Prepare: the worker's port, and this machine's non-loopback address if it has one.
    port = int(worker.url.rsplit(":", 1)[1])
    other = _non_loopback_address()

    # Execute
    listening = _listening(port)
    if other is not None:
        with socket.socket() as s:
            s.settimeout(5)
            refused = s.connect_ex((other, port)) != 0

    # Assert: bound to 127.0.0.1 alone (the default web_host), so not reachable from elsewhere.
    assert worker.settings.web_host == "127.0.0.1"
    assert listening == {"127.0.0.1"}
    if other is not None:
        assert refused, f"port {port} answers on {other}"
