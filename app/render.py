"""Every piece of HTML the app draws, from plain data (trace dicts, token texts and depths, plans):
pure functions, no Streamlit, no model. One renderer per kind of thing:

- tokens: `span` is the one token renderer. `depth_text_html` draws tokens coloured by depth
  (viridis), optionally outlined ("marked") and after a grey prefix; `heatmap_html` is the same
  with each token's router scores and NLL in its tooltip; `value_heatmap_html` colours tokens by a
  signed value (RdBu, diverging around 0). `legend_html` / `legend_block` is the one depth legend.
- diagrams of the "How MoR works" page: the sharing plan, the KV-cache grid (drawn from
  `mor.analysis.kv.cache_states`), the depth-wise batching grid; and the live decode's rows.

Every piece of text that came from the user or the tokenizer goes through `html.escape(...,
quote=True)` before it lands in element content or in an attribute, so a token such as
`<img src=x onerror=alert(1)>` is shown as text, never parsed as markup.
"""

from __future__ import annotations

import html
import math

# Matplotlib's viridis sampled at 0, 1/8, ..., 1: perceptually uniform and colour-blind safe.
VIRIDIS = ("#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725")
# ColorBrewer RdBu (9 classes), a diverging scale marked colour-blind safe: red where a change in
# NLL is a loss, white at no change, blue where it is a gain.
RDBU = ("#b2182b", "#d6604d", "#f4a582", "#fddbc7", "#f7f7f7", "#d1e5f0", "#92c5de", "#4393c3", "#2166ac")
NO_VALUE = "#bdbdbd"  # a token without a value (the last one: nothing follows it to predict)

HEATMAP_CSS = """
.mor-heatmap{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:15px;line-height:1.9}
.mor-heatmap .mor-text{white-space:pre-wrap;word-break:break-word}
.mor-heatmap .mor-tok{border-radius:3px;padding:1px 0;cursor:help}
.mor-heatmap .mor-tok:hover{outline:2px solid #e4572e}
.mor-heatmap .mor-marked{outline:3px solid #d62728;outline-offset:-1px}
.mor-heatmap .mor-prefix{color:#777}
.mor-heatmap .mor-mark{opacity:.6}
.mor-heatmap .mor-legend{font-family:system-ui,sans-serif;font-size:13px;margin-bottom:.6em}
.mor-heatmap .mor-swatch{display:inline-block;padding:0 .6em;margin-right:.3em;border-radius:3px}
"""


def _hex_to_rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _interpolate(t: float, stops: tuple[str, ...] = VIRIDIS) -> str:
    """The colour at t in [0, 1] of a palette, linear between its stops (viridis by default)."""
    t = min(max(t, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(t), len(stops) - 2)
    frac = t - i
    a, b = _hex_to_rgb(stops[i]), _hex_to_rgb(stops[i + 1])
    return "#" + "".join(f"{round(x + (y - x) * frac):02x}" for x, y in zip(a, b))


def depth_colour(depth: int, num_recursions: int) -> str:
    """Background colour of a token that took `depth` of `num_recursions` recursions.

    Shallow tokens are light (viridis yellow) and deep ones dark (viridis purple), so the
    tokens the router spent most compute on stand out from running text."""
    if num_recursions <= 1:
        return VIRIDIS[-1]
    return _interpolate(1.0 - (depth - 1) / (num_recursions - 1))


def text_colour(background: str) -> str:
    """Black or white, whichever reads better on `background` (WCAG relative luminance)."""
    def linear(c: int) -> float:
        c /= 255
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (linear(c) for c in _hex_to_rgb(background))
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    # Contrast against white vs black: white wins when (1.05)/(L+0.05) > (L+0.05)/0.05.
    return "#ffffff" if luminance < 0.179 else "#111111"


def depth_palette(num_recursions: int) -> dict[int, str]:
    """Depth -> background colour, for charts that should match the heatmap."""
    return {d: depth_colour(d, num_recursions) for d in range(1, num_recursions + 1)}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


# What a trace's router_scores hold, by the checkpoint's routing.
SCORE_LABELS = {
    "expert_choice": "router score per step",  # sigmoid score of each step's router
    "token_choice": "router P(depth 1..N_r)",  # one softmax over depths, chosen up front
    "none": "router (none)",  # no router: every score is "-"
}
DEFAULT_SCORE_LABEL = SCORE_LABELS["expert_choice"]


def depth_tooltip(token: str, depth: int, num_recursions: int) -> str:
    """Plain-text tooltip of one token (not yet escaped): its text and depth."""
    return f"token {token!r}\ndepth {depth} of {num_recursions}"


def token_tooltip(token: str, depth: int, num_recursions: int, scores: list[float | None],
                  nll: float | None, score_label: str = DEFAULT_SCORE_LABEL) -> str:
    """`depth_tooltip` followed by the token's router scores and NLL."""
    step_scores = " / ".join(_fmt(s) for s in scores)
    return "\n".join([
        depth_tooltip(token, depth, num_recursions),
        f"{score_label}: {step_scores}",
        f"NLL {_fmt(nll)} nats" if nll is not None else "NLL - (first token: nothing to predict it from)",
    ])


def _visible_text(token: str) -> str:
    """Escaped token content with whitespace made visible where it would vanish.

    A newline shows as a faint return mark followed by a real line break; a token holding no
    text (its bytes finish a character in the next token) shows a faint empty-set mark, so
    every token still has something to hover over."""
    if token == "":
        return '<span class="mor-mark">∅</span>'
    lines = [html.escape(line, quote=True) for line in token.split("\n")]
    return '<span class="mor-mark">↵</span><br>'.join(lines)


def span(token: str, background: str, tooltip: str, data: dict[str, object], marked: bool = False) -> str:
    """One token as a span on `background` (a "#rrggbb" colour made here), with its plain-text
    `tooltip` and `data` as data-* attributes, all escaped; `marked` outlines it in red. The one
    token renderer of the app."""
    attrs = "".join(f' data-{key}="{html.escape(str(value), quote=True)}"' for key, value in data.items())
    return (f'<span class="mor-tok{" mor-marked" if marked else ""}"{attrs} '
            f'style="background:{background};color:{text_colour(background)}" '
            f'title="{html.escape(tooltip, quote=True)}">{_visible_text(token)}</span>')


def depth_span(token: str, depth: int, num_recursions: int, tooltip: str | None = None, marked: bool = False) -> str:
    """A token on its depth's colour, its depth in data-depth (`depth_tooltip` unless `tooltip`)."""
    tooltip = depth_tooltip(token, depth, num_recursions) if tooltip is None else tooltip
    return span(token, depth_colour(depth, num_recursions), tooltip, {"depth": int(depth)}, marked)


def depth_text_html(tokens: list[str], depths: list[int], num_recursions: int, marked: set[int] | None = None,
                    prefix: str = "", style: bool = True) -> str:
    """Tokens coloured by depth, without a legend, after `prefix` in plain grey (a prompt, say);
    tokens whose index is in `marked` are outlined in red."""
    marked = marked or set()
    lead = f'<span class="mor-prefix">{html.escape(prefix, quote=True)}</span>' if prefix else ""
    spans = "".join(depth_span(token, depth, num_recursions, marked=i in marked)
                    for i, (token, depth) in enumerate(zip(tokens, depths)))
    return text_block(lead + spans, style=style)


def swatch(label: str, background: str, attrs: str = "") -> str:
    """One legend swatch: `label` (escaped) on `background`; `attrs` are attributes made here."""
    return (f'<span class="mor-swatch"{attrs} style="background:{background};color:{text_colour(background)}">'
            f"{html.escape(label)}</span>")


def legend_html(num_recursions: int, counts: dict[str, int] | None = None) -> str:
    """Swatches for depth 1..N_r, with the number of tokens at each depth when given (the one
    depth legend: inside a heatmap, or on its own through `legend_block`)."""
    swatches = []
    for depth in range(1, num_recursions + 1):
        label = f"{depth}" if counts is None else f"{depth} ({int(counts.get(str(depth), 0))} tokens)"
        swatches.append(swatch(label, depth_colour(depth, num_recursions), f' data-depth="{depth}"'))
    return ('<div class="mor-legend"><b>Recursions taken</b> (shallow → deep): '
            + "".join(swatches) + "</div>")


def heatmap_html(trace: dict, *, routing: str = "expert_choice", legend: bool = True, style: bool = True) -> str:
    """An HTML fragment: the legend and every token as a span coloured by its depth.

    `routing` (the checkpoint's config.routing) names the router scores in the tooltips;
    `style=False` leaves out the <style> block, for a page that already includes HEATMAP_CSS."""
    R = int(trace["num_recursions"])
    label = SCORE_LABELS.get(routing, DEFAULT_SCORE_LABEL)
    spans = "".join(
        depth_span(token, depth, R, token_tooltip(token, depth, R, scores, nll, label))
        for token, depth, scores, nll in zip(trace["tokens"], trace["depths"], trace["router_scores"],
                                             trace["token_nll"]))
    return text_block(spans, legend_html(R, trace.get("depth_histogram")) if legend else "", style)


def text_block(spans: str, legend: str = "", style: bool = True) -> str:
    """The heatmap container: optional <style>, a legend (HTML made here) and the token spans."""
    return ('<div class="mor-heatmap">' + (f"<style>{HEATMAP_CSS}</style>" if style else "") + legend
            + f'<div class="mor-text">{spans}</div></div>')


def legend_block(num_recursions: int, style: bool = True) -> str:
    """The depth legend alone, for token rows drawn without one (`depth_text_html`)."""
    return text_block("", legend_html(num_recursions), style)


# ---- heatmaps of a signed value (NLL changes) -------------------------------------------------

def symmetric_scale(values: list[float | None], quantile: float = 0.95, floor: float = 0.05) -> float:
    """Half-width of a diverging colour scale centred on 0: the `quantile` of |value| (so one
    outlier does not wash out every other token; larger values are drawn at the end colour), at
    least `floor`, rounded up to two significant digits so the legend reads cleanly."""
    magnitudes = sorted(abs(v) for v in values if v is not None)
    if not magnitudes:
        return floor
    top = max(magnitudes[min(len(magnitudes) - 1, int(quantile * len(magnitudes)))], floor)
    digits = 1 - int(math.floor(math.log10(top)))
    return math.ceil(top * 10 ** digits) / 10 ** digits


def diverging_colour(value: float | None, scale: float) -> str:
    """RdBu colour of `value` on [-scale, scale] (clamped): blue > 0 (NLL fell), red < 0."""
    if value is None:
        return NO_VALUE
    return _interpolate((value / scale + 1) / 2, RDBU)


def value_legend_html(title: str, scale: float, unit: str = "nats") -> str:
    """Swatches at -scale, -scale/2, 0, scale/2 and scale, and the grey of "no value"."""
    swatches = [swatch(f"{value:+.3g} {unit}", diverging_colour(value, scale))
                for value in (-scale, -scale / 2, 0.0, scale / 2, scale)]
    swatches.append(swatch("no next token", NO_VALUE))
    return f'<div class="mor-legend"><b>{html.escape(title)}</b> (red: worse, blue: better): {"".join(swatches)}</div>'


def value_heatmap_html(tokens: list[str], values: list[float | None], tooltips: list[str], title: str,
                       scale: float | None = None) -> str:
    """Every token coloured by a signed value (diverging RdBu around 0), with its tooltip; the
    value is kept in data-value ("" when None) so tests and readers can check each colour."""
    scale = scale or symmetric_scale(values)
    spans = "".join(span(token, diverging_colour(value, scale), tip, {"value": "" if value is None else value})
                    for token, value, tip in zip(tokens, values, tooltips))
    return text_block(spans, value_legend_html(title, scale))


def depth_label(depth_cap: int | None = None, fixed_depth: int | None = None, routing: str = "expert_choice") -> str:
    """The one wording of a depth setting, on every page: "fixed depth k" ("(router ignored)" when
    the model has a router), "depth cap k", or the model's own rule ("router decides"; "every
    token, full depth" without a router)."""
    if fixed_depth:
        return f"fixed depth {fixed_depth}" + (" (router ignored)" if routing != "none" else "")
    if depth_cap:
        return f"depth cap {depth_cap}"
    return "router decides" if routing != "none" else "every token, full depth"


def setting_label(trace: dict) -> str:
    """How the trace was run, in words: routing rule and any depth limit (`depth_label`)."""
    if trace.get("fixed_depth"):
        return depth_label(fixed_depth=trace["fixed_depth"])
    limit = f", {depth_label(depth_cap=trace['depth_cap'])}" if trace.get("depth_cap") else ""
    return f"{trace.get('routing_mode', 'causal')} routing{limit}"


def summary_lines(trace: dict) -> list[str]:
    """Plain-text facts about a trace, for the standalone document's header."""
    nll = trace.get("nll")
    lines = [
        f"Checkpoint: {trace.get('checkpoint') or '(unnamed)'}",
        f"Setting: {setting_label(trace)}",
        f"Tokens: {len(trace['tokens'])}",
        f"Mean depth: {trace.get('mean_depth', 0.0):.3f} of {trace['num_recursions']}",
        f"Mean NLL: {_fmt(nll)} nats per token",
    ]
    if trace.get("windows", 1) > 1:
        lines.append(f"Traced in {trace['windows']} overlapping windows of the {trace.get('context')}-token context")
    return lines


def standalone_heatmap_html(trace: dict, routing: str = "expert_choice") -> str:
    """A complete HTML document of the heatmap: inline CSS, no scripts, no external resources."""
    title = html.escape(f"MoR Lens depth heatmap: {trace.get('checkpoint') or 'trace'}", quote=True)
    facts = "".join(f"<li>{html.escape(line, quote=True)}</li>" for line in summary_lines(trace))
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{title}</title>"
        f"<style>body{{font-family:system-ui,sans-serif;margin:2em auto;max-width:60em;padding:0 1em}}"
        f"{HEATMAP_CSS}</style></head><body>"
        f"<h1>{title}</h1><ul>{facts}</ul>"
        "<p>Each token is coloured by how many recursions of the shared block it took; hover a "
        "token for its router scores and next-token NLL.</p>"
        f"{heatmap_html(trace, routing=routing, style=False)}"
        "<p><small>Made with MoR Lens.</small></p></body></html>\n"
    )


# ---- the live decode's rows ---------------------------------------------------------------------

def decode_rows_html(prompt: str, rows: list[tuple[list[str], list[int]]], num_recursions: int,
                     distinct: int, total: int) -> str:
    """The depth legend, then each row's tokens (text, depth) coloured by depth after the prompt,
    and a note of how many distinct rows of `total` there are (identical rows are drawn once)."""
    blocks = "".join('<div style="margin:6px 0">'
                     f'{depth_text_html(texts, depths, num_recursions, prefix=prompt, style=False)}</div>'
                     for texts, depths in rows)
    note = (f'<div style="font-size:0.8rem;color:#777">{distinct} distinct row(s) shown of '
            f'{total}; identical rows are shown once.</div>')
    return legend_block(num_recursions) + blocks + note


# ---- diagrams of "How MoR works" ---------------------------------------------------------------

# Okabe-Ito: a categorical palette distinguishable with the common colour-vision deficiencies.
# Unique layers are categories (A is not "more" than B), so they get these rather than a ramp;
# the letter in each box tells layers apart once colours repeat.
UNIQUE_COLORS = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#999999"]
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
GRID_TABLE = ('<div style="overflow-x:auto"><table style="border-collapse:separate;border-spacing:2px;'
              'font-family:ui-monospace,monospace;font-size:0.8rem">')
ROW_HEAD = '<th style="text-align:left;padding-right:8px;white-space:nowrap">'


def plan_text(groups: list[tuple[str, list[int]]]) -> str:
    """A sharing plan's groups (label, unique layers) as letters separated by "|": "A | BC | BC | D"."""
    return " | ".join("".join(LETTERS[u] for u in layers) for _, layers in groups)


def sharing_diagram(groups: list[tuple[str, list[int]]]) -> str:
    """One box per effective layer (numbered from the input), lettered and coloured by the unique
    layer whose parameters it uses, grouped as in `groups` (label, unique layers)."""
    boxes, effective = [], 0
    for label, layers in groups:
        cells = []
        for u in layers:
            effective += 1
            bg = UNIQUE_COLORS[u % len(UNIQUE_COLORS)]
            cells.append(
                f'<div title="effective layer {effective} uses unique layer {LETTERS[u]}" '
                f'style="width:38px;text-align:center">'
                f'<div style="background:{bg};color:{text_colour(bg)};border-radius:4px;font-weight:700;'
                f'padding:8px 0">{LETTERS[u]}</div>'
                f'<div style="font-size:0.7rem;color:#777">{effective}</div></div>')
        boxes.append(
            f'<div style="border:1px dashed #aaa;border-radius:6px;padding:4px 6px;margin:0 6px 6px 0">'
            f'<div style="font-size:0.75rem;color:#555;margin-bottom:3px">{html.escape(label)}</div>'
            f'<div style="display:flex;gap:4px">{"".join(cells)}</div></div>')
    return f'<div style="display:flex;flex-wrap:wrap;align-items:flex-end">{"".join(boxes)}</div>'


KV_MARKS = {"cached": "●", "reads step 1": "↺", "exited": "·"}  # by mor.analysis.kv.CACHE_STATES


def kv_grid_html(tokens: list[str], states: list[list[str]], num_recursions: int, max_tokens: int) -> str:
    """Table, steps x tokens (the first `max_tokens`), of `mor.analysis.kv.cache_states`: ● the step
    stores this token's K/V (on the step's depth colour), ↺ the token takes the step but reuses
    step 1's K/V, · the token exited before this step."""
    tokens, states = tokens[:max_tokens], states[:max_tokens]
    colors = depth_palette(num_recursions)
    head = "".join(f'<th style="padding:2px 4px;font-weight:400;white-space:pre">{html.escape(repr(t)[1:-1])}</th>'
                   for t in tokens)
    rows = []
    for r in range(1, num_recursions + 1):
        cells = []
        for row in states:
            state = row[r - 1]
            bg = colors[r] if state == "cached" else "transparent"
            color = text_colour(bg) if bg != "transparent" else "inherit"
            cells.append(f'<td style="text-align:center;background:{bg};color:{color}">{KV_MARKS[state]}</td>')
        rows.append(f'<tr>{ROW_HEAD}step {r}</th>{"".join(cells)}</tr>')
    return f'{GRID_TABLE}<tr><th></th>{head}</tr>{"".join(rows)}</table></div>'


def batching_grid(run: dict, max_columns: int) -> str:
    """Table, requests x engine iterations, of a depth-wise batching run: the recursion step each
    request's current token took in that iteration, coloured like the heatmap's depths; empty when
    the request had no token in the block (waiting for a slot, or finished)."""
    R = run["num_recursions"]
    columns = [dict(c) for c in run["columns"][:max_columns]]
    head = "".join(f'<th style="font-weight:400;padding:0 2px">{i + 1}</th>' for i in range(len(columns)))
    rows = []
    for req in range(run["requests"]):
        cells = []
        for col in columns:
            step = col.get(req)
            if step is None:
                cells.append("<td></td>")
                continue
            bg = depth_colour(int(step), R)
            cells.append(f'<td style="text-align:center;min-width:1.3em;background:{bg};'
                         f'color:{text_colour(bg)}">{int(step)}</td>')
        rows.append(f'<tr>{ROW_HEAD}request {req + 1}</th>{"".join(cells)}</tr>')
    return f'{GRID_TABLE}<tr><th style="text-align:left">iteration</th>{head}</tr>{"".join(rows)}</table></div>'
