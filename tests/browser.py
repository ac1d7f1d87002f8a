"""A headless Chromium driven over the Chrome DevTools protocol, for the report's browser test.

No selenium: Debian's ``chromium`` is started with ``--remote-debugging-port=0`` and spoken to over its page
websocket with aiohttp (already pinned for DVC). ``find_chromium()`` is None on a machine without a browser,
so the test can skip with that reason.

    with Browser() as b:
        b.open("file:///.../reports/index.html", width=390)
        b.eval("document.images.length")
        b.screenshot(Path("shot.png"))
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """The browser binary (``MEDREF_CHROMIUM`` wins), or None."""
    env = os.environ.get("MEDREF_CHROMIUM")
    if env:
        return env if shutil.which(env) or Path(env).is_file() else None
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


class Browser:
    """One headless browser with one page; every call blocks until the browser answered."""

    def __init__(self, binary: str | None = None, timeout: float = 60.0):
        self.binary = binary or find_chromium()
        if self.binary is None:
            raise RuntimeError("no chromium found (apt-get install chromium)")
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._id = 0
        self._events: list[dict] = []

    # -- lifecycle -------------------------------------------------------------------------------------------------
    def __enter__(self) -> Browser:
        self._profile = tempfile.mkdtemp(prefix="medref-chromium-")
        self._proc = subprocess.Popen(
            [self.binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
             "--no-first-run", "--no-default-browser-check", "--hide-scrollbars", "--allow-file-access-from-files",
             f"--user-data-dir={self._profile}", "--remote-debugging-port=0", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        port = self._devtools_port()
        self._loop.run_until_complete(self._connect(port))
        self.send("Page.enable")
        self.send("Runtime.enable")
        return self

    def __exit__(self, *exc) -> None:
        try:
            self._loop.run_until_complete(self._close())
        finally:
            self._loop.close()
            self._proc.terminate()
            try:
                self._proc.wait(10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            shutil.rmtree(self._profile, ignore_errors=True)

    def _devtools_port(self) -> int:
        deadline = time.monotonic() + self.timeout
        assert self._proc.stderr is not None
        seen = []
        while time.monotonic() < deadline:
            line = self._proc.stderr.readline()
            if not line and self._proc.poll() is not None:
                break
            seen.append(line)
            m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if m:
                return int(m.group(1))
        raise RuntimeError(f"{self.binary} did not start its DevTools endpoint:\n{''.join(seen)[-2000:]}")

    async def _connect(self, port: int) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession()
        for _ in range(50):
            async with self._session.get(f"http://127.0.0.1:{port}/json/list") as r:
                pages = [t for t in await r.json(content_type=None) if t.get("type") == "page"]
            if pages:
                break
            await asyncio.sleep(0.1)
        self._ws = await self._session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)

    async def _close(self) -> None:
        await self._ws.close()
        await self._session.close()

    # -- protocol --------------------------------------------------------------------------------------------------
    async def _send(self, method: str, params: dict) -> dict:
        self._id += 1
        my = self._id
        await self._ws.send_str(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            msg = json.loads(await asyncio.wait_for(self._ws.receive_str(), self.timeout))
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self._events.append(msg)

    async def _wait_event(self, method: str) -> dict:
        while True:
            for i, e in enumerate(self._events):
                if e["method"] == method:
                    return self._events.pop(i)
            msg = json.loads(await asyncio.wait_for(self._ws.receive_str(), self.timeout))
            if "method" in msg:
                self._events.append(msg)

    def send(self, method: str, **params) -> dict:
        return self._loop.run_until_complete(self._send(method, params))

    # -- what the test uses ----------------------------------------------------------------------------------------
    def open(self, url: str, width: int = 1366, height: int = 900) -> None:
        """Load ``url`` at a viewport ``width`` CSS pixels wide (phone widths emulate a mobile screen)."""
        self.send("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                  mobile=width < 600)
        self._events.clear()
        self.send("Page.navigate", url=url)
        self._loop.run_until_complete(self._wait_event("Page.loadEventFired"))

    def eval(self, expression: str):
        """The JSON value of a JavaScript expression in the page (promises awaited)."""
        res = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"{expression[:80]}...: {res['exceptionDetails']}")
        return res["result"].get("value")

    def exceptions(self) -> list[str]:
        """Uncaught JavaScript errors of the page so far."""
        return [json.dumps(e["params"]["exceptionDetails"])[:500] for e in self._events
                if e["method"] == "Runtime.exceptionThrown"]

    def screenshot(self, path: Path, max_height: int = 16000) -> None:
        """A full-page PNG (the whole scroll height, capped at ``max_height`` CSS pixels)."""
        size = self.send("Page.getLayoutMetrics")["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], max_height), "scale": 1}
        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=True, clip=clip)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
