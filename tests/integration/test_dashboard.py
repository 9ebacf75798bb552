"""The fleet dashboard of a real worker on a real Apache Kafka broker, rendered by headless Chromium.

Chromium is Debian's package (``scripts/install_chromium.sh``, run by ``make test``),
driven over the DevTools protocol (:mod:`tests.integration.headless`).
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from connectors.brokers import ApacheKafkaBroker
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
    rendered = render(worker.url + "/dashboard", work, READY)
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
