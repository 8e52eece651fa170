"""Live throughput: decode with the real model right now on the depth-wise batching engine
(`mor.inference.engine`, through `mor.inference.live`), watch tokens/s climb, then measure every depth setting (and a
comparison checkpoint) side by side on this machine."""

from __future__ import annotations

import time

import streamlit as st
import torch

from app import checkpoints, live_decode, run_queue, widgets

DEFAULT_PROMPT = "To be, or not to be, that is the question:"
CAPTIONS = (
    "Every number on this page is measured now, on this machine, by running the model: "
    f"device {'GPU' if torch.cuda.is_available() else 'CPU'}, {torch.get_num_threads()} "
    "PyTorch threads. Run again and they change a little; other programs using the CPU slow them down.",
    "Decoding runs on the continuous depth-wise batching engine: tokens of every row and every "
    "recursion step share the passes of the shared block, so a row whose tokens exit early moves on "
    "to its next token sooner. Runs from several browsers take turns, one at a time. The live run is timed while the "
    "page redraws its tokens (when the browser runs on this machine, it competes for the same CPU), so "
    "it reads lower than the side-by-side table, which is measured without redraws.",
)


def depth_setting(num_recursions: int, routing: str) -> dict:
    """Widgets for the depth rule of the live run; returns depth_cap / fixed_depth kwargs."""
    own = "Router decides" if routing != "none" else "All recursions (no router)"
    if num_recursions == 1:
        st.radio("Depth", [own], key="tp_mode", help="This checkpoint has a single recursion.")
        return {}
    mode = st.radio("Depth", [own, "Fixed depth k", "Depth cap k"], key="tp_mode",
                    help="Fixed: every token takes exactly k recursions. Cap: the router decides, "
                         "but no token takes more than k.")
    k = st.slider("k (recursions)", 1, num_recursions, num_recursions, key="tp_k", disabled=mode == own)
    return {} if mode == own else {"fixed_depth" if mode.startswith("Fixed") else "depth_cap": k}


def settings(name: str, info: dict) -> dict:
    """The prompt and every control of a run, laid out in three columns."""
    prompt = st.text_area("Prompt", value=DEFAULT_PROMPT, height=80, key="tp_prompt")
    left, middle, right = st.columns(3)
    with left:
        batch = st.slider("Batch size (rows decoded together)", 1, 64, 4, key="tp_batch")
        new_tokens = st.slider("New tokens per row", 1, 128, 32, key="tp_new")
    with middle:
        depth = depth_setting(info["num_recursions"], info["routing"])
    with right:
        names = checkpoints.checkpoint_names()
        compare = st.selectbox("Compare against", ["(none)", *[n for n in names if n != name]],
                               index=checkpoints.default_comparison(names, name), key="tp_compare")
        sampling = live_decode.SAMPLING
        sample = st.toggle(f"Sample (temperature {sampling['temperature']}, top-k {sampling['top_k']})",
                           key="tp_sample", help="Off: greedy decoding, so every row gives the same text.")
        side_by_side = st.checkbox("Then measure every depth setting side by side", value=True, key="tp_table")
        repeats = st.number_input("Runs per setting (median reported)", 1, 5, 3, key="tp_repeats",
                                  disabled=not side_by_side,
                                  help="More runs give steadier numbers on a busy machine, and take longer.")
    return {"prompt": prompt, "batch": batch, "new_tokens": new_tokens, "depth": depth, "sample": sample,
            "compare": None if compare == "(none)" else compare, "side_by_side": side_by_side, "repeats": repeats}


def draw(snapshot: dict, slots: list, text_slot) -> None:
    """Fill the metric and text placeholders from a snapshot of the run."""
    values = [("Tokens/s (decode)", f"{snapshot['tokens_per_second']:,.1f}"),
              ("Tokens decoded", f"{snapshot['tokens']:,}"),
              ("Decode time", f"{snapshot['elapsed']:.2f} s"),
              ("Prefill time", f"{snapshot['prefill']:.3f} s")]
    for slot, (label, value) in zip(slots, values):
        slot.metric(label, value)
    text_slot.html(f'<div style="font-size:0.85rem;color:#777">{snapshot["label"]}</div>{snapshot["html"]}')


def run(name: str, info: dict, chosen: dict, slots: list, text_slot) -> None:
    """The live decode, redrawn as tokens arrive, then (when chosen) the side-by-side measurement."""
    model, tokenizer = checkpoints.get_model(name)
    ids, cut = live_decode.prompt_ids(tokenizer, chosen["prompt"], info["context"], chosen["new_tokens"])
    if not ids:
        st.warning("Type a prompt first: decoding needs at least one token to start from.")
        st.stop()
    if cut:
        st.caption(f"The prompt was cut to its last {len(ids)} tokens so the {chosen['new_tokens']} new ones "
                   f"fit the {info['context']}-token context.")
    wait_slot = st.empty()

    def waiting(ahead: int) -> None:
        wait_slot.info(f"Waiting for the CPU: {ahead} run{'s' if ahead > 1 else ''} ahead of yours. Runs on this "
                       "server take turns, so each one is measured alone.", icon="⏳")

    try:
        with run_queue.shared_queue().turn(on_wait=waiting):
            wait_slot.empty()
            measure(name, chosen, ids, slots, text_slot)
    except run_queue.QueueFull as err:
        wait_slot.warning(f"The machine is busy: {err}")


def measure(name: str, chosen: dict, ids: list[int], slots: list, text_slot) -> None:
    """The live decode and the side-by-side table, run while this session holds the CPU's turn."""
    snapshot = {}
    for snapshot in live_decode.snapshots(name, ids, chosen["batch"], chosen["new_tokens"], chosen["depth"],
                                          chosen["sample"]):
        draw(snapshot, slots, text_slot)
    st.session_state.tp_live = snapshot
    st.session_state.pop("tp_results", None)
    if chosen["side_by_side"]:
        bar = st.progress(0.0)
        rows = live_decode.measure_all(name, chosen["compare"], chosen["prompt"], chosen["batch"],
                                       chosen["new_tokens"], chosen["repeats"],
                                       progress=lambda fraction, label: bar.progress(fraction, text=label))
        bar.empty()
        st.session_state.tp_results = {"rows": rows, "repeats": chosen["repeats"], "at": time.strftime("%H:%M:%S")}


def show_results(results: dict) -> None:
    """The side-by-side table of the last measurement, with its CSV."""
    table, baseline = live_decode.speed_table(results["rows"])
    st.subheader(f"Measured side by side at {results['at']}")
    st.caption(f"Greedy decoding of the same prompt and batch on the depth-wise batching engine. Every setting ran "
               f"{results['repeats']} time(s), in turn (round-robin), each run after an untimed two-token warm-up; "
               "the table shows the median and the range. Tokens/s counts every row's tokens and excludes the "
               f"prefill; relative speed divides it by that of {baseline['checkpoint']} ({baseline['setting']}). "
               "Measured on this machine in this session, not a benchmark.")
    st.dataframe(table, hide_index=True)
    st.download_button("Download CSV", table.to_csv(index=False), file_name="mor_throughput.csv",
                       mime="text/csv", on_click="ignore", key="tp_csv")


def main() -> None:
    picked = widgets.page_header("⚡ Live throughput", *CAPTIONS)
    if picked is None:
        return
    name, info = picked
    chosen = settings(name, info)
    clicked = st.button("Run", type="primary", key="tp_run")
    slots = [col.empty() for col in st.columns(4)]
    text_slot = st.empty()
    if clicked:
        run(name, info, chosen, slots, text_slot)
    elif "tp_live" in st.session_state:
        draw(st.session_state.tp_live, slots, text_slot)
    else:
        st.info("Press **Run** to decode with the settings above.")
    if st.session_state.get("tp_results"):
        show_results(st.session_state.tp_results)


main()
