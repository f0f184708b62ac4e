"""A headless Chromium driven by Selenium, and a server started for one look at it: what the
browser test and `docs/screenshots.py` share.

Only Debian's packaged browser is used (`/usr/bin/chromium` with its own `/usr/bin/chromedriver`,
always the same version): both paths are given to Selenium, so Selenium Manager never looks for,
or downloads, a browser or a driver.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

CHROMIUM = os.environ.get("SEGTUNE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("SEGTUNE_CHROMEDRIVER", "/usr/bin/chromedriver")
# Without the background-networking flags Chromium keeps calling Google's hosts, which a
# machine with a closed network refuses, many at a time; --no-sandbox because CI runs as root.
CHROMIUM_FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-quic",
                  "--window-size=1400,900")


def missing_browser() -> str | None:
    """Why a headless Chromium cannot be driven here (None when it can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return (f"{path} not found: apt-get install chromium chromium-driver "
                    "(or set SEGTUNE_CHROMIUM / SEGTUNE_CHROMEDRIVER)")
    return None


@contextlib.contextmanager
def chromium(profile: Path) -> Iterator:
    """A headless Chromium with a fresh profile under `profile`; quit on exit."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_http(url: str, proc: subprocess.Popen | None, log: Path | None,
                  timeout: float = 180) -> None:
    """Poll `url` until it answers 200; raise with the server's log if it dies or never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            raise RuntimeError(f"the server exited ({proc.returncode}) before {url} answered:\n"
                               f"{tail}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        time.sleep(0.5)
    tail = log.read_text()[-3000:] if log else ""
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s:\n{tail}")


@contextlib.contextmanager
def mlflow_ui(store: Path, log: Path) -> Iterator[str]:
    """`mlflow server` on a free loopback port over the sqlite store `store`; its base URL.

    The server runs in its own process group, killed whole on exit (uvicorn forks workers),
    whatever happens in the block."""
    port = free_port()
    mlflow = shutil.which("mlflow", path=os.path.dirname(sys.executable)) or "mlflow"
    cmd = [mlflow, "server", "--backend-store-uri", f"sqlite:///{store}",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=store.parent)
    try:
        base = f"http://127.0.0.1:{port}"
        # The UI's page loads before the tracking store is ready; /health is answered after.
        wait_for_http(f"{base}/health", proc, log)
        yield base
    finally:
        kill_group(proc)


def kill_group(proc: subprocess.Popen, grace: float = 10) -> None:
    """SIGTERM the process group of `proc`, SIGKILL it if it lingers."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(grace)


def save_png(png: bytes, *paths: Path, width: int = 1000) -> None:
    """Write a screenshot to each path, scaled to `width` px and reduced to 256 colours, so
    that the copies kept in docs/ stay small (a UI screenshot has few colours anyway)."""
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    if image.width > width:
        image = image.resize((width, round(image.height * width / image.width)),
                             Image.Resampling.LANCZOS)
    image = image.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, optimize=True)
