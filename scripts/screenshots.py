#!/usr/bin/env python
"""Screenshot every page of the MoR Lens app in a real (headless) Chromium.

    python scripts/screenshots.py                       # start a server, write docs/screenshots/*.png
    python scripts/screenshots.py --pages heatmap learn # only some pages
    python scripts/screenshots.py --url http://127.0.0.1:8501 --out /tmp/shots   # reuse a running server

Uses Debian's Chromium (/usr/bin/chromium) through Playwright; it never downloads a browser.
Each page is opened in its own browser context (its own Streamlit session), the script waits for
the page's last element to be drawn and for every spinner to finish, and fails if the page shows
an exception. tests/test_browser.py imports this module for its server and browser helpers.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "app" / "main.py"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
DEFAULT_OUT = ROOT / "docs" / "screenshots"
PREFERRED_CHECKPOINT = "mor-ec-r3"


# ---- server ----------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, log_path: Path | None = None, env: dict | None = None) -> subprocess.Popen:
    """`streamlit run app/main.py` on 127.0.0.1:`port`, headless, in its own process group."""
    log = open(log_path, "wb") if log_path else subprocess.DEVNULL
    cmd = [sys.executable, "-m", "streamlit", "run", str(APP), "--server.port", str(port),
           "--server.address", "127.0.0.1", "--server.headless", "true"]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})}, start_new_session=True)


def wait_until_up(base_url: str, proc: subprocess.Popen | None = None, timeout: float = 60.0) -> None:
    """Poll Streamlit's health endpoint until it answers "ok"; raise if the server dies or is slow."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with code {proc.returncode} before it was up")
        try:
            with urllib.request.urlopen(f"{base_url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{base_url} did not come up within {timeout:.0f} s")


def stop_server(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """SIGTERM the server, then SIGKILL it if it has not exited within `timeout` seconds."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


@contextlib.contextmanager
def running_server(port: int | None = None, log_path: Path | None = None, timeout: float = 60.0):
    """A Streamlit server for the duration of the block; yields its base URL."""
    port = port or free_port()
    proc = start_server(port, log_path)
    try:
        base_url = f"http://127.0.0.1:{port}"
        wait_until_up(base_url, proc, timeout)
        yield base_url
    finally:
        stop_server(proc)


def launch_browser(playwright, chromium: Path = CHROMIUM):
    return playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)


# ---- waiting for a page ----------------------------------------------------------------------

def wait_settled(page, timeout_ms: float, quiet_ms: int = 800) -> None:
    """Wait until no spinner has been on screen for `quiet_ms` (cached calls and charts done)."""
    deadline = time.monotonic() + timeout_ms / 1000
    quiet_since = None
    while time.monotonic() < deadline:
        busy = page.locator('[data-testid="stSpinner"]').count() > 0
        if busy:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.monotonic()
        elif (time.monotonic() - quiet_since) * 1000 >= quiet_ms:
            return
        page.wait_for_timeout(100)
    raise TimeoutError("the page still shows a spinner")


def wait_charts(page, count: int, timeout_ms: float) -> None:
    """Wait until at least `count` Vega-Lite charts have drawn (a canvas or svg inside)."""
    page.wait_for_function(
        """n => Array.from(document.querySelectorAll('[data-testid="stVegaLiteChart"]'))
                 .filter(c => c.querySelector('canvas, svg')).length >= n""",
        arg=count, timeout=timeout_ms)


def check_no_error(page, name: str) -> None:
    """Raise if the page shows an exception box or Streamlit's "Page not found" dialog."""
    if page.locator('[data-testid="stException"]').count():
        raise RuntimeError(f"{name}: the page shows an exception: "
                           f"{page.locator('[data-testid=stException]').first.inner_text()[:500]}")
    if page.get_by_text("Page not found").count():
        raise RuntimeError(f"{name}: Streamlit says 'Page not found'")


def scroll_to(page, locator) -> None:
    """Scroll the main column so `locator` sits near the top of the viewport."""
    locator.first.evaluate("e => e.scrollIntoView({block: 'start'})")
    page.wait_for_timeout(300)


# ---- the pages -------------------------------------------------------------------------------

def _heatmap(page, t, quick):
    page.wait_for_selector(".mor-tok", timeout=t)
    page.get_by_role("button", name="Trace (JSON)").wait_for(timeout=t)
    wait_charts(page, 1, t)


def _scaling(page, t, quick):
    page.get_by_role("button", name="Measure the times again").wait_for(timeout=t)
    wait_charts(page, 2, t)
    scroll_to(page, page.get_by_text("Fixed depth: every token"))


def _kv_memory(page, t, quick):
    page.get_by_text("Which tokens are cached at which step").wait_for(timeout=t)
    wait_charts(page, 3, t)
    scroll_to(page, page.get_by_text("After a prefill of"))


def _throughput(page, t, quick):
    """Press Run; `quick` first unticks the side-by-side measurement (the live decode only)."""
    if quick:
        box = page.get_by_label("Then measure every depth setting side by side")
        box.uncheck(force=True)  # the real <input> sits under Streamlit's styled box
        page.wait_for_function("() => !document.querySelector('input[aria-label^=\"Then measure\"]')?.checked",
                               timeout=t)
        page.wait_for_timeout(500)  # let the rerun that the click caused finish before pressing Run
    page.get_by_role("button", name="Run", exact=True).click()
    if quick:
        # Finished when the last redraw counts every token (batch x new tokens, read from the
        # first two sliders) and the "Press Run" note of the page before the run is gone.
        page.wait_for_function(
            """() => {
                const sliders = document.querySelectorAll('[data-testid="stSlider"] input[type="range"]');
                const [batch, fresh] = Array.from(sliders).map(e => Number(e.value));
                const m = Array.from(document.querySelectorAll('[data-testid="stMetric"]'))
                    .find(e => e.innerText.startsWith('Tokens decoded'));
                return m && m.innerText.trim().endsWith(String(batch * fresh))
                    && !document.body.innerText.includes('to decode with the settings above');
            }""", timeout=t)
    else:
        page.get_by_text("Measured side by side at").wait_for(timeout=t)
        page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=t)
    scroll_to(page, page.get_by_text("Batch size (rows decoded together)"))


def _compare(page, t, quick):
    page.get_by_role("heading", name="Per token").wait_for(timeout=t)
    page.locator('[data-testid="stDataFrame"]').first.wait_for(timeout=t)
    scroll_to(page, page.get_by_text("Checkpoint A", exact=True))


def _learn(page, t, quick):
    page.get_by_role("heading", name="5. Continuous depth-wise batching").wait_for(timeout=t)
    page.get_by_text("request 1", exact=True).first.wait_for(timeout=t)  # the engine's grid, the last element


@dataclass
class Page:
    name: str          # file name of the screenshot (without .png)
    path: str          # URL path ("" is the default page: Streamlit serves it at "/")
    ready: callable    # (page, timeout_ms, quick): waits for the content (may click / scroll); raises on timeout
    query: dict = field(default_factory=dict)


PAGES = {p.name: p for p in [
    Page("heatmap", "", _heatmap),
    Page("scaling", "scaling", _scaling, {"cap": "2"}),
    Page("kv_memory", "kv-memory", _kv_memory),
    Page("throughput", "throughput", _throughput),
    Page("compare", "compare", _compare),
    Page("learn", "learn", _learn),
]}


def default_checkpoint() -> str | None:
    """mor-ec-r3 when shipped, else the first checkpoint folder holding weights."""
    import mor  # installed with the app (`pip install -e .`), like the `app` package the server imports

    names = [f.name for f in mor.list_checkpoints() if (f / "model.safetensors").is_file()]
    if PREFERRED_CHECKPOINT in names:
        return PREFERRED_CHECKPOINT
    return names[0] if names else None


def capture_pages(base_url: str, out_dir: Path, names: list[str] | None = None, browser=None,
                  checkpoint: str | None = None, width: int = 1400, height: int = 1000,
                  timeout: float = 120.0, quick: bool = False, log=print) -> list[Path]:
    """Screenshot each page in `names` (all by default) into `out_dir`/<name>.png; returns the paths.
    `browser`: a Playwright Browser to reuse; otherwise one is launched (and closed) here.
    `quick`: on the throughput page, decode live only (skip the side-by-side measurement table)."""
    if browser is None:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            own = launch_browser(p)
            try:
                return capture_pages(base_url, out_dir, names, own, checkpoint, width, height, timeout, quick, log)
            finally:
                own.close()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = checkpoint or default_checkpoint()
    paths = []
    for name in names or list(PAGES):
        spec = PAGES[name]
        query = {**({"ckpt": checkpoint} if checkpoint else {}), **spec.query}
        url = f"{base_url}/{spec.path}" + (f"?{urlencode(query)}" if query else "")
        start = time.monotonic()
        context = browser.new_context(viewport={"width": width, "height": height}, device_scale_factor=1)
        try:
            page = context.new_page()
            page.goto(url, timeout=timeout * 1000)
            page.locator("h1").first.wait_for(timeout=timeout * 1000)
            spec.ready(page, timeout * 1000, quick)
            wait_settled(page, timeout * 1000)
            check_no_error(page, name)
            path = out_dir / f"{name}.png"
            page.screenshot(path=str(path))
            paths.append(path)
        finally:
            context.close()
        log(f"{name}: {path} ({time.monotonic() - start:.1f} s)")
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Screenshot every page of the MoR Lens app with Debian's headless Chromium.",
        epilog="Without --url a Streamlit server is started on a free port and stopped afterwards.")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"folder for the PNG files (default: {DEFAULT_OUT.relative_to(ROOT)})")
    parser.add_argument("--pages", nargs="+", choices=list(PAGES), default=list(PAGES), metavar="PAGE",
                        help=f"pages to capture (default: all of {', '.join(PAGES)})")
    parser.add_argument("--url", help="base URL of an app already running, e.g. http://127.0.0.1:8501")
    parser.add_argument("--port", type=int, default=None, help="port for the server started here (default: a free one)")
    parser.add_argument("--checkpoint", default=None,
                        help=f"checkpoint shown on every page (default: {PREFERRED_CHECKPOINT} if shipped)")
    parser.add_argument("--width", type=int, default=1400, help="viewport width in pixels (default: 1400)")
    parser.add_argument("--height", type=int, default=1000, help="viewport height in pixels (default: 1000)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds allowed per page (default: 120)")
    parser.add_argument("--quick", action="store_true",
                        help="throughput page: only the live decode, not the slower side-by-side table")
    parser.add_argument("--chromium", type=Path, default=CHROMIUM, help=f"Chromium binary (default: {CHROMIUM})")
    args = parser.parse_args(argv)
    if not args.chromium.is_file():
        parser.error(f"{args.chromium} not found: install Debian's chromium package (never a downloaded browser)")

    from playwright.sync_api import sync_playwright

    with contextlib.ExitStack() as stack:
        base_url = args.url.rstrip("/") if args.url else stack.enter_context(running_server(args.port))
        p = stack.enter_context(sync_playwright())
        browser = launch_browser(p, args.chromium)
        stack.callback(browser.close)
        capture_pages(base_url, args.out, args.pages, browser, args.checkpoint, args.width, args.height,
                      args.timeout, args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
