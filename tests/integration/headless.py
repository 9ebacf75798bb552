"""Headless Chromium driven over the DevTools protocol (CDP), for the dashboard tests.

Chromium's one-shot ``--screenshot`` with ``--virtual-time-budget`` was seen to
hang now and then (1 run in 3 on a busy machine) on a page that keeps
polling; over CDP the test instead waits for the page to say it has drawn
(``<body data-loaded="1">``), then reads the DOM and takes the screenshot.
The client is aiohttp's websocket, already installed with Faust.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

# Without the background-networking flags Chromium keeps calling home, which a closed network punishes.
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1280,900",
]


@dataclass(frozen=True)
class Rendered:
    """A page as Chromium drew it: the DOM after its scripts ran, and a PNG screenshot."""

    dom: str
    png: bytes


def chromium_executable() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "chromium is missing: run scripts/install_chromium.sh (make test does)"
    return exe


def render(url: str, work: Path, ready_js: str, timeout: float = 60.0) -> Rendered:
    """Open ``url`` at 1280×900, wait until ``ready_js`` is true, return the DOM and a screenshot."""
    profile = work / "chromium-profile"
    args = [chromium_executable(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0"]
    with open(work / "chromium.log", "wb") as log:  # the child keeps its own copy of the descriptor
        proc = subprocess.Popen([*args, "about:blank"], stdout=subprocess.DEVNULL, stderr=log)
    try:
        port = _devtools_port(profile, proc, timeout)
        return asyncio.run(asyncio.wait_for(_render(port, url, ready_js), timeout))
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _devtools_port(profile: Path, proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Chromium writes its DevTools port to ``DevToolsActivePort`` in the profile once it listens."""
    path = profile / "DevToolsActivePort"
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int(path.read_text().splitlines()[0])
        assert proc.poll() is None, f"chromium exited with {proc.returncode}"
        assert time.monotonic() < deadline, "chromium did not open its DevTools port"
        time.sleep(0.1)


async def _render(port: int, url: str, ready_js: str) -> Rendered:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/json/list") as response:
            targets = await response.json(content_type=None)
        page = next(t for t in targets if t.get("type") == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            cdp = _Session(ws)
            await cdp.call("Page.enable")
            await cdp.call(
                "Emulation.setDeviceMetricsOverride",
                width=1280,
                height=900,
                deviceScaleFactor=1,
                mobile=False,
            )
            await cdp.call("Page.navigate", url=url)
            while not await cdp.evaluate(ready_js):
                await asyncio.sleep(0.2)
            dom = await cdp.evaluate("document.documentElement.outerHTML")
            shot = await cdp.call("Page.captureScreenshot", format="png")
            return Rendered(str(dom), base64.b64decode(shot["data"]))


class _Session:
    """Request/response over one DevTools websocket; events are skipped."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.next_id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        await self.ws.send_str(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(await self.ws.receive_str())
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise CdpError(f"{method}: {message['error']}")
                return dict(message["result"])

    async def evaluate(self, expression: str) -> Any:
        """The value of ``expression`` in the page; ``None`` while it navigates or if it throws."""
        try:
            result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        except CdpError:  # e.g. the execution context went away with the navigation
            return None
        return None if "exceptionDetails" in result else result["result"].get("value")


class CdpError(RuntimeError):
    """A DevTools call answered with an error."""
