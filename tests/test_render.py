"""app/render.py: the token renderer, the heatmaps and the diagrams as HTML, escaping above all."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from app import render

HOSTILE = ["<img src=x onerror=alert(1)>", "</div><script>alert(2)</script>", "say \"hi\" & 'bye'", "\n", "  ", ""]


def make_trace(tokens: list[str], depths: list[int], R: int = 3) -> dict:
    """A trace dict shaped like Trace.to_json(), with router scores None beyond each depth."""
    scores = [[0.9 if step < d else None for step in range(R)] for d in depths]
    nll = [None] + [1.0 + i / 10 for i in range(len(tokens) - 1)]
    return {"checkpoint": "test<ckpt>", "num_recursions": R, "tokens": tokens, "token_ids": list(range(len(tokens))),
            "depths": depths, "token_nll": nll, "router_scores": scores, "routing_mode": "causal",
            "depth_cap": None, "fixed_depth": None, "truncated_tokens": 0, "seconds": 0.01,
            "mean_depth": sum(depths) / len(depths), "nll": 1.0,
            "depth_histogram": {str(d): depths.count(d) for d in range(1, R + 1)}}


class Collector(HTMLParser):
    """Every start tag with its attributes, and the text content, as a browser would parse them."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text = ""

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text += data


def parse(markup: str) -> Collector:
    parser = Collector()
    parser.feed(markup)
    parser.close()
    return parser


@pytest.fixture
def hostile_trace():
    return make_trace(HOSTILE, [1, 2, 3, 1, 2, 3])


def test_hostile_tokens_never_become_markup(hostile_trace):
    out = render.heatmap_html(hostile_trace)
    tags = {tag for tag, _ in parse(out).tags}
    assert tags <= {"div", "style", "span", "b", "br"}
    assert "<img" not in out and "<script" not in out and "</div><script>" not in out
    assert "&lt;img src=x onerror=alert(1)&gt;" in out
    assert "&lt;/div&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in out
    # The text a reader sees still holds the tokens verbatim.
    text = parse(out).text
    assert "<img src=x onerror=alert(1)>" in text and "</div><script>alert(2)</script>" in text


def test_tooltips_are_escaped_attributes(hostile_trace):
    spans = [attrs for tag, attrs in parse(render.heatmap_html(hostile_trace)).tags if attrs.get("class") == "mor-tok"]
    assert len(spans) == len(HOSTILE)
    # Parsing recovers each tooltip whole: no quote in a token closed the attribute early.
    assert spans[2]["title"].startswith("token 'say \"hi\" & \\'bye\\''")
    assert "onerror" not in spans[0]  # the image's attribute stayed inside the title text
    assert "depth 3 of 3" in spans[2]["title"]
    assert "router score per step: 0.900 / 0.900 / 0.900" in spans[2]["title"]
    assert "router score per step: 0.900 / - / -" in spans[0]["title"]
    assert "NLL -" in spans[0]["title"] and "NLL 1.100 nats" in spans[2]["title"]
    raw = render.heatmap_html(hostile_trace)
    assert 'title="token &#x27;say &quot;hi&quot; &amp; \\&#x27;bye\\&#x27;&#x27;' in raw


def test_each_depth_has_its_own_colour_and_legend_swatch():
    trace = make_trace(["a", "b", "c", "d"], [1, 2, 3, 4], R=4)
    tags = parse(render.heatmap_html(trace)).tags
    token_colours = {int(a["data-depth"]): re.search(r"background:(#[0-9a-f]{6})", a["style"]).group(1)
                     for _, a in tags if a.get("class") == "mor-tok"}
    legend_colours = {int(a["data-depth"]): re.search(r"background:(#[0-9a-f]{6})", a["style"]).group(1)
                      for _, a in tags if a.get("class") == "mor-swatch"}
    assert len(set(token_colours.values())) == 4
    assert token_colours == legend_colours == render.depth_palette(4)
    # Extremes are viridis's ends: shallow is the light end, deep the dark end.
    assert token_colours[1] == render.VIRIDIS[-1] and token_colours[4] == render.VIRIDIS[0]


def test_legend_counts_tokens_per_depth():
    out = render.heatmap_html(make_trace(["a", "b", "c"], [1, 1, 3]))
    text = parse(out).text
    assert "1 (2 tokens)" in text and "2 (0 tokens)" in text and "3 (1 tokens)" in text
    assert 'class="mor-legend"' not in render.heatmap_html(make_trace(["a"], [1]), legend=False)


def test_text_contrast_follows_background():
    assert render.text_colour(render.VIRIDIS[0]) == "#ffffff"  # dark purple: white text
    assert render.text_colour(render.VIRIDIS[-1]) == "#111111"  # yellow: dark text


def test_whitespace_tokens_stay_visible():
    out = render.heatmap_html(make_trace(["a", "\n", "  ", "", "b\nc"], [1, 1, 1, 1, 1]))
    assert out.count("<br>") == 2  # the newline token and the newline inside "b\nc"
    assert "↵" in out and "∅" in out
    assert "white-space:pre-wrap" in out  # runs of spaces keep their width


def test_standalone_document_is_self_contained(hostile_trace):
    doc = render.standalone_heatmap_html(hostile_trace)
    assert doc.startswith("<!DOCTYPE html>") and doc.rstrip().endswith("</html>")
    assert "<script" not in doc.lower()
    tags = parse(doc).tags
    assert not [attrs for _, attrs in tags if {"src", "href"} & set(attrs)]  # no external resources
    assert {tag for tag, _ in tags} <= {"html", "head", "meta", "title", "style", "body", "h1", "ul", "li", "p",
                                        "small", "div", "span", "b", "br"}
    assert "@import" not in doc and "url(" not in doc
    assert "test&lt;ckpt&gt;" in doc and "test<ckpt>" not in doc
    assert '<meta charset="utf-8">' in doc
    assert "Mean depth: 2.000 of 3" in parse(doc).text


def test_empty_trace_renders_legend_only():
    trace = make_trace(["x"], [1])
    trace.update(tokens=[], token_ids=[], depths=[], token_nll=[], router_scores=[])
    out = render.heatmap_html(trace)
    assert 'class="mor-tok"' not in out and 'class="mor-legend"' in out


def test_single_recursion_model_has_one_colour():
    assert render.depth_palette(1) == {1: render.VIRIDIS[-1]}


def test_score_label_follows_routing():
    trace = make_trace(["a"], [1])
    assert "router P(depth 1..N_r): 0.900 / - / -" in render.heatmap_html(trace, routing="token_choice")
    assert "router score per step: 0.900" in render.standalone_heatmap_html(trace)


def test_depth_text_escapes_every_token_and_marks_the_chosen():
    """The rows of the learn and throughput pages: the same token renderer as the heatmap (spans
    with data-depth), after an escaped grey prefix, the marked tokens outlined."""
    out = render.depth_text_html(["<img src=x onerror=alert(1)>", "a\nb", "c"], [1, 2, 3], 3, {0}, prefix="<b>")
    parsed = parse(out)
    assert "<img" not in out and "<b>" not in out
    assert "&lt;img src=x onerror=alert(1)&gt;" in out and "&lt;b&gt;" in out
    assert parsed.text.endswith("<b><img src=x onerror=alert(1)>a↵bc")  # after the <style> block
    spans = [attrs for _, attrs in parsed.tags if "mor-tok" in attrs.get("class", "")]
    assert [a["data-depth"] for a in spans] == ["1", "2", "3"]
    assert [a["class"] for a in spans] == ["mor-tok mor-marked", "mor-tok", "mor-tok"]
    assert [a["style"].split(";")[0] for a in spans] == [f"background:{render.depth_colour(d, 3)}" for d in (1, 2, 3)]
    assert "↵" in out and out.count("<br>") == 1


def test_legend_block_is_the_heatmap_legend():
    assert render.legend_html(3) in render.legend_block(3)
    assert 'class="mor-tok"' not in render.legend_block(3)


def test_decode_rows_show_each_row_after_the_prompt():
    out = render.decode_rows_html("<p>", [(["x", "y"], [1, 2]), (["z"], [3])], 3, distinct=2, total=4)
    parsed = parse(out)
    assert "<p>" not in out and parsed.text.count("<p>") == 2  # the prompt before each row, as text
    assert re.findall(r'class="mor-tok" data-depth="(\d)"', out) == ["1", "2", "3"]
    assert "2 distinct row(s) shown of 4" in parsed.text


def test_kv_grid_marks_each_cache_state():
    states = [["cached", "cached", "exited"], ["cached", "reads step 1", "reads step 1"]]
    out = render.kv_grid_html(["<t>", "u"], states, 3, max_tokens=1)
    cells = re.findall(r"<td[^>]*>(.)</td>", out)
    assert cells == ["●", "●", "·"]  # one token drawn (max_tokens), steps 1..3
    assert "&lt;t&gt;" in out and "<t>" not in out
    two = re.findall(r"<td[^>]*>(.)</td>", render.kv_grid_html(["<t>", "u"], states, 3, max_tokens=2))
    assert two == ["●", "●", "●", "↺", "·", "↺"]  # step-major: step 1 of both tokens first


def test_sharing_diagram_letters_each_effective_layer():
    groups = [("First layer (unique)", [0]), ("Recursion 1", [1, 2]), ("Recursion 2", [1, 2]), ("<i>", [3])]
    assert render.plan_text(groups) == "A | BC | BC | D"
    out = render.sharing_diagram(groups)
    assert out.count("effective layer") == 6 and "effective layer 6 uses unique layer D" in out
    assert "&lt;i&gt;" in out and "<i>" not in out


def test_one_wording_of_a_depth_setting_on_every_page():
    """The heatmap document, the live throughput table and the Compare page word a depth setting
    through `render.depth_label`."""
    from app import live_decode

    assert render.depth_label(fixed_depth=2) == "fixed depth 2 (router ignored)"
    assert render.depth_label(fixed_depth=2, routing="none") == "fixed depth 2"
    assert render.depth_label(depth_cap=1) == "depth cap 1"
    assert render.depth_label(routing="none") == "every token, full depth"
    assert live_decode.setting_label({"fixed_depth": 3}, "expert_choice") == render.depth_label(fixed_depth=3)
    assert render.setting_label({"routing_mode": "causal", "depth_cap": 2}) == "causal routing, depth cap 2"
    assert render.setting_label({"fixed_depth": 1}) == "fixed depth 1 (router ignored)"
