"""Traces of a text (`mor.analysis.trace`, cached) and everything the pages derive from them: the
headline numbers, the per-token table, the depth histogram, the JSON download, the side-by-side
comparison of two traces and the timed sweep over every depth setting (Test-time scaling).

Every number is measured by the loaded model (or labelled as a closed-form formula).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time

import pandas as pd
import streamlit as st
import torch

from app.checkpoints import get_model
from mor import analysis

# Timing rounds of the scaling sweep (each round times every setting once; the fastest pass of
# each setting is reported): at least TIMING_MIN_ROUNDS, more while within TIMING_BUDGET seconds.
TIMING_MIN_ROUNDS, TIMING_MAX_ROUNDS = 2, 5
TIMING_BUDGET = 5.0


# ---- traces -----------------------------------------------------------------------------------

@st.cache_data(show_spinner=False, max_entries=256)
def get_trace(name: str, text: str, depth_cap: int | None = None, fixed_depth: int | None = None,
              routing_mode: str = "causal") -> dict:
    """`mor trace` of the text, as its JSON dict (what every page that shows depths draws)."""
    model, tokenizer = get_model(name)
    return analysis.trace(model, tokenizer, text, depth_cap=depth_cap, fixed_depth=fixed_depth,
                          routing_mode=routing_mode, checkpoint=name).to_json()


def trace_object(trace: dict) -> analysis.Trace:
    """A `Trace` back from its JSON dict (which adds derived keys such as mean_depth)."""
    names = {f.name for f in dataclasses.fields(analysis.Trace)}
    return analysis.Trace(**{k: v for k, v in trace.items() if k in names})


def summary(name: str, trace: dict) -> dict:
    """Headline numbers of one trace. FLOPs are the closed-form count of `mor.flops`."""
    tokens = len(trace["depths"])
    tr = trace_object(trace)
    flops = analysis.step_flops(get_model(name)[0], tr)
    nll = trace["nll"]
    return {
        "tokens": tokens,
        "mean_depth": trace["mean_depth"],
        "steps_saved": tr.compute_saved(),
        "flops": flops["flops"],
        "flops_saved": 1.0 - flops["flops"] / flops["full_depth_flops"] if tokens else 0.0,
        "nll": nll,
        "ppl": math.exp(nll) if nll is not None else None,
    }


def token_table(trace: dict) -> pd.DataFrame:
    """One row per token: position, text, id, depth, NLL and the router score at every step."""
    rows = []
    for i, (token, tid, depth, nll, scores) in enumerate(zip(
            trace["tokens"], trace["token_ids"], trace["depths"], trace["token_nll"], trace["router_scores"])):
        row = {"position": i, "token": token, "token_id": tid, "depth": depth, "nll": nll}
        row.update({f"router_score_step_{r + 1}": s for r, s in enumerate(scores)})
        rows.append(row)
    columns = ["position", "token", "token_id", "depth", "nll"] + [
        f"router_score_step_{r + 1}" for r in range(trace["num_recursions"])]
    return pd.DataFrame(rows, columns=columns)


def histogram_frame(trace: dict) -> pd.DataFrame:
    return pd.DataFrame([{"depth": int(d), "tokens": n} for d, n in trace["depth_histogram"].items()])


def trace_json(trace: dict) -> str:
    return json.dumps(trace, ensure_ascii=False, indent=1)


# ---- test-time scaling ------------------------------------------------------------------------

def device_label(name: str) -> str:
    """Where the timings were taken, in words."""
    device = get_model(name)[0].device
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}"
    return f"CPU, {torch.get_num_threads()} PyTorch threads"


SETTING_NAMES = {"cap": "router, capped at k", "fixed": "fixed depth k"}


@st.cache_data(show_spinner="Timing every depth setting…", max_entries=32)
def scaling_sweep(name: str, text: str) -> dict:
    """NLL, mean depth and forward time of the text at every depth cap and every fixed depth.

    The settings are timed round-robin after one warm-up pass, and each keeps its fastest pass:
    on a shared machine load only ever adds time, so the minimum is the steadiest estimate, and
    interleaving spreads any burst of load across all settings. Returns the table and how many
    rounds ran, when and where."""
    model, tokenizer = get_model(name)
    R = model.config.num_recursions
    settings = [(kind, k) for kind in SETTING_NAMES for k in range(1, R + 1)]
    analysis.trace(model, tokenizer, text)  # warm-up: first-call allocations are not the model's cost
    traces: dict[tuple[str, int], analysis.Trace] = {}
    seconds: dict[tuple[str, int], list[float]] = {s: [] for s in settings}
    rounds, start = 0, time.perf_counter()
    while rounds < TIMING_MAX_ROUNDS and (rounds < TIMING_MIN_ROUNDS or time.perf_counter() - start < TIMING_BUDGET):
        for kind, k in settings:
            tr = analysis.trace(model, tokenizer, text, **({"depth_cap": k} if kind == "cap" else {"fixed_depth": k}))
            traces[(kind, k)] = tr
            seconds[(kind, k)].append(tr.seconds)
        rounds += 1
    rows = []
    for (kind, k), tr in traces.items():
        rows.append({
            "setting": SETTING_NAMES[kind], "k": k, "free_choice": kind == "cap" and k == R,
            "mean_depth": tr.mean_depth, "nll": tr.nll, "ppl": math.exp(tr.nll) if tr.nll is not None else None,
            "ms_per_token": 1000 * min(seconds[(kind, k)]) / len(tr.depths), "tokens": len(tr.depths)})
    return {"table": pd.DataFrame(rows), "measured_at": time.strftime("%H:%M:%S"),
            "device": device_label(name), "rounds": rounds}


# ---- compare ----------------------------------------------------------------------------------

def compare_table(a: dict, b: dict) -> pd.DataFrame | None:
    """Per token, both sides' depths and NLLs; None when the two tokenizations differ."""
    if a["token_ids"] != b["token_ids"]:
        return None
    table = pd.DataFrame({
        "position": range(len(a["tokens"])), "token": a["tokens"],
        "depth_a": a["depths"], "depth_b": b["depths"],
        # float dtype: the first token's NLL is None, which must become NaN, not an object.
        "nll_a": pd.Series(a["token_nll"], dtype="float64"), "nll_b": pd.Series(b["token_nll"], dtype="float64"),
    })
    table["depth_b_minus_a"] = table["depth_b"] - table["depth_a"]
    table["nll_b_minus_a"] = table["nll_b"] - table["nll_a"]
    return table
