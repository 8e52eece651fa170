"""Widgets and display blocks shared by the explorer pages (heatmap, scaling, KV memory, compare)."""

from __future__ import annotations

import altair as alt
import streamlit as st

import common
import render
import views

ROUTING_HELP = ("causal: each token decides alone from its own router score (sigmoid > threshold), the "
                "rule used when generating. capacity: the top-k tokens of the whole text go on, the rule "
                "used in training; it looks at future tokens, so it cannot decode.")


def routing_mode_picker(routing: str, key: str = "mode", container=None) -> str:
    """Causal or capacity routing, seeded from the URL query `key`. Only expert-choice routers
    have a capacity rule, so for other checkpoints the choice is shown disabled at causal."""
    where = container or st
    default = common.query_default(key, "causal")
    options = ["causal", "capacity"]
    if routing != "expert_choice":
        where.radio("Routing rule", options, horizontal=True, disabled=True, key=f"routing_{key}",
                    help=f"This checkpoint routes by {routing}: only expert-choice routers have a capacity rule.")
        return "causal"
    index = options.index(default) if default in options else 0
    return where.radio("Routing rule", options, index=index, horizontal=True, key=f"routing_{key}", help=ROUTING_HELP)


def heatmap(trace: dict, routing: str, container=None) -> None:
    """The depth heatmap of a trace (escaped HTML; st.html sanitises it again and runs no scripts).
    `routing` is the checkpoint's config.routing, which says what the router scores mean."""
    (container or st).html(render.heatmap_html(trace, routing=routing))


def window_note(trace: dict, context: int, container=None) -> None:
    """Say when a text longer than the context window was traced in overlapping windows."""
    if trace.get("windows", 1) > 1:
        (container or st).info(
            f"The text is longer than this checkpoint's {context}-token context window, so it was traced "
            f"whole in {trace['windows']} overlapping windows: every token is scored once, with at least "
            f"{context - context // 2} tokens of left context (all it has near the start).")


def depth_histogram_chart(trace: dict) -> alt.Chart:
    """Bar per depth, coloured like the heatmap."""
    palette = render.depth_palette(trace["num_recursions"])
    return alt.Chart(views.histogram_frame(trace)).mark_bar().encode(
        x=alt.X("depth:O", title="recursions taken"),
        y=alt.Y("tokens:Q", title="tokens"),
        color=alt.Color("depth:O", scale=alt.Scale(domain=list(palette), range=list(palette.values())),
                        legend=None),
        tooltip=["depth", "tokens"],
    ).properties(height=220)


def summary_metrics(numbers: dict, num_recursions: int, container=None, reference: dict | None = None,
                    per_row: int = 4) -> None:
    """Tokens, mean depth, NLL and perplexity as metrics, `per_row` to a row; with `reference`,
    each shows its difference from it (lower NLL is better, so its delta colour is inverted)."""
    where = container or st
    def delta(key: str, fmt: str):
        if reference is None or numbers[key] is None or reference[key] is None or numbers[key] == reference[key]:
            return None
        return f"{numbers[key] - reference[key]:+{fmt}}"

    cols = [col for _ in range(4 // per_row) for col in where.columns(per_row)]
    cols[0].metric("Tokens", numbers["tokens"], delta=delta("tokens", "d"))
    cols[1].metric("Mean depth", f"{numbers['mean_depth']:.3f}", delta=delta("mean_depth", ".3f"),
                   help=f"Average recursions per token, out of {num_recursions}.")
    cols[2].metric("Mean NLL", "-" if numbers["nll"] is None else f"{numbers['nll']:.4f}",
                   delta=delta("nll", ".4f"), delta_color="inverse",
                   help="Mean next-token negative log-likelihood in nats (the first token has no prediction).")
    cols[3].metric("Perplexity", "-" if numbers["ppl"] is None else f"{numbers['ppl']:.2f}",
                   delta=delta("ppl", ".2f"), delta_color="inverse", help="exp(mean NLL).")


def empty_text_note() -> None:
    st.info("The text is empty: type or paste some text above (or pick a sample) to see what the model does with it.")
