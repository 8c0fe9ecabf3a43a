"""Headless Chromium driven over the DevTools protocol on a pipe (no web driver, no extra package).

Chromium started with ``--remote-debugging-pipe`` reads protocol messages (JSON, each ending in a NUL
byte) on its fd 3 and writes its answers and events on fd 4. ``Browser`` opens one page, records
every URL the page requests, evaluates JavaScript in it and takes screenshots. No proxy, and every
host name but 127.0.0.1 resolves to nothing: a page that reaches for the internet fails, and the
recorded URLs say what it tried.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome-error:", "http://127.0.0.1:")


def chromium_or_skip() -> str:
    """Debian's Chromium; missing, a skip outside CI and a failure under CI=true (.ci/run installs it)."""
    path = CHROMIUM if os.access(CHROMIUM, os.X_OK) else shutil.which("chromium")
    if path is None:
        message = "chromium not installed (apt-get install -y chromium chromium-driver)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


class Browser:
    """One headless Chromium with one page; ``close()`` ends it."""

    def __init__(self, executable: str, profile_dir: Path, width: int = 1400, height: int = 1000) -> None:
        to_chrome_read, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_write = os.pipe()

        def wire_pipes() -> None:  # in the child: the protocol's fds 3 (in) and 4 (out), inheritable
            # through fresh numbers first: a pipe may already be 3 or 4, and dup2 onto itself keeps close-on-exec
            read_end, write_end = os.dup(to_chrome_read), os.dup(from_chrome_write)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        args = [
            executable,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-proxy-server",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            f"--user-data-dir={profile_dir}",
            f"--window-size={width},{height}",
            "--remote-debugging-pipe",
        ]
        self.process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=False,
            preexec_fn=wire_pipes,
        )
        os.close(to_chrome_read)
        os.close(from_chrome_write)
        self._answers: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._next_id = 0
        self._lock = threading.Lock()
        self.requested: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Page", "Network", "Runtime"):
            self.call(f"{domain}.enable", session=self.session)

    def _read(self) -> None:
        buffer = b""
        while chunk := os.read(self._from_chrome, 1 << 16):
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                message = json.loads(raw)
                if "id" in message:
                    self._answers[message["id"]].put(message)
                elif message.get("method") == "Network.requestWillBeSent":
                    self.requested.append(message["params"]["request"]["url"])

    def call(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        """Send one protocol command and wait for its answer (a DevTools error fails the test)."""
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            self._answers[ident] = queue.Queue()
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        answer = self._answers[ident].get(timeout=60)
        assert "error" not in answer, f"{method}: {answer['error']}"
        return answer["result"]

    def open(self, url: str) -> None:
        self.call("Page.navigate", {"url": url}, session=self.session)

    def click_at(self, x: float, y: float) -> None:
        """A left mouse click at page coordinates (for widgets that ignore a scripted ``element.click()``)."""
        for kind in ("mousePressed", "mouseReleased"):
            event = {"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}
            self.call("Input.dispatchMouseEvent", event, self.session)

    def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the page."""
        result = self.call(
            "Runtime.evaluate", {"expression": expression, "returnByValue": True, "awaitPromise": True}, self.session
        )
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60, what: str = "") -> Any:
        """Poll a JavaScript expression until it is truthy; its value, or a failure naming ``what``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.25)
        pytest.fail(f"page never showed {what or expression} within {timeout:.0f} s")

    def text(self) -> str:
        return self.evaluate("document.body ? document.body.innerText : ''") or ""

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        """A PNG of the page as shown: its full height, or the window (``full_page=False``: pages that lay out
        again at another height, such as MLflow's artifact viewer, are shown as the user sees them)."""
        params = {"format": "png", "captureBeyondViewport": full_page}
        data = self.call("Page.captureScreenshot", params, self.session)
        path.write_bytes(base64.b64decode(data["data"]))
        return path

    def external_requests(self) -> list[str]:
        """The URLs the page asked for that are neither local files, inline data nor this machine."""
        return [url for url in self.requested if not url.startswith(LOCAL_SCHEMES)]

    def close(self) -> None:
        with contextlib.suppress(Exception):  # it may already be gone
            self.call("Browser.close")
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_chrome)
        os.close(self._from_chrome)
