"""Trace dicts (`mor.analysis.Trace.to_json()`) to HTML. Pure functions: no Streamlit, no model.

Every piece of text that came from the user or the tokenizer goes through `html.escape(...,
quote=True)` before it lands in element content or in an attribute, so a token such as
`<img src=x onerror=alert(1)>` is shown as text, never parsed as markup.
"""

from __future__ import annotations

import html

# Matplotlib's viridis sampled at 0, 1/8, ..., 1: perceptually uniform and colour-blind safe.
VIRIDIS = ("#440154", "#472d7b", "#3b528b", "#2c728e", "#21918c", "#28ae80", "#5ec962", "#addc30", "#fde725")

HEATMAP_CSS = """
.mor-heatmap{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:15px;line-height:1.9}
.mor-heatmap .mor-text{white-space:pre-wrap;word-break:break-word}
.mor-heatmap .mor-tok{border-radius:3px;padding:1px 0;cursor:help}
.mor-heatmap .mor-tok:hover{outline:2px solid #e4572e}
.mor-heatmap .mor-mark{opacity:.6}
.mor-heatmap .mor-legend{font-family:system-ui,sans-serif;font-size:13px;margin-bottom:.6em}
.mor-heatmap .mor-swatch{display:inline-block;padding:0 .6em;margin-right:.3em;border-radius:3px}
"""


def _hex_to_rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def _interpolate(t: float) -> str:
    """The viridis colour at t in [0, 1], linear between the stored stops."""
    t = min(max(t, 0.0), 1.0) * (len(VIRIDIS) - 1)
    i = min(int(t), len(VIRIDIS) - 2)
    frac = t - i
    a, b = _hex_to_rgb(VIRIDIS[i]), _hex_to_rgb(VIRIDIS[i + 1])
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


def token_tooltip(token: str, depth: int, num_recursions: int, scores: list[float | None],
                  nll: float | None, score_label: str = DEFAULT_SCORE_LABEL) -> str:
    """Plain-text tooltip of one token (not yet escaped): its text, depth, scores and NLL."""
    step_scores = " / ".join(_fmt(s) for s in scores)
    return "\n".join([
        f"token {token!r}",
        f"depth {depth} of {num_recursions}",
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


def token_span(token: str, depth: int, num_recursions: int, scores: list[float | None],
               nll: float | None, score_label: str = DEFAULT_SCORE_LABEL) -> str:
    background = depth_colour(depth, num_recursions)
    title = html.escape(token_tooltip(token, depth, num_recursions, scores, nll, score_label), quote=True)
    return (f'<span class="mor-tok" data-depth="{int(depth)}" style="background:{background};'
            f'color:{text_colour(background)}" title="{title}">{_visible_text(token)}</span>')


def legend_html(num_recursions: int, counts: dict[str, int] | None = None) -> str:
    """Swatches for depth 1..N_r, with the number of tokens at each depth when given."""
    swatches = []
    for depth in range(1, num_recursions + 1):
        background = depth_colour(depth, num_recursions)
        label = f"{depth}" if counts is None else f"{depth} ({int(counts.get(str(depth), 0))} tokens)"
        swatches.append(f'<span class="mor-swatch" data-depth="{depth}" style="background:{background};'
                        f'color:{text_colour(background)}">{html.escape(label)}</span>')
    return ('<div class="mor-legend"><b>Recursions taken</b> (shallow → deep): '
            + "".join(swatches) + "</div>")


def heatmap_html(trace: dict, *, routing: str = "expert_choice", legend: bool = True, style: bool = True) -> str:
    """An HTML fragment: the legend and every token as a span coloured by its depth.

    `routing` (the checkpoint's config.routing) names the router scores in the tooltips;
    `style=False` leaves out the <style> block, for a page that already includes HEATMAP_CSS."""
    R = int(trace["num_recursions"])
    label = SCORE_LABELS.get(routing, DEFAULT_SCORE_LABEL)
    spans = "".join(
        token_span(token, depth, R, scores, nll, label)
        for token, depth, scores, nll in zip(trace["tokens"], trace["depths"], trace["router_scores"],
                                             trace["token_nll"]))
    parts = ['<div class="mor-heatmap">']
    if style:
        parts.append(f"<style>{HEATMAP_CSS}</style>")
    if legend:
        parts.append(legend_html(R, trace.get("depth_histogram")))
    parts.append(f'<div class="mor-text">{spans}</div></div>')
    return "".join(parts)


def setting_label(trace: dict) -> str:
    """How the trace was run, in words: routing rule and any depth limit."""
    if trace.get("fixed_depth"):
        return f"fixed depth {trace['fixed_depth']} (router ignored)"
    limit = f", depth cap {trace['depth_cap']}" if trace.get("depth_cap") else ""
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
