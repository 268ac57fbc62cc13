"""Driving `bld serve` in a real browser: Debian's chromium, headless, through playwright.

Used by the browser and serving tests (tests/test_web.py, tests/test_serve.py),
scripts/screenshots.py and benchmarks/serve_load.py; test code, so it lives here and not in
the installed library (pytest puts tests/ on sys.path; the scripts add it). Playwright's own
browser download is not used: the system chromium is launched by path.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np
from PIL import Image

SRC = Path(__file__).resolve().parents[1] / "src"  # the served process imports bld from here


def chromium_path() -> str | None:
    """The system chromium binary, or None."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served(NamedTuple):
    url: str  # http://127.0.0.1:PORT/
    proc: subprocess.Popen  # the `bld serve` process


@contextmanager
def served(run_dir: str | Path, port: int | None = None, timeout: float = 180,
           log_path: str | Path | None = None, extra: list[str] | None = None,
           env: dict[str, str] | None = None) -> Iterator[Served]:
    """`bld serve RUN_DIR` in a child process on a free loopback port (``env`` added to its
    environment), until it answers; stopped with SIGTERM (then SIGKILL after 20 s) at exit."""
    port = port or free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(SRC), *filter(None, [os.environ.get("PYTHONPATH")])]),
        "GRADIO_ANALYTICS_ENABLED": "False", **(env or {})}
    log = open(log_path, "w") if log_path else subprocess.DEVNULL
    proc = subprocess.Popen([sys.executable, "-m", "bld.app.cli", "serve", str(run_dir),
                             "--port", str(port), "--device", "cpu", *(extra or [])],
                            env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"bld serve exited with {proc.returncode} before answering"
                                   + (f"; see {log_path}" if log_path else ""))
            try:
                with urllib.request.urlopen(url, timeout=2) as r:
                    if r.status == 200:
                        break
            except urllib.error.HTTPError:  # it answers (a login page, ...)
                break
            except OSError:
                pass
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"bld serve did not answer on {url} in {timeout:.0f} s")
            time.sleep(0.5)
        yield Served(url, proc)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        if log_path:
            log.close()


@contextmanager
def running_server(run_dir: str | Path, port: int | None = None, timeout: float = 180,
                   log_path: str | Path | None = None, extra: list[str] | None = None):
    """`served`, yielding only the URL."""
    with served(run_dir, port, timeout, log_path, extra) as s:
        yield s.url


@contextmanager
def browser_page(width: int = 1280, height: int = 900):
    """A headless chromium page (the system binary; --no-sandbox when run as root)."""
    from playwright.sync_api import sync_playwright
    exe = chromium_path()
    if exe is None:
        raise FileNotFoundError("no chromium binary on PATH (Debian: apt-get install chromium)")
    args = ["--no-sandbox"] if hasattr(os, "geteuid") and os.geteuid() == 0 else []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=args, headless=True)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


def output_image(page, selector: str, timeout_ms: float = 120_000) -> Image.Image:
    """Wait for the image in an output component and read it back from the server."""
    img = page.locator(f"{selector} img").first
    img.wait_for(state="visible", timeout=timeout_ms)
    src = img.get_attribute("src")
    data = page.request.get(src).body() if not src.startswith("data:") else None
    if data is None:
        import base64
        data = base64.b64decode(src.split(",", 1)[1])
    return Image.open(io.BytesIO(data)).convert("L")


def not_blank(img: Image.Image) -> tuple[bool, str]:
    """Whether a grid holds pictures: most of it is not the white padding, and that part
    has spread and many grey levels (a blank, one-colour or white image fails)."""
    a = np.asarray(img.convert("L")).astype(np.float32)
    inner = a[a < 250]
    frac = inner.size / a.size
    ok = frac > 0.3 and inner.std() > 5 and len(np.unique(inner)) > 16
    return ok, (f"{img.size[0]}x{img.size[1]}: {frac:.0%} non-white, std {inner.std():.1f}, "
                f"{len(np.unique(inner))} grey levels" if inner.size else "all white")


def paint(page, selector: str, strokes: list[tuple[float, float, float, float]]) -> None:
    """Drag the mouse over the editor's canvas along (x0, y0, x1, y1) strokes, given as
    fractions of the canvas."""
    canvas = page.locator(f"{selector} canvas").first
    canvas.wait_for(state="visible", timeout=60_000)
    box = canvas.bounding_box()
    for x0, y0, x1, y1 in strokes:
        page.mouse.move(box["x"] + box["width"] * x0, box["y"] + box["height"] * y0)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * x1, box["y"] + box["height"] * y1, steps=12)
        page.mouse.up()


ERROR_TOAST = '[data-testid="toast-body"].error'


def click_and_time(page, button: str, output: str, timeout_ms: float = 120_000
                   ) -> tuple[Image.Image, float]:
    """Click a button and wait for a new image in the output; (image, seconds). An error
    message on the page instead raises PageError with its text."""
    img = page.locator(f"{output} img")
    before = img.first.get_attribute("src") if img.count() else None
    errors = page.locator(ERROR_TOAST).count()
    t0 = time.perf_counter()
    page.click(button)
    page.wait_for_function(
        """([sel, before, toast, errors]) => {
               const i = document.querySelector(sel + ' img');
               return (i && i.complete && i.naturalWidth > 0 && i.src !== before)
                   || document.querySelectorAll(toast).length > errors; }""",
        arg=[output, before, ERROR_TOAST, errors], timeout=timeout_ms)
    seconds = time.perf_counter() - t0
    if page.locator(ERROR_TOAST).count() > errors:
        raise PageError(page.locator(ERROR_TOAST).last.inner_text())
    return output_image(page, output), seconds


class PageError(AssertionError):
    """The page answered with an error message (its text)."""
