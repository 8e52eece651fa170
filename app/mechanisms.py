"""The demonstrations of the "How MoR works" page, as plain data from `mor`: the layer plan of a
sharing strategy, one text routed by both rules (top-k and the causal threshold) and the proof
that only the threshold is causal, and a run of the continuous depth-wise batching engine.
`render` draws the diagrams; the page lays them out. (Its KV-cache section uses `kv_cache`, its
parameter counts `checkpoints`.)"""

from __future__ import annotations

from collections.abc import Iterator

import streamlit as st

from app.checkpoints import get_model
from app.traces import get_trace
from mor import MoRConfig
from mor.inference.engine import Engine


# ---- parameter sharing -----------------------------------------------------------------------

@st.cache_data(show_spinner=False)
def sharing_plan(num_layers: int, num_recursions: int, sharing: str) -> dict:
    """Which unique layer each effective layer uses, from `MoRConfig.layer_plan()`, with the
    groups to draw (`plan_groups`), or {"error": message} when the sizes do not fit the strategy."""
    try:
        cfg = MoRConfig(num_hidden_layers=num_layers, num_recursions=num_recursions, sharing=sharing,
                        routing="none")
    except ValueError as err:
        return {"error": str(err)}
    prelude, steps, coda = cfg.layer_plan()
    plan = {"prelude": prelude, "steps": steps, "coda": coda, "unique": cfg.num_unique_layers}
    return {**plan, "groups": plan_groups(plan)}


def plan_groups(plan: dict) -> list[tuple[str, list[int]]]:
    """(label, unique layers) for the prelude, every recursion step and the coda, in order."""
    groups = [("First layer (unique)", plan["prelude"])] if plan["prelude"] else []
    groups += [(f"Recursion {r}", layers) for r, layers in enumerate(plan["steps"], start=1)]
    groups += [("Last layer (unique)", plan["coda"])] if plan["coda"] else []
    return groups


# ---- expert-choice vs token-choice -------------------------------------------------------------

@st.cache_data(show_spinner=False)
def routing_comparison(name: str, text: str) -> dict:
    """The same text routed two ways by an expert-choice checkpoint: top-k over the whole
    sequence ("capacity", the training rule) and the per-token threshold ("causal", decoding).
    Per step r >= 2: tokens each rule let through, with the config's capacity and threshold."""
    model, _ = get_model(name)
    cfg = model.config
    top = get_trace(name, text, routing_mode="capacity")
    causal = get_trace(name, text, routing_mode="causal")
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
    full = get_trace(name, text, routing_mode=routing_mode)
    prefix = get_trace(name, "".join(full["tokens"][:cut]), routing_mode=routing_mode)
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


# ---- continuous depth-wise batching ----------------------------------------------------------

def batching_prompts(tokenizer, text: str, requests: int) -> list[list[int]]:
    """`requests` prompts cut from `text`: its last 32 tokens, request i dropping the last i of them
    (so the requests differ); [] for a text without tokens."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][-32:]
    return [ids[: max(1, len(ids) - i)] for i in range(requests)] if ids else []


def queue_row(event) -> dict:
    """One pass of an engine stream as a row: the stage that ran, its rows (prompt rows among
    them) and the rows waiting in every stage's queue after it."""
    return {"pass": event.iteration, "stage": event.stage, "rows": event.rows,
            "prompt rows": event.prefill_rows, **event.queued}


@st.cache_data(show_spinner=False)
def batching_run(name: str, text: str, requests: int, max_batch: int, max_inflight: int,
                 new_tokens: int) -> dict:
    """Decode `requests` prompts cut from `text` (`batching_prompts`) on the real engine,
    greedy, with passes of up to `max_batch` decode rows (prompt chunks ride beside them, up to
    the engine's `max_tokens` rows in all) and `max_inflight` requests in flight, recording
    every pass (`queue_row`) and which request's new token ran at which recursion step in every
    pass that ran the shared block (entry passes: step 1; block passes: the later steps). Also the
    block runs static batches of `max_batch` requests would need for the same depths."""
    model, tokenizer = get_model(name)
    prompts = batching_prompts(tokenizer, text, requests)
    if not prompts:
        return {"columns": []}
    engine = Engine(model, max_batch=max_batch, max_inflight=max_inflight)
    columns, passes = [], []
    for event in engine.stream(prompts, new_tokens, stop_at_eos=False, trace_steps=True):
        if event.stage:
            passes.append(queue_row(event))
        if event.block_steps:
            columns.append(event.block_steps)
    depths = [d for _, d in engine.results]
    # A static batch decodes `max_batch` requests together; at each token position the block runs
    # once per recursion step, up to the deepest of those requests' tokens at that position.
    static = sum(max(row[t] for row in depths[start:start + max_batch])
                 for start in range(0, requests, max_batch) for t in range(new_tokens))
    return {"columns": columns, "passes": passes, "depths": depths, "static_block_runs": static,
            "requests": requests, "max_batch": max_batch, "max_inflight": max_inflight,
            "max_tokens": engine.max_tokens,
            "num_recursions": model.config.num_recursions, "items": sum(len(c) for c in columns),
            "stages": list(engine.stage_stats)}


def queue_stream(name: str, text: str, requests: int, max_batch: int, max_inflight: int,
                 new_tokens: int) -> Iterator[dict]:
    """The same run as `batching_run`, computed now (never cached) and yielded pass by pass as
    `queue_row`s plus "engine ms" (the engine's own time so far), for a view of the stage queues
    filling and draining while the engine runs."""
    model, tokenizer = get_model(name)
    prompts = batching_prompts(tokenizer, text, requests)
    if not prompts:
        return
    engine = Engine(model, max_batch=max_batch, max_inflight=max_inflight)
    for event in engine.stream(prompts, new_tokens, stop_at_eos=False):
        if event.stage:
            yield {**queue_row(event), "engine ms": 1000 * event.elapsed}
