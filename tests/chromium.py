"""Headless Chromium for tests that open a page: found (or installed) once, driven through the
Chrome DevTools Protocol (CDP) over its websocket, so a test clicks like a user and takes screenshots.

Chromium is Debian's ``chromium`` package. When it is missing and the tests run as root on a machine
with ``apt-get`` (CI: a clean Debian machine), :func:`chromium_binary` installs it; otherwise the test
is skipped and says how to install it. ``SAMDROP_CHROMIUM`` may name another Chromium or Chrome.
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import websocket
from PIL import Image

INSTALL = "apt-get update && apt-get install -y --no-install-recommends chromium"
LISTENING = re.compile(r"DevTools listening on (ws://\S+)")


def chromium_binary() -> str:
    """The Chromium to run: ``SAMDROP_CHROMIUM``, else ``chromium`` on PATH, installed with apt-get
    when missing and this is root; skips the test when neither works."""
    named = os.environ.get("SAMDROP_CHROMIUM") or shutil.which("chromium")
    if named:
        return named
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        pytest.skip(
            f"Chromium is not installed and cannot be installed here (not root with apt-get): {INSTALL}"
        )
    done = subprocess.run(
        ["sh", "-c", INSTALL],
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    found = shutil.which("chromium")
    if done.returncode != 0 or found is None:
        pytest.fail(f"`{INSTALL}` failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return found


class Page:
    """One tab, driven through CDP: :meth:`open`, :meth:`evaluate`, :meth:`click`, :meth:`screenshot`."""

    def __init__(self, ws_url: str) -> None:
        self._ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self._ids = itertools.count(1)
        self._events: list[dict[str, Any]] = []
        self.call("Page.enable")
        self.call("Runtime.enable")

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        """Send one command and return its result (events that arrive meanwhile are kept)."""
        ident = next(self._ids)
        self._ws.send(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(self._ws.recv())
            if message.get("id") == ident:
                if "error" in message:
                    raise AssertionError(f"CDP {method} failed: {message['error']}")
                return dict(message.get("result", {}))
            self._events.append(message)

    def wait_event(self, method: str, timeout_s: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for event in self._events:
                if event.get("method") == method:
                    self._events.remove(event)
                    return event
            self._events.append(json.loads(self._ws.recv()))
        raise AssertionError(f"no {method} within {timeout_s}s")

    def open(self, path: Path) -> None:
        self._events.clear()
        self.call("Page.navigate", url=path.resolve().as_uri())
        self.wait_event("Page.loadEventFired")

    def evaluate(self, expression: str) -> Any:
        """The JSON value of ``expression`` in the page; a script error fails the test."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real mouse click (move, press, release) at the middle of the element ``selector``."""
        box = self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();"
            " return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        x, y = box
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def move_away(self) -> None:
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=1, y=1)

    def screenshot(self) -> tuple[bytes, np.ndarray]:
        """PNG bytes of the viewport and its ``HxWx3 uint8`` RGB pixels."""
        self.evaluate("new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)))")
        data = base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])
        with Image.open(io.BytesIO(data)) as image:
            return data, np.asarray(image.convert("RGB"))

    def close(self) -> None:
        self._ws.close()


@contextmanager
def headless_page(binary: str, *, width: int, height: int) -> Iterator[Page]:
    """A headless Chromium with one blank tab of ``width`` x ``height`` CSS px at scale 1."""
    with tempfile.TemporaryDirectory(prefix="samdrop-chromium-") as profile:
        argv = [
            binary, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
            "--remote-debugging-port=0", f"--user-data-dir={profile}", "--force-device-scale-factor=1",
            "--hide-scrollbars", f"--window-size={width},{height}", "about:blank",
        ]  # fmt: skip
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            page = Page(_page_socket(proc))
            page.call(
                "Emulation.setDeviceMetricsOverride",
                width=width,
                height=height,
                deviceScaleFactor=1,
                mobile=False,
            )
            try:
                yield page
            finally:
                page.close()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _page_socket(proc: subprocess.Popen[str]) -> str:
    """The websocket URL of the blank tab, once Chromium says where DevTools listens."""
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        match = LISTENING.search(line)
        if match:
            port = match.group(1).split(":")[2].split("/")[0]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as answer:
                targets = json.loads(answer.read())
            # Keep reading what Chromium logs, so a full pipe never blocks it.
            threading.Thread(target=proc.stderr.read, daemon=True).start()
            return str(next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page"))
    raise AssertionError("Chromium exited before DevTools listened:\n" + "".join(seen[-30:]))
