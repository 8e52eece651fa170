"""Page 2, Test-time scaling: cap the recursion depth at inference and watch quality and speed move."""

import altair as alt
import streamlit as st

from app import traces, widgets

CAPTION = ("The same weights, run shallower or deeper. Each token's depth is capped at k (the router "
           "still decides below the cap), or fixed at k for every token. Routing is causal, the rule "
           "used when generating.")


def depth_controls(R: int) -> tuple[int, bool]:
    """(k, fixed): the depth slider and whether k is a cap (router decides below it) or fixed."""
    fixed = st.toggle("Fixed depth: every token takes exactly k recursions (router ignored)",
                      value=widgets.query_default("mode", "router") == "fixed", key="scaling_fixed")
    k = widgets.query_default("cap", R, int)
    k = k if 1 <= k <= R else R
    label = "Fixed depth k" if fixed else f"Depth cap k (k = {R} is the router's free choice)"
    return st.slider(label, 1, R, value=k, key="scaling_cap"), fixed


def sweep_chart(table, field: str, title: str, current: tuple[str, int]) -> alt.LayerChart:
    """`field` against k, one line per setting, the setting on screen ringed."""
    table = table.assign(on_screen=(table["setting"] == current[0]) & (table["k"] == current[1]))
    base = alt.Chart(table).encode(
        x=alt.X("k:O", title="k (depth cap, or fixed depth)", axis=alt.Axis(labelAngle=0)),
        y=alt.Y(f"{field}:Q", title=title, scale=alt.Scale(zero=False)),
        color=alt.Color("setting:N", title=None, legend=alt.Legend(orient="bottom")),
        tooltip=["setting", "k", alt.Tooltip("nll:Q", format=".4f"), alt.Tooltip("ppl:Q", format=".2f"),
                 alt.Tooltip("mean_depth:Q", format=".3f"), alt.Tooltip("ms_per_token:Q", format=".3f")])
    ring = base.transform_filter("datum.on_screen").mark_point(size=260, filled=False, color="black")
    return (base.mark_line(point=True) + ring).properties(height=260)


def main() -> None:
    picked = widgets.page_header("Test-time scaling", CAPTION)
    if picked is None:
        return
    name, info = picked
    R = info["num_recursions"]
    # a long held-out text by default: on a short line the caps' NLLs are within noise of each other
    text = widgets.text_picker(sample="Pride and Prejudice (held out)")
    if R < 2:
        widgets.sync_query(ckpt=name, text=text, cap=None, mode=None)
        st.info(f"{name} has a single recursion: there is no depth to scale. Pick a recursive checkpoint.")
        return
    k, fixed = depth_controls(R)
    widgets.sync_query(ckpt=name, text=text, cap=k, mode="fixed" if fixed else "router")

    trace = traces.get_trace(name, text, depth_cap=None if fixed or k == R else k,
                             fixed_depth=k if fixed else None)
    if not trace["tokens"]:
        widgets.empty_text_note()
        return
    widgets.window_note(trace, info["context"])
    widgets.summary_metrics(traces.summary(name, trace), R)
    timing = st.container()  # filled once the sweep below has timed every setting
    widgets.heatmap(trace, info["routing"])

    sweep = traces.scaling_sweep(name, text)
    table = sweep["table"]
    setting = (traces.SETTING_NAMES["fixed" if fixed else "cap"], k)
    current = table[(table["setting"] == setting[0]) & (table["k"] == k)].iloc[0]
    free = table[table["free_choice"]].iloc[0]
    passes = f"fastest of {sweep['rounds']} forward passes"
    timing.metric("Time per token", f"{current['ms_per_token']:.3f} ms",
                  delta=f"{current['ms_per_token'] - free['ms_per_token']:+.3f} ms vs the router's free choice",
                  delta_color="inverse",
                  help=f"Forward time / tokens ({passes}), measured at {sweep['measured_at']} on this machine "
                       f"({sweep['device']}).")
    timing.caption(f"Times are measured now on this machine ({sweep['device']}, at {sweep['measured_at']}, "
                   f"{passes} per setting); they vary with load, so compare them with each other rather than "
                   "with other machines.")

    st.subheader("Quality and speed against depth")
    st.caption(f"On the text above. \"router, capped at {R}\" is the router's free choice; "
               f"\"fixed depth {R}\" runs every token through every recursion.")
    left, right = st.columns(2)
    left.altair_chart(sweep_chart(table, "nll", "mean NLL (nats)", setting))
    right.altair_chart(sweep_chart(table, "ms_per_token", "measured ms per token", setting))
    cols = st.columns(2)
    cols[0].download_button("Chart data (CSV)", table.to_csv(index=False), "mor_scaling.csv", "text/csv",
                            key="dl_scaling_csv")
    if cols[1].button("Measure the times again", key="scaling_remeasure"):
        traces.scaling_sweep.clear()
        st.rerun()


main()
