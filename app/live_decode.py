"""The "Live throughput" page's computation: the depth settings to compare, the live decode on the
depth-wise batching engine (`mor.inference.live`) as a stream of snapshots to draw, and the
side-by-side decode-speed measurement of every setting and the table built from it.

Nothing here draws widgets; the page calls these and decides the layout (tokens are drawn by
`render`, the same renderer as the heatmap's).
"""

from __future__ import annotations

import html
import statistics
import time

import pandas as pd

from app import render
from app.checkpoints import checkpoint_info, get_model
from mor.data import token_texts
from mor.inference.live import measure_decode, stream_generate, warm_up

# Redraw at most this often: each redraw sends the page a new HTML block.
REDRAW_SECONDS = 0.1
# Batch rows all start from the same prompt; only this many distinct continuations are shown.
SHOWN_ROWS = 3
SAMPLING = dict(do_sample=True, temperature=0.8, top_k=40, seed=0)


# ---- depth settings --------------------------------------------------------------------------

def setting_label(kwargs: dict, routing: str) -> str:
    """A depth setting ({} / {"fixed_depth": k} / {"depth_cap": k}) in words (`render.depth_label`)."""
    return render.depth_label(routing=routing, **kwargs)


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
    info = checkpoint_info(name, load=False)
    runs = [(name, s) for s in all_settings(info["num_recursions"], info["routing"])]
    if compare:
        runs.append((compare, {}))
    results = [[] for _ in runs]
    for rep in range(repeats):
        # Round-robin rather than one setting at a time, so a background job that slows the
        # machine for a while hits every setting alike.
        for i, (ckpt, setting) in enumerate(runs):
            label = setting_label(setting, checkpoint_info(ckpt, load=False)["routing"])
            if progress:
                progress((rep * len(runs) + i) / (repeats * len(runs)),
                         f"Round {rep + 1} of {repeats}: {ckpt}, {label}")
            model, tokenizer = get_model(ckpt)
            ids, _ = prompt_ids(tokenizer, prompt, model.config.max_position_embeddings, new_tokens)
            results[i].append(measure_decode(model, ids, batch_size, new_tokens, **setting))
    return [_row(ckpt, setting, measured, batch_size, new_tokens)
            for (ckpt, setting), measured in zip(runs, results)]


def _row(ckpt: str, setting: dict, measured: list[dict], batch_size: int, new_tokens: int) -> dict:
    """One table row: medians over the repeats, and the range of tokens/s."""
    speeds = [m["tokens_per_second"] for m in measured]
    return {"checkpoint": ckpt, "setting": setting_label(setting, checkpoint_info(ckpt, load=False)["routing"]),
            "batch": batch_size, "new tokens": new_tokens,
            "mean depth": round(measured[0]["mean_depth"], 3),  # greedy: the same every repeat
            "prefill s": round(statistics.median(m["prefill_seconds"] for m in measured), 4),
            "decode s": round(statistics.median(m["decode_seconds"] for m in measured), 4),
            "tokens/s": round(statistics.median(speeds), 1),
            "tokens/s min": round(min(speeds), 1), "tokens/s max": round(max(speeds), 1)}


# ---- the live decode ----------------------------------------------------------------------------

def distinct_rows(tokenizer, tokens: list[list[int]], depths: list[list[int]],
                  limit: int = SHOWN_ROWS) -> tuple[list[tuple[list[str], list[int]]], int]:
    """The first `limit` distinct rows' continuations so far, as (token texts, depths) of the tokens
    whose depth is known, and how many distinct rows were seen before the limit was reached."""
    seen, rows = set(), []
    for row_tokens, row_depths in zip(tokens, depths):
        ids = tuple(row_tokens[: len(row_depths)])
        if ids in seen:
            continue
        seen.add(ids)
        rows.append((token_texts(tokenizer, list(ids)), row_depths))
        if len(rows) == limit:
            break
    return rows, len(seen)


def snapshots(name: str, ids: list[int], batch: int, new_tokens: int, depth: dict, sample: bool):
    """Decode `batch` copies of the prompt `ids` with `name` on the depth-wise batching engine
    (`depth`: {} / {"fixed_depth": k} / {"depth_cap": k}; `sample`: SAMPLING, else greedy), after
    an untimed warm-up as the side-by-side table does. Yields a snapshot to draw at most every
    REDRAW_SECONDS and when the last token is in: label, tokens_per_second, tokens, elapsed,
    prefill and html (the rows so far, coloured by depth after the prompt)."""
    model, tokenizer = get_model(name)
    R, routing = model.config.num_recursions, model.config.routing
    prompt_text = "".join(token_texts(tokenizer, ids))
    label = html.escape(f"{name}, {setting_label(depth, routing)}, batch {batch}, {'sampled' if sample else 'greedy'}")
    total, last_draw = batch * new_tokens, 0.0
    warm_up(model, [ids] * batch, **depth)
    for state in stream_generate(model, [ids] * batch, max_new_tokens=new_tokens, **depth,
                                 **(SAMPLING if sample else {})):
        if time.perf_counter() - last_draw > REDRAW_SECONDS or state.fed == total:
            rows, distinct = distinct_rows(tokenizer, state.tokens, state.depths)
            yield {"label": label, "tokens_per_second": state.tokens_per_second, "tokens": state.fed,
                   "elapsed": state.elapsed, "prefill": state.prefill_seconds,
                   "html": render.decode_rows_html(prompt_text, rows, R, distinct, len(state.tokens))}
            last_draw = time.perf_counter()


# ---- the side-by-side table ---------------------------------------------------------------------

def speed_table(rows: list[dict]) -> tuple[pd.DataFrame, pd.Series]:
    """`measure_all`'s rows as a table with each setting's speed relative to a baseline, and that
    baseline: the comparison checkpoint when one was measured (the last row), else the model's own rule."""
    table = pd.DataFrame(rows)
    baseline = table.iloc[-1] if table["checkpoint"].nunique() > 1 else table.iloc[0]
    table["relative speed"] = (table["tokens/s"] / baseline["tokens/s"]).round(2)
    return table, baseline
