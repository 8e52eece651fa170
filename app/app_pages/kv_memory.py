"""Page 3, KV cache memory: bytes the attention cache holds under each MoR caching strategy."""

import json

import altair as alt
import streamlit as st

from app import checkpoints, kv_cache, traces, widgets

DESCRIPTIONS = {
    "full": "the recursive baseline: every token runs every step and caches K/V at each.",
    "recursion_wise": "a step caches only the tokens the router sends through it, and attends only over them.",
    "shared": "only the first step caches (every token takes it); deeper steps reuse those K/V and "
              "compute queries only.",
}


def kib(n: int) -> str:
    return f"{n / 1024:,.1f} KiB"


def show_totals(report: dict) -> None:
    totals, full = report["totals"], report["totals"]["full"]
    cols = st.columns(3)
    for col, (strategy, label) in zip(cols, kv_cache.STRATEGIES.items()):
        saved = None if strategy == "full" else f"{100 * (totals[strategy] - full) / full:+.1f}% vs full"
        col.metric(label, kib(totals[strategy]), delta=saved, delta_color="inverse",
                   help=f"{label}: {DESCRIPTIONS[strategy]} Measured: bytes of the K/V entries held in the "
                        "cache after a prefill of the text.")


def show_steps(rows) -> None:
    """Per step: measured bytes beside the formula, with a check mark where they agree."""
    agree = bool(rows["agree"].all())
    if agree:
        st.success("✓ For all three strategies the bytes read from the cache equal the closed-form formula "
                   "(layers × cached tokens × 2 × K/V heads × head dim × bytes per value).")
    else:
        st.error("✗ Measured bytes differ from the formula where the table shows ✗.")
    shown = rows.assign(agree=rows["agree"].map({True: "✓", False: "✗"}))
    st.dataframe(shown, hide_index=True, column_config={
        "measured_bytes": st.column_config.NumberColumn("measured bytes", format="%d"),
        "formula_bytes": st.column_config.NumberColumn("formula bytes", format="%d"),
        "cached_tokens": st.column_config.NumberColumn("cached tokens (per layer)"),
    })
    chart = alt.Chart(rows).mark_bar().encode(
        x=alt.X("step:N", title=None, sort=None, axis=alt.Axis(labelAngle=0)),
        xOffset="strategy:N",
        y=alt.Y("measured_bytes:Q", title="measured bytes"),
        color=alt.Color("strategy:N", title=None, legend=alt.Legend(orient="bottom")),
        tooltip=["strategy", "step", "cached_tokens", "measured_bytes", "formula_bytes"],
    ).properties(height=260)
    st.altair_chart(chart)


def show_lengths(name: str, text: str, context: int) -> None:
    """Total bytes against sequence length: measured lines, formula points on top."""
    result = kv_cache.kv_by_length(name, text)
    table = result["table"].assign(kib=lambda t: t["bytes"] / 1024)
    if result["extended"]:
        st.caption(f"The text is shorter than the {context}-token context, so this chart uses it followed by the "
                   "app's sample texts, repeated until long enough, and measures prefixes of that.")
    base = alt.Chart(table).encode(
        x=alt.X("tokens:Q", title="sequence length (tokens)"),
        y=alt.Y("kib:Q", title="KV cache (KiB)"),
        color=alt.Color("strategy:N", title=None, legend=alt.Legend(orient="bottom")),
        tooltip=["strategy", "kind", "tokens", "bytes"])
    measured = base.transform_filter("datum.kind == 'measured'").mark_line(point=True)
    formula = base.transform_filter("datum.kind == 'formula'").mark_point(shape="cross", size=90, filled=True)
    st.altair_chart((measured + formula).properties(height=280))
    st.caption("Lines with dots: measured from the cache after a real prefill. Crosses: the closed-form formula.")
    st.download_button("Memory by length (CSV)", result["table"].to_csv(index=False), "mor_kv_by_length.csv",
                       "text/csv", key="dl_kv_lengths")


def show_grid(trace: dict) -> None:
    """Tokens x steps: which token's K/V is cached at which recursion step."""
    strategy = st.radio("Strategy", list(kv_cache.STRATEGIES), format_func=kv_cache.STRATEGIES.get, horizontal=True,
                        index=1, key="kv_grid_strategy")
    grid = kv_cache.cache_grid(trace, strategy)
    chart = alt.Chart(grid).mark_rect(stroke="white", strokeWidth=0.5).encode(
        x=alt.X("position:O", title="token position", axis=alt.Axis(labelOverlap=True)),
        y=alt.Y("step:O", title="recursion step"),
        # (A bottom legend collapses a chart with a discrete y axis in Streamlit 1.67: keep it right.)
        color=alt.Color("state:N", title=None, scale=alt.Scale(domain=list(kv_cache.STATE_LABELS.values()),
                                                               range=["#21918c", "#addc30", "#e5e5e5"])),
        tooltip=["position", "token", "depth", "step", "state"],
    ).properties(height=40 * trace["num_recursions"] + 60)
    st.altair_chart(chart)


def main() -> None:
    st.title("KV cache memory")
    st.caption("Tokens that exit early need no keys and values at deeper recursions. Here the cache is "
               "filled by a real prefill of your text and its bytes are read back, per recursion step.")
    st.markdown(" ".join(f"**{kv_cache.STRATEGIES[s]}**: {what}" for s, what in DESCRIPTIONS.items()))
    name = widgets.checkpoint_picker()
    if name is None:
        return
    info = checkpoints.checkpoint_info(name)
    text = widgets.text_picker()
    widgets.sync_query(ckpt=name, text=text)
    trace = traces.get_trace(name, text)
    if not trace["tokens"]:
        widgets.empty_text_note()
        return
    widgets.window_note(trace, info["context"])

    report = kv_cache.kv_report(name, text)
    rows = kv_cache.kv_rows(report)
    st.subheader(f"After a prefill of {report['tokens']} tokens")
    if report["tokens"] < len(trace["tokens"]):
        st.caption(f"A KV cache holds one context window, so this prefill is of its first {report['tokens']} tokens "
                   f"(the text has {len(trace['tokens'])}); the grid below covers the whole text.")
    show_totals(report)
    show_steps(rows)
    cols = st.columns(2)
    cols[0].download_button("Per-step bytes (CSV)", rows.to_csv(index=False), "mor_kv_steps.csv", "text/csv",
                            key="dl_kv_csv")
    cols[1].download_button("KV report (JSON)", json.dumps(report, indent=1), "mor_kv_report.json",
                            "application/json", key="dl_kv_json")

    st.subheader("Memory against sequence length")
    show_lengths(name, text, info["context"])

    st.subheader("Which tokens are cached at which step")
    st.caption("From the router's depths on this text (causal routing, as in the prefill above).")
    show_grid(trace)


main()
