"""The "Live throughput" and "How MoR works" pages, driven through Streamlit's AppTest on a shipped
checkpoint (the `checkpoint_name` fixture: the tests fail, loudly, when none is shipped). The rows
of tokens these pages draw come from `app.render`, tested on its own in tests/test_render.py."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from mor.inference.engine import PASS_TOKENS

streamlit_testing = pytest.importorskip("streamlit.testing.v1")

APP = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
pytestmark = pytest.mark.slow  # every test runs a whole page on a real checkpoint


def open_page(page: str, checkpoint: str):
    """An AppTest switched to `page`, with `checkpoint` picked in the sidebar."""
    at = streamlit_testing.AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page(page).run()
    at.selectbox(key="picker_ckpt").set_value(checkpoint).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def html_with(at, needle: str) -> list[str]:
    return [h.value for h in at.html if needle in h.value]


# ---- How MoR works ---------------------------------------------------------------------------

def test_learn_page_renders_every_section(checkpoint_name):
    at = open_page("app_pages/learn.py", checkpoint_name)
    headers = [h.value for h in at.header]
    assert len([h for h in headers if h[0].isdigit()]) == 5
    metrics = {m.label: int(m.value.replace(",", "")) for m in at.metric if "parameters" in m.label}
    assert len(metrics) == 2 and all(v > 0 for v in metrics.values())
    unique, effective = metrics.values()
    assert unique <= effective
    assert html_with(at, "step 1")  # the KV grid
    assert any("(N_r + 1)/(2N_r)" in m.value and "Formula" in m.value for m in at.markdown)


def test_batching_grid_matches_the_engine_and_the_slider(checkpoint_name):
    """The depth-wise batching section runs the real engine: the grid has one column per block run
    the metric reports (up to 40 drawn), at most `width` tokens per run, narrower passes mean more
    block runs, and one row per pass with one request in flight is exactly a static batch of one."""
    at = open_page("app_pages/learn.py", checkpoint_name)
    runs = {}
    for width in (3, 1):
        at.slider(key="learn_width").set_value(width)
        at.slider(key="learn_slots").set_value(width).run()
        assert not at.exception
        metrics = {m.label: m.value for m in at.metric}
        runs[width] = int(metrics["Block runs, depth-wise batching"])
        grid = html_with(at, "request 1")[0]
        columns = re.findall(r"<th style=\"font-weight:400;padding:0 2px\">(\d+)</th>", grid)
        assert len(columns) == min(runs[width], 40)
        assert float(metrics["Tokens per block run"].split()[0]) <= width
    assert runs[1] > runs[3]
    assert int(dict((m.label, m.value) for m in at.metric)["Block runs, static batches"]) == runs[1]


def test_stage_queues_are_the_engine_passes_and_play_live(checkpoint_name):
    """The stage-queue table counts every pass of the run (its rows add up to what the stages
    carried), and "Watch it live" streams a fresh run of the same length, pass by pass."""
    at = open_page("app_pages/learn.py", checkpoint_name)
    at.slider(key="learn_requests").set_value(6)
    at.slider(key="learn_width").set_value(2)
    at.slider(key="learn_slots").set_value(4).run()
    table = next(d.value for d in at.dataframe if "rows per pass" in d.value.columns)
    assert (table["passes"] > 0).all()
    # A pass carries at most 2 decode rows; prompt chunks ride beside them, PASS_TOKENS rows in all.
    decode = (table["rows"] - table["prompt rows"]) / table["passes"]
    assert (decode <= 2).all() and (table["rows per pass"] <= PASS_TOKENS).all()
    assert table["prompt rows"].sum() > 0 and (table["rows per pass"] > 2).any()
    total = int(table["passes"].sum())
    caption = next(c.value for c in at.caption if "Tokens waiting in each stage" in c.value)
    assert f"({total} passes" in caption
    at.select_slider(key="learn_pause").set_value(0)
    at.button(key="learn_live").click().run()
    assert not at.exception, [e.value for e in at.exception]
    last = [c.value for c in at.caption if c.value.startswith("Pass ")]
    assert last and last[-1].startswith(f"Pass {total}:")


def test_sharing_diagram_follows_the_widgets(checkpoint_name):
    at = open_page("app_pages/learn.py", checkpoint_name)
    def diagram():
        return html_with(at, "Recursion 1")[0]
    before = diagram()
    assert before.count("Recursion ") == 3  # default N_r = 3
    at.number_input(key="learn_Nr").set_value(2).run()
    after = diagram()
    assert after != before and after.count("Recursion ") == 2
    at.selectbox(key="learn_sharing").set_value("sequence").run()
    assert diagram() != after
    at.number_input(key="learn_Nr").set_value(5).run()  # 8 layers do not split into 5 recursions
    assert not at.exception
    assert any("does not work" in w.value for w in at.warning)
    assert not html_with(at, "Recursion 1")


def test_threshold_routing_is_causal_and_cut_changes_the_comparison(checkpoint_name):
    at = open_page("app_pages/learn.py", checkpoint_name)  # an expert-choice checkpoint
    def changed(rule: str) -> tuple[int, int]:
        text = next(m.value for m in at.markdown if m.value.startswith(f"**{rule}**:"))
        found, total = re.search(r"(\d+) of (\d+) tokens changed", text).groups()
        return int(found), int(total)
    assert changed("Threshold")[0] == 0  # a token's depth never depends on later text
    cut = at.slider(key="learn_cut")
    cut.set_value(cut.min + 1).run()
    assert changed("Threshold") == (0, cut.min + 1)
    assert changed("Top-k")[1] == cut.min + 1


# ---- Live throughput -------------------------------------------------------------------------

def run_throughput(at):
    """A light run (batch 1, three new tokens); returns the metrics it shows."""
    at.slider(key="tp_batch").set_value(1)
    at.slider(key="tp_new").set_value(3)
    at.number_input(key="tp_repeats").set_value(1)
    at.button(key="tp_run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return {m.label: m.value for m in at.metric}


def test_throughput_run_measures_tokens_per_second_and_fills_the_table(checkpoint_name):
    at = open_page("app_pages/throughput.py", checkpoint_name)
    metrics = run_throughput(at)
    assert float(metrics["Tokens/s (decode)"].replace(",", "")) > 0
    assert metrics["Tokens decoded"] == "3"
    table = at.dataframe[0].value
    assert (table["tokens/s"] > 0).all() and (table["new tokens"] == 3).all()
    assert "router decides" in set(table["setting"]) or "every token, full depth" in set(table["setting"])
    assert at.get("download_button")


def test_throughput_fixed_depth_colours_every_token_at_that_depth(checkpoint_name):
    at = open_page("app_pages/throughput.py", checkpoint_name)  # a checkpoint with a router
    at.radio(key="tp_mode").set_value("Fixed depth k").run()  # enables the k slider
    at.slider(key="tp_k").set_value(1)
    at.checkbox(key="tp_table").uncheck()
    run_throughput(at)
    live = html_with(at, "fixed depth 1")[0]
    assert set(re.findall(r'class="mor-tok" data-depth="(\d+)"', live)) == {"1"}
    assert not at.dataframe  # the side-by-side table was switched off
