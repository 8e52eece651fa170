"""Helpers of the "Live throughput" page: a token-span renderer (coloured like the heatmap, via
`render`), checkpoint metadata, the depth settings to compare, and the side-by-side speed
measurement.

Nothing here draws widgets; the page calls these and decides the layout.
"""

from __future__ import annotations

import html
import statistics

import streamlit as st

import common
import mor
import render
from mor.inference.live import measure_decode
from mor.model.loading import load_config


# ---- colours and spans -----------------------------------------------------------------------

def token_spans(texts: list[str], depths: list[int], num_recursions: int,
                marked: set[int] | None = None, prefix: str = "") -> str:
    """HTML of tokens on backgrounds coloured by depth, after `prefix` in plain grey (a prompt,
    say); tokens whose index is in `marked` get a thick red outline. Every piece of text is
    escaped; whitespace is kept and a newline also shows a faint ↵, so it has something to colour."""
    marked = marked or set()
    spans = []
    for i, (text, depth) in enumerate(zip(texts, depths)):
        bg = render.depth_colour(depth, num_recursions)
        outline = "outline:3px solid #d62728;outline-offset:-1px;" if i in marked else ""
        spans.append(f'<span title="depth {depth}" style="background:{bg};color:{render.text_colour(bg)};'
                     f'border-radius:3px;padding:1px 0;{outline}">{_visible(text)}</span>')
    lead = f'<span style="color:#777">{html.escape(prefix)}</span>' if prefix else ""
    return ('<div style="white-space:pre-wrap;line-height:1.9;font-family:ui-monospace,monospace;'
            f'font-size:0.95rem">{lead}{"".join(spans)}</div>')


def _visible(text: str) -> str:
    """Escaped token text with each newline preceded by a faint return mark."""
    return html.escape(text).replace("\n", '<span style="opacity:.6">↵</span>\n')


def depth_legend(num_recursions: int) -> str:
    """HTML legend: one swatch per depth."""
    colors = render.depth_palette(num_recursions)
    items = [f'<span style="background:{c};color:{render.text_colour(c)};padding:2px 8px;border-radius:3px;'
             f'margin-right:4px">depth {d}</span>' for d, c in colors.items()]
    return f'<div style="font-size:0.85rem">{"".join(items)}</div>'


# ---- checkpoints -----------------------------------------------------------------------------

@st.cache_data(show_spinner=False)
def checkpoint_summary(name: str) -> dict:
    """routing, num_recursions and kv_cache of a checkpoint, read from its config.json only."""
    cfg = load_config(mor.resolve_checkpoint(name))
    return {"routing": cfg.routing, "num_recursions": cfg.num_recursions, "kv_cache": cfg.kv_cache}


def readable_summaries(names: list[str]) -> dict[str, dict]:
    """`checkpoint_summary` of each checkpoint whose config can be read; the others (say, one
    still being written by a training run) are left out rather than breaking the page."""
    out = {}
    for name in names:
        try:
            out[name] = checkpoint_summary(name)
        except mor.CheckpointError:
            continue
    return out


def default_comparison(names: list[str], current: str) -> int:
    """Index into ["(none)", *others] of the first vanilla checkpoint (no router, one
    recursion: a plain Transformer) other than `current`, or 0 for "(none)"."""
    others = [n for n in names if n != current]
    summaries = readable_summaries(others)
    for i, name in enumerate(others):
        info = summaries.get(name)
        if info and info["routing"] == "none" and info["num_recursions"] == 1:
            return i + 1
    return 0


# ---- depth settings --------------------------------------------------------------------------

def setting_label(kwargs: dict, routing: str) -> str:
    """Human label of a depth setting ({} / {"fixed_depth": k} / {"depth_cap": k})."""
    if "fixed_depth" in kwargs:
        return f"fixed depth {kwargs['fixed_depth']}"
    if "depth_cap" in kwargs:
        return f"depth cap {kwargs['depth_cap']}"
    return "router decides" if routing != "none" else "every token, full depth"


def all_settings(num_recursions: int, routing: str) -> list[dict]:
    """The settings measured side by side: the model's own rule, every fixed depth and every
    cap below N_r (a cap of N_r is the model's own rule). Without a router, "fixed depth N_r"
    and caps are the model's own rule or fixed depths, so only fixed depths are added."""
    settings = [{}]
    settings += [{"fixed_depth": k} for k in range(1, num_recursions + 1)
                 if not (routing == "none" and k == num_recursions)]
    if routing != "none":
        settings += [{"depth_cap": k} for k in range(1, num_recursions)]
    return settings


def prompt_ids(tokenizer, prompt: str, context: int, new_tokens: int) -> tuple[list[int], int]:
    """Prompt token ids cut from the left so prompt + new tokens fit the context window, and
    how many tokens were cut."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    keep = max(context - new_tokens, 1)
    return ids[-keep:], max(len(ids) - keep, 0)


def measure_all(name: str, compare: str | None, prompt: str, batch_size: int, new_tokens: int,
                repeats: int = 3, progress=None) -> list[dict]:
    """Decode speed of every depth setting of `name` and of `compare`'s own rule, now, on this
    machine: each measured `repeats` times, reported as the median with the min and max.
    `progress(fraction, label)` is called before each run."""
    info = checkpoint_summary(name)
    runs = [(name, s) for s in all_settings(info["num_recursions"], info["routing"])]
    if compare:
        runs.append((compare, {}))
    results = [[] for _ in runs]
    for rep in range(repeats):
        # Round-robin rather than one setting at a time, so a background job that slows the
        # machine for a while hits every setting alike.
        for i, (ckpt, setting) in enumerate(runs):
            label = setting_label(setting, checkpoint_summary(ckpt)["routing"])
            if progress:
                progress((rep * len(runs) + i) / (repeats * len(runs)),
                         f"Round {rep + 1} of {repeats}: {ckpt}, {label}")
            model, tokenizer = common.get_model(ckpt)
            ids, _ = prompt_ids(tokenizer, prompt, model.config.max_position_embeddings, new_tokens)
            results[i].append(measure_decode(model, ids, batch_size, new_tokens, **setting))
    return [_row(ckpt, setting, measured, batch_size, new_tokens)
            for (ckpt, setting), measured in zip(runs, results)]


def _row(ckpt: str, setting: dict, measured: list[dict], batch_size: int, new_tokens: int) -> dict:
    """One table row: medians over the repeats, and the range of tokens/s."""
    speeds = [m["tokens_per_second"] for m in measured]
    return {"checkpoint": ckpt, "setting": setting_label(setting, checkpoint_summary(ckpt)["routing"]),
            "batch": batch_size, "new tokens": new_tokens,
            "mean depth": round(measured[0]["mean_depth"], 3),  # greedy: the same every repeat
            "prefill s": round(statistics.median(m["prefill_seconds"] for m in measured), 4),
            "decode s": round(statistics.median(m["decode_seconds"] for m in measured), 4),
            "tokens/s": round(statistics.median(speeds), 1),
            "tokens/s min": round(min(speeds), 1), "tokens/s max": round(max(speeds), 1)}
