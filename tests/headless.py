"""Headless Chromium for the book's tests: a small DevTools-protocol client and the checks of one page.

Debian's ``chromium`` (``make browser``) runs headless with a DevTools port on 127.0.0.1; this module
talks to it over a WebSocket (websocket-client) with the protocol's stable Page/Runtime commands only,
so there is no driver binary to keep in step with the browser and nothing is downloaded.

``page_problems(browser, url)`` opens a page, waits for MathJax, fonts and images, and lists what a
reader would see broken: a Python traceback in an output, an image that did not load or is one flat
colour, TeX that MathJax did not typeset (or typeset as an error), a font that failed, or anything
fetched from another host.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import websocket
from PIL import Image

WIDTH = 1280
MAX_SHOT_HEIGHT = 12000  # a long chapter's screenshot is cut there
# TeX a reader should never see as source once MathJax ran (code and typeset maths are left out)
RAW_TEX = re.compile(r"\\\(|\\\)|\\\[|\\\]|\$\$|\\(?:mathcal|mathbf|mathrm|frac|sum|exp|log|tau|sigma|begin|end|top|cdot|left|right)\b")

_INSPECT = r"""(async () => {
  if (window.MathJax && MathJax.startup && MathJax.startup.promise) await MathJax.startup.promise;
  await document.fonts.ready;
  const root = document.querySelector('article') || document.body;
  const images = [...root.querySelectorAll('img')];
  await Promise.all(images.map(i => i.decode().catch(() => null)));
  const prose = root.cloneNode(true);
  prose.querySelectorAll('pre, code, script, style, textarea, mjx-container, .cell_input').forEach(e => e.remove());
  const maths = [...root.querySelectorAll('.math')];
  return {
    mathjax: !!(window.MathJax && MathJax.version),
    images: images.map(i => ({src: i.currentSrc || i.src, width: i.naturalWidth})),
    outputs: [...root.querySelectorAll('.output')].map(e => ({cls: e.className, text: e.textContent})),
    maths: maths.length,
    untypeset: maths.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 80)),
    errors: [...root.querySelectorAll('mjx-merror')].map(e => e.getAttribute('data-mjx-error') || e.textContent),
    undefined: [...root.querySelectorAll('mjx-assistive-mml mtext[mathcolor="red"]')].map(e => e.textContent),
    prose: prose.textContent,
    fonts: [...document.fonts].filter(f => f.status === 'error').map(f => f.family),
    remote: performance.getEntriesByType('resource').map(e => e.name).filter(n => /^(https?|wss?):/.test(n)),
    height: document.documentElement.scrollHeight,
  };
})()"""


def find_chromium() -> str | None:
    """The chromium executable on PATH (Debian's package), or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    """One headless Chromium with one tab, driven over the DevTools protocol (use as a context manager)."""

    def __init__(self, executable: str, timeout: float = 60):
        self.timeout, self._id, self.exceptions, self._events = timeout, 0, [], []
        self._profile = tempfile.TemporaryDirectory(prefix="book-chromium-")
        # --no-sandbox: the course machines run as root, where Chromium's sandbox refuses to start;
        # the pages are the book's own files
        self._process = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--hide-scrollbars",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", f"--window-size={WIDTH},900",
             f"--user-data-dir={self._profile.name}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            port = self._wait_for_port(Path(self._profile.name) / "DevToolsActivePort")
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never via a proxy
            with opener.open(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as answer:
                page = next(t for t in json.load(answer) if t["type"] == "page")
            self._socket = websocket.create_connection(page["webSocketDebuggerUrl"], timeout=timeout,
                                                       suppress_origin=True)
            self.send("Page.enable")
            self.send("Runtime.enable")
        except BaseException:
            self.close()
            raise

    def _wait_for_port(self, port_file: Path) -> int:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"chromium exited at start with code {self._process.returncode}")
            lines = port_file.read_text().split() if port_file.exists() else []
            if len(lines) >= 2:
                return int(lines[0])
            time.sleep(0.1)
        raise TimeoutError(f"chromium opened no DevTools port within {self.timeout:.0f} s")

    def send(self, method: str, **params) -> dict:
        """Run one DevTools command and return its result (events that arrive meanwhile are noted)."""
        self._id += 1
        self._socket.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            message = self._receive()
            if message.get("id") == self._id:
                if "error" in message:
                    raise RuntimeError(f"{method} failed: {message['error']}")
                return message["result"]

    def _receive(self) -> dict:
        message = json.loads(self._socket.recv())
        if message.get("method") == "Runtime.exceptionThrown":
            details = message["params"]["exceptionDetails"]
            thrown = details.get("exception", {}).get("description", "").splitlines()[:1]
            where = f'{details.get("url", "?")}:{details.get("lineNumber", "?")}'
            self.exceptions.append(f'{details.get("text", "?")} {" ".join(thrown)} at {where}')
        if "method" in message:
            self._events.append(message["method"])
        return message

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (a promise is awaited)."""
        result = self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JavaScript failed: {result['exceptionDetails'].get('exception', result)}")
        return result["result"].get("value")

    def open(self, url: str) -> None:
        """Load url and wait for its load event (everything the page loads at first is in)."""
        self.exceptions.clear()
        self._events = []
        result = self.send("Page.navigate", url=url)
        if result.get("errorText"):
            raise RuntimeError(f"chromium could not open {url}: {result['errorText']}")
        deadline = time.monotonic() + self.timeout
        while "Page.loadEventFired" not in self._events:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not finish loading within {self.timeout:.0f} s")
            self._receive()

    def screenshot(self, path: Path, height: int) -> Path:
        """A PNG of the page's top `height` pixels (at most MAX_SHOT_HEIGHT), WIDTH wide: the window is
        made that tall for the shot (capturing beyond the window instead lays the theme out wrongly)."""
        height = max(1, min(height, MAX_SHOT_HEIGHT))
        self.send("Emulation.setDeviceMetricsOverride", width=WIDTH, height=height, deviceScaleFactor=1, mobile=False)
        try:
            self.evaluate("new Promise(done => requestAnimationFrame(() => requestAnimationFrame(done)))")
            shot = self.send("Page.captureScreenshot", format="png")
        finally:
            self.send("Emulation.clearDeviceMetricsOverride")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def close(self) -> None:
        if getattr(self, "_socket", None):
            self._socket.close()
        if self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._profile.cleanup()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def image_bytes(src: str) -> bytes | None:
    """The bytes of a data: or file: image URL (None for other URLs)."""
    if src.startswith("data:"):
        header, _, payload = src.partition(",")
        return base64.b64decode(payload) if header.endswith(";base64") else urllib.parse.unquote_to_bytes(payload)
    if src.startswith("file:"):
        path = Path(urllib.request.url2pathname(urllib.parse.urlparse(src).path))
        return path.read_bytes() if path.is_file() else None
    return None


def is_blank(data: bytes) -> bool | None:
    """Whether a raster image is one flat colour (alpha included); None when PIL cannot read it (SVG)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return all(low == high for low, high in image.convert("RGBA").getextrema())
    except (OSError, ValueError):
        return None


def page_problems(browser: Chromium, url: str, screenshot: Path | None = None) -> list[str]:
    """What is broken on the page at url, one sentence each (empty: the page is fine)."""
    browser.open(url)
    page = browser.evaluate(_INSPECT)
    if screenshot is not None:
        browser.screenshot(screenshot, page["height"])
    problems = [f"JavaScript error: {text}" for text in browser.exceptions]
    for output in page["outputs"]:
        if "traceback" in output["cls"] or "Traceback (most recent call last)" in output["text"]:
            problems.append(f"a Python traceback in an output: {output['text'].strip()[-300:]}")
    for image in page["images"]:
        name = image["src"][:80]
        data = image_bytes(image["src"])
        if image["width"] == 0:
            problems.append(f"an image that did not load (0 natural width): {name}")
        elif data is not None and is_blank(data):
            problems.append(f"a blank image (one flat colour): {name}")
    if page["maths"] and not page["mathjax"]:
        problems.append(f"{page['maths']} maths elements but MathJax did not load")
    problems += [f"maths not typeset: {text}" for text in page["untypeset"]]
    problems += [f"MathJax error in TeX: {text}" for text in page["errors"]]
    problems += [f"an undefined TeX macro (shown in red): {text}" for text in page["undefined"]]
    raw = sorted({match.group() for match in RAW_TEX.finditer(page["prose"])})
    if raw:
        problems.append(f"untypeset TeX in the text: {raw}")
    problems += [f"a font failed to load: {family}" for family in sorted(set(page["fonts"]))]
    problems += [f"loaded from another host: {name}" for name in page["remote"]]
    return problems
