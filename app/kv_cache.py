"""The KV cache: what a prefill of the text leaves in it per strategy and step (measured by
`mor.analysis.kv_report` and by formula, cached), the same against sequence length, and which
token is cached at which recursion step, from `mor.analysis.kv.cache_states` (the one derivation,
shared by the KV memory page's grid and the "How MoR works" page's diagram and counts)."""

from __future__ import annotations

import dataclasses

import pandas as pd
import streamlit as st

from app.checkpoints import get_model
from app.samples import SAMPLE_TEXTS
from mor import analysis
from mor.analysis.kv import CACHE_STATES, cache_states

# Sequence lengths for the memory-versus-length chart, capped by the context window.
KV_LENGTHS = (64, 128, 256, 512, 1024, 2048)


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
    model, tokenizer = get_model(name)
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
    pieces = [text.strip(), *SAMPLE_TEXTS.values()]
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


# ---- which token is cached at which step ------------------------------------------------------

# CACHE_STATES in words, in the same order (the KV memory page's grid legend).
STATE_LABELS = dict(zip(CACHE_STATES, ("K/V cached", "reads step 1's K/V", "exited earlier")))


def states(trace: dict, strategy: str) -> list[list[str]]:
    """[token][step - 1]: `cache_states` of the trace's router depths under `strategy`."""
    return cache_states(trace["depths"], trace["num_recursions"], strategy)


def cache_grid(trace: dict, strategy: str) -> pd.DataFrame:
    """One row per token and recursion step: position, token, step, depth and its cache state in words."""
    rows = []
    for i, (token, depth, row) in enumerate(zip(trace["tokens"], trace["depths"], states(trace, strategy))):
        for step, state in enumerate(row, start=1):
            rows.append({"position": i, "token": token, "step": step, "depth": depth, "state": STATE_LABELS[state]})
    return pd.DataFrame(rows)


ENTRY_LABELS = {
    "full": "every token at every step (no routing)",
    "recursion_wise": "recursion-wise (a step stores its active tokens)",
    "shared": "recursive KV sharing (step 1 only)",
}


def entry_counts(trace: dict) -> list[dict]:
    """Recursion-block K/V entries per layer for the whole text under each strategy (the cells
    `states` marks cached), against every token at every step."""
    full = len(trace["depths"]) * trace["num_recursions"]
    rows = []
    for strategy, label in ENTRY_LABELS.items():
        entries = sum(row.count(CACHE_STATES[0]) for row in states(trace, strategy))
        rows.append({"cache": label, "entries": entries, "ratio": round(entries / full, 3)})
    return rows
