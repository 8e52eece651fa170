"""The explorer pages (heatmap, scaling, KV memory, compare) driven through Streamlit's AppTest.

Each test runs the real app on a shipped checkpoint (the `checkpoint_name` fixture: an
expert-choice one with two or more recursions; missing checkpoints fail the tests, loudly) and
asserts on the numbers it displays."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

import mor
from mor.model.loading import load_config

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

MAIN = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
SHORT = "The cat sat on the mat."
LONGER = "The cat sat on the mat, and then the dog came in from the garden and lay down beside it."


pytestmark = pytest.mark.slow  # every test runs whole pages on a real checkpoint


@pytest.fixture(scope="module")
def named_config(checkpoint_name):
    """(name, config) of the checkpoint the pages are opened on."""
    return checkpoint_name, load_config(mor.resolve_checkpoint(checkpoint_name))


def open_page(name: str, page: str | None, text: str = SHORT, **query) -> AppTest:
    """The app with `name` and `text` in the URL, switched to app_pages/`page` (None: the default page)."""
    at = AppTest.from_file(MAIN, default_timeout=120)
    at.query_params.update(ckpt=name, text=text, **query)
    at.run()
    if page is not None:
        at.switch_page(f"app_pages/{page}").run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metric(at: AppTest, label: str) -> str:
    values = [m.value for m in at.metric if m.label == label]
    assert values, f"no metric {label!r}; have {[m.label for m in at.metric]}"
    return values[0]


def token_count(at: AppTest) -> int:
    return sum(html.proto.body.count('class="mor-tok"') for html in at.html)


def test_heatmap_page(named_config):
    name, cfg = named_config
    at = open_page(name, None)
    tokens = int(metric(at, "Tokens"))
    assert tokens > 3 and token_count(at) == tokens
    assert {b.label for b in at.download_button} == {"Heatmap (HTML)", "Per-token table (CSV)", "Trace (JSON)"}
    assert 1.0 <= float(metric(at, "Mean depth")) <= cfg.num_recursions

    at.text_area[0].set_value(LONGER).run()
    assert not at.exception
    assert int(metric(at, "Tokens")) > tokens
    assert at.query_params["text"] == LONGER

    at.text_area[0].set_value(LONGER * (cfg.max_position_embeddings // 10)).run()
    assert not at.exception
    long_tokens = int(metric(at, "Tokens"))
    assert long_tokens > cfg.max_position_embeddings and token_count(at) == long_tokens  # traced whole
    assert any("overlapping windows" in i.value for i in at.info)

    at.text_area[0].set_value("").run()
    assert not at.exception
    assert any("text is empty" in i.value for i in at.info)


def test_heatmap_capacity_routing(named_config):
    name, cfg = named_config  # an expert-choice checkpoint: it has a capacity rule
    at = open_page(name, None, text=LONGER)
    at.radio(key="routing_mode").set_value("capacity").run()
    assert not at.exception
    assert at.query_params["mode"] == "capacity"
    # Capacity routing keeps exactly ceil(capacity x T) tokens at each step, so the mean depth is known.
    T = int(metric(at, "Tokens"))
    expected = sum(math.ceil(c * T) for c in cfg.capacities) / T
    assert float(metric(at, "Mean depth")) == pytest.approx(expected, abs=1e-3)


def test_scaling_page(named_config):
    name, cfg = named_config
    R = cfg.num_recursions  # two or more: there is a depth to scale
    at = open_page(name, "scaling.py", text=LONGER)
    free_depth, free_nll = float(metric(at, "Mean depth")), metric(at, "Mean NLL")
    assert "ms" in metric(at, "Time per token")
    assert any("measured now on this machine" in c.value for c in at.caption)

    at.slider(key="scaling_cap").set_value(1).run()
    assert not at.exception
    assert float(metric(at, "Mean depth")) == 1.0
    assert metric(at, "Mean NLL") != free_nll or free_depth == 1.0
    assert at.query_params["cap"] == "1"

    at.slider(key="scaling_cap").set_value(R)
    at.toggle(key="scaling_fixed").set_value(True).run()
    assert not at.exception
    assert float(metric(at, "Mean depth")) == float(R)
    assert at.query_params["mode"] == "fixed"
    assert [b.label for b in at.download_button] == ["Chart data (CSV)"]


def test_kv_memory_page(named_config):
    name, _ = named_config
    at = open_page(name, "kv_memory.py")
    labels = [m.label for m in at.metric]
    assert labels == ["Full caching", "Recursion-wise caching", "Recursive KV sharing"]
    assert any(s.value.startswith("✓") for s in at.success) and not at.error
    steps = at.dataframe[0].value
    assert set(steps["agree"]) == {"✓"}
    assert (steps["measured_bytes"] == steps["formula_bytes"]).all()
    assert {"Full caching", "Recursion-wise caching",
            "Recursive KV sharing"} == set(steps["strategy"])
    # Sharing never holds more than recursion-wise caching, which never holds more than full caching.
    kib = [float(metric(at, label).split()[0].replace(",", "")) for label in labels]
    assert kib[0] >= kib[1] >= kib[2]


def test_compare_page(named_config):
    name, cfg = named_config
    at = open_page(name, "compare.py")
    assert len(at.columns) >= 2
    heatmaps = [h for h in at.html if 'class="mor-heatmap"' in h.proto.body]
    assert len(heatmaps) == 2
    depths = [float(m.value) for m in at.metric if m.label == "Mean depth"]
    # Side B defaults to every token at full depth.
    assert len(depths) == 2 and depths[1] == float(cfg.num_recursions)
    table = at.dataframe[0].value
    assert {"depth_a", "depth_b", "nll_a", "nll_b"} <= set(table.columns)
    assert (table["depth_b"] == cfg.num_recursions).all()
    assert [b.label for b in at.download_button] == ["Per-token comparison (CSV)"]
