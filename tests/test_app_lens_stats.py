"""The recursion lens and "where depth helped" tabs of the heatmap page and the Corpus statistics
page, through Streamlit's AppTest on a shipped checkpoint: every number the page shows is compared
with the JSON that `mor lens`, `mor gain` and `mor stats` print for the same text. (The value-heatmap
tests at the top are quick unit tests of app/render.py; the rest are marked slow.)"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

import mor
from helpers import shipped_checkpoints
from mor.cli import main
from mor.model.loading import load_config

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

from app import corpus_stats, render  # noqa: E402  (corpus_stats: the tests move its corpus path and cap)
from app.samples import SAMPLE_TEXTS  # noqa: E402

APP = Path(__file__).resolve().parent.parent / "app"
TEXT = "In 1648 the Peace of Westphalia ended the Thirty Years' War, and the old empire never recovered."
# Every shipped checkpoint, read at collection: missing checkpoints fail loudly instead of collecting nothing.
SHIPPED = shipped_checkpoints()


# ---- the value heatmap (app/render.py), pure functions ------------------------------------------

HOSTILE_TOKENS = ["<img src=x onerror=alert(1)>", "</div><script>alert(2)</script>", "say \"hi\" & 'bye'", "\n", ""]


class Collector(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.text = [], ""

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text += data


def test_value_heatmap_escapes_every_token_and_keeps_each_value():
    values = [1.0, -0.5, 0.0, None, 0.25]
    tips = [f"token {t!r}\nvalue {v}" for t, v in zip(HOSTILE_TOKENS, values)]
    out = render.value_heatmap_html(HOSTILE_TOKENS, values, tips, "Gain <b>x</b>", scale=0.5)
    parsed = Collector()
    parsed.feed(out)
    assert {tag for tag, _ in parsed.tags} <= {"div", "style", "span", "b", "br"}
    assert "<img" not in out and "<script" not in out and "Gain &lt;b&gt;x&lt;/b&gt;" in out
    for token in HOSTILE_TOKENS[:3]:
        assert token in parsed.text  # shown verbatim, as text
    spans = [attrs for tag, attrs in parsed.tags if attrs.get("class") == "mor-tok"]
    assert [a["data-value"] for a in spans] == ["1.0", "-0.5", "0.0", "", "0.25"]
    assert [a["title"] for a in spans] == tips  # each tooltip recovered whole
    # On [-0.5, 0.5]: past the end the last stop (blue), -0.5 the first (red), 0 the middle (white),
    # None the "no value" grey, 0.25 three quarters along (stop 6 of 0..8).
    assert [a["style"].split(";")[0] for a in spans] == [
        f"background:{c}" for c in (render.RDBU[8], render.RDBU[0], render.RDBU[4], render.NO_VALUE, render.RDBU[6])]


def test_symmetric_scale_ignores_outliers_and_rounds_up():
    assert render.symmetric_scale([None]) == render.symmetric_scale([0.001, -0.002]) == 0.05  # the floor
    assert render.symmetric_scale([1.234, -0.2]) == 1.3
    assert render.symmetric_scale([0.1] * 99 + [-10.0]) == 0.1  # one outlier past the 95th percentile
    assert render.diverging_colour(5.0, 1.0) == render.RDBU[-1] and render.diverging_colour(-5.0, 1.0) == render.RDBU[0]


@pytest.fixture(scope="module")
def named_config(checkpoint_name):
    """(name, config) of the checkpoint the pages are opened on."""
    return checkpoint_name, load_config(mor.resolve_checkpoint(checkpoint_name))


def cli_json(capsys, *argv) -> dict:
    capsys.readouterr()
    assert main([*argv, "--json", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


def open_app(page: str | None = None, **query) -> AppTest:
    at = AppTest.from_file(str(APP / "main.py"), default_timeout=300)
    at.query_params.update(**query)
    at.run()
    if page is not None:
        at.switch_page(f"app_pages/{page}").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metric(at: AppTest, label: str) -> str:
    values = [m.value for m in at.metric if m.label == label]
    assert values, f"no metric {label!r}; have {[m.label for m in at.metric]}"
    return values[0]


def span_values(at: AppTest, title: str) -> list[float | None]:
    """data-value of every token span of the value heatmap whose legend starts with `title`."""
    body = next(h.proto.body for h in at.html if f"<b>{title}" in h.proto.body)
    return [None if v == "" else float(v) for v in re.findall(r'class="mor-tok" data-value="([^"]*)"', body)]


# ---- the recursion lens -------------------------------------------------------------------------

@pytest.mark.slow
def test_lens_tab_shows_the_cli_numbers(named_config, capsys):
    name, cfg = named_config
    R = cfg.num_recursions
    lens = cli_json(capsys, "lens", "--checkpoint", name, "--text", TEXT)
    at = open_app(ckpt=name, text=TEXT, view="lens")
    assert at.session_state["heatmap_view"] == "Recursion lens"
    rows = [[s["next_token_nll"] for s in row] for row in lens["steps"][:-1]]
    for r in range(R):  # the mean over tokens after each step; after step N_r it is `mor trace`'s mean NLL
        assert metric(at, f"Mean NLL after step {r + 1}") == f"{sum(row[r] for row in rows) / len(rows):.4f}"
    trace = cli_json(capsys, "trace", "--checkpoint", name, "--text", TEXT)
    nll = [v for v in trace["token_nll"] if v is not None]
    assert metric(at, f"Mean NLL after step {R}") == f"{sum(nll) / len(nll):.4f}"
    # The whole-text heatmap: how much the next token's NLL fell from step 1 to step N_r.
    drops = span_values(at, "Next-token NLL fell by")
    assert len(drops) == len(lens["tokens"]) and drops[-1] is None
    assert drops[:-1] == pytest.approx([row[0] - row[-1] for row in rows], abs=2e-6)
    # Picked by default: the token whose prediction improved most; its per-step table is the CLI's.
    i = max(range(len(rows)), key=lambda t: rows[t][0] - rows[t][-1])
    picker = next(s for s in at.selectbox if s.label == "Token to inspect")
    assert picker.value == i and at.query_params["tok"] == str(i)
    check_step_table(at, lens, i)


def check_step_table(at: AppTest, lens: dict, i: int) -> None:
    table = next(d.value for d in at.dataframe if "p_next_token" in d.value.columns)
    steps = lens["steps"][i]
    assert table["step"].tolist() == [s["step"] for s in steps]
    assert table["active"].tolist() == ["yes" if s["active"] else "no (exited)" for s in steps]
    assert table["nll_next_token"].tolist() == pytest.approx([s["next_token_nll"] for s in steps])
    assert table["top_1"].tolist() == [f"{s['top'][0][0]!r} {s['top'][0][1]:.3f}" for s in steps]


@pytest.mark.slow
def test_lens_tab_picker_and_step_choice_follow_the_url(named_config, capsys):
    name, cfg = named_config
    R = cfg.num_recursions  # two or more (the fixture's checkpoint is recursive)
    lens = cli_json(capsys, "lens", "--checkpoint", name, "--text", TEXT)
    at = open_app(ckpt=name, text=TEXT, view="lens", tok="3", lstep=str(R))
    picker = next(s for s in at.selectbox if s.label == "Token to inspect")
    assert picker.value == 3
    check_step_table(at, lens, 3)
    # The heatmap now shows the change of the last step alone.
    last = [row[R - 2]["next_token_nll"] - row[R - 1]["next_token_nll"] for row in lens["steps"][:-1]]
    assert span_values(at, "Next-token NLL fell by")[:-1] == pytest.approx(last, abs=2e-6)
    picker.set_value(5).run()
    assert not at.exception and at.query_params["tok"] == "5"
    check_step_table(at, lens, 5)
    at.radio(key="lens_step").set_value("all").run()
    assert "lstep" not in at.query_params


# ---- where depth helped ---------------------------------------------------------------------------

@pytest.mark.slow
def test_gain_tab_shows_the_cli_numbers(named_config, capsys):
    name, cfg = named_config
    R = cfg.num_recursions  # two or more (the fixture's checkpoint is recursive)
    gain = cli_json(capsys, "gain", "--checkpoint", name, "--text", TEXT)
    at = open_app(ckpt=name, text=TEXT, view="gain")
    for cap in range(1, R):
        if cap > 1:
            at.select_slider(key="gain_cap").set_value(cap).run()
            assert not at.exception and at.query_params["gcap"] == str(cap)
        rows = gain["next_token_nll"][:-1]
        values = [row[cap - 1] for row in gain["gain"][:-1]]
        assert metric(at, f"Mean NLL at cap {cap}") == f"{sum(r[cap - 1] for r in rows) / len(rows):.4f}"
        assert metric(at, "Mean NLL at full depth") == f"{sum(r[-1] for r in rows) / len(rows):.4f}"
        assert metric(at, "Tokens depth helped") == str(sum(v > 0 for v in values))
        assert metric(at, "Tokens depth hurt") == str(sum(v < 0 for v in values))
        assert span_values(at, f"Gain from depth cap {cap}") == [*values, None]
        # The depth heatmap beside it: one span per token, the depths of `mor gain` (full depth).
        depth_map = next(h.proto.body for h in at.html if "Recursions taken" in h.proto.body)
        assert [int(d) for d in re.findall(r'class="mor-tok" data-depth="(\d+)"', depth_map)] == gain["depths"]
        tables = [d.value for d in at.dataframe]
        assert tables[0]["gain"].tolist() == [r["gain"] for r in gain["most_changed"][str(cap)]["gained"]]
        assert tables[1]["gain"].tolist() == [r["gain"] for r in gain["most_changed"][str(cap)]["lost"]]
    # The colours: RdBu around 0 on the page's symmetric scale.
    scale = render.symmetric_scale(values)
    body = next(h.proto.body for h in at.html if f"<b>Gain from depth cap {R - 1}" in h.proto.body)
    colours = re.findall(r'data-value="[^"]*" style="background:(#[0-9a-f]{6})', body)
    assert colours == [render.diverging_colour(v, scale) for v in [*values, None]]


@pytest.mark.slow
def test_single_step_checkpoint_says_so(capsys):
    vanilla = [f.name for f in SHIPPED if load_config(f).num_recursions == 1]
    if not vanilla:
        pytest.skip("no shipped checkpoint with one recursion")
    name = vanilla[0]
    lens = cli_json(capsys, "lens", "--checkpoint", name, "--text", TEXT)
    assert all(len(row) == 1 for row in lens["steps"])
    at = open_app(ckpt=name, text=TEXT, view="lens")
    assert any("single recursion step (N_r = 1), so the lens has one step" in i.value for i in at.info)
    rows = [row[0]["next_token_nll"] for row in lens["steps"][:-1]]
    assert [m.label for m in at.metric] == ["Mean NLL after step 1"]
    assert metric(at, "Mean NLL after step 1") == f"{sum(rows) / len(rows):.4f}"
    at.session_state["heatmap_view"] = "Where depth helped"
    at.run()
    assert not at.exception and at.query_params["view"] == "gain"
    assert any("no depth cap below full depth" in i.value for i in at.info)


# ---- corpus statistics ---------------------------------------------------------------------------

CORPUS = ("The Treaty of Westphalia was signed in 1648 in the cities of Osnabrück and Münster. "
          "Photosynthesis turns light, water and carbon dioxide into sugar; the river runs to the sea.\n\n") * 4


def shown_stats(at: AppTest) -> dict:
    return {"tokens": metric(at, "Tokens"), "windows": metric(at, "Windows"), "mean": metric(at, "Mean depth")}


def expected_shown(result: dict) -> dict:
    return {"tokens": f"{result['tokens']:,}", "windows": f"{result['windows']:,}",
            "mean": f"{result['mean_depth']:.3f}"}


def check_tables(at: AppTest, result: dict) -> None:
    deepest, shallowest = (d.value for d in at.dataframe)  # the page's only two tables, side by side
    assert deepest["token_id"].tolist() == [r["token_id"] for r in result["deepest"]]
    assert deepest["count"].tolist() == [r["count"] for r in result["deepest"]]
    assert shallowest["mean_depth"].tolist() == pytest.approx([r["mean_depth"] for r in result["shallowest"]])


@pytest.mark.slow
def test_corpus_page_defaults_to_the_validation_split(named_config, capsys, tmp_path, monkeypatch):
    name, _ = named_config
    val = tmp_path / "val.txt"
    val.write_text(CORPUS, encoding="utf-8")
    monkeypatch.setattr(corpus_stats, "VAL_PATH", val)
    result = cli_json(capsys, "stats", "--checkpoint", name, "--text-file", str(val))
    at = open_app("corpus.py", ckpt=name)
    assert at.radio(key="corpus_source").value == "val"
    assert any("the validation split (val.txt)" in c.value for c in at.caption)
    assert shown_stats(at) == expected_shown(result)
    check_tables(at, result)
    assert at.query_params["corpus"] == "val" and at.query_params["min"] == "3"
    labels = [b.label for b in at.download_button]
    assert labels == ["Statistics (JSON)", "Groups (CSV)"]
    # A different minimum count regroups the same pass.
    at.slider(key="corpus_min_count").set_value(5).run()
    assert not at.exception and at.query_params["min"] == "5"
    check_tables(at, cli_json(capsys, "stats", "--checkpoint", name, "--text-file", str(val), "--min-count", "5"))


@pytest.mark.slow
def test_corpus_page_without_a_validation_split_uses_the_samples(named_config, capsys, tmp_path, monkeypatch):
    name, cfg = named_config
    monkeypatch.setattr(corpus_stats, "VAL_PATH", tmp_path / "missing" / "val.txt")
    at = open_app("corpus.py", ckpt=name)
    assert at.radio(key="corpus_source").options == ["The app's sample texts", "Upload a text file"]
    assert any("No validation split at" in c.value and "mor data --out data" in c.value for c in at.caption)
    assert any(f"the app's {len(SAMPLE_TEXTS)} sample texts" in c.value for c in at.caption)
    samples = tmp_path / "samples.txt"
    samples.write_text(corpus_stats.builtin_text("samples")[0], encoding="utf-8")
    result = cli_json(capsys, "stats", "--checkpoint", name, "--text-file", str(samples))
    assert shown_stats(at) == expected_shown(result)
    if cfg.routing == "expert_choice":
        for step in result["router"]["steps"][1:]:
            label = f"Step {step['step']}: above {step['threshold']:g}"
            assert metric(at, label) == f"{100 * step['above_threshold']:.1f}%"


@pytest.mark.slow
def test_corpus_page_analyses_an_upload_like_the_cli(named_config, capsys, tmp_path):
    name, _ = named_config
    path = tmp_path / "upload.txt"
    path.write_text(CORPUS + TEXT, encoding="utf-8")
    at = open_app("corpus.py", ckpt=name, corpus="upload")
    assert any("Choose a text file" in i.value for i in at.info)
    at.file_uploader(key="corpus_upload").upload("upload.txt", path.read_bytes(), "text/plain").run()
    assert not at.exception and not at.error
    result = cli_json(capsys, "stats", "--checkpoint", name, "--text-file", str(path))
    assert shown_stats(at) == expected_shown(result)
    assert any("the uploaded file `upload.txt`" in c.value for c in at.caption)
    check_tables(at, result)


@pytest.mark.slow
@pytest.mark.parametrize("folder", SHIPPED, ids=lambda f: f.name)
def test_new_views_on_every_shipped_checkpoint(folder, capsys, tmp_path):
    """The lens and gain tabs and the corpus page open on every shipped checkpoint (vanilla's N_r = 1
    included) and show the CLI's numbers: the mean NLL after the last step, at full depth, and the
    corpus mean depth."""
    name, R = folder.name, load_config(folder).num_recursions
    lens = cli_json(capsys, "lens", "--checkpoint", name, "--text", TEXT)
    last = [row[-1]["next_token_nll"] for row in lens["steps"][:-1]]
    at = open_app(ckpt=name, text=TEXT, view="lens")
    assert metric(at, f"Mean NLL after step {R}") == f"{sum(last) / len(last):.4f}"
    at.session_state["heatmap_view"] = "Where depth helped"
    at.run()
    assert not at.exception
    if R > 1:
        assert metric(at, "Mean NLL at full depth") == f"{sum(last) / len(last):.4f}"
    samples = tmp_path / "samples.txt"
    samples.write_text(corpus_stats.builtin_text("samples")[0], encoding="utf-8")
    stats = cli_json(capsys, "stats", "--checkpoint", name, "--text-file", str(samples))
    at = open_app("corpus.py", ckpt=name, corpus="samples")
    assert metric(at, "Mean depth") == f"{stats['mean_depth']:.3f}"
    assert (load_config(folder).routing == "none") == any("has no router" in i.value for i in at.info)
