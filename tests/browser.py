"""Headless Chromium driven through the DevTools protocol over a pipe (no websocket client needed).

One browser process loads many pages: for each it reports the attributes the page's own script keeps on
``<html>``, every console message and exception, the rendered DOM, and screenshots.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TIMEOUT_S = 60.0


def chromium() -> str | None:
    """The browser executable, or None."""
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def need_chromium() -> str:
    """The browser executable; skips the test with the reason when there is none."""
    found = chromium()
    if found is None:
        pytest.skip("no headless Chromium on PATH (Debian: apt-get install chromium; scripts/setup_env.sh does it)")
    return found


@dataclass
class Loaded:
    """A page after it loaded: attributes of ``<html>``, its DOM, console errors and exceptions."""

    state: dict[str, str]
    html: str
    errors: list[str] = field(default_factory=list)


STATE_JS = """(() => {
  const images = [...document.querySelectorAll('main img')];
  const root = document.documentElement;
  const attrs = {};
  for (const a of root.attributes) attrs[a.name] = a.value;
  attrs['pending'] = String(images.filter(i => !i.complete).length);
  attrs['natural-zero'] = String(images.filter(i => i.complete && i.naturalWidth === 0).length);
  return JSON.stringify(attrs);
})()"""


def _settled(state: dict[str, str]) -> bool:
    """Every thumbnail finished, and the page's own count has seen every load and error event."""
    counted = int(state.get("data-images-loaded", 0)) + int(state.get("data-images-broken", 0))
    return state["pending"] == "0" and counted == int(state.get("data-images-total", 0))


def _above_four(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return moved


class Browser:
    """A headless Chromium process spoken to over ``--remote-debugging-pipe``."""

    def __init__(self, width: int = 1280, height: int = 20000) -> None:
        self.profile = tempfile.mkdtemp(prefix="vcf-chromium-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()
        # Move the browser's ends above 4 so that putting them on 3 and 4 cannot overwrite one with the other.
        to_browser_r, from_browser_w = (_above_four(fd) for fd in (to_browser_r, from_browser_w))
        # The browser reads commands from fd 3 and writes replies to fd 4; bash puts the pipes there.
        command = (
            f"exec {need_chromium()} --headless --no-sandbox --disable-gpu --no-first-run --hide-scrollbars"
            f" --remote-debugging-pipe --user-data-dir={self.profile} --window-size={width},{height}"
            f" about:blank 3<&{to_browser_r} 4>&{from_browser_w}"
        )
        self.process = subprocess.Popen(
            ["bash", "-c", command],  # bash: dash takes single-digit fds only
            pass_fds=(to_browser_r, from_browser_w),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.call(f"{domain}.enable", session=True)
        self.size = (width, height)
        self._viewport(width, height)

    def _viewport(self, width: int, height: int) -> None:
        self.call(
            "Emulation.setDeviceMetricsOverride",
            session=True,
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    def _read_message(self, deadline: float) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError("no answer from the browser")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError("the browser closed its pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: bool = False, **params: Any) -> dict[str, Any]:
        """Sends one command and waits for its reply (events that arrive meanwhile are kept)."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._events.append(reply)

    def _wait_event(self, method: str, deadline: float) -> None:
        while not any(e.get("method") == method for e in self._events):
            self._events.append(self._read_message(deadline))

    def evaluate(self, expression: str) -> Any:
        return self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True)["result"].get(
            "value"
        )

    def load(self, page: Path) -> Loaded:
        """Opens a page, waits until it loaded and every thumbnail finished, and reports what happened."""
        self._events.clear()
        self.call("Page.navigate", session=True, url=page.resolve().as_uri())
        deadline = time.monotonic() + TIMEOUT_S
        self._wait_event("Page.loadEventFired", deadline)
        state = json.loads(self.evaluate(STATE_JS))
        while not _settled(state) and time.monotonic() < deadline:
            time.sleep(0.05)
            state = json.loads(self.evaluate(STATE_JS))
        html = self.evaluate("document.documentElement.outerHTML")
        errors = []
        for event in self._events:
            params = event.get("params", {})
            if event.get("method") == "Runtime.exceptionThrown":
                errors.append(json.dumps(params.get("exceptionDetails", {}))[:300])
            elif event.get("method") == "Runtime.consoleAPICalled" and params.get("type") in {"error", "assert"}:
                errors.append(json.dumps(params.get("args", []))[:300])
            elif event.get("method") == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
                errors.append(params["entry"].get("text", "")[:300])
        return Loaded(state, html, errors)

    def screenshot(self, page: Path, target: Path, width: int = 1280, height: int = 900) -> Path:
        """A PNG of the first screen of the page."""
        self._viewport(width, height)
        try:
            self.load(page)
            data = self.call("Page.captureScreenshot", session=True, format="png")["data"]
        finally:
            self._viewport(*self.size)
        target.write_bytes(base64.b64decode(data))
        return target

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.call("Browser.close")
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)
        shutil.rmtree(self.profile, ignore_errors=True)

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class Elements(HTMLParser):
    """Every start tag of a document with its attributes and the text inside it (nested text included)."""

    VOID = frozenset({"img", "br", "meta", "link", "input", "circle", "rect"})

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.elements: list[tuple[str, dict[str, str], list[str]]] = []
        self._open: list[list[str]] = []
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        text: list[str] = []
        self.elements.append((tag, {k: v or "" for k, v in attrs}, text))
        if tag not in self.VOID:
            self._open.append(text)

    def handle_endtag(self, tag: str) -> None:
        if self._open and tag not in self.VOID:
            self._open.pop()

    def handle_data(self, data: str) -> None:
        for text in self._open:
            text.append(data)

    def find(self, tag: str, **attrs: str) -> list[tuple[dict[str, str], str]]:
        """Elements of ``tag`` whose attributes have the given values (``class_`` matches one class)."""
        wanted_class = attrs.pop("class_", None)
        found = []
        for name, element_attrs, text in self.elements:
            if name != tag:
                continue
            if wanted_class is not None and wanted_class not in element_attrs.get("class", "").split():
                continue
            if all(element_attrs.get(key.replace("_", "-")) == value for key, value in attrs.items()):
                found.append((element_attrs, "".join(text)))
        return found
