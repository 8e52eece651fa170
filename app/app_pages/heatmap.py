"""Page 1, Depth heatmap: every token of a text coloured by how many recursions the router gave it,
what each recursion step changed in its prediction (the recursion lens), and where depth helped."""

import math

import streamlit as st

from app import lens_gain, render, traces, widgets

CAPTION = ("Each token is coloured by how many times it went through the shared block of layers. "
           "Hover a token for its router score at every step and its next-token NLL.")
# Tab label -> its name in the URL (?view=...); the first tab is the default and leaves the URL alone.
VIEWS = {"Depth": "depth", "Recursion lens": "lens", "Where depth helped": "gain"}


def show_metrics(name: str, trace: dict) -> None:
    numbers = traces.summary(name, trace)
    widgets.summary_metrics(numbers, trace["num_recursions"])
    cols = st.columns(4)  # same grid as the row above, so the metrics line up
    cols[0].metric("Recursion steps skipped", f"{100 * numbers['steps_saved']:.1f}%",
                   help="Share of shared-block applications not run, against every token at full depth.")
    cols[1].metric("FLOPs saved (formula)", f"{100 * numbers['flops_saved']:.1f}%",
                   help="Closed-form forward FLOPs (mor.flops) of this pass against the same text at full "
                        "depth; includes attention, the unique layers, the LM head and the routers.")
    cols[2].metric("Forward FLOPs (formula)", f"{numbers['flops'] / 1e9:.3f} G",
                   help="Closed-form count for this pass; timings are on the Test-time scaling page.")


def show_downloads(trace: dict, routing: str) -> None:
    cols = st.columns(3)
    cols[0].download_button("Heatmap (HTML)", render.standalone_heatmap_html(trace, routing), "mor_heatmap.html",
                            "text/html", key="dl_heatmap_html")
    cols[1].download_button("Per-token table (CSV)", traces.token_table(trace).to_csv(index=False),
                            "mor_tokens.csv", "text/csv", key="dl_heatmap_csv")
    cols[2].download_button("Trace (JSON)", traces.trace_json(trace), "mor_trace.json", "application/json",
                            key="dl_heatmap_json")


def depth_view(name: str, info: dict, trace: dict) -> None:
    widgets.window_note(trace, info["context"])
    widgets.heatmap(trace, info["routing"])
    show_metrics(name, trace)
    st.subheader("Tokens per depth")
    st.altair_chart(widgets.depth_histogram_chart(trace))
    with st.expander("Per-token table"):
        st.dataframe(traces.token_table(trace), hide_index=True)
    show_downloads(trace, info["routing"])


def pick_token(lens: dict, key: str) -> int:
    """The inspected token: a selectbox seeded from the URL (?tok=), which a click on a row of the
    per-token table below also sets (through `key` in the session state)."""
    n, default = len(lens["tokens"]), lens_gain.default_token(lens)
    wanted = widgets.query_default("tok", default, int)
    if key not in st.session_state:
        st.session_state[key] = wanted if 0 <= wanted < n else default
    return st.selectbox("Token to inspect", range(n), format_func=lambda i: lens_gain.token_label(lens, i), key=key,
                        help="Or click a row of the per-token table below.")


def lens_view_tab(name: str, info: dict, text: str, mode: str) -> None:
    lens = lens_gain.get_lens(name, text, mode)
    R = lens["num_recursions"]
    st.caption("Each token's hidden state after recursion step r, read out through the rest of the model (the "
               "layers after the recursion block, the final norm and the LM head) while every other token stays as "
               "in the full pass. At the token's own depth this is the model's prediction; after it exits, nothing "
               "changes.")
    widgets.window_note(lens, info["context"])
    cols = [col for _ in range(math.ceil(R / 4)) for col in st.columns(min(R, 4))]  # at most 4 to a row
    for col, r, value in zip(cols, range(1, R + 1), lens_gain.step_means(lens)):
        col.metric(f"Mean NLL after step {r}", "-" if value is None else f"{value:.4f}",
                   help="Mean over the tokens of the NLL of the token that follows each one, read after this step.")
    if R == 1:
        st.info("This checkpoint has a single recursion step (N_r = 1), so the lens has one step: the model's own "
                "prediction. Pick a recursive checkpoint to watch predictions change from step to step.")
    else:
        options = lens_gain.drop_options(R)
        wanted = widgets.query_default("lstep", "all")
        option = st.radio("NLL change shown", options, index=options.index(wanted) if wanted in options else 0,
                          format_func=lambda o: lens_gain.drop_label(o, R), horizontal=True, key="lens_step")
        widgets.sync_query(lstep=None if option == "all" else option)
        st.html(lens_gain.drop_heatmap_html(lens, option))
    key = f"lens_token_{hash((name, text, mode))}"
    i = pick_token(lens, key)
    widgets.sync_query(tok=i)
    # st.text, not markdown: a token's text must never be read as markup.
    st.text(f"Token {i} {lens['tokens'][i]!r}, depth {lens['depths'][i]} of {R}: what it predicts after each step"
            + ("" if i + 1 < len(lens["tokens"]) else " (the last token: no true next token)"))
    cols = st.columns([2, 3])
    cols[0].altair_chart(lens_gain.step_chart(lens, i))
    cols[1].dataframe(lens_gain.step_table(lens, i), hide_index=True)
    st.caption("Per token (click a row to inspect it):")
    table = lens_gain.lens_table(lens)
    st.dataframe(table, hide_index=True, key=f"{key}_table", on_select=lambda: select_row(key),
                 selection_mode="single-row")
    cols = st.columns(2)
    cols[0].download_button("Lens (JSON)", lens_gain.to_json(lens), "mor_lens.json", "application/json",
                            key="dl_lens_json")
    cols[1].download_button("Lens per token (CSV)", table.to_csv(index=False), "mor_lens.csv", "text/csv",
                            key="dl_lens_csv")


def select_row(key: str) -> None:
    """A click on a row of the per-token table inspects that token."""
    rows = st.session_state[f"{key}_table"].selection.rows
    if rows:
        st.session_state[key] = rows[0]


def gain_view(name: str, info: dict, text: str, mode: str, trace: dict) -> None:
    R = info["num_recursions"]
    st.caption("The whole model run again with every token's depth capped at k (which also changes the context "
               "the other tokens give), against full depth: per token, how much the extra recursions lowered the "
               "NLL of the token that follows it. Test-time scaling, token by token.")
    if R == 1:
        st.info("This checkpoint has a single recursion step (N_r = 1): there is no depth cap below full depth to "
                "compare against.")
        return
    gain = lens_gain.get_gain(name, text, mode)
    widgets.window_note(gain, info["context"])
    wanted = widgets.query_default("gcap", 1, int)
    cap = st.select_slider("Compare full depth against depth cap k", list(range(1, R)),
                           value=wanted if 1 <= wanted < R else 1, key="gain_cap")
    widgets.sync_query(gcap=None if cap == 1 else cap)
    changed = gain["most_changed"][str(cap)]
    numbers = lens_gain.gain_summary(gain, cap)
    cols = st.columns(4)
    for col, label, key in ((cols[0], f"Mean NLL at cap {cap}", "nll_at_cap"),
                            (cols[1], "Mean NLL at full depth", "nll_full")):
        col.metric(label, "-" if numbers[key] is None else f"{numbers[key]:.4f}",
                   help="Mean over the tokens of the NLL of the token that follows each one.")
    cols[2].metric("Tokens depth helped", numbers["helped"], help="Tokens whose next-token NLL is lower at full depth.")
    cols[3].metric("Tokens depth hurt", numbers["hurt"], help="Tokens whose next-token NLL is higher at full depth.")
    left, right = st.columns(2)
    left.markdown(f"**Gain from cap {cap} to full depth**")
    left.html(lens_gain.gain_heatmap_html(gain, cap))
    right.markdown("**Recursions taken at full depth**")
    widgets.heatmap(trace, info["routing"], container=right)
    left, right = st.columns(2)
    left.markdown("**Gained most from depth**")
    left.dataframe(lens_gain.changed_frame(changed["gained"]), hide_index=True)
    right.markdown("**Lost most from depth**")
    right.dataframe(lens_gain.changed_frame(changed["lost"]), hide_index=True)
    cols = st.columns(2)
    cols[0].download_button("Where depth helped (JSON)", lens_gain.to_json(gain), "mor_gain.json", "application/json",
                            key="dl_gain_json")
    cols[1].download_button("Where depth helped (CSV)", lens_gain.gain_table(gain).to_csv(index=False),
                            "mor_gain.csv", "text/csv", key="dl_gain_csv")


def main() -> None:
    picked = widgets.page_header("Depth heatmap", CAPTION)
    if picked is None:
        return
    name, info = picked
    text = widgets.text_picker()
    mode = widgets.routing_mode_picker(info["routing"])
    widgets.sync_query(ckpt=name, text=text, mode=mode)

    trace = traces.get_trace(name, text, routing_mode=mode)
    if not trace["tokens"]:
        widgets.empty_text_note()
        return
    wanted = {slug: label for label, slug in VIEWS.items()}.get(widgets.query_default("view", "depth"), "Depth")
    tabs = dict(zip(VIEWS, st.tabs(list(VIEWS), default=wanted, key="heatmap_view", on_change="rerun")))
    widgets.sync_query(view=None if st.session_state["heatmap_view"] == "Depth"
                       else VIEWS[st.session_state["heatmap_view"]])
    # Only the open tab runs: the lens and the depth-cap runs are computed when asked for.
    with tabs["Depth"]:
        if tabs["Depth"].open:
            depth_view(name, info, trace)
    with tabs["Recursion lens"]:
        if tabs["Recursion lens"].open:
            lens_view_tab(name, info, text, mode)
    with tabs["Where depth helped"]:
        if tabs["Where depth helped"].open:
            gain_view(name, info, text, mode, trace)


main()
