"""Issue 14's serving workload: K x W real-text requests arriving at once, on the engine and on
transformers' Llama `generate`; wall-clock tokens/s, time to first token, per-token latency, model
FLOPs against this CPU's measured matmul peak."""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch
from transformers.generation.streamers import BaseStreamer

from ...inference.engine import EXIT, Engine
from ...model.flops import decode_flops_per_token
from .common import _median, make_prompts


# ---- serving: issue 14's workload -----------------------------------------------------------------


class TokenTimes(BaseStreamer):
    """A `generate` streamer that only stamps time.perf_counter() at every `put`: the first put is
    the prompt, each later one a decoding step's new tokens (one per row of the batch)."""

    def __init__(self):
        self.stamps: list[float] = []

    def put(self, value) -> None:
        self.stamps.append(time.perf_counter())

    def end(self) -> None:
        pass


def percentile(values, q: float) -> float | None:
    values = list(values)
    return float(np.percentile(values, q)) if values else None


def latency_stats(times: list[list[float]]) -> dict:
    """Time to first token (one per request) and per-token latency (every gap between a request's
    consecutive tokens), p50 and p95, from each request's token times (seconds since the start)."""
    ttft = [t[0] for t in times if t]
    gaps = [b - a for t in times for a, b in zip(t, t[1:])]
    return {"ttft_p50": percentile(ttft, 50), "ttft_p95": percentile(ttft, 95),
            "token_gap_p50": percentile(gaps, 50), "token_gap_p95": percentile(gaps, 95)}


def serve_engine(model, prompts, width: int, new_tokens: int) -> dict:
    """Every request on one engine (max_batch=`width`, its default max_inflight, prefill_chunk and max_tokens),
    all arriving at t = 0; wall seconds include prefill and the stream's set-up. A token's time is
    the perf_counter stamp at the event of the head pass that picked it. Mean depth: of the new
    tokens (`depths`), and of every token through the layers (rows of the passes that ran a recursion
    step, entry and block, / tokens fed)."""
    engine = Engine(model, max_batch=width)
    times: list[list[float]] = [[] for _ in prompts]
    t0 = time.perf_counter()
    for event in engine.stream(prompts, new_tokens, stop_at_eos=False):
        now = time.perf_counter() - t0
        for i, _ in event.new_tokens:
            times[i].append(now)
    wall = time.perf_counter() - t0
    tokens = sum(len(t) for t in times)
    depths = [d for _, ds in engine.results for d in ds]
    stats = {name: dict(v) for name, v in engine.stage_stats.items()}
    fed = sum(len(p) for p in prompts) + tokens
    step_rows = sum(v["rows"] for name, v in stats.items() if name != EXIT)  # rows that took a recursion step
    return {"wall_seconds": wall, "tokens": tokens, "times": times, "mean_depth": sum(depths) / max(len(depths), 1),
            "mean_depth_all": step_rows / max(fed, 1), "passes": engine.passes, "pass_rows": engine.pass_rows,
            "stage_stats": stats,
            "max_inflight": engine.max_inflight, "prefill_chunk": engine.prefill_chunk, "max_tokens": engine.max_tokens}


@torch.inference_mode()
def serve_llama(model, prompts, width: int, new_tokens: int) -> dict:
    """The same requests through `generate`, `width` at a time (static batches, one after another);
    a request's token times count from the start of the whole workload (`TokenTimes`)."""
    times: list[list[float]] = []
    tokens = 0
    t0 = time.perf_counter()
    for start in range(0, len(prompts), width):
        ids = torch.tensor(prompts[start:start + width], dtype=torch.long)
        streamer = TokenTimes()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0, streamer=streamer)
        tokens += (out.shape[1] - ids.shape[1]) * ids.shape[0]
        times += [[s - t0 for s in streamer.stamps[1:]]] * ids.shape[0]
    wall = time.perf_counter() - t0
    return {"wall_seconds": wall, "tokens": tokens, "times": times, "mean_depth": 1.0, "mean_depth_all": 1.0}


def run_flops(config, prompt_len: int, new_tokens: int, requests: int, depth: float) -> float:
    """Closed-form model FLOPs of a serving run: every request sends its `prompt_len` prompt tokens
    and its first new_tokens - 1 new tokens through the layers (`decode_flops_per_token` at mean
    depth `depth` and the mean context of those tokens, (prompt_len + new_tokens) / 2 keys) and
    `new_tokens` rows through the LM head (the prompt's last token and each fed-back one)."""
    head = 2 * config.vocab_size * config.hidden_size
    stack = decode_flops_per_token(config, (prompt_len + new_tokens) / 2, depth) - head
    return float(requests * ((prompt_len + new_tokens - 1) * stack + new_tokens * head))


def matmul_peak(sizes, repeats: int = 5) -> dict:
    """This CPU's float32 matmul rate at the bench's thread count: per size n, the median GFLOP/s
    (2 n^3 FLOPs) of `repeats` torch.mm of random n x n matrices after a warm-up; the peak is the
    best size's."""
    rows = []
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)
        runs = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            runs.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
        rows.append({"size": n, "gflops": statistics.median(runs), "gflops_runs": runs})
    best = max(rows, key=lambda r: r["gflops"])
    return {"gflops": best["gflops"], "size": best["size"], "sizes": rows, "repeats": repeats,
            "threads": torch.get_num_threads()}


SERVERS = {"engine": serve_engine, "generate": serve_llama}


def serving_runs(models, subjects, prompts_all, widths, per_slot, new_tokens, repeats, log) -> dict:
    """Every (checkpoint, runner) subject at every width on per_slot x width requests, `repeats` times
    interleaved; {(checkpoint, width): [run, ...]} with each run's token times reduced to
    `latency_stats`."""
    for name, runner in subjects:  # warm-up: one small untimed run of every subject
        SERVERS[runner](models[name], prompts_all[:2], 2, 2)
    runs: dict[tuple, list[dict]] = {}
    t_start = time.perf_counter()
    for w in widths:
        for _ in range(repeats):
            for name, runner in subjects:
                r = SERVERS[runner](models[name], prompts_all[: per_slot * w], w, new_tokens)
                r.update(latency_stats(r.pop("times")), requests=per_slot * w, runner=runner)
                runs.setdefault((name, w), []).append(r)
        log(f"  serving width {w}: done ({time.perf_counter() - t_start:.0f} s)")
    return runs


def serving_row(key: tuple, rs: list[dict], config, prompt_len: int, new_tokens: int) -> dict:
    """One serving row: medians over the repeats of tokens/s, GFLOP/s and the latency percentiles;
    depth, FLOPs and the engine's pass counts from the first repeat (greedy: the same every time)."""
    name, w = key
    first = rs[0]
    flops = run_flops(config, prompt_len, new_tokens, first["requests"], first["mean_depth_all"])
    tps = [r["tokens"] / r["wall_seconds"] for r in rs]
    row = {"checkpoint": name, "runner": first["runner"], "width": w, "requests": first["requests"],
           "tokens": first["tokens"], "wall_seconds": statistics.median(r["wall_seconds"] for r in rs),
           "tokens_per_second": statistics.median(tps), "tokens_per_second_runs": tps,
           "mean_depth": first["mean_depth"], "mean_depth_all": first["mean_depth_all"], "flops": flops,
           "gflops_per_second": statistics.median(flops / r["wall_seconds"] / 1e9 for r in rs)}
    for k in ("ttft_p50", "ttft_p95", "token_gap_p50", "token_gap_p95"):
        row[k] = _median(r[k] for r in rs)
    if first["runner"] == "engine":
        stages = first["stage_stats"]
        row.update(max_inflight=first["max_inflight"], prefill_chunk=first["prefill_chunk"],
                   max_tokens=first["max_tokens"],
                   pass_rows=first["pass_rows"],
                   passes_per_token=sum(first["passes"].values()) / max(first["tokens"], 1),
                   passes_per_token_by_stage={k: v / max(first["tokens"], 1) for k, v in first["passes"].items()},
                   rows_per_run_by_stage={k: v["rows"] / v["runs"] for k, v in stages.items() if v["runs"]})
    return row


def measure_serving(models, names, vanilla, widths, per_slot, new_tokens, prompt_len, repeats, vocab, data_dir,
                    matmul_sizes, log) -> dict:
    """The serving section's data (see the module docstring): the matmul peak before and after, and
    one row per (checkpoint or "llama", width)."""
    prompts_all, source = make_prompts(per_slot * max(widths), prompt_len, vocab, data_dir)
    subjects = [(n, "engine") for n in names] + ([("llama", "generate")] if "llama" in models else [])
    before = matmul_peak(matmul_sizes)
    runs = serving_runs(models, subjects, prompts_all, widths, per_slot, new_tokens, repeats, log)
    after = matmul_peak(matmul_sizes)
    peak = max(before, after, key=lambda p: p["gflops"])
    rows = [serving_row(key, rs, models[vanilla if key[0] == "llama" else key[0]].config, prompt_len, new_tokens)
            for key, rs in runs.items()]
    return {"widths": list(widths), "requests_per_slot": per_slot, "new_tokens": new_tokens, "prompt_len": prompt_len,
            "prompt_source": source, "repeats": repeats, "matmul_peak": {**peak, "measurements": [before, after]},
            "rows": rows}


def derive_serving(serving: dict, vanilla: str | None) -> None:
    """What each serving row is against the others at its width (recomputed by `summarize` from the
    measured fields): the share of the matmul peak, tokens/s over vanilla's engine and the speedup
    its run FLOPs predict (vanilla's FLOPs over its own), their ratio, the speedup vanilla's passes
    per token over its own predict (engine rows), and tokens/s over transformers' Llama."""
    peak = serving["matmul_peak"]["gflops"]
    index = {(r["checkpoint"], r["width"]): r for r in serving["rows"]}
    for row in serving["rows"]:
        row["peak_fraction"] = row["gflops_per_second"] / peak if peak else None
        base, llama = index.get((vanilla, row["width"])), index.get(("llama", row["width"]))
        row["speedup_vs_llama"] = row["tokens_per_second"] / llama["tokens_per_second"] if llama else None
        if base is None:
            row.update(speedup_vs_vanilla=None, predicted_speedup=None, speedup_ratio=None)
            continue
        row["speedup_vs_vanilla"] = row["tokens_per_second"] / base["tokens_per_second"]
        row["predicted_speedup"] = base["flops"] / row["flops"]
        row["speedup_ratio"] = row["speedup_vs_vanilla"] / row["predicted_speedup"]
        if row.get("passes_per_token") and base.get("passes_per_token"):
            row["passes_predicted_speedup"] = base["passes_per_token"] / row["passes_per_token"]
