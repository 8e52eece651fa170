"""Computation behind the explorer pages: cached calls into `mor` and the tables built from them.

Pages hold widgets and layout only; everything they show comes from here or from `common`, and
every number is measured by the loaded model (or labelled as a closed-form formula).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time

import pandas as pd
import streamlit as st
import torch

import common
from mor import analysis

# Sequence lengths for the memory-versus-length chart, capped by the context window.
KV_LENGTHS = (64, 128, 256, 512, 1024, 2048)
# Timing rounds of the scaling sweep (each round times every setting once; the fastest pass of
# each setting is reported): at least TIMING_MIN_ROUNDS, more while within TIMING_BUDGET seconds.
TIMING_MIN_ROUNDS, TIMING_MAX_ROUNDS = 2, 5
TIMING_BUDGET = 5.0


# ---- checkpoints and traces -------------------------------------------------------------------

def model_info(name: str) -> dict:
    """The facts of a checkpoint the pages need to build their controls."""
    model, _ = common.get_model(name)
    cfg = model.config
    return {"routing": cfg.routing, "num_recursions": cfg.num_recursions, "context": cfg.max_position_embeddings}


def trace_object(trace: dict) -> analysis.Trace:
    """A `Trace` back from its JSON dict (which adds derived keys such as mean_depth)."""
    names = {f.name for f in dataclasses.fields(analysis.Trace)}
    return analysis.Trace(**{k: v for k, v in trace.items() if k in names})


def summary(name: str, trace: dict) -> dict:
    """Headline numbers of one trace. FLOPs are the closed-form count of `mor.flops`."""
    tokens = len(trace["depths"])
    tr = trace_object(trace)
    flops = analysis.step_flops(common.get_model(name)[0], tr)
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
    device = common.get_model(name)[0].device
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
    model, tokenizer = common.get_model(name)
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


# ---- KV cache -----------------------------------------------------------------------------------

STRATEGIES = {
    "full": "Full caching",
    "recursion_wise": "Recursion-wise caching",
    "shared": "Recursive KV sharing",
}


def report_dict(report: analysis.KVReport) -> dict:
    out = dataclasses.asdict(report)
    out["totals"] = report.totals()
    return out


def kv_model(name: str):
    """(model, tokenizer) to hand to `analysis.kv_report`: the checkpoint's weights under
    recursion-wise caching. kv_report runs its "full" baseline on the model it is given, so a
    recursive-KV-sharing checkpoint would otherwise cache only step 1 in that baseline."""
    model, tokenizer = common.get_model(name)
    return analysis.with_kv_cache(model, "recursion_wise"), tokenizer


@st.cache_data(show_spinner="Measuring the KV cache…", max_entries=64)
def kv_report(name: str, text: str) -> dict:
    """`mor.analysis.kv_report` of the text, as a dict (measured bytes, formula, cached tokens)."""
    return report_dict(analysis.kv_report(*kv_model(name), text))


def kv_rows(report: dict) -> pd.DataFrame:
    """Per strategy and step: tokens cached, bytes read from the cache, bytes by formula, and
    whether they agree. Steps that cache nothing (deeper steps under sharing) show as 0 bytes."""
    rows = []
    for strategy, label in STRATEGIES.items():
        measured, formula = report["measured"][strategy], report["formula"][strategy]
        # Unique (non-shared) layers see every token; recursion steps hold the router's counts.
        tokens = {"unique layers": report["tokens"], **report["cached_tokens"][strategy]}
        for step in sorted(set(measured) | set(formula) | set(report["cached_tokens"][strategy]), key=_step_order):
            got, expected = measured.get(step, 0), formula.get(step, 0)
            rows.append({"strategy": label, "step": step, "cached_tokens": tokens[step],
                         "measured_bytes": got, "formula_bytes": expected, "agree": got == expected})
    return pd.DataFrame(rows)


def _step_order(step: str) -> tuple[int, int]:
    """'unique layers' first, then 'step 1', 'step 2', ... in numeric order."""
    return (0, 0) if not step.startswith("step ") else (1, int(step.split()[1]))


def long_sample(text: str, tokenizer, tokens: int) -> tuple[str, bool]:
    """The text on screen, or when it is shorter than `tokens` tokens, the text followed by the
    app's sample texts, repeated until long enough. Returns (sample, whether it was extended)."""
    if len(tokenizer(text, add_special_tokens=False)["input_ids"]) >= tokens:
        return text, False
    pieces = [text.strip(), *common.SAMPLE_TEXTS.values()]
    pieces = [p for p in pieces if p]
    sample = ""
    while len(tokenizer(sample, add_special_tokens=False)["input_ids"]) < tokens:
        sample = "\n\n".join(filter(None, [sample, *pieces]))
    return sample, True


@st.cache_data(show_spinner="Measuring the KV cache at several lengths…", max_entries=16)
def kv_by_length(name: str, text: str) -> dict:
    """Total KV bytes per strategy on prefixes of a sample of up to the context length, both read
    from the caches (measured) and recomputed from token counts (formula)."""
    model, tokenizer = kv_model(name)
    context = model.config.max_position_embeddings
    sample, extended = long_sample(text, tokenizer, context)
    ids = tokenizer(sample, add_special_tokens=False)["input_ids"][:context]
    lengths = sorted({n for n in KV_LENGTHS if n < context} | {context})
    rows = []
    for n in lengths:
        report = analysis.kv_report(model, tokenizer, tokenizer.decode(ids[:n]))
        for strategy, label in STRATEGIES.items():
            for kind, numbers in (("measured", report.measured), ("formula", report.formula)):
                rows.append({"tokens": report.tokens, "strategy": label, "kind": kind,
                             "bytes": sum(numbers[strategy].values())})
    return {"table": pd.DataFrame(rows), "extended": extended}


CACHE_STATES = ("K/V cached", "reads step 1's K/V", "exited earlier")


def cache_grid(trace: dict, strategy: str) -> pd.DataFrame:
    """Which token has K/V cached at which recursion step, from the trace's depths.

    full: the baseline runs every token at every step, so every cell is cached.
    recursion_wise: a step caches exactly the tokens that take it (depth >= step).
    shared: only step 1 caches (every token); deeper steps read it for their active tokens."""
    rows = []
    for i, (token, depth) in enumerate(zip(trace["tokens"], trace["depths"])):
        for step in range(1, trace["num_recursions"] + 1):
            if strategy == "full" or (step <= depth and (strategy == "recursion_wise" or step == 1)):
                state = CACHE_STATES[0]
            elif step <= depth:
                state = CACHE_STATES[1]
            else:
                state = CACHE_STATES[2]
            rows.append({"position": i, "token": token, "step": step, "depth": depth, "state": state})
    return pd.DataFrame(rows)


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
