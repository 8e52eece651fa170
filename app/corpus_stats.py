"""The "Corpus statistics" page's plumbing: which corpus to read (the validation split, the app's
sample texts, or an upload, decoded and capped here), the cached pass and summary of
`mor.analysis.stats` (exactly what `mor stats --json` prints), and the tables and charts of it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

import mor
from app import render
from app.checkpoints import get_model
from app.samples import SAMPLE_TEXTS
from mor.analysis import stats

ROOT = Path(__file__).resolve().parent.parent
VAL_PATH = ROOT / stats.DEFAULT_CORPUS  # data/val.txt, written by `mor data --out data` (not shipped)
# The most text one request analyses, so a huge upload cannot tie the server up. It holds the whole
# validation split (330,000 characters, 94,971 tokens of the shipped tokenizer: 51 s for mor-ec-r3
# on the project's 2-core CPU while two training runs shared it).
MAX_CHARS = 400_000
PROGRESS_UPDATES = 50  # at most this many progress-bar redraws per pass (each is replayed on a cache hit)
SOURCES = {"val": "Validation split", "samples": "The app's sample texts", "upload": "Upload a text file"}
GROUPINGS = {"by_class": "token class", "by_frequency_band": "frequency band"}


def sources() -> list[str]:
    """The corpus choices: the validation split only when data/val.txt exists."""
    return [key for key in SOURCES if key != "val" or VAL_PATH.is_file()]


def builtin_text(source: str) -> tuple[str, str]:
    """(text, where it came from in words) of the validation split or the sample texts."""
    if source == "val":
        return VAL_PATH.read_text(encoding="utf-8", errors="replace"), f"the validation split ({VAL_PATH.name})"
    return "\n\n".join(SAMPLE_TEXTS.values()), f"the app's {len(SAMPLE_TEXTS)} sample texts"


def decode_upload(data: bytes) -> str:
    """An uploaded file's text. Only UTF-8 (with or without a byte-order mark) is accepted;
    anything else raises ValueError with a message for the user."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ValueError("This file is UTF-16 text. Save it as UTF-8 and upload it again.")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"This file is not UTF-8 text (byte {err.start:,} is 0x{data[err.start]:02x}); it may be "
                         "binary. Upload a plain-text file saved as UTF-8.") from None


def display_name(file_name: str) -> str:
    """An uploaded file's name made safe to show in markdown, as a code span: letters, digits,
    spaces, dots, dashes and underscores kept, anything else (markup, links, backticks, control
    characters) as "_"."""
    safe = re.sub(r"[^\w .\-]", "_", file_name)
    return f"`{safe if len(safe) <= 80 else safe[:77] + '...'}`"


def cap(text: str) -> tuple[str, int]:
    """The first MAX_CHARS characters of the text, and how many were left out."""
    return text[:MAX_CHARS], max(0, len(text) - MAX_CHARS)


@st.cache_data(show_spinner=False, max_entries=8)
def get_pass(name: str, text: str, routing_mode: str) -> stats.CorpusPass:
    """`stats.corpus_pass` of the text, with a progress bar while it runs (drawn inside the cached
    call, so a cache hit replays it to its end: an empty slot)."""
    model, tokenizer = get_model(name)
    bar = st.progress(0.0, text="Running the corpus through the model…")
    every = None

    def progress(done: int, total: int) -> None:
        nonlocal every
        every = every or max(1, total // PROGRESS_UPDATES)
        if done % every == 0 or done == total:
            bar.progress(done / total, text=f"Running the corpus through the model: window {done:,} of {total:,}")

    run = stats.corpus_pass(model, tokenizer, text, routing_mode=routing_mode, progress=progress)
    bar.empty()
    return run


@st.cache_data(show_spinner="Grouping the depths…", max_entries=32)
def get_stats(name: str, text: str, routing_mode: str, min_count: int) -> dict:
    """The statistics `mor stats --json` prints for this text (the pass is cached on its own, so
    changing `min_count` only regroups)."""
    model, tokenizer = get_model(name)
    return stats.summarize(get_pass(name, text, routing_mode), model.config, tokenizer,
                           checkpoint_folder=mor.resolve_checkpoint(name), routing_mode=routing_mode,
                           min_count=min_count, checkpoint=name)


def to_json(result: dict) -> str:
    return json.dumps(result, ensure_ascii=False, indent=1)


# ---- tables -------------------------------------------------------------------------------------

def groups_frame(result: dict) -> pd.DataFrame:
    """Every group of every grouping (token class, frequency band, position in the window): tokens,
    mean depth and the count at each depth."""
    R = result["num_recursions"]
    groups = [(GROUPINGS[key], name, g) for key in GROUPINGS for name, g in result[key].items()]
    groups += [("position in window", f"{g['from']}-{g['to']}", g) for g in result["by_position"]]
    rows = [{"grouping": grouping, "group": name, "tokens": g["tokens"], "mean_depth": g["mean_depth"],
             **{f"depth_{d}": g["depth_histogram"][str(d)] for d in range(1, R + 1)}} for grouping, name, g in groups]
    return pd.DataFrame(rows)


def extremes_frame(rows: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["token", "token_id", "count", "mean_depth"])


def router_frame(result: dict) -> pd.DataFrame:
    """One row per router step and score bin: how many scores fell in it."""
    edges = result["router"].get("bin_edges", [])
    return pd.DataFrame([{"step": s["step"], "from": edges[b], "to": edges[b + 1], "scores": n}
                         for s in result["router"]["steps"] for b, n in enumerate(s["histogram"])],
                        columns=["step", "from", "to", "scores"])


# ---- charts -------------------------------------------------------------------------------------

def depth_share_chart(result: dict, key: str) -> alt.Chart:
    """Per group of a grouping, the share of its tokens at each depth (bars coloured like the
    heatmap), the mean depth and the token count in the tooltip; empty groups are left out."""
    R = result["num_recursions"]
    palette = render.depth_palette(R)
    rows = [{"group": name, "depth": d, "share": g["depth_histogram"][str(d)] / g["tokens"], "tokens": g["tokens"],
             "mean_depth": g["mean_depth"]}
            for name, g in result[key].items() if g["tokens"] for d in range(1, R + 1)]
    order = [name for name, g in result[key].items() if g["tokens"]]
    return alt.Chart(pd.DataFrame(rows)).mark_bar().encode(
        y=alt.Y("group:N", sort=order, title=None, axis=alt.Axis(labelLimit=240)),
        x=alt.X("share:Q", stack="normalize", title="share of the group's tokens", axis=alt.Axis(format="%")),
        color=alt.Color("depth:O", title="recursions",
                        scale=alt.Scale(domain=list(palette), range=list(palette.values()))),
        order=alt.Order("depth:O"),
        tooltip=[alt.Tooltip("group:N"), alt.Tooltip("depth:O"), alt.Tooltip("share:Q", format=".1%"),
                 alt.Tooltip("tokens:Q", title="tokens in group"), alt.Tooltip("mean_depth:Q", format=".3f")],
    ).properties(height=32 * len(order) + 40)


def position_chart(result: dict) -> alt.Chart:
    """Mean depth against position in the context window (one point per span of positions)."""
    frame = pd.DataFrame(result["by_position"])
    return alt.Chart(frame).mark_line(point=True).encode(
        x=alt.X("from:Q", title="position in the context window (start of each span)"),
        y=alt.Y("mean_depth:Q", title="mean depth", scale=alt.Scale(zero=False)),
        tooltip=[alt.Tooltip("from:Q"), alt.Tooltip("to:Q"), alt.Tooltip("tokens:Q"),
                 alt.Tooltip("mean_depth:Q", format=".3f")],
    ).properties(height=240)


def router_chart(result: dict) -> alt.FacetChart:
    """One histogram of router scores per step, its causal threshold (where it has one) a red rule."""
    frame = router_frame(result)
    frame["threshold"] = frame["step"].map({s["step"]: s["threshold"] for s in result["router"]["steps"]}).astype(float)
    base = alt.Chart(frame)
    bars = base.mark_bar().encode(
        x=alt.X("from:Q", bin="binned", title="router score", scale=alt.Scale(domain=[0, 1])), x2="to:Q",
        y=alt.Y("scores:Q", title="tokens"), tooltip=["step", "from", "to", "scores"])
    rules = base.mark_rule(color="#e4572e", strokeWidth=2).encode(
        x="mean(threshold):Q", tooltip=[alt.Tooltip("mean(threshold):Q", title="causal threshold")])
    return alt.layer(bars, rules).properties(height=160, width=220).facet(
        column=alt.Column("step:O", title="recursion step"))
