"""The "Live throughput" and "How MoR works" pages, driven through Streamlit's AppTest on the
checkpoints that are present (skipped when there are none)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import mor
from mor.model.loading import load_config

streamlit_testing = pytest.importorskip("streamlit.testing.v1")

APP = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
CHECKPOINTS = mor.list_checkpoints()
needs_checkpoints = pytest.mark.skipif(not CHECKPOINTS, reason="no checkpoints found (set MOR_CHECKPOINTS)")


def with_routing(routing: str) -> list[str]:
    return [p.name for p in CHECKPOINTS if load_config(p).routing == routing]


def open_page(page: str, checkpoint: str | None = None):
    """An AppTest switched to `page`, with `checkpoint` picked in the sidebar when given."""
    at = streamlit_testing.AppTest.from_file(APP, default_timeout=120)
    at.run()
    at.switch_page(page).run()
    if checkpoint is not None:
        at.selectbox(key="picker_ckpt").set_value(checkpoint).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_token_spans_escape_every_token(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(APP).parent))
    import live_view

    out = live_view.token_spans(["<img src=x onerror=alert(1)>", "a\nb"], [1, 2], 3, {0}, prefix="<b>")
    assert "<img" not in out and "<b>" not in out
    assert "&lt;img src=x onerror=alert(1)&gt;" in out and "&lt;b&gt;" in out
    assert out.count("outline:") == 1 and "↵" in out


def html_with(at, needle: str) -> list[str]:
    return [h.value for h in at.html if needle in h.value]


# ---- How MoR works ---------------------------------------------------------------------------

@needs_checkpoints
def test_learn_page_renders_every_section():
    at = open_page("app_pages/learn.py")
    headers = [h.value for h in at.header]
    assert len([h for h in headers if h[0].isdigit()]) == 5
    metrics = {m.label: int(m.value.replace(",", "")) for m in at.metric if "parameters" in m.label}
    assert len(metrics) == 2 and all(v > 0 for v in metrics.values())
    unique, effective = metrics.values()
    assert unique <= effective
    assert html_with(at, "step 1")  # the KV grid
    assert any("(N_r + 1)/(2N_r)" in m.value and "Formula" in m.value for m in at.markdown)


@needs_checkpoints
def test_batching_grid_matches_the_engine_and_the_slider():
    """The depth-wise batching section runs the real engine: the grid has one column per block run
    the metric reports (up to 40 drawn), at most `slots` tokens per run, fewer slots mean more block
    runs, and one slot is exactly a static batch of one."""
    name = with_routing("expert_choice")[0]
    at = open_page("app_pages/learn.py", name)
    runs = {}
    for slots in (3, 1):
        at.slider(key="learn_slots").set_value(slots).run()
        assert not at.exception
        metrics = {m.label: m.value for m in at.metric}
        runs[slots] = int(metrics["Block runs, depth-wise batching"])
        grid = html_with(at, "request 1")[0]
        columns = re.findall(r"<th style=\"font-weight:400;padding:0 2px\">(\d+)</th>", grid)
        assert len(columns) == min(runs[slots], 40)
        assert float(metrics["Tokens per block run"].split()[0]) <= slots
    assert runs[1] > runs[3]
    assert int(dict((m.label, m.value) for m in at.metric)["Block runs, static batches"]) == runs[1]


@needs_checkpoints
def test_sharing_diagram_follows_the_widgets():
    at = open_page("app_pages/learn.py")
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


@pytest.mark.skipif(not with_routing("expert_choice"), reason="needs an expert-choice checkpoint")
def test_threshold_routing_is_causal_and_cut_changes_the_comparison():
    at = open_page("app_pages/learn.py", with_routing("expert_choice")[0])
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


@needs_checkpoints
def test_throughput_run_measures_tokens_per_second_and_fills_the_table():
    at = open_page("app_pages/throughput.py")
    metrics = run_throughput(at)
    assert float(metrics["Tokens/s (decode)"].replace(",", "")) > 0
    assert metrics["Tokens decoded"] == "3"
    table = at.dataframe[0].value
    assert (table["tokens/s"] > 0).all() and (table["new tokens"] == 3).all()
    assert "router decides" in set(table["setting"]) or "every token, full depth" in set(table["setting"])
    assert at.get("download_button")


@needs_checkpoints
def test_throughput_fixed_depth_colours_every_token_at_that_depth():
    routed = with_routing("expert_choice") + with_routing("token_choice")
    if not routed:
        pytest.skip("needs a checkpoint with a router")
    at = open_page("app_pages/throughput.py", routed[0])
    at.radio(key="tp_mode").set_value("Fixed depth k").run()  # enables the k slider
    at.slider(key="tp_k").set_value(1)
    at.checkbox(key="tp_table").uncheck()
    run_throughput(at)
    live = html_with(at, "fixed depth 1")[0]
    assert set(re.findall(r'title="depth (\d+)"', live)) == {"1"}
    assert not at.dataframe  # the side-by-side table was switched off
