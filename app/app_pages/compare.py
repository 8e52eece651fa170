"""Page 5, Compare: two checkpoints, or two settings of one, side by side on the same text."""

import streamlit as st

from app import checkpoints, render, traces, widgets


def depth_options(R: int) -> list[str]:
    """'free', 'cap:k' for k < R (k = R is the free choice) and 'fixed:k' for every k."""
    return ["free"] + [f"cap:{k}" for k in range(1, R)] + [f"fixed:{k}" for k in range(1, R + 1)]


def depth_label(option: str) -> str:
    """An option of `depth_options` in words (`render.depth_label`)."""
    if option == "free":
        return "router decides (no cap)"
    kind, k = option.split(":")
    return render.depth_label(**{"depth_cap" if kind == "cap" else "fixed_depth": int(k)})


def side_settings(side: str, col, full_depth: bool) -> dict:
    """One side's controls: checkpoint, routing rule and depth setting, seeded from the URL.
    `full_depth`: default to every token at full depth instead of the router's choice."""
    # Side A keeps the URL key of the other pages, so a shared link opens on the same checkpoint.
    url_key = "ckpt" if side == "a" else "ckpt_b"
    name = widgets.checkpoint_picker(f"Checkpoint {side.upper()}", key=url_key, container=col)
    if name is None:
        return {}
    info = checkpoints.checkpoint_info(name)
    mode = widgets.routing_mode_picker(info["routing"], key=f"mode_{side}", container=col)
    options = depth_options(info["num_recursions"])
    default = f"fixed:{info['num_recursions']}" if full_depth else "free"
    wanted = widgets.query_default(f"depth_{side}", default)
    wanted = wanted if wanted in options else default
    depth = col.selectbox("Depth", options, index=options.index(wanted), format_func=depth_label,
                          key=f"depth_{side}_{name}")
    kind, _, k = depth.partition(":")
    return {"name": name, "mode": mode, "depth": depth, **info,
            "depth_cap": int(k) if kind == "cap" else None, "fixed_depth": int(k) if kind == "fixed" else None}


def show_table(a: dict, b: dict) -> None:
    table = traces.compare_table(a, b)
    if table is None:
        st.warning("The two checkpoints tokenize this text differently, so tokens cannot be paired; "
                   "download each side's trace from the Depth heatmap page instead.")
        return
    st.subheader("Per token")
    st.caption(f"{int((table['depth_a'] != table['depth_b']).sum())} of {len(table)} tokens take a different depth.")
    st.dataframe(table, hide_index=True)
    st.download_button("Per-token comparison (CSV)", table.to_csv(index=False), "mor_compare.csv", "text/csv",
                       key="dl_compare_csv")


def main() -> None:
    st.title("Compare")
    st.caption("Run the same text through two checkpoints, or one checkpoint under two settings. "
               "Side B's metrics show their difference from side A.")
    text = widgets.text_picker()
    col_a, col_b = st.columns(2)
    a = side_settings("a", col_a, full_depth=False)
    # By default B is the same checkpoint with every token at full depth: the router against no router.
    b = side_settings("b", col_b, full_depth=True)
    if not a or not b:
        return
    widgets.sync_query(text=text, ckpt=a["name"], mode_a=a["mode"], depth_a=a["depth"],
                       ckpt_b=b["name"], mode_b=b["mode"], depth_b=b["depth"])
    both = [traces.get_trace(s["name"], text, depth_cap=s["depth_cap"], fixed_depth=s["fixed_depth"],
                             routing_mode=s["mode"]) for s in (a, b)]
    if not both[0]["tokens"]:
        widgets.empty_text_note()
        return
    numbers = [traces.summary(s["name"], t) for s, t in zip((a, b), both)]
    for col, side, trace, mine, reference in zip((col_a, col_b), (a, b), both, numbers, (None, numbers[0])):
        col.markdown(f"**{side['name']}**: {render.setting_label(trace)}")
        widgets.summary_metrics(mine, side["num_recursions"], container=col, reference=reference, per_row=2)
        widgets.window_note(trace, side["context"], container=col)
        widgets.heatmap(trace, side["routing"], container=col)
    show_table(*both)


main()
