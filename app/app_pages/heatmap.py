"""Page 1, Depth heatmap: every token of a text coloured by how many recursions the router gave it."""

import streamlit as st

import common
import controls
import render
import views


def show_metrics(name: str, trace: dict) -> None:
    numbers = views.summary(name, trace)
    controls.summary_metrics(numbers, trace["num_recursions"])
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
    cols[1].download_button("Per-token table (CSV)", views.token_table(trace).to_csv(index=False),
                            "mor_tokens.csv", "text/csv", key="dl_heatmap_csv")
    cols[2].download_button("Trace (JSON)", views.trace_json(trace), "mor_trace.json", "application/json",
                            key="dl_heatmap_json")


def main() -> None:
    st.title("Depth heatmap")
    st.caption("Each token is coloured by how many times it went through the shared block of layers. "
               "Hover a token for its router score at every step and its next-token NLL.")
    name = common.checkpoint_picker()
    if name is None:
        return
    info = views.model_info(name)
    text = common.text_picker()
    mode = controls.routing_mode_picker(info["routing"])
    common.sync_query(ckpt=name, text=text, mode=mode)

    trace = common.get_trace(name, text, routing_mode=mode)
    if not trace["tokens"]:
        controls.empty_text_note()
        return
    controls.window_note(trace, info["context"])
    controls.heatmap(trace, info["routing"])
    show_metrics(name, trace)
    st.subheader("Tokens per depth")
    st.altair_chart(controls.depth_histogram_chart(trace))
    with st.expander("Per-token table"):
        st.dataframe(views.token_table(trace), hide_index=True)
    show_downloads(trace, info["routing"])


main()
