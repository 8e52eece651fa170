"""Live throughput: decode with the real model right now on the depth-wise batching engine
(`mor.inference.engine`, through `mor.inference.live`), watch tokens/s climb, then measure every depth setting (and a
comparison checkpoint) side by side on this machine."""

from __future__ import annotations

import html
import time

import pandas as pd
import streamlit as st
import torch

import common
import live_view as lv
from mor.data import token_texts
from mor.inference.live import stream_generate, warm_up

# Redraw at most this often: each redraw sends the page a new HTML block.
REDRAW_SECONDS = 0.1
# Batch rows all start from the same prompt; only this many distinct continuations are shown.
SHOWN_ROWS = 3
SAMPLING = dict(do_sample=True, temperature=0.8, top_k=40, seed=0)
DEFAULT_PROMPT = "To be, or not to be, that is the question:"

st.title("⚡ Live throughput")
st.caption("Every number on this page is measured now, on this machine, by running the model: "
           f"device {'GPU' if torch.cuda.is_available() else 'CPU'}, {torch.get_num_threads()} "
           "PyTorch threads. Run again and they change a little; other programs using the CPU "
           "slow them down.")
st.caption("Decoding runs on the continuous depth-wise batching engine: every iteration runs the shared "
           "recursion block once over all tokens still recursing, whatever their depth and row, so a row "
           "whose tokens exit early moves on to its next token sooner. The live run is timed while the "
           "page redraws its tokens (when the browser runs on this machine, it competes for the same CPU), so "
           "it reads lower than the side-by-side table, which is measured without redraws.")

name = common.checkpoint_picker()
if name is None:
    st.stop()
model, tokenizer = common.get_model(name)
R, routing = model.config.num_recursions, model.config.routing


def depth_setting() -> dict:
    """Widgets for the depth rule of the live run; returns depth_cap / fixed_depth kwargs."""
    own = "Router decides" if routing != "none" else "All recursions (no router)"
    if R == 1:
        st.radio("Depth", [own], key="tp_mode", help="This checkpoint has a single recursion.")
        return {}
    mode = st.radio("Depth", [own, "Fixed depth k", "Depth cap k"], key="tp_mode",
                    help="Fixed: every token takes exactly k recursions. Cap: the router decides, "
                         "but no token takes more than k.")
    k = st.slider("k (recursions)", 1, R, R, key="tp_k", disabled=mode == own)
    return {} if mode == own else {"fixed_depth" if mode.startswith("Fixed") else "depth_cap": k}


prompt = st.text_area("Prompt", value=DEFAULT_PROMPT, height=80, key="tp_prompt")
left, middle, right = st.columns(3)
with left:
    batch = st.slider("Batch size (rows decoded together)", 1, 64, 4, key="tp_batch")
    new_tokens = st.slider("New tokens per row", 1, 128, 32, key="tp_new")
with middle:
    depth = depth_setting()
with right:
    others = [n for n in common.checkpoint_names() if n != name]
    compare = st.selectbox("Compare against", ["(none)", *others],
                           index=lv.default_comparison(common.checkpoint_names(), name), key="tp_compare")
    sample = st.toggle(f"Sample (temperature {SAMPLING['temperature']}, top-k {SAMPLING['top_k']})",
                       key="tp_sample", help="Off: greedy decoding, so every row gives the same text.")
    side_by_side = st.checkbox("Then measure every depth setting side by side", value=True, key="tp_table")
    repeats = st.number_input("Runs per setting (median reported)", 1, 5, 3, key="tp_repeats",
                              disabled=not side_by_side,
                              help="More runs give steadier numbers on a busy machine, and take longer.")
run = st.button("Run", type="primary", key="tp_run")

metric_cols = st.columns(4)
slots = [col.empty() for col in metric_cols]
text_slot = st.empty()


def draw(snapshot: dict) -> None:
    """Fill the metric and text placeholders from a snapshot of the run."""
    values = [("Tokens/s (decode)", f"{snapshot['tokens_per_second']:,.1f}"),
              ("Tokens decoded", f"{snapshot['tokens']:,}"),
              ("Decode time", f"{snapshot['elapsed']:.2f} s"),
              ("Prefill time", f"{snapshot['prefill']:.3f} s")]
    for slot, (label, value) in zip(slots, values):
        slot.metric(label, value)
    text_slot.html(f'<div style="font-size:0.85rem;color:#777">{snapshot["label"]}</div>{snapshot["html"]}')


def rows_html(prompt_text: str, tokens: list[list[int]], depths: list[list[int]]) -> str:
    """The first few distinct rows' continuations (tokens whose depth is known), coloured by
    depth, after the prompt."""
    seen, blocks = set(), []
    for row_tokens, row_depths in zip(tokens, depths):
        ids = tuple(row_tokens[: len(row_depths)])
        if ids in seen:
            continue
        seen.add(ids)
        texts = token_texts(tokenizer, list(ids))
        blocks.append(lv.token_spans(texts, row_depths, R, prefix=prompt_text))
        if len(blocks) == SHOWN_ROWS:
            break
    note = (f'<div style="font-size:0.8rem;color:#777">{len(seen)} distinct row(s) shown of '
            f'{len(tokens)}; identical rows are shown once.</div>')
    return lv.depth_legend(R) + "".join(f'<div style="margin:6px 0">{b}</div>' for b in blocks) + note


def live_run(ids: list[int]) -> dict:
    """Decode with the chosen settings on the depth-wise batching engine, redrawing as tokens
    arrive; returns the final snapshot."""
    prompt_text = "".join(token_texts(tokenizer, ids))
    last_draw, snapshot = 0.0, {}
    sampling = SAMPLING if sample else {}
    label = html.escape(f"{name}, {lv.setting_label(depth, routing)}, batch {batch}, "
                        f"{'sampled' if sample else 'greedy'}")
    total = batch * new_tokens
    warm_up(model, [ids] * batch, **depth)  # as the side-by-side table does
    for state in stream_generate(model, [ids] * batch, max_new_tokens=new_tokens, **depth, **sampling):
        if time.perf_counter() - last_draw > REDRAW_SECONDS or state.fed == total:
            snapshot = {"label": label, "tokens_per_second": state.tokens_per_second, "tokens": state.fed,
                        "elapsed": state.elapsed, "prefill": state.prefill_seconds,
                        "html": rows_html(prompt_text, state.tokens, state.depths)}
            draw(snapshot)
            last_draw = time.perf_counter()
    return snapshot


if run:
    ids, cut = lv.prompt_ids(tokenizer, prompt, model.config.max_position_embeddings, new_tokens)
    if not ids:
        st.warning("Type a prompt first: decoding needs at least one token to start from.")
        st.stop()
    if cut:
        st.caption(f"The prompt was cut to its last {len(ids)} tokens so the {new_tokens} new ones "
                   f"fit the {model.config.max_position_embeddings}-token context.")
    st.session_state.tp_live = live_run(ids)
    st.session_state.pop("tp_results", None)
    if side_by_side:
        bar = st.progress(0.0)
        rows = lv.measure_all(name, None if compare == "(none)" else compare, prompt, batch, new_tokens,
                              repeats, progress=lambda fraction, label: bar.progress(fraction, text=label))
        bar.empty()
        st.session_state.tp_results = {"rows": rows, "repeats": repeats, "at": time.strftime("%H:%M:%S")}
elif "tp_live" in st.session_state:
    draw(st.session_state.tp_live)
else:
    st.info("Press **Run** to decode with the settings above.")

if st.session_state.get("tp_results"):
    rows = pd.DataFrame(st.session_state.tp_results["rows"])
    measured_runs = st.session_state.tp_results["repeats"]
    baseline = rows.iloc[-1] if rows["checkpoint"].nunique() > 1 else rows.iloc[0]
    rows["relative speed"] = (rows["tokens/s"] / baseline["tokens/s"]).round(2)
    st.subheader(f"Measured side by side at {st.session_state.tp_results['at']}")
    st.caption(f"Greedy decoding of the same prompt and batch on the depth-wise batching engine. Every setting ran {measured_runs} time(s), in "
               "turn (round-robin), each run after an untimed two-token warm-up; the table shows the "
               "median and the range. Tokens/s counts every row's tokens and excludes the prefill; "
               f"relative speed divides it by that of {baseline['checkpoint']} ({baseline['setting']}). "
               "Measured on this machine in this session, not a benchmark.")
    st.dataframe(rows, hide_index=True)
    st.download_button("Download CSV", rows.to_csv(index=False), file_name="mor_throughput.csv",
                       mime="text/csv", on_click="ignore", key="tp_csv")
