"""The app in a real browser: Debian's Chromium driven by Playwright against `streamlit run`.

One Streamlit server (a subprocess on a free port) and one headless Chromium serve the whole
module. Every number the pages show is checked against `mor.analysis.trace` run here on the same
checkpoint, or against the JSON that `mor lens`, `mor gain` and `mor stats` print. Skipped when
/usr/bin/chromium or Playwright is missing (a browser is never downloaded); missing shipped
checkpoints fail the module, loudly (tests/helpers.py). Every test is marked `browser`.

The screenshot test writes to a temporary folder; set MOR_SCREENSHOTS_DIR=docs/screenshots to
refresh the README's images from the test run (or run `python scripts/screenshots.py`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.browser

if not CHROMIUM.is_file():
    pytest.skip(f"{CHROMIUM} not found: install Debian's chromium package to run the browser tests",
                allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright (pip install playwright) is not installed")

from mor import analysis  # noqa: E402


def _load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


shots = _load_script("screenshots")
from app import corpus_stats  # noqa: E402  (the sample-text corpus, as the page reads it)
from app import render  # noqa: E402  (the heatmap colours, pure functions)
from helpers import preferred_checkpoint  # noqa: E402
from mor.cli import main as mor_main  # noqa: E402

TIMEOUT_MS = 60_000
TEXT_A = "The cat sat on the mat."
TEXT_B = "In 1648 the Peace of Westphalia ended the Thirty Years' War, and the old empire never recovered."
PAYLOAD = "<img src=x onerror=alert(1)></div><script>alert(2)</script>"
SESSION_TEXTS = [
    "Session zero talks about apples and orchards in the autumn.",
    "Session one: the train left Paris at 9:15 and reached Lyon by noon.",
    "Session two counts 3, 14, 159, 2653 and stops.",
    "Session three asks whether the sea is ever truly calm.",
    "Session four: photosynthesis turns light, water and carbon dioxide into sugar.",
    "Session five reads a poem about the moon over the river.",
    "Session six lists iron, copper, zinc, tin and lead.",
    "Session seven: the committee voted to postpone the decision until spring.",
]


# The routed checkpoint every test opens the pages on (mor-ec-r3 when shipped); none fails the module.
CHECKPOINT = preferred_checkpoint()


# ---- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`streamlit run app/main.py` on a free port; yields (base_url, process); stopped at the end."""
    log = tmp_path_factory.mktemp("streamlit") / "server.log"
    port = shots.free_port()
    proc = shots.start_server(port, log)
    base_url = f"http://127.0.0.1:{port}"
    try:
        shots.wait_until_up(base_url, proc, timeout=60)
    except Exception as err:
        shots.stop_server(proc)
        pytest.fail(f"the Streamlit server did not start: {err}\n{log.read_text(errors='replace')[-3000:]}")
    yield base_url, proc
    shots.stop_server(proc)


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = shots.launch_browser(p)
        yield b
        b.close()


@pytest.fixture(scope="module")
def model(checkpoint):
    """CHECKPOINT (the `checkpoint_name` fixture's), loaded here: the reference for every number the pages show."""
    return checkpoint


def new_page(browser):
    """A page in a fresh context (its own Streamlit session) that records every JS dialog."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.dialogs = []

    def on_dialog(dialog):
        page.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    page.on("dialog", on_dialog)
    return context, page


@pytest.fixture
def page(browser):
    context, page = new_page(browser)
    yield page
    context.close()


# ---- reading the page ------------------------------------------------------------------------

STATE_JS = """() => {
    const metrics = {};
    document.querySelectorAll('[data-testid="stMetric"]').forEach(m => {
        const label = m.querySelector('[data-testid="stMetricLabel"]');
        const value = m.querySelector('[data-testid="stMetricValue"]');
        if (label && value) metrics[label.innerText.trim()] = value.innerText.trim();
    });
    const heat = document.querySelector('.mor-heatmap .mor-text');
    const spans = heat ? Array.from(heat.querySelectorAll('.mor-tok')) : [];
    return {text: heat ? heat.textContent : null, visible: !!(heat && heat.offsetParent),
            depths: spans.map(s => Number(s.dataset.depth)),
            colours: spans.map(s => getComputedStyle(s).backgroundColor), metrics,
            url: location.href};
}"""


def state(page) -> dict:
    return page.evaluate(STATE_JS)


def expected(model, text: str, depth_cap: int | None = None) -> dict:
    m, tokenizer = model
    return analysis.trace(m, tokenizer, text, depth_cap=depth_cap, routing_mode="causal").to_json()


def rgb(colour: str) -> str:
    return "rgb({}, {}, {})".format(*(int(colour[i:i + 2], 16) for i in (1, 3, 5)))


def wait_for_trace(page, trace: dict, text: str, timeout_ms: float = TIMEOUT_MS) -> dict:
    """Wait until the heatmap shows `text` with `trace`'s depths and the metrics show its token
    count, mean depth and NLL; return the page state. On timeout, fail with what the page shows instead."""
    want = {"text": text, "tokens": str(len(trace["tokens"])), "mean": f"{trace['mean_depth']:.3f}",
            "nll": trace["nll"], "depths": ",".join(map(str, trace["depths"]))}
    try:
        page.wait_for_function(
            """want => {
                const heat = document.querySelector('.mor-heatmap .mor-text');
                if (!heat || heat.textContent !== want.text) return false;
                const m = {};
                document.querySelectorAll('[data-testid="stMetric"]').forEach(e => {
                    const l = e.querySelector('[data-testid="stMetricLabel"]');
                    const v = e.querySelector('[data-testid="stMetricValue"]');
                    if (l && v) m[l.innerText.trim()] = v.innerText.trim();
                });
                // Metrics arrive one by one, so wait for the last of them (NLL) as well.
                return m['Tokens'] === want.tokens && m['Mean depth'] === want.mean
                    && Math.abs(Number(m['Mean NLL']) - want.nll) < 2e-3
                    && heat.querySelectorAll('.mor-tok').length === Number(want.tokens)
                    // the heatmap and the metrics are separate elements: wait for both to be redrawn
                    && Array.from(heat.querySelectorAll('.mor-tok')).map(t => t.dataset.depth).join(',') === want.depths;
            }""", arg=want, timeout=max(timeout_ms, 1000))
    except sync_api.TimeoutError:
        got = state(page)
        pytest.fail(f"the page never showed {want}; it shows text={got['text']!r} metrics={got['metrics']}")
    return state(page)


def paste(page, text: str, label: str = "Text") -> None:
    """Replace the text area's content and submit it (Ctrl+Enter), as a user pasting would."""
    area = page.get_by_label(label, exact=True)
    area.fill(text)
    area.press("Control+Enter")


def assert_matches(got: dict, trace: dict, R: int) -> None:
    assert got["visible"], "the heatmap is not visible"
    assert got["depths"] == trace["depths"]
    assert got["colours"] == [rgb(render.depth_colour(d, R)) for d in trace["depths"]]
    assert abs(float(got["metrics"]["Mean NLL"]) - trace["nll"]) < 2e-3


def open_app(page, base_url: str, path: str = "", **query) -> None:
    from urllib.parse import urlencode

    page.goto(f"{base_url}/{path}?{urlencode({'ckpt': CHECKPOINT, **query})}", timeout=TIMEOUT_MS)
    page.locator("h1").first.wait_for()


# ---- tests -----------------------------------------------------------------------------------

def test_heatmap_follows_the_text(server, page, model):
    base_url, _ = server
    R = model[0].config.num_recursions
    open_app(page, base_url)
    page.wait_for_selector(".mor-tok")
    shown = {}
    for text in (TEXT_A, TEXT_B):
        paste(page, text)
        trace = expected(model, text)
        got = wait_for_trace(page, trace, text)
        assert_matches(got, trace, R)
        assert float(got["metrics"]["Mean depth"]) == pytest.approx(trace["mean_depth"], abs=5e-4)
        assert "text=" in got["url"]  # the URL now reproduces the view
        shown[text] = got
    a, b = shown[TEXT_A], shown[TEXT_B]
    assert a["metrics"]["Tokens"] != b["metrics"]["Tokens"]
    assert a["metrics"]["Mean NLL"] != b["metrics"]["Mean NLL"]
    assert a["depths"] != b["depths"] and a["colours"] != b["colours"]
    assert not page.dialogs


def test_heatmap_path_opens_the_heatmap_with_its_query(server, page, model):
    """/heatmap (the page's name, which a user may type or bookmark) opens the heatmap, keeping the
    text and checkpoint from the URL, instead of Streamlit's "Page not found"."""
    base_url, _ = server
    open_app(page, base_url, "heatmap", text=TEXT_A)
    got = wait_for_trace(page, expected(model, TEXT_A), TEXT_A)
    assert_matches(got, expected(model, TEXT_A), model[0].config.num_recursions)
    assert page.get_by_text("Page not found").count() == 0
    assert "/heatmap" not in got["url"] and "ckpt=" in got["url"]


def test_scaling_slider_changes_depths(server, page, model):
    base_url, _ = server
    R = model[0].config.num_recursions
    text = TEXT_B
    open_app(page, base_url, "scaling", text=text)
    free = expected(model, text)
    assert len(set(free["depths"])) > 1, "the reference text should take more than one depth"
    at_free = wait_for_trace(page, free, text)
    assert_matches(at_free, free, R)

    slider = page.locator('[data-testid="stSlider"] input[type="range"]').first
    assert slider.input_value() == str(R)
    slider.focus()
    for _ in range(R - 1):
        slider.press("ArrowLeft")
    capped = expected(model, text, depth_cap=1)
    at_one = wait_for_trace(page, capped, text)
    assert_matches(at_one, capped, R)
    assert at_one["metrics"]["Mean depth"] == "1.000" and set(at_one["depths"]) == {1}
    assert len(set(at_one["colours"])) == 1 and at_one["colours"] != at_free["colours"]
    assert at_one["metrics"]["Mean NLL"] != at_free["metrics"]["Mean NLL"]
    assert "cap=1" in at_one["url"]

    slider.press("ArrowRight")
    two = expected(model, text, depth_cap=2 if R > 2 else None)
    at_two = wait_for_trace(page, two, text)
    assert_matches(at_two, two, R)
    assert max(at_two["depths"]) <= 2
    assert not page.dialogs


def test_injected_markup_is_shown_as_text(server, page, model):
    """The payload is escaped on every page that draws tokens: the heatmap, the learn page's
    routing rows, and the live decode's prompt; no alert ever fires."""
    base_url, _ = server
    R = model[0].config.num_recursions
    open_app(page, base_url)
    page.wait_for_selector(".mor-tok")
    paste(page, PAYLOAD)
    trace = expected(model, PAYLOAD)
    got = wait_for_trace(page, trace, PAYLOAD)
    assert_matches(got, trace, R)
    page.get_by_role("button", name="Trace (JSON)").wait_for()  # the script ran to its end

    open_app(page, base_url, "learn")
    paste(page, PAYLOAD)
    page.wait_for_function("t => Array.from(document.querySelectorAll('div')).some(d => d.textContent === t)",
                           arg=PAYLOAD)
    page.get_by_role("heading", name="4. Unique vs effective parameters").wait_for()

    open_app(page, base_url, "throughput")
    page.get_by_label("Then measure every depth setting side by side").uncheck(force=True)
    page.wait_for_timeout(500)
    paste(page, PAYLOAD, label="Prompt")
    page.wait_for_timeout(500)
    page.get_by_role("button", name="Run", exact=True).click()
    prompt = page.get_by_text(PAYLOAD, exact=True)
    prompt.first.wait_for()
    assert prompt.first.is_visible()

    page.wait_for_timeout(1000)  # give a script, had one been injected, time to run
    assert page.dialogs == []
    assert page.locator('img[src="x"]').count() == 0
    assert not page.evaluate("Array.from(document.scripts).some(s => s.textContent.includes('alert('))")


def test_long_and_control_text(server, page, model):
    """50,000 characters: traced whole in overlapping windows (the page says how many), every token
    drawn, and the text survives a rerun caused by another widget (it is too long for the URL).
    Control characters and NUL: counted, no error."""
    base_url, _ = server
    long_text = ("The quick brown fox jumps over the lazy dog. " * 1200)[:50_000]
    open_app(page, base_url)
    page.wait_for_selector(".mor-tok")
    paste(page, long_text)
    trace = expected(model, long_text)
    notice = f"traced whole in {trace['windows']} overlapping windows"
    assert trace["windows"] > 1 and trace["truncated_tokens"] == 0
    page.get_by_text(notice).wait_for()
    page.wait_for_function("n => Array.from(document.querySelectorAll('.mor-tok')).length === n",
                           arg=len(trace["tokens"]))
    assert "text=" not in page.url  # too long for a shareable link: left out of the URL
    page.get_by_text("capacity", exact=True).click()  # a rerun for another reason
    page.wait_for_function("() => location.href.includes('mode=capacity')")
    page.get_by_text(notice).wait_for()
    assert len(page.get_by_label("Text", exact=True).input_value()) == 50_000

    control = "a\x00b\x01c\x1b[31mred\x7f\x08 tab\there\nline\x0c\x00end"
    paste(page, control)
    trace = expected(model, control)
    shown = control.replace("\x00", "").replace("\n", "↵")
    # Wait for the heatmap *and* the metrics of the new text: both are redrawn separately.
    page.wait_for_function(
        """want => {
            const heat = document.querySelector('.mor-heatmap .mor-text');
            const tokens = Array.from(document.querySelectorAll('[data-testid="stMetric"]')).find(
                e => e.innerText.trim().startsWith('Tokens'));
            return heat && heat.textContent === want.text && heat.querySelectorAll('.mor-tok').length === want.n
                && tokens && tokens.querySelector('[data-testid="stMetricValue"]').innerText.trim() === String(want.n);
        }""", arg={"text": shown, "n": len(trace["tokens"])}, timeout=TIMEOUT_MS)
    got = state(page)
    assert got["metrics"]["Tokens"] == str(len(trace["tokens"]))
    # The HTML parser drops NUL; a newline is drawn as a faint "↵" and a line break; the rest is shown as is.
    assert got["text"] == shown
    assert page.locator('[data-testid="stException"]').count() == 0
    assert not page.dialogs


def test_screenshots_of_every_page(server, browser, tmp_path):
    from PIL import Image, ImageStat

    base_url, _ = server
    out = Path(os.environ.get("MOR_SCREENSHOTS_DIR") or tmp_path)
    paths = shots.capture_pages(base_url, out, browser=browser, checkpoint=CHECKPOINT, timeout=90,
                                quick=not os.environ.get("MOR_SCREENSHOTS_DIR"), log=lambda *_: None)
    assert [p.stem for p in paths] == list(shots.PAGES)
    for path in paths:
        with Image.open(path) as image:
            assert image.size == (1400, 1000), path
            grey = image.convert("L")
            # Not blank: many grey levels and real contrast (a white or single-colour page has neither).
            assert len(grey.getcolors(256) or []) > 40, f"{path.name} looks blank"
            assert ImageStat.Stat(grey).stddev[0] > 20, f"{path.name} looks blank"


def test_eight_sessions_at_once_each_see_their_own_text(server, browser, model):
    base_url, proc = server
    deadline = time.monotonic() + 120
    rss_before = server_rss_mib(proc.pid)
    contexts, pages = [], []
    try:
        for _ in SESSION_TEXTS:
            context, page = new_page(browser)
            contexts.append(context)
            pages.append(page)
        for page in pages:  # open all eight before waiting on any: the server runs them together
            page.goto(f"{base_url}/?ckpt={CHECKPOINT}", wait_until="commit", timeout=TIMEOUT_MS)
        for page in pages:
            page.wait_for_selector(".mor-tok", timeout=remaining_ms(deadline))
        opened = 120 - (deadline - time.monotonic())
        traces = [expected(model, text) for text in SESSION_TEXTS]
        started = time.monotonic()
        for page, text in zip(pages, SESSION_TEXTS):  # eight pastes in flight at once
            paste(page, text)
        for page, text, trace in zip(pages, SESSION_TEXTS, traces):
            got = wait_for_trace(page, trace, text, remaining_ms(deadline))
            assert_matches(got, trace, model[0].config.num_recursions)
        elapsed = time.monotonic() - started
        for i, (page, text) in enumerate(zip(pages, SESSION_TEXTS)):  # once all are done, look again
            got = state(page)
            assert got["text"] == text
            assert page.get_by_label("Text", exact=True).input_value() == text
            body = page.evaluate("document.body.innerText")
            seen = [marker(t) for t in SESSION_TEXTS if t != text and marker(t) in body]
            assert not seen, f"session {i} ({marker(text)}) also shows {seen}"
            assert not page.dialogs
        rss_after = server_rss_mib(proc.pid)
        print(f"\n8 sessions: all eight pages up in {opened:.1f} s; all eight results {elapsed:.1f} s "
              f"after the pastes; server RSS {rss_before:.0f} -> {rss_after:.0f} MiB")
    finally:
        for context in contexts:
            context.close()


RUN_DONE_JS = """() => {
    const m = Array.from(document.querySelectorAll('[data-testid="stMetric"]'))
        .find(e => e.innerText.includes('Tokens decoded'));
    return m ? m.querySelector('[data-testid="stMetricValue"]').innerText.trim() : null;
}"""


def press_run(page, base_url: str) -> None:
    """Open the live throughput page with the side-by-side table off (a run is then the live decode
    of 4 rows x 32 new tokens) and press Run."""
    open_app(page, base_url, "throughput")
    page.get_by_text("Then measure every depth setting side by side").click()
    page.get_by_role("button", name="Run", exact=True).click()


def watch_runs(pages, pid: int, deadline: float) -> tuple[set[int], float]:
    """Poll the pages until each shows 128 tokens decoded; returns the largest "N runs ahead" any
    page showed while waiting, and the server's peak RSS (MiB) meanwhile."""
    ahead, peak = set(), server_rss_mib(pid)
    while True:
        done = [p.evaluate(RUN_DONE_JS) == "128" for p in pages]
        for p in pages:
            text = p.evaluate("document.body.innerText")
            ahead.update(int(n) for n in re.findall(r"Waiting for the CPU: (\d+) runs? ahead", text))
            assert p.locator('[data-testid="stException"]').count() == 0, text[-2000:]
        peak = max(peak, server_rss_mib(pid))
        if all(done):
            return ahead, peak
        remaining_ms(deadline)
        time.sleep(0.1)


def test_eight_sessions_press_run_together_and_take_turns(server, browser):
    """Eight browser sessions press Run on the live throughput page at once: the runs queue (pages
    say how many runs are ahead), all eight finish without an error, and the server's memory peaks
    no higher than for one run alone plus a margin, since only one run holds buffers at a time."""
    base_url, proc = server
    deadline = time.monotonic() + 240
    contexts = []
    try:
        context, page = new_page(browser)
        contexts.append(context)
        base = server_rss_mib(proc.pid)
        press_run(page, base_url)
        _, one_peak = watch_runs([page], proc.pid, deadline)
        pages = []
        for _ in range(8):
            context, page = new_page(browser)
            contexts.append(context)
            pages.append(page)
            open_app(page, base_url, "throughput")
            page.get_by_text("Then measure every depth setting side by side").click()
        for page in pages:  # eight clicks before waiting on any
            page.get_by_role("button", name="Run", exact=True).click()
        ahead, eight_peak = watch_runs(pages, proc.pid, deadline)
        print(f"\n8 runs at once: runs ahead shown {sorted(ahead)}; server RSS {base:.0f} MiB before, "
              f"peak {one_peak:.0f} MiB for one run, {eight_peak:.0f} MiB for eight")
        assert ahead and max(ahead) >= 2, "no page showed that it was waiting for other runs"
        assert eight_peak <= one_peak + 256, (one_peak, eight_peak)
        assert all(not p.dialogs for p in pages)
    finally:
        for context in contexts:
            context.close()


# ---- the recursion lens, where depth helped, corpus statistics ----------------------------------

def cli_json(capsys, *argv) -> dict:
    """What `mor ARGV --json` prints, run here on the same checkpoint as the server."""
    capsys.readouterr()
    assert mor_main([*argv, "--json", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


VALUE_MAP_JS = """title => {
    const box = Array.from(document.querySelectorAll('.mor-heatmap'))
        .find(h => (h.querySelector('.mor-legend b') || {}).innerText?.startsWith(title));
    if (!box) return null;
    const spans = Array.from(box.querySelectorAll('.mor-text .mor-tok'));
    return {text: box.querySelector('.mor-text').textContent, values: spans.map(s => s.dataset.value),
            depths: spans.map(s => s.dataset.depth), colours: spans.map(s => getComputedStyle(s).backgroundColor)};
}"""
# Rows of the i-th dataframe as its cells' text, read from the grid's accessible table ([] before it is drawn).
TABLE_JS = """i => { const grid = document.querySelectorAll('[data-testid="stDataFrame"]')[i];
    return grid ? Array.from(grid.querySelectorAll('tbody tr')).map(r => Array.from(r.querySelectorAll('td')).map(c => c.innerText)) : []; }"""


# The page and the CLI both round to 6 decimals, from floats computed in different batch shapes, so a
# value on a rounding edge can differ by one unit in the last place.
SIXTH_DECIMAL = 1.5e-6


def wait_for_column(page, table: int, column: int, want: list[float]) -> list[list[str]]:
    """Wait until column `column` of the page's `table`-th dataframe holds the numbers `want` (the
    grid redraws after the rest of the page; a long table shows the first rows in view), and return
    its rows as shown."""
    try:
        page.wait_for_function(
            """([js, table, column, want, tol]) => {
                const rows = eval(js)(table);
                // the grid draws only the rows in view (about 12): those must be the first ones wanted
                return (rows.length === want.length || (rows.length >= 10 && rows.length < want.length))
                    && rows.every((r, i) => Math.abs(parseFloat(r[column]) - want[i]) < tol);
            }""", arg=[TABLE_JS, table, column, want, SIXTH_DECIMAL])
    except sync_api.TimeoutError:
        pytest.fail(f"table {table} never showed {want} in column {column}; it shows {page.evaluate(TABLE_JS, table)}")
    return page.evaluate(TABLE_JS, table)


def shown_to(value: float, decimals: int) -> dict:
    """A metric wanted as `value` shown to `decimals` places: the page rounds its own mean of floats
    that differ from the CLI's 6-decimal ones in the last place, so it may land on either side of a
    rounding edge."""
    return {"near": value, "tol": 0.5 * 10 ** -decimals + SIXTH_DECIMAL}


def wait_for_metrics(page, want: dict) -> dict:
    """Wait until every metric in `want` (label -> text, or a `shown_to` number) is shown; return all metrics."""
    try:
        page.wait_for_function(
            """want => {
                const m = {};
                document.querySelectorAll('[data-testid="stMetric"]').forEach(e => {
                    const l = e.querySelector('[data-testid="stMetricLabel"]');
                    const v = e.querySelector('[data-testid="stMetricValue"]');
                    if (l && v) m[l.innerText.trim()] = v.innerText.trim();
                });
                return Object.entries(want).every(([k, v]) => typeof v === 'string' ? m[k] === v
                    : m[k] !== undefined && Math.abs(parseFloat(m[k]) - v.near) <= v.tol);
            }""", arg=want)
    except sync_api.TimeoutError:
        pytest.fail(f"the page never showed {want}; it shows {state(page)['metrics']}")
    return state(page)["metrics"]


def value_map(page, title: str, count: int) -> dict:
    """The value heatmap whose legend starts with `title`, once it holds `count` tokens."""
    page.wait_for_function("([js, title, n]) => { const m = eval(js)(title); return m && m.values.length === n; }",
                           arg=[VALUE_MAP_JS, title, count])
    return page.evaluate(VALUE_MAP_JS, title)


def assert_values(shown: dict, values: list[float | None]) -> None:
    """data-value of each token equals `values`, and its colour is RdBu on the page's scale."""
    assert [None if v == "" else float(v) for v in shown["values"]] == pytest.approx(values, abs=SIXTH_DECIMAL)
    scale = render.symmetric_scale(values)
    assert shown["colours"] == [rgb(render.diverging_colour(v, scale)) for v in values]


def test_lens_tab_shows_the_cli_numbers(server, page, capsys):
    base_url, _ = server
    lens = cli_json(capsys, "lens", "--checkpoint", CHECKPOINT, "--text", TEXT_B)
    R, n = lens["num_recursions"], len(lens["tokens"])
    rows = [[s["next_token_nll"] for s in row] for row in lens["steps"][:-1]]
    open_app(page, base_url, view="lens", text=TEXT_B)
    wait_for_metrics(page, {f"Mean NLL after step {r + 1}": shown_to(sum(row[r] for row in rows) / len(rows), 4)
                            for r in range(R)})
    shown = value_map(page, "Next-token NLL fell by", n)
    assert shown["text"] == TEXT_B
    assert_values(shown, [row[0] - row[-1] for row in rows] + [None])

    # A click on a row of the per-token table inspects that token: its per-step table is the CLI's.
    i = 5
    grid = page.locator('[data-testid="stDataFrame"]').nth(1)
    grid.scroll_into_view_if_needed()
    box = grid.bounding_box()
    page.mouse.click(box["x"] + 15, box["y"] + 35 * (i + 1) + 17)  # the row's selection box (35 px rows)
    page.wait_for_function(f"() => location.href.includes('tok={i}')")
    page.get_by_text(f"Token {i} {lens['tokens'][i]!r}, depth {lens['depths'][i]} of {R}").wait_for()
    steps = lens["steps"][i]
    table = wait_for_column(page, 0, 3, [s["next_token_nll"] for s in steps])
    assert [int(row[0]) for row in table] == [s["step"] for s in steps]
    assert [row[4] for row in table] == [f"{s['top'][0][0]!r} {s['top'][0][1]:.3f}" for s in steps]

    # The last step alone.
    page.get_by_text(f"step {R - 1} → {R}", exact=True).click()
    page.wait_for_function(f"() => location.href.includes('lstep={R}')")
    page.wait_for_function("js => !!eval(js)('Next-token NLL fell by (step')", arg=VALUE_MAP_JS)
    assert_values(page.evaluate(VALUE_MAP_JS, "Next-token NLL fell by"), [row[-2] - row[-1] for row in rows] + [None])
    assert not page.dialogs


def test_gain_tab_shows_the_cli_numbers(server, page, capsys):
    base_url, _ = server
    gain = cli_json(capsys, "gain", "--checkpoint", CHECKPOINT, "--text", TEXT_B)
    R, n = gain["num_recursions"], len(gain["tokens"])
    rows = gain["next_token_nll"][:-1]
    open_app(page, base_url, view="gain", text=TEXT_B)
    for cap in range(1, R):
        if cap > 1:  # the slider one notch right
            slider = page.locator('[data-testid="stSlider"] input[type="range"]').first
            slider.focus()
            slider.press("ArrowRight")
            page.wait_for_function(f"() => location.href.includes('gcap={cap}')")
        values = [row[cap - 1] for row in gain["gain"][:-1]]
        wait_for_metrics(page, {
            f"Mean NLL at cap {cap}": shown_to(sum(r[cap - 1] for r in rows) / len(rows), 4),
            "Mean NLL at full depth": shown_to(sum(r[-1] for r in rows) / len(rows), 4),
            "Tokens depth helped": str(sum(v > 0 for v in values)), "Tokens depth hurt": str(sum(v < 0 for v in values))})
        assert_values(value_map(page, f"Gain from depth cap {cap}", n), values + [None])
    # The depth heatmap beside it: the depths of `mor gain` at full depth, in the depth palette.
    depth_map = page.evaluate(VALUE_MAP_JS, "Recursions taken")
    assert [int(d) for d in depth_map["depths"]] == gain["depths"]
    assert depth_map["colours"] == [rgb(render.depth_colour(d, R)) for d in gain["depths"]]
    changed = gain["most_changed"][str(R - 1)]
    gained = wait_for_column(page, 0, 5, [r["gain"] for r in changed["gained"]])
    assert [int(r[0]) for r in gained] == [r["position"] for r in changed["gained"]]
    assert not page.dialogs


def test_corpus_page_shows_the_cli_numbers_and_rejects_binary(server, page, capsys, tmp_path):
    base_url, _ = server
    samples = tmp_path / "samples.txt"
    samples.write_text(corpus_stats.builtin_text("samples")[0], encoding="utf-8")
    stats = cli_json(capsys, "stats", "--checkpoint", CHECKPOINT, "--text-file", str(samples))
    open_app(page, base_url, "corpus-stats", corpus="samples")
    wait_for_metrics(page, {"Tokens": f"{stats['tokens']:,}", "Windows": f"{stats['windows']:,}",
                            "Mean depth": f"{stats['mean_depth']:.3f}"})
    deepest = wait_for_column(page, 0, 3, [r["mean_depth"] for r in stats["deepest"]])
    assert [(int(r[1]), int(r[2])) for r in deepest] == [(r["token_id"], r["count"]) for r in stats["deepest"]][:len(deepest)]

    page.get_by_text("Upload a text file", exact=True).click()
    page.get_by_text("Choose a text file to analyse.").wait_for()
    upload = page.locator('[data-testid="stFileUploader"] input[type="file"]')
    upload.set_input_files(files=[{"name": "photo.png", "mimeType": "image/png",
                                   "buffer": b"\x89PNG\r\n\x1a\n" + bytes(range(256))}])
    page.get_by_text("photo.png cannot be read: This file is not UTF-8 text (byte 0 is 0x89)").wait_for()
    assert page.locator('[data-testid="stException"]').count() == 0

    # Long enough (about 70 windows) for the progress bar to be seen while the pass runs.
    text = "\n\n".join(SESSION_TEXTS * 60)
    (tmp_path / "upload.txt").write_text(text, encoding="utf-8")
    stats = cli_json(capsys, "stats", "--checkpoint", CHECKPOINT, "--text-file", str(tmp_path / "upload.txt"))
    assert stats["windows"] > 20
    upload.set_input_files(files=[{"name": "upload.txt", "mimeType": "text/plain", "buffer": text.encode()}])
    page.locator('[data-testid="stProgress"]').first.wait_for()
    assert "Running the corpus through the model" in page.locator('[data-testid="stProgress"]').first.inner_text()
    # The pass takes about a minute on a 2-core CPU shared with training runs: allow it three.
    page.get_by_text("Corpus: the uploaded file upload.txt.").wait_for(timeout=3 * TIMEOUT_MS)
    assert page.locator('[data-testid="stProgress"]').count() == 0  # emptied when the pass is done
    wait_for_metrics(page, {"Tokens": f"{stats['tokens']:,}", "Mean depth": f"{stats['mean_depth']:.3f}"})
    assert not page.dialogs


def test_injected_markup_in_the_new_views(server, page, model):
    """The payload as text in the lens and gain tabs, and as a file's name and content on the
    corpus page: shown as text everywhere, no alert fires, no element is injected."""
    base_url, _ = server
    n = len(expected(model, PAYLOAD)["tokens"])
    open_app(page, base_url, view="lens", text=PAYLOAD)
    assert value_map(page, "Next-token NLL fell by", n)["text"] == PAYLOAD
    page.get_by_role("button", name="Lens (JSON)").wait_for()
    open_app(page, base_url, view="gain", text=PAYLOAD)
    assert value_map(page, "Gain from depth cap 1", n)["text"] == PAYLOAD
    page.get_by_role("button", name="Where depth helped (JSON)").wait_for()
    open_app(page, base_url, "corpus-stats", corpus="upload")
    name = "<img src=x onerror=alert(3)>[x](javascript:alert(4)).txt"
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files(
        files=[{"name": name, "mimeType": "text/plain", "buffer": PAYLOAD.encode()}])
    assert corpus_stats.display_name(name) == "`_img src_x onerror_alert_3___x__javascript_alert_4__.txt`"
    page.get_by_text("Corpus: the uploaded file _img src_x onerror_alert_3___x__javascript_alert_4__.txt.").wait_for()
    page.get_by_role("button", name="Statistics (JSON)").wait_for()
    page.wait_for_timeout(1000)  # give a script, had one been injected, time to run
    assert page.dialogs == []
    assert page.locator('img[src="x"]').count() == 0


# ---- helpers ---------------------------------------------------------------------------------

def marker(text: str) -> str:
    """"Session three" from "Session three asks whether ...": unique to one session's text."""
    return " ".join(text.replace(":", "").split()[:2])


def remaining_ms(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        pytest.fail("the eight sessions took longer than 120 s")
    return left * 1000


def server_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")
