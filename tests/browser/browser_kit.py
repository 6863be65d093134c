# SPDX-License-Identifier: GPL-3.0-or-later
"""Headless Chromium driven over the Chrome DevTools Protocol (CDP), for the browser test.

No browser downloads and no WebDriver: the Debian ``chromium`` package is started with
``--remote-debugging-port=0`` and a fresh ``--user-data-dir``; the port is read from the ``DevToolsActivePort``
file it writes there, and the page is driven over its websocket with aiohttp (already a ComfyUI requirement,
so the host venv has it). Everything the page logs is kept: ``console`` (console API calls), ``exceptions``
(uncaught errors) and ``log`` (browser log entries, e.g. failed requests).

    async with Browser() as b:
        await b.navigate(url)
        await b.wait_for("window.comfyAPI?.app?.app?.graph != null")
        title = await b.evaluate("document.title")
        await b.screenshot(path)
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

#: the flags the issue asks for, plus what a headless test run needs
CHROMIUM_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run", "--no-default-browser-check",
    "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio", "--disable-extensions",
    "--password-store=basic", "--use-mock-keychain",
)


def find_chromium() -> str | None:
    """The Chromium binary: env ``LYCORIS_CHROMIUM``, else ``chromium`` / ``chromium-browser`` on PATH."""
    env = os.environ.get("LYCORIS_CHROMIUM")
    if env:
        return env if os.access(env, os.X_OK) else None
    for name in ("chromium", "chromium-browser"):
        path = shutil.which(name)
        if path:
            return path
    return None


class CDPError(RuntimeError):
    """A CDP command failed, the page threw, or a wait timed out."""


class Browser:
    """One headless Chromium with one page. Use as ``async with Browser(width, height) as b``."""

    def __init__(self, width: int = 1400, height: int = 900, binary: str | None = None,
                 boot_timeout: float = 60.0):
        self.binary = binary or find_chromium()
        if not self.binary:
            raise CDPError("chromium not found (apt-get install chromium chromium-driver)")
        self.width, self.height, self.boot_timeout = width, height, boot_timeout
        self.user_dir = Path(tempfile.mkdtemp(prefix="lyco_chromium_"))
        self.proc: subprocess.Popen | None = None
        self.console: list[dict] = []
        self.exceptions: list[dict] = []
        self.log: list[dict] = []
        self._session = None
        self._ws = None
        self._reader = None
        self._next_id = 0
        self._pending: dict[int, asyncio.Future] = {}

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> "Browser":
        import aiohttp

        cmd = [self.binary, *CHROMIUM_FLAGS, f"--user-data-dir={self.user_dir}", "--remote-debugging-port=0",
               "--remote-debugging-address=127.0.0.1", f"--window-size={self.width},{self.height}", "about:blank"]
        self.stderr_path = self.user_dir / "chromium.log"
        self._stderr = open(self.stderr_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self._stderr, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        port_file = self.user_dir / "DevToolsActivePort"
        deadline = time.monotonic() + self.boot_timeout
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None:
                raise CDPError(f"chromium exited with {self.proc.returncode}: {self.stderr_tail()}")
            if time.monotonic() > deadline:
                raise CDPError(f"chromium wrote no DevToolsActivePort in {self.boot_timeout:.0f} s: "
                               f"{self.stderr_tail()}")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self._session = aiohttp.ClientSession()
        targets = []
        while time.monotonic() < deadline:
            async with self._session.get(f"http://127.0.0.1:{port}/json/list") as r:
                targets = [t for t in await r.json() if t.get("type") == "page"]
            if targets:
                break
            await asyncio.sleep(0.1)
        if not targets:
            raise CDPError("chromium has no page target")
        self._ws = await self._session.ws_connect(targets[0]["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        for domain in ("Runtime", "Log", "Page"):
            await self.send(f"{domain}.enable")
        await self.send("Emulation.setDeviceMetricsOverride", width=self.width, height=self.height,
                        deviceScaleFactor=1, mobile=False)
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._reader:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        if self.proc is not None and self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, 15)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, 9)
                except ProcessLookupError:
                    pass
        if getattr(self, "_stderr", None):
            self._stderr.close()
        shutil.rmtree(self.user_dir, ignore_errors=True)

    def stderr_tail(self, chars: int = 3000) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    # ------------------------------------------------------------------ protocol
    async def _read(self) -> None:
        import aiohttp

        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if "id" in data:
                fut = self._pending.pop(data["id"], None)
                if fut and not fut.done():
                    fut.set_result(data)
                continue
            method, params = data.get("method"), data.get("params", {})
            if method == "Runtime.consoleAPICalled":
                text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
                frames = (params.get("stackTrace") or {}).get("callFrames") or []
                self.console.append({"type": params.get("type"), "text": text,
                                     "url": frames[0].get("url", "") if frames else "",
                                     "stack": [f.get("url", "") for f in frames]})
            elif method == "Runtime.exceptionThrown":
                d = params.get("exceptionDetails", {})
                frames = (d.get("stackTrace") or {}).get("callFrames") or []
                self.exceptions.append({"text": (d.get("exception") or {}).get("description") or d.get("text"),
                                        "url": d.get("url", "") or (frames[0].get("url", "") if frames else ""),
                                        "stack": [f.get("url", "") for f in frames]})
            elif method == "Log.entryAdded":
                e = params.get("entry", {})
                self.log.append({"level": e.get("level"), "text": e.get("text"), "url": e.get("url", ""),
                                 "source": e.get("source")})

    async def send(self, method: str, timeout: float = 60.0, **params) -> dict:
        self._next_id += 1
        mid = self._next_id
        fut = asyncio.get_running_loop().create_future()
        self._pending[mid] = fut
        await self._ws.send_str(json.dumps({"id": mid, "method": method, "params": params}))
        try:
            data = await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise CDPError(f"{method}: no answer in {timeout:.0f} s") from None
        if "error" in data:
            raise CDPError(f"{method}: {data['error']}")
        return data.get("result", {})

    async def evaluate(self, expression: str, timeout: float = 60.0):
        """The JSON value of ``expression`` (promises awaited). Page exceptions raise CDPError."""
        res = await self.send("Runtime.evaluate", timeout=timeout, expression=expression, awaitPromise=True,
                              returnByValue=True, userGesture=True)
        if "exceptionDetails" in res:
            d = res["exceptionDetails"]
            raise CDPError(f"page error: {(d.get('exception') or {}).get('description') or d.get('text')}")
        return (res.get("result") or {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 60.0, interval: float = 0.25):
        """Poll ``expression`` until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        last_err = None
        while time.monotonic() < deadline:
            try:
                value = await self.evaluate(expression)
                if value:
                    return value
            except CDPError as e:
                last_err = e
            await asyncio.sleep(interval)
        raise CDPError(f"timed out after {timeout:.0f} s waiting for: {expression}"
                       + (f" (last error: {last_err})" if last_err else ""))

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def screenshot(self, path, clip: dict | None = None) -> Path:
        """PNG of the viewport (or ``clip`` = {x, y, width, height}) to ``path``."""
        params = {"format": "png"}
        if clip:
            params["clip"] = {**clip, "scale": 1}
        res = await self.send("Page.captureScreenshot", **params)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(res["data"]))
        return path

    async def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            await self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    async def click_selector(self, selector: str) -> None:
        """A real mouse click in the middle of the first element matching ``selector`` (its first ``button``
        when the match is a wrapper, as PrimeVue split buttons are)."""
        box = await self.evaluate(
            f"(() => {{ let e = document.querySelector({json.dumps(selector)}); if (!e) return null;"
            " if (e.tagName !== 'BUTTON') e = e.querySelector('button') || e;"
            " const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        if not box:
            raise CDPError(f"no element matches {selector!r}")
        await self.click(*box)

    def errors(self) -> list[dict]:
        """Everything error-level the page produced: console.error, uncaught exceptions, error log entries."""
        out = [{"kind": "console", **c} for c in self.console if c["type"] in ("error", "assert")]
        out += [{"kind": "exception", **e} for e in self.exceptions]
        out += [{"kind": "log", **e} for e in self.log if e.get("level") == "error"]
        return out
