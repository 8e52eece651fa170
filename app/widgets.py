"""Widgets synced to the URL (so a link reproduces the view) and the display blocks several pages
share: the checkpoint, text and routing-rule pickers, the page header, the heatmap, the window
note, the summary metrics and the depth histogram. Values come from the computation modules."""

from __future__ import annotations

import altair as alt
import streamlit as st

from app import checkpoints, render, traces
from app.samples import SAMPLE_TEXTS

# Text kept in the URL is capped so links stay shareable.
MAX_URL_TEXT = 1500
ROUTING_HELP = ("causal: each token decides alone from its own router score (sigmoid > threshold), the "
                "rule used when generating. capacity: the top-k tokens of the whole text go on, the rule "
                "used in training; it looks at future tokens, so it cannot decode.")


# ---- the URL ------------------------------------------------------------------------------------

def query_default(key: str, default, cast=str):
    """A value from the URL query, or `default` when absent or malformed."""
    raw = st.query_params.get(key)
    if raw is None:
        return default
    try:
        return cast(raw)
    except (TypeError, ValueError):
        return default


def sync_query(**values) -> None:
    """Write the view's state into the URL so the link reproduces it."""
    for key, value in values.items():
        if value is None or value == "":
            st.query_params.pop(key, None)
        elif key == "text" and len(str(value)) > MAX_URL_TEXT:
            st.query_params.pop(key, None)
        else:
            st.query_params[key] = str(value)


# ---- pickers ------------------------------------------------------------------------------------

def checkpoint_picker(label: str = "Checkpoint", key: str = "ckpt", container=None) -> str | None:
    """A selectbox of the checkpoints found, synced to the URL query `key`."""
    names = checkpoints.checkpoint_names()
    where = container or st.sidebar
    if not names:
        where.error("No checkpoints found. Train one with `mor train` or set MOR_CHECKPOINTS.")
        return None
    wanted = query_default(key, names[0])
    index = names.index(wanted) if wanted in names else 0
    return where.selectbox(label, names, index=index, key=f"picker_{key}")


def page_header(title: str, *captions: str) -> tuple[str, dict] | None:
    """The page's title and captions and the sidebar's checkpoint picker; (name, checkpoint_info) of
    the checkpoint picked (loaded, so a broken one stops the page here), or None when there is none."""
    st.title(title)
    for caption in captions:
        st.caption(caption)
    name = checkpoint_picker()
    return None if name is None else (name, checkpoints.checkpoint_info(name))


def text_picker(key: str = "text", label: str = "Text", height: int = 140, sample: str = "Shakespeare") -> str:
    """A sample chooser plus a text area, seeded from the URL query `key`, else SAMPLE_TEXTS[sample]."""
    default = query_default(key, SAMPLE_TEXTS[sample])
    chosen = st.selectbox("Sample text", ["(your own)", *SAMPLE_TEXTS], key=f"sample_{key}")
    if chosen != "(your own)":
        default = SAMPLE_TEXTS[chosen]
    return st.text_area(label, value=default, height=height, key=f"area_{key}_{chosen}")


def routing_mode_picker(routing: str, key: str = "mode", container=None) -> str:
    """Causal or capacity routing, seeded from the URL query `key`. Only expert-choice routers
    have a capacity rule, so for other checkpoints the choice is shown disabled at causal."""
    where = container or st
    default = query_default(key, "causal")
    options = ["causal", "capacity"]
    if routing != "expert_choice":
        where.radio("Routing rule", options, horizontal=True, disabled=True, key=f"routing_{key}",
                    help=f"This checkpoint routes by {routing}: only expert-choice routers have a capacity rule.")
        return "causal"
    index = options.index(default) if default in options else 0
    return where.radio("Routing rule", options, index=index, horizontal=True, key=f"routing_{key}", help=ROUTING_HELP)


# ---- display blocks -----------------------------------------------------------------------------

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
    return alt.Chart(traces.histogram_frame(trace)).mark_bar().encode(
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
