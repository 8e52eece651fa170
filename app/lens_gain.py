"""The recursion lens and "where depth helped", for the heatmap page: cached calls into
`mor.analysis` (the same functions `mor lens` and `mor gain` print) and the tables, tooltips,
heatmaps and charts built from their JSON. Pure data in, plain objects out; the page lays them out."""

from __future__ import annotations

import json

import altair as alt
import pandas as pd
import streamlit as st

from app import render
from app.checkpoints import get_model
from mor import analysis


# Fewer entries than the trace cache: a long text's lens holds top-k lists for every token and step.
@st.cache_data(show_spinner="Reading the prediction after every recursion step…", max_entries=16)
def get_lens(name: str, text: str, routing_mode: str = "causal") -> dict:
    """`mor lens` of the text, as its JSON dict."""
    model, tokenizer = get_model(name)
    return analysis.lens(model, tokenizer, text, routing_mode=routing_mode, checkpoint=name).to_json()


@st.cache_data(show_spinner="Running the text again at every depth cap…", max_entries=64)
def get_gain(name: str, text: str, routing_mode: str = "causal") -> dict:
    """`mor gain` of the text, as its JSON dict."""
    model, tokenizer = get_model(name)
    return analysis.depth_gain(model, tokenizer, text, routing_mode=routing_mode, checkpoint=name).to_json()


def to_json(result: dict) -> str:
    return json.dumps(result, ensure_ascii=False, indent=1)


# ---- the lens -----------------------------------------------------------------------------------

def nll_by_step(lens: dict) -> list[list[float] | None]:
    """[i][r - 1]: NLL of token i + 1 read after step r; None for the last token."""
    return [None if row[0]["next_token_nll"] is None else [s["next_token_nll"] for s in row] for row in lens["steps"]]


def step_means(lens: dict) -> list[float | None]:
    """Mean over the tokens of the next-token NLL after each step (the last equals `mor trace`'s NLL)."""
    rows = [row for row in nll_by_step(lens) if row is not None]
    return [sum(row[r] for row in rows) / len(rows) if rows else None for r in range(lens["num_recursions"])]


def drop_options(R: int) -> list[str]:
    """'all' (step 1 -> N_r) and 'r' for the change from step r - 1 to step r, r = 2..N_r."""
    return ["all"] + [str(r) for r in range(2, R + 1)]


def drop_label(option: str, R: int) -> str:
    return f"all steps (1 → {R})" if option == "all" else f"step {int(option) - 1} → {option}"


def nll_drop(lens: dict, option: str) -> list[float | None]:
    """Per token, how much the next token's NLL fell (> 0: the prediction got better) over the
    chosen steps; None for the last token."""
    first, last = (0, lens["num_recursions"] - 1) if option == "all" else (int(option) - 2, int(option) - 1)
    return [None if row is None else round(row[first] - row[last], 6) for row in nll_by_step(lens)]


def _fmt_nlls(values: list[float]) -> str:
    return " / ".join(f"{v:.3f}" for v in values)


def drop_heatmap_html(lens: dict, option: str) -> str:
    """The text coloured by `nll_drop`, each tooltip with the token's NLL after every step."""
    R, drops, tips = lens["num_recursions"], nll_drop(lens, option), []
    for token, depth, nlls, drop in zip(lens["tokens"], lens["depths"], nll_by_step(lens), drops):
        lines = [f"token {token!r}", f"depth {depth} of {R}"]
        lines += (["last token: nothing follows it to predict"] if nlls is None else
                  [f"NLL of the next token after step 1..{R}: {_fmt_nlls(nlls)}",
                   f"fell by {drop:+.3f} nats ({drop_label(option, R)})"])
        tips.append("\n".join(lines))
    return render.value_heatmap_html(lens["tokens"], drops, tips, f"Next-token NLL fell by ({drop_label(option, R)})")


def token_label(lens: dict, i: int) -> str:
    return f"{i}: {lens['tokens'][i]!r} (depth {lens['depths'][i]})"


def default_token(lens: dict) -> int:
    """The token whose next-token NLL fell most over all steps (a telling first example)."""
    drops = nll_drop(lens, "all")
    return max(range(len(drops)), key=lambda i: -1e9 if drops[i] is None else drops[i])


def lens_table(lens: dict) -> pd.DataFrame:
    """One row per token: position, text, depth, the next-token NLL after every step and its fall."""
    R = lens["num_recursions"]
    rows = []
    for i, (token, depth, nlls) in enumerate(zip(lens["tokens"], lens["depths"], nll_by_step(lens))):
        row = {"position": i, "token": token, "depth": depth}
        row.update({f"nll_after_step_{r + 1}": None if nlls is None else nlls[r] for r in range(R)})
        row["nll_fell"] = None if nlls is None else round(nlls[0] - nlls[-1], 6)
        rows.append(row)
    columns = ["position", "token", "depth", *[f"nll_after_step_{r + 1}" for r in range(R)], "nll_fell"]
    return pd.DataFrame(rows, columns=columns)


def step_table(lens: dict, i: int) -> pd.DataFrame:
    """Token i's prediction after each step: active or not, the true next token's probability
    and NLL, and the top candidates with their probabilities."""
    rows = []
    for s in lens["steps"][i]:
        row = {"step": s["step"], "active": "yes" if s["active"] else "no (exited)",
               "p_next_token": s["next_token_prob"], "nll_next_token": s["next_token_nll"]}
        row.update({f"top_{j + 1}": f"{text!r} {p:.3f}" for j, (text, p) in enumerate(s["top"])})
        rows.append(row)
    return pd.DataFrame(rows)


def step_chart(lens: dict, i: int) -> alt.LayerChart:
    """Bars: probability of the true next token after each step (dark while the token is active);
    line: probability of the top candidate, named in the tooltip."""
    frame = pd.DataFrame([{"step": s["step"], "active": s["active"], "p_next_token": s["next_token_prob"] or 0.0,
                           "top_token": s["top"][0][0], "p_top": s["top"][0][1]} for s in lens["steps"][i]])
    base = alt.Chart(frame).encode(x=alt.X("step:O", title="after recursion step", axis=alt.Axis(labelAngle=0)))
    bars = base.mark_bar().encode(
        y=alt.Y("p_next_token:Q", title="probability"),
        color=alt.Color("active:N", scale=alt.Scale(domain=[True, False], range=["#3b528b", "#addc30"]),
                        legend=alt.Legend(title="still active", orient="bottom")),
        tooltip=[alt.Tooltip("step:O"), alt.Tooltip("p_next_token:Q", title="P(true next token)", format=".4f")])
    top = base.mark_line(point=True, color="#e4572e").encode(
        y="p_top:Q", tooltip=[alt.Tooltip("step:O"), alt.Tooltip("top_token:N", title="top candidate"),
                              alt.Tooltip("p_top:Q", title="its probability", format=".4f")])
    return (bars + top).properties(height=220)


# ---- where depth helped -------------------------------------------------------------------------

def gain_values(gain: dict, cap: int) -> list[float | None]:
    return [None if row is None else row[cap - 1] for row in gain["gain"]]


def gain_summary(gain: dict, cap: int) -> dict:
    """Mean next-token NLL at cap `cap` and at full depth, and how many tokens depth helped / hurt."""
    rows = [row for row in gain["next_token_nll"] if row is not None]
    values = [v for v in gain_values(gain, cap) if v is not None]
    return {"nll_at_cap": sum(r[cap - 1] for r in rows) / len(rows) if rows else None,
            "nll_full": sum(r[-1] for r in rows) / len(rows) if rows else None,
            "helped": sum(v > 0 for v in values), "hurt": sum(v < 0 for v in values)}


def gain_heatmap_html(gain: dict, cap: int) -> str:
    """The text coloured by the gain from depth cap `cap` to full depth (blue: depth helped)."""
    R, tips = gain["num_recursions"], []
    for token, depth, nlls, row in zip(gain["tokens"], gain["depths"], gain["next_token_nll"], gain["gain"]):
        lines = [f"token {token!r}", f"depth {depth} of {R} at full depth"]
        lines += (["last token: nothing follows it to predict"] if nlls is None else
                  [f"NLL of the next token with depth cap 1..{R}: {_fmt_nlls(nlls)}",
                   f"gain from cap {cap} to full depth: {row[cap - 1]:+.3f} nats"])
        tips.append("\n".join(lines))
    return render.value_heatmap_html(gain["tokens"], gain_values(gain, cap), tips,
                                     f"Gain from depth cap {cap} to full depth")


def gain_table(gain: dict) -> pd.DataFrame:
    """One row per token: position, text, depth, the next-token NLL at every cap and the gains."""
    R = gain["num_recursions"]
    rows = []
    for i, (token, depth, nlls, gains) in enumerate(zip(gain["tokens"], gain["depths"], gain["next_token_nll"],
                                                        gain["gain"])):
        row = {"position": i, "token": token, "depth": depth}
        row.update({f"nll_cap_{k + 1}": None if nlls is None else nlls[k] for k in range(R)})
        row.update({f"gain_from_cap_{k + 1}": None if gains is None else gains[k] for k in range(R - 1)})
        rows.append(row)
    columns = ["position", "token", "depth", *[f"nll_cap_{k + 1}" for k in range(R)],
               *[f"gain_from_cap_{k + 1}" for k in range(R - 1)]]
    return pd.DataFrame(rows, columns=columns)


def changed_frame(rows: list[dict]) -> pd.DataFrame:
    """`analysis.most_changed` rows as a table."""
    return pd.DataFrame(rows, columns=["position", "token", "depth", "nll_at_cap", "nll_full_depth", "gain"])
