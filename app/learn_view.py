"""Helpers of the "How MoR works" page: cached computations that call `mor` and return plain data,
and the small HTML diagrams built from that data. The page only lays them out."""

from __future__ import annotations

import html

import streamlit as st

import common
import render
from mor import MoRConfig
from mor.inference.engine import Engine

# Okabe-Ito: a categorical palette distinguishable with the common colour-vision deficiencies.
# Unique layers are categories (A is not "more" than B), so they get these rather than a ramp;
# the letter in each box tells layers apart once colours repeat.
UNIQUE_COLORS = ["#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7", "#999999"]
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


# ---- (a) parameter sharing -------------------------------------------------------------------

@st.cache_data(show_spinner=False)
def sharing_plan(num_layers: int, num_recursions: int, sharing: str) -> dict:
    """Which unique layer each effective layer uses, from `MoRConfig.layer_plan()`, or
    {"error": message} when the sizes do not fit the strategy."""
    try:
        cfg = MoRConfig(num_hidden_layers=num_layers, num_recursions=num_recursions, sharing=sharing,
                        routing="none")
    except ValueError as err:
        return {"error": str(err)}
    prelude, steps, coda = cfg.layer_plan()
    return {"prelude": prelude, "steps": steps, "coda": coda, "unique": cfg.num_unique_layers}


def plan_groups(plan: dict) -> list[tuple[str, list[int]]]:
    """(label, unique layers) for the prelude, every recursion step and the coda, in order."""
    groups = [("First layer (unique)", plan["prelude"])] if plan["prelude"] else []
    groups += [(f"Recursion {r}", layers) for r, layers in enumerate(plan["steps"], start=1)]
    groups += [("Last layer (unique)", plan["coda"])] if plan["coda"] else []
    return groups


def plan_text(plan: dict) -> str:
    """The plan as letters, groups separated by "|": e.g. "A | BC | BC | BC | D"."""
    return " | ".join("".join(LETTERS[u] for u in layers) for _, layers in plan_groups(plan))


def sharing_diagram(plan: dict) -> str:
    """HTML: one box per effective layer (numbered from the input), lettered and coloured by the
    unique layer whose parameters it uses, grouped by recursion step."""
    boxes, effective = [], 0
    for label, layers in plan_groups(plan):
        cells = []
        for u in layers:
            effective += 1
            bg = UNIQUE_COLORS[u % len(UNIQUE_COLORS)]
            cells.append(
                f'<div title="effective layer {effective} uses unique layer {LETTERS[u]}" '
                f'style="width:38px;text-align:center">'
                f'<div style="background:{bg};color:{render.text_colour(bg)};border-radius:4px;font-weight:700;'
                f'padding:8px 0">{LETTERS[u]}</div>'
                f'<div style="font-size:0.7rem;color:#777">{effective}</div></div>')
        boxes.append(
            f'<div style="border:1px dashed #aaa;border-radius:6px;padding:4px 6px;margin:0 6px 6px 0">'
            f'<div style="font-size:0.75rem;color:#555;margin-bottom:3px">{html.escape(label)}</div>'
            f'<div style="display:flex;gap:4px">{"".join(cells)}</div></div>')
    return f'<div style="display:flex;flex-wrap:wrap;align-items:flex-end">{"".join(boxes)}</div>'


# ---- (b) expert-choice vs token-choice ---------------------------------------------------------

@st.cache_data(show_spinner=False)
def routing_comparison(name: str, text: str) -> dict:
    """The same text routed two ways by an expert-choice checkpoint: top-k over the whole
    sequence ("capacity", the training rule) and the per-token threshold ("causal", decoding).
    Per step r >= 2: tokens each rule let through, with the config's capacity and threshold."""
    model, _ = common.get_model(name)
    cfg = model.config
    top = common.get_trace(name, text, routing_mode="capacity")
    causal = common.get_trace(name, text, routing_mode="causal")
    steps = []
    for r in range(2, cfg.num_recursions + 1):
        steps.append({
            "step": r,
            "capacity (config)": round(cfg.capacities[r - 1], 3),
            "top-k kept": sum(d >= r for d in top["depths"]),
            "threshold (config)": round(cfg.router_threshold[r - 2], 3),
            "threshold kept": sum(d >= r for d in causal["depths"]),
        })
    disagree = [i for i, (a, b) in enumerate(zip(top["depths"], causal["depths"])) if a != b]
    return {"tokens": top["tokens"], "top": top, "causal": causal, "steps": steps,
            "disagree": disagree, "num_recursions": cfg.num_recursions}


def score_table(comparison: dict) -> list[dict]:
    """One row per token: depth under each rule and the causal run's router score per step."""
    rows = []
    causal, top = comparison["causal"], comparison["top"]
    for i, token in enumerate(comparison["tokens"]):
        row = {"#": i, "token": repr(token), "depth (top-k)": top["depths"][i],
               "depth (threshold)": causal["depths"][i]}
        for r in range(2, comparison["num_recursions"] + 1):
            row[f"score step {r} (threshold run)"] = causal["router_scores"][i][r - 1]
        rows.append(row)
    return rows


@st.cache_data(show_spinner=False)
def causality_check(name: str, text: str, cut: int, routing_mode: str) -> dict:
    """Route the first `cut` tokens alone, then inside the whole text, and list the tokens of
    that prefix whose depth differs. Top-k ("capacity") ranks each token against the rest of the
    sequence, so text appended later can change an earlier token's depth; the threshold rule
    ("causal") cannot, since a token's score depends only on tokens before it."""
    full = common.get_trace(name, text, routing_mode=routing_mode)
    prefix = common.get_trace(name, "".join(full["tokens"][:cut]), routing_mode=routing_mode)
    # Re-tokenising the prefix text almost always gives the same first tokens; compare only
    # the stretch where it does.
    same = 0
    for a, b in zip(prefix["token_ids"], full["token_ids"]):
        if a != b:
            break
        same += 1
    changed = [i for i in range(same) if prefix["depths"][i] != full["depths"][i]]
    return {"tokens": full["tokens"][:same], "prefix_depths": prefix["depths"][:same],
            "full_depths": full["depths"][:same], "changed": changed, "compared": same}


# ---- (c) KV caching strategies -----------------------------------------------------------------

@st.cache_data(show_spinner=False)
def kv_layout(name: str, text: str) -> dict:
    """Router depths of the text (causal rule) and, per recursion step, how many tokens reach it:
    exactly the tokens whose K/V that step caches under recursion-wise caching."""
    model, _ = common.get_model(name)
    trace = common.get_trace(name, text)
    R = model.config.num_recursions
    return {"tokens": trace["tokens"], "depths": trace["depths"], "num_recursions": R,
            "reached": [sum(d >= r for d in trace["depths"]) for r in range(1, R + 1)],
            "layers_per_step": model.config.layers_per_recursion, "kv_cache": model.config.kv_cache}


def kv_grid(layout: dict, strategy: str, max_tokens: int) -> str:
    """HTML table, steps x tokens: ● the step stores this token's K/V, ↺ the token takes the
    step but reuses step 1's K/V (recursive sharing), · the token exited before this step."""
    tokens, depths = layout["tokens"][:max_tokens], layout["depths"][:max_tokens]
    colors = render.depth_palette(layout["num_recursions"])
    head = "".join(f'<th style="padding:2px 4px;font-weight:400;white-space:pre">{html.escape(repr(t)[1:-1])}</th>'
                   for t in tokens)
    rows = []
    for r in range(1, layout["num_recursions"] + 1):
        cells = []
        for d in depths:
            if d < r:
                mark, bg = "·", "transparent"
            elif r == 1 or strategy == "recursion_wise":
                mark, bg = "●", colors[r]
            else:
                mark, bg = "↺", "transparent"
            color = render.text_colour(bg) if bg != "transparent" else "inherit"
            cells.append(f'<td style="text-align:center;background:{bg};color:{color}">{mark}</td>')
        rows.append(f'<tr><th style="text-align:left;padding-right:8px;white-space:nowrap">step {r}</th>'
                    f'{"".join(cells)}</tr>')
    return ('<div style="overflow-x:auto"><table style="border-collapse:separate;border-spacing:2px;'
            f'font-family:ui-monospace,monospace;font-size:0.8rem"><tr><th></th>{head}</tr>'
            f'{"".join(rows)}</table></div>')


def kv_counts(layout: dict) -> list[dict]:
    """Recursion-block K/V entries per layer for the whole text under each strategy, counted
    from the router's depths, against every token at every step."""
    T, R, reached = len(layout["depths"]), layout["num_recursions"], layout["reached"]
    full = R * T
    return [
        {"cache": "every token at every step (no routing)", "entries": full, "ratio": 1.0},
        {"cache": "recursion-wise (a step stores its active tokens)", "entries": sum(reached),
         "ratio": round(sum(reached) / full, 3)},
        {"cache": "recursive KV sharing (step 1 only)", "entries": reached[0],
         "ratio": round(reached[0] / full, 3)},
    ]


# ---- (d) parameters ------------------------------------------------------------------------------

@st.cache_data(show_spinner=False)
def parameter_counts(name: str) -> dict:
    """Parameters stored (each shared layer once) and of the unrolled model (once per use)."""
    model, _ = common.get_model(name)
    cfg = model.config
    return {"unique": model.num_parameters(), "effective": model.num_effective_parameters(),
            "layers": cfg.num_hidden_layers, "unique_layers": cfg.num_unique_layers,
            "num_recursions": cfg.num_recursions, "sharing": cfg.sharing, "tied": cfg.tie_word_embeddings}


# ---- (e) continuous depth-wise batching ------------------------------------------------------

@st.cache_data(show_spinner=False)
def batching_run(name: str, text: str, requests: int, slots: int, new_tokens: int) -> dict:
    """Decode `requests` prompts cut from `text` (its last 32 tokens; request i drops the last i
    of them, so the requests differ) on the real engine with `slots` slots, greedy, recording
    which request's token ran at which recursion step in every iteration. Also the block runs a
    static batch of the same size would need for the same depths."""
    model, tokenizer = common.get_model(name)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][-32:]
    if not ids:
        return {"columns": []}
    prompts = [ids[: max(1, len(ids) - i)] for i in range(requests)]
    engine = Engine(model, max_batch=slots)
    columns = [event.block_steps for event in engine.stream(prompts, new_tokens, stop_at_eos=False,
                                                            trace_steps=True) if event.block_steps]
    depths = [d for _, d in engine.results]
    # A static batch decodes `slots` requests together; at each token position the block runs once
    # per recursion step, up to the deepest of those requests' tokens at that position.
    static = sum(max(row[t] for row in depths[start:start + slots])
                 for start in range(0, requests, slots) for t in range(new_tokens))
    return {"columns": columns, "depths": depths, "static_block_runs": static, "requests": requests,
            "slots": slots, "num_recursions": model.config.num_recursions,
            "items": sum(len(c) for c in columns)}


def batching_grid(run: dict, max_columns: int) -> str:
    """HTML table, requests x engine iterations: the recursion step each request's current token
    took in that iteration, coloured like the heatmap's depths; empty when the request had no
    token in the block (waiting for a slot, or finished)."""
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
            bg = render.depth_colour(int(step), R)
            cells.append(f'<td style="text-align:center;min-width:1.3em;background:{bg};'
                         f'color:{render.text_colour(bg)}">{int(step)}</td>')
        rows.append(f'<tr><th style="text-align:left;padding-right:8px;white-space:nowrap">request {req + 1}</th>'
                    f'{"".join(cells)}</tr>')
    return ('<div style="overflow-x:auto"><table style="border-collapse:separate;border-spacing:2px;'
            'font-family:ui-monospace,monospace;font-size:0.8rem"><tr><th style="text-align:left">iteration</th>'
            f'{head}</tr>{"".join(rows)}</table></div>')
