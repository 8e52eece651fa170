"""How MoR works: parameter sharing, expert- vs token-choice routing and why top-k is not causal,
the two KV-cache strategies, unique vs effective parameters, and continuous depth-wise batching,
on the loaded checkpoint."""

from __future__ import annotations

import time

import pandas as pd
import streamlit as st

from app import checkpoints, kv_cache, mechanisms, render, traces, widgets
from mor.inference.engine import PASS_TOKENS
from mor.model.configuration import SHARING_STRATEGIES

# Columns of the KV grid; longer texts are counted in full but drawn only this far.
KV_GRID_TOKENS = 16
# Depth-wise batching demo: tokens decoded per request, and block passes drawn.
BATCHING_TOKENS = 8
BATCHING_COLUMNS = 40
SHARING_HELP = {
    "cycle": "The block of unique layers repeats: ABC ABC ABC.",
    "sequence": "Each unique layer is applied several times in a row: AAA BBB CCC.",
    "middle_cycle": "First and last layer unique; the middle cycles. The paper's best strategy.",
    "middle_sequence": "First and last layer unique; the middle repeats each layer in a row.",
}

def section_sharing() -> None:
    """(a) Parameter sharing: the effective-to-unique layer map for any L, N_r, strategy."""
    st.header("1. Parameter sharing")
    st.markdown("L effective layers are built from fewer unique layers, used N_r times. "
                "Each box is one effective layer; its letter and colour name the unique layer whose "
                "weights it uses.")
    c1, c2, c3 = st.columns(3)
    layers = c1.number_input("Effective layers L", 2, 24, 8, key="learn_L")
    recursions = c2.number_input("Recursions N_r", 1, 8, 3, key="learn_Nr")
    sharing = c3.selectbox("Strategy", SHARING_STRATEGIES, index=SHARING_STRATEGIES.index("middle_cycle"),
                           key="learn_sharing")
    st.caption(SHARING_HELP[sharing])
    plan = mechanisms.sharing_plan(int(layers), int(recursions), sharing)
    if "error" in plan:
        st.warning(f"That combination does not work: {plan['error']}")
        return
    st.html(render.sharing_diagram(plan["groups"]))
    st.caption(f"Plan: {render.plan_text(plan['groups'])} — {int(layers)} effective layers from {plan['unique']} "
               f"unique layers, which store {plan['unique'] / int(layers):.0%} of the layer parameters of a "
               f"vanilla stack of {int(layers)} layers.")


def section_routing(name: str, text: str) -> None:
    """(b) Expert-choice top-k vs the causal threshold, the causality problem, token-choice."""
    st.header("2. Expert-choice vs token-choice routing")
    st.markdown(
        "**Expert-choice**: at each recursion step, the step's router scores the tokens still "
        "active and keeps the top-k of them (a fixed fraction, the *capacity*). That is how the "
        "model trains. Top-k compares a token with every other token of the sequence, including "
        "later ones, so it cannot be used while generating; there, each token continues iff "
        "sigmoid(router logit) > threshold, a decision it makes alone.  \n"
        "**Token-choice**: one router picks each token's whole depth up front; there is no "
        "ranking, so it is causal, but nothing guarantees the depths stay balanced.")
    summaries = checkpoints.readable_infos(checkpoints.checkpoint_names())
    ec = [n for n, info in summaries.items() if info["routing"] == "expert_choice"]
    if not ec:
        st.info("No expert-choice checkpoint is available to show this on.")
    else:
        ec_name = st.selectbox("Expert-choice checkpoint", ec, index=ec.index(name) if name in ec else 0,
                               key="learn_ec")
        show_top_k_vs_threshold(ec_name, text)
        show_causality(ec_name, text)
    tc = [n for n, info in summaries.items() if info["routing"] == "token_choice"]
    if tc:
        tc_name = st.selectbox("Token-choice checkpoint", tc, index=tc.index(name) if name in tc else 0,
                               key="learn_tc")
        show_token_choice(tc_name, text)


def show_top_k_vs_threshold(ec_name: str, text: str) -> None:
    """Depths under top-k and under the threshold, side by side, with per-step counts."""
    comparison = mechanisms.routing_comparison(ec_name, text)
    if not comparison["tokens"]:
        st.info("Type some text to route.")
        return
    R = comparison["num_recursions"]
    st.subheader("Which tokens each rule keeps")
    st.html(render.legend_block(R))
    st.markdown("**Top-k** (training rule, sees the whole text)")
    st.html(render.depth_text_html(comparison["tokens"], comparison["top"]["depths"], R, set(comparison["disagree"])))
    st.markdown("**Threshold** (decoding rule, each token alone)")
    st.html(render.depth_text_html(comparison["tokens"], comparison["causal"]["depths"], R,
                                   set(comparison["disagree"])))
    st.caption(f"Outlined: the {len(comparison['disagree'])} of {len(comparison['tokens'])} tokens whose "
               "depth differs between the two rules. Training teaches each router (with an auxiliary "
               "loss) to predict top-k's choice; the better it learned, the fewer tokens are outlined.")
    st.dataframe(pd.DataFrame(comparison["steps"]), hide_index=True)
    with st.expander("Router scores per token"):
        st.dataframe(pd.DataFrame(mechanisms.score_table(comparison)), hide_index=True)


def show_causality(ec_name: str, text: str) -> None:
    """A prefix routed alone vs inside the full text, under each rule."""
    st.subheader("Why top-k is not causal")
    n = len(mechanisms.routing_comparison(ec_name, text)["tokens"])
    if n < 3:
        st.info("Use a text of at least three tokens to see this.")
        return
    cut = st.slider("Route only the first tokens, then the whole text", 1, n - 1, n // 2, key="learn_cut")
    st.markdown(f"Each rule routes the first **{cut}** tokens on their own, then the same tokens "
                "with the rest of the text after them. Outlined tokens changed depth only because "
                "text was appended *after* them.")
    R = checkpoints.checkpoint_info(ec_name, load=False)["num_recursions"]
    for mode, label in (("capacity", "Top-k"), ("causal", "Threshold")):
        check = mechanisms.causality_check(ec_name, text, cut, mode)
        changed = set(check["changed"])
        st.markdown(f"**{label}**: {len(changed)} of {check['compared']} tokens changed depth.")
        # Equal-width labels keep the two rows' tokens aligned (the font is monospace).
        st.html(render.depth_text_html(check["tokens"], check["prefix_depths"], R, changed, prefix="alone:   "))
        st.html(render.depth_text_html(check["tokens"], check["full_depths"], R, changed, prefix="in text: "))


def show_token_choice(tc_name: str, text: str) -> None:
    """A token-choice checkpoint's depths on the same text."""
    trace = traces.get_trace(tc_name, text)
    if not trace["tokens"]:
        return
    R = trace["num_recursions"]
    st.markdown(f"**Token-choice** ({tc_name}): each token's depth, picked by one router before the "
                "first recursion.")
    st.html(render.depth_text_html(trace["tokens"], trace["depths"], R))
    hist = trace["depth_histogram"]
    st.caption("Tokens per depth on this text: " + ", ".join(f"depth {d}: {c}" for d, c in hist.items()))


def section_kv(name: str, kv_strategy: str, text: str) -> None:
    """(c) Recursion-wise caching vs recursive KV sharing, on this text's router depths."""
    st.header("3. Two ways to cache keys and values")
    st.markdown(
        "**Recursion-wise caching**: each recursion step stores K/V only for the tokens that take "
        "it, and attends only over those, so deep steps are small and cheap.  \n"
        "**Recursive KV sharing**: only the first step stores K/V (for every token); deeper steps "
        "reuse it. Less memory and a cheaper prefill, but deep steps attend over every token's "
        "first-step K/V.")
    trace = traces.get_trace(name, text)
    if not trace["tokens"]:
        st.info("Type some text to see its cache.")
        return
    R = trace["num_recursions"]
    st.caption(f"{name} was trained with {kv_strategy.replace('_', ' ')} caching. Depths are the "
               f"ones {name} gives the text above when decoding; first {KV_GRID_TOKENS} tokens drawn. "
               "● stores this token's K/V; ↺ takes the step but reuses step 1's K/V; "
               "· exited before this step.")
    st.markdown("**Recursion-wise**")
    st.html(render.kv_grid_html(trace["tokens"], kv_cache.states(trace, "recursion_wise"), R, KV_GRID_TOKENS))
    st.markdown("**Recursive KV sharing**")
    st.html(render.kv_grid_html(trace["tokens"], kv_cache.states(trace, "shared"), R, KV_GRID_TOKENS))
    st.dataframe(pd.DataFrame(kv_cache.entry_counts(trace)), hide_index=True)
    st.caption(f"Entries: recursion-block K/V entries per layer for all {len(trace['tokens'])} tokens, "
               "counted from the depths above (prelude and coda layers cache every token "
               "either way). Ratio: against every token at every step.")
    st.markdown(
        f"**Formula, not a measurement.** With the default capacities (N_r − r + 1)/N_r, step r "
        f"keeps that fraction of tokens, so recursion-wise caching stores "
        f"Σ_r (N_r − r + 1)/N_r ÷ N_r = **(N_r + 1)/(2N_r)** of the full cache; for N_r = {R} that is "
        f"{R + 1}/{2 * R} = {(R + 1) / (2 * R):.3f}. Recursive sharing stores **1/N_r** = {1 / R:.3f}. "
        "The counts above come from the threshold rule, which only approximates the capacities.")


def section_parameters(name: str, info: dict) -> None:
    """(d) Parameters stored vs parameters a token passes through."""
    st.header("4. Unique vs effective parameters")
    counts = {**info, **checkpoints.parameter_counts(name)}
    c1, c2, c3 = st.columns(3)
    c1.metric("Stored (unique) parameters", f"{counts['unique']:,}")
    c2.metric("Effective parameters (unrolled)", f"{counts['effective']:,}")
    c3.metric("Stored / effective", f"{counts['unique'] / counts['effective']:.2f}")
    st.caption(f"{name}: {counts['layers']} effective layers from {counts['unique_layers']} unique "
               f"layers ({counts['sharing'].replace('_', ' ')}, N_r = {counts['num_recursions']}). "
               "Effective counts each unique layer once per use, as a vanilla model of the same depth "
               "would store it" + ("; the embedding is tied to the output head and counted once."
                                   if counts["tied"] else "."))


def section_batching(name: str, text: str) -> None:
    """(e) Continuous depth-wise batching, run now on the real engine."""
    st.header("5. Continuous depth-wise batching")
    st.markdown(
        "Every recursion step applies the **same** block, so tokens at different steps can share one "
        "pass of it. The engine cuts the model into stages, each with a **queue**: the entry (the "
        "first layers and recursion step 1, which every token takes), the shared block (the later "
        "steps) and the exit (the last layers and the LM head). A pass runs one stage over up to *rows "
        "per pass* queued new tokens, of any request and any recursion step, with chunks of prompt "
        f"tokens beside them (up to {PASS_TOKENS} tokens in all: prefill rides in the same passes as "
        "decoding); a stage with a full batch goes first. After each recursion step a token asks the "
        "router whether it takes another: if so it queues for the block, if not it moves on to the "
        "exit, where the LM head picks its request's next token, which queues at the entry. With more "
        "requests in flight than a pass carries, the queues fill, so every pass runs full, and a token "
        "that exits early simply stops queueing for the block.")
    c1, c2, c3 = st.columns(3)
    requests = c1.slider("Requests", 2, 16, 12, key="learn_requests")
    width = c2.slider("Rows per pass", 1, 8, 4, key="learn_width",
                      help="The engine's `max_batch`: decode tokens one pass carries at most. Prompts enter "
                           "beside them in chunks (chunked prefill), so a pass carries up to "
                           f"max(this, {PASS_TOKENS}) tokens in all.")
    inflight = c3.slider("Requests in flight", 1, 16, 8, key="learn_slots",
                         help="The engine's `max_inflight`: requests holding a KV-cache slot at once; "
                              "the others wait.")
    run = mechanisms.batching_run(name, text, requests, width, inflight, BATCHING_TOKENS)
    if not run["columns"]:
        st.info("Type some text: the requests are cut from it.")
        return
    show_stage_queues(name, text, run)
    shown = min(len(run["columns"]), BATCHING_COLUMNS)
    st.subheader("Which token took which step, pass by pass")
    st.caption(f"{name} on the engine now: {requests} requests cut from the text above (request i drops "
               f"its last i − 1 tokens), {BATCHING_TOKENS} greedy new tokens each, {width} rows per pass, "
               f"{inflight} in flight. Columns are the passes that ran the shared block on new tokens (entry "
               f"passes run step 1, block passes the later steps; first {shown} of {len(run['columns'])}); a "
               "cell is the recursion step that request's new token took in that pass.")
    st.html(render.batching_grid(run, BATCHING_COLUMNS))
    m1, m2, m3 = st.columns(3)
    m1.metric("Block runs, depth-wise batching", len(run["columns"]))
    m2.metric("Block runs, static batches", run["static_block_runs"],
              help=f"Computed from the same depths: {width} requests decode together, and at each token "
                   "position the block runs once per step, up to the deepest of their tokens.")
    m3.metric("Tokens per block run", f"{run['items'] / len(run['columns']):.2f} of {width}")


def show_stage_queues(name: str, text: str, run: dict) -> None:
    """The stage queues of the run, pass by pass, and the same run again live on request."""
    st.subheader("The stage queues filling and draining")
    stages = run["stages"]
    passes = pd.DataFrame(run["passes"])
    st.caption(f"Tokens waiting in each stage's queue after every pass of the run above "
               f"({len(passes)} passes; one pass per stage run, layers of a stage together). A pass "
               f"carries up to {run['max_batch']} decode tokens and, beside them, prompt chunks: "
               f"{run['max_tokens']} tokens in all.")
    st.line_chart(passes.set_index("pass")[stages], x_label="pass", y_label="tokens queued")
    counts = passes.groupby("stage", sort=False).agg(passes=("rows", "size"), rows=("rows", "sum"),
                                                      prompt_rows=("prompt rows", "sum"))
    counts["rows per pass"] = (counts["rows"] / counts["passes"]).round(2)
    st.dataframe(counts.reindex([s for s in stages if s in counts.index]).rename(
        columns={"prompt_rows": "prompt rows"}))
    c1, c2 = st.columns([1, 2])
    pause = c2.select_slider("Slow motion (pause between passes drawn)", [0, 20, 50, 100, 200], 50,
                             key="learn_pause", format_func=lambda ms: f"{ms} ms")
    if not c1.button("Watch it live", key="learn_live"):
        return
    chart, note = st.empty(), st.empty()
    rows, drawn = [], 0.0
    for row in mechanisms.queue_stream(name, text, run["requests"], run["max_batch"], run["max_inflight"],
                                       BATCHING_TOKENS):
        rows.append(row)
        if pause or time.perf_counter() - drawn > 0.1:  # at full speed, redraw ten times a second
            draw_live_queues(chart, note, rows, stages)
            drawn = time.perf_counter()
        time.sleep(pause / 1000)
    if rows:
        draw_live_queues(chart, note, rows, stages)


def draw_live_queues(chart, note, rows: list[dict], stages: list[str]) -> None:
    """The live run so far: the queue chart and what the latest pass did."""
    row = rows[-1]
    chart.line_chart(pd.DataFrame(rows).set_index("pass")[stages], x_label="pass", y_label="tokens queued")
    note.caption(f"Pass {row['pass']}: {row['stage']} ran on {row['rows']} tokens "
                 f"({row['prompt rows']} of the prompts); engine time so far {row['engine ms']:.1f} ms "
                 f"(the pauses for drawing are not counted).")


def main() -> None:
    st.title("🎓 How MoR works")
    st.markdown(
        "A **Mixture-of-Recursions** model stores a few layers and applies them again and again. "
        "A router decides, token by token, how many times (its *depth*): easy tokens stop early, "
        "hard ones go deeper. Below, each idea is shown on the checkpoint picked in the sidebar.")
    name = widgets.checkpoint_picker()
    if name is None:
        return
    section_sharing()
    st.divider()
    st.markdown("The sections below use this text:")
    text = widgets.text_picker(key="learn_text", height=100)
    info = checkpoints.checkpoint_info(name)
    widgets.window_note(traces.get_trace(name, text), info["context"])
    section_routing(name, text)
    st.divider()
    section_kv(name, info["kv_cache"], text)
    st.divider()
    section_parameters(name, info)
    st.divider()
    section_batching(name, text)


main()
