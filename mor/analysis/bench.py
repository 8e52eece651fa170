"""`mor bench`: serving throughput and latency, decode speed, prefill time, K/V memory and FLOPs of
the shipped checkpoints.

    mor bench                                   # every checkpoint, writes docs/performance.md (+ .json, PNGs)
    mor bench --serving-widths 1 4 16 32 64 128 --serving-requests-per-slot 4 --serving-new-tokens 32
    mor bench --checkpoints vanilla mor-ec-r3 mor-ec-r3-sparse --serving-widths 16 64 --batch-sizes 16 --repeats 3
    mor bench --serving-widths --no-llama       # no serving section, no Llama reference
    mor bench --matmul-sizes 512 1024 2048      # where the matmul peak is measured
    mor bench --from-json docs/performance.json # re-render the report from saved data, no measuring
    python -m mor.analysis.bench --help         # the same command without the `mor` entry point

This module measures and returns plain data (what --json prints and performance.json holds);
`summarize` adds what the numbers say, as numbers (`derive_serving`, `targets`, `findings`); the
markdown and the plots are rendered from that data by `mor.analysis.report` (performance.py,
plots.py), which writes no sentence its numbers do not support.

Serving (issue 14's workload and targets, `measure_serving`): at every width W of
--serving-widths (rows per pass, the engine's max_batch), --serving-requests-per-slot x W requests
(default 4W) of --prompt-len real-text tokens all arrive at t = 0 and decode
--serving-new-tokens tokens each (default 32), greedy, end-of-text ignored. Each checkpoint runs
them on the engine (`Engine(model, max_batch=W)`, its default max_inflight and prefill_chunk);
transformers' `LlamaForCausalLM.generate` of vanilla's dimensions runs the same requests W at a time
(static batches, one after another). Wall time includes prefill: tokens/s = new tokens / wall
seconds; time to first token (TTFT) per request counts from the start of the whole workload (so a
later static batch waits for the earlier ones, as a queued request waits for the engine); per-token
latency = the gaps between a request's consecutive tokens. Token times are `time.perf_counter()`
stamps: at the engine event of the head pass that picked the token, and at each `put` of a
`BaseStreamer` (`TokenTimes`) for generate. Model FLOPs of a run are closed-form
(`run_flops`: every request's prompt tokens and fed-back new tokens through the layers at the
mean depth the run measured over all of them, one LM-head row per new token), and GFLOP/s is set
against this CPU's float32 matmul peak measured in the same run (`matmul_peak`: the median of
several `torch.mm` of square matrices at --matmul-sizes, before and after the serving runs, the
higher one). Repeats are interleaved (every subject once at a width, then again), medians reported.

The per-batch paths. For every checkpoint and batch size B it runs three decoding paths on the same
prompts (windows of the validation split when `data/` has one, else seeded random ids), greedy,
float32, end-of-text ignored so every request decodes exactly --new-tokens tokens:

- naive:  the "naive path (full width, masked)" (`mor.analysis.naive.naive_generate`): every
          recursion step computes every token of a static batch of B and masks the update of
          tokens that exited, as the paper's reference code does;
- gather: `model.generate`'s loop (active-token gathering: each step runs only on the tokens
          still active) on a static batch of B;
- engine: continuous depth-wise batching (`mor.inference.engine.Engine`, max_batch=B) over 2B
          requests; its decode seconds are its pass time less each pass's prompt-row share
          (prompt chunks ride the same passes as decode tokens).

Repeats are interleaved (every checkpoint and path once, then again) and medians reported. The
same dimensions through transformers' `LlamaForCausalLM.generate` (random weights) are the
reference a user would otherwise run. Memory is reported twice: the K/V bytes a request holds at
the end of its generation (entries actually stored x 2 x G x D x 4 bytes), which is what
recursion-wise caching changes, and the peak resident memory each run adds to the process
(`PeakMemory`: the kernel's high-water mark, reset before the run; Linux only).
FLOPs per decoded token come from `mor.model.flops.decode_flops_per_token` at the measured mean
depth (full depth for the naive path, which computes it) and the mean context of the run.

Cost growth: a trace (one forward returning depths, router scores and NLL) against sequence
length, and decode time per token against context length and batch size.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from transformers.generation.streamers import BaseStreamer

from ..inference.engine import Engine
from ..model.configuration import MoRConfig
from ..model.flops import decode_flops_per_token
from ..model.loading import list_checkpoints, load, resolve_checkpoint
from .naive import naive_generate

PATHS = ("naive", "gather", "engine")
PATH_TITLES = {
    "naive": "naive path (full width, masked)",
    "gather": "active-token gathering (model.generate)",
    "engine": "depth-wise batching (Engine)",
    "llama": "transformers LlamaForCausalLM.generate",
}
DEFAULT_CHECKPOINTS = ("vanilla", "recursive-r3", "mor-ec-r3", "mor-tc-r3", "mor-ec-r3-kvshare", "mor-ec-r4",
                       "mor-ec-r3-lean", "mor-ec-r3-sparse")
ROOT = Path(__file__).resolve().parent.parent.parent
ENGINE_REQUESTS = 2  # the per-batch engine path decodes ENGINE_REQUESTS x B requests with max_batch = B
SERVING_WIDTHS = (1, 4, 16, 32, 64, 128)
# Issue 14's targets, on the serving workload at every measured width: tokens/s (wall, prefill included)
# on the engine over vanilla's on the engine ("speedup", per checkpoint), the measured speedup over
# the one its run FLOPs predict ("ratio"), vanilla's engine over transformers' Llama generate on the
# same requests ("vanilla_over_llama"); the workload they hold for (>= requests_per_slot x W requests
# of real text, new tokens in new_tokens); and a 1,000-token trace in < 0.5 s. "speedup_default" is
# what the ceilings ask of a routed checkpoint without a target of its own (mor-ec-r3's).
THRESHOLDS = {"speedup": {"mor-ec-r3": 1.1, "mor-ec-r3-sparse": 1.4}, "ratio": {"mor-ec-r3": 0.9},
              "vanilla_over_llama": 1.0, "requests_per_slot": 4, "new_tokens": [32, 64], "speedup_default": 1.1,
              "trace_tokens": 1000, "trace_seconds": 0.5}
PROFILE_WARMUP, PROFILE_STEPS = 6, 40  # engine events skipped, then profiled
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


# ---- inputs ----------------------------------------------------------------------------------------


def make_prompts(n: int, length: int, vocab: int, data_dir: Path | None, seed: int = 0) -> tuple[list[list[int]], str]:
    """n prompts of `length` ids: windows of the validation token file when one exists and fits
    the vocabulary, else seeded random ids. Returns (prompts, description of the source)."""
    files = sorted(Path(data_dir).glob("val*.u16")) if data_dir and Path(data_dir).is_dir() else []
    if files:
        ids = np.fromfile(files[0], dtype=np.uint16).astype(np.int64)
        if len(ids) >= length + 1 and int(ids.max()) < vocab:
            rng = np.random.default_rng(seed)
            starts = rng.integers(0, len(ids) - length, size=n)
            return [ids[s:s + length].tolist() for s in starts], f"windows of {files[0].name}"
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, length), generator=g).tolist(), "random token ids (seed 0)"


def describe(model) -> dict:
    c = model.config
    return {"routing": c.routing, "sharing": c.sharing, "kv_cache": c.kv_cache, "num_recursions": c.num_recursions,
            "num_hidden_layers": c.num_hidden_layers, "hidden_size": c.hidden_size, "vocab_size": c.vocab_size,
            "unique_parameters": model.num_parameters(), "effective_parameters": model.num_effective_parameters()}


# ---- one timed run per path ------------------------------------------------------------------------


@torch.inference_mode()
def run_gather(model, prompts, batch: int, new_tokens: int) -> dict:
    """What `model.generate` runs, without its per-step bookkeeping: the model's forward with a
    `MoRCache` (prefill, then one token per row per step), timed in two parts."""
    prefill = decode = 0.0
    depth_sum = tokens = 0
    kv = []
    for start in range(0, len(prompts), batch):
        ids = torch.tensor(prompts[start:start + batch], dtype=torch.long, device=model.device)
        cache = model.model.new_cache(ids.shape[0])
        t0 = time.perf_counter()
        out = model(ids, cache=cache, routing_mode="causal", use_cache=True)
        t1 = time.perf_counter()
        for _ in range(new_tokens):
            nxt = out.logits[:, -1].argmax(-1)
            out = model(nxt[:, None], cache=cache, routing_mode="causal", use_cache=True)
            depth_sum += int(out.depths.sum())
        t2 = time.perf_counter()
        prefill, decode = prefill + t1 - t0, decode + t2 - t1
        tokens += ids.shape[0] * new_tokens
        kv.append(cache.used_bytes() / ids.shape[0])
    return {"prefill_seconds": prefill, "decode_seconds": decode, "tokens": tokens,
            "mean_depth": depth_sum / max(tokens, 1), "kv_bytes_per_request": statistics.mean(kv)}


def run_naive(model, prompts, batch: int, new_tokens: int) -> dict:
    timings: dict = {}
    out = naive_generate(model, prompts, new_tokens, batch_size=batch, stop_at_eos=False, timings=timings)
    tokens = sum(len(t) for t, _ in out)
    return {"prefill_seconds": timings["prefill_seconds"], "decode_seconds": timings["decode_seconds"],
            "tokens": tokens, "mean_depth": sum(sum(d) for _, d in out) / max(tokens, 1),
            "kv_bytes_per_request": timings["kv_bytes_per_request"]}


def run_engine(model, prompts, batch: int, new_tokens: int, depth_cap: int | None = None) -> dict:
    """The engine over all prompts with max_batch=`batch` (rows per pass; max_inflight is the
    engine's default, recorded). Decode seconds: the engine's pass time less each pass's share of
    prompt rows (`EngineEvent.prefill_seconds`)."""
    engine = Engine(model, max_batch=batch, depth_cap=depth_cap)
    events = list(engine.stream(prompts, new_tokens, stop_at_eos=False))
    last = events[-1]
    depths = [d for _, ds in engine.results for d in ds]
    tokens = last.tokens_generated
    util = statistics.mean(e.block_items for e in events if e.block_items) / batch
    return {"prefill_seconds": last.prefill_seconds, "decode_seconds": last.elapsed - last.prefill_seconds,
            "tokens": tokens, "mean_depth": sum(depths) / max(len(depths), 1),
            "kv_bytes_per_request": statistics.mean(engine.request_kv_bytes),
            "kv_bytes_allocated": engine.kv_bytes()["allocated"],
            "iterations": last.iteration, "block_utilisation": util,
            "max_inflight": getattr(engine, "max_inflight", None),
            "passes_per_token": sum(engine.passes.values()) / max(tokens, 1)}


def llama_twin(config):
    """transformers' Llama with the vanilla checkpoint's dimensions, random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=config.vocab_size, hidden_size=config.hidden_size,
                      intermediate_size=config.intermediate_size, num_hidden_layers=config.num_hidden_layers,
                      num_attention_heads=config.num_attention_heads, num_key_value_heads=config.num_key_value_heads,
                      head_dim=config.head_dim, max_position_embeddings=config.max_position_embeddings,
                      rope_theta=config.rope_theta, rms_norm_eps=config.rms_norm_eps, tie_word_embeddings=True,
                      pad_token_id=0, bos_token_id=None, eos_token_id=None)
    return LlamaForCausalLM(cfg).eval()


@torch.inference_mode()
def run_llama(model, prompts, batch: int, new_tokens: int) -> dict:
    prefill = total = 0.0
    tokens = 0
    for start in range(0, len(prompts), batch):
        ids = torch.tensor(prompts[start:start + batch], dtype=torch.long)
        mask = torch.ones_like(ids)
        t0 = time.perf_counter()
        model(ids, attention_mask=mask, use_cache=True)
        t1 = time.perf_counter()
        model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, pad_token_id=0)
        t2 = time.perf_counter()
        prefill += t1 - t0
        total += t2 - t1
        tokens += ids.shape[0] * new_tokens
    return {"prefill_seconds": prefill, "decode_seconds": max(total - prefill, 1e-9), "tokens": tokens,
            "mean_depth": None, "kv_bytes_per_request": None}


RUNNERS = {"naive": run_naive, "gather": run_gather, "engine": run_engine, "llama": run_llama}


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
    """Every request on one engine (max_batch=`width`, its default max_inflight and prefill_chunk),
    all arriving at t = 0; wall seconds include prefill and the stream's set-up. A token's time is
    the perf_counter stamp at the event of the head pass that picked it. Mean depth: of the new
    tokens (`depths`), and of every token through the layers (block-stage rows / tokens fed)."""
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
    block_rows = sum(v["rows"] for name, v in stats.items() if name.startswith("block"))
    return {"wall_seconds": wall, "tokens": tokens, "times": times, "mean_depth": sum(depths) / max(len(depths), 1),
            "mean_depth_all": block_rows / max(fed, 1), "passes": engine.passes, "stage_stats": stats,
            "max_inflight": engine.max_inflight, "prefill_chunk": engine.prefill_chunk}


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


class PeakMemory:
    """Peak resident memory a block of code adds to this process (Linux; `bytes` stays None
    elsewhere): glibc's free lists are trimmed first (so memory freed by an earlier run is not
    reused unseen), the kernel's high-water mark is reset through /proc/self/clear_refs, and
    VmHWM after the block minus VmRSS before it is the peak growth: weights already loaded are
    not counted, every buffer, activation and allocator cache the run creates is."""

    def __init__(self):
        self.bytes: int | None = None
        self._before: int | None = None

    @staticmethod
    def _status(field: str) -> int | None:
        try:
            with open("/proc/self/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def __enter__(self) -> "PeakMemory":
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self._before = self._status("VmRSS")
        except (OSError, AttributeError):
            self._before = None
        return self

    def __exit__(self, *exc) -> None:
        peak = self._status("VmHWM") if self._before is not None else None
        self.bytes = None if peak is None else max(peak - self._before, 0)


# ---- cost growth -----------------------------------------------------------------------------------


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@torch.inference_mode()
def trace_seconds(model, length: int, repeats: int, vocab_ids: list[int]) -> float:
    """One forward over `length` tokens returning depths, router scores and NLL (with labels)."""
    ids = torch.tensor(vocab_ids[:length], dtype=torch.long, device=model.device)[None]

    def trace():
        out = model(ids, labels=ids, use_cache=False)
        return out.depths, out.router_scores, out.lm_loss

    trace()  # warm-up at this shape
    return _median_time(trace, repeats)


def decode_ms_per_token(model, context: int, batch: int, new_tokens: int, prompts_source) -> float:
    """Engine decode time per token (per request) with prompts of `context - new_tokens` tokens."""
    prompts = prompts_source(batch, max(context - new_tokens, 1))
    r = run_engine(model, prompts, batch, new_tokens)
    return 1000 * r["decode_seconds"] / r["tokens"] * batch


# ---- the whole benchmark ---------------------------------------------------------------------------


def other_cpu_load(seconds: float = 1.0) -> float | None:
    """CPUs kept busy by other processes, sampled from /proc/stat over `seconds` while this one
    sleeps (None where /proc/stat does not exist)."""
    def sample():
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + (values[4] if len(values) > 4 else 0)

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except OSError:
        return None
    busy = 1.0 - (idle1 - idle0) / max(total1 - total0, 1)
    return busy * (os.cpu_count() or 1)


def load_models(checkpoints) -> dict:
    """{folder name: model} on the CPU, end-of-text ignored (every path decodes exactly --new-tokens)."""
    models = {}
    for name in checkpoints:
        folder = resolve_checkpoint(name)
        model, _ = load(folder, device="cpu", with_tokenizer=False)
        model.config.eos_token_id = None
        models[folder.name] = model
    return models


def prompts_for(path: str, batch: int, prompts_all: list) -> list:
    """The prompts a run of `path` at `batch` decodes: ENGINE_REQUESTS x batch for the engine."""
    return prompts_all[: ENGINE_REQUESTS * batch] if path == "engine" else prompts_all[:batch]


def timed_runs(models, subjects, prompts_all, batch_sizes, repeats, new_tokens, log) -> dict[tuple, list[dict]]:
    """Every (checkpoint, path) subject at every batch size, `repeats` times interleaved, each run
    inside `PeakMemory`; {(checkpoint, path, batch): [run, ...]}."""
    for name, path in subjects:  # warm-up: one small untimed run of every subject
        RUNNERS[path](models[name], prompts_all[:2], 2, 2)
    runs: dict[tuple, list[dict]] = {}
    t_start = time.perf_counter()
    for b in batch_sizes:
        for _ in range(repeats):
            for name, path in subjects:
                with PeakMemory() as mem:
                    r = RUNNERS[path](models[name], prompts_for(path, b, prompts_all), b, new_tokens)
                r["peak_memory_bytes"] = mem.bytes
                runs.setdefault((name, path, b), []).append(r)
        log(f"  batch {b}: done ({time.perf_counter() - t_start:.0f} s)")
    return runs


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def result_row(key: tuple, rs: list[dict], config, prompts_all: list, context: float) -> dict:
    """One results row: medians over the repeats of (checkpoint, path, batch), and decode FLOPs
    per token at the measured mean depth (full depth for the naive path and the Llama reference)."""
    name, path, b = key
    tps = [r["tokens"] / r["decode_seconds"] for r in rs]
    row = {"checkpoint": name, "path": path, "batch_size": b,
           "decode_tokens_per_second": statistics.median(tps), "decode_tokens_per_second_runs": tps,
           "prefill_seconds_per_prompt": statistics.median(r["prefill_seconds"] for r in rs)
           / len(prompts_for(path, b, prompts_all)),
           "mean_depth": rs[0]["mean_depth"], "kv_bytes_per_request": rs[0]["kv_bytes_per_request"],
           "peak_memory_bytes": _median(r["peak_memory_bytes"] for r in rs)}
    if path == "engine":
        row.update(kv_bytes_allocated=rs[0]["kv_bytes_allocated"],
                   block_utilisation=statistics.median(r["block_utilisation"] for r in rs),
                   passes_per_token=rs[0]["passes_per_token"], max_inflight=rs[0].get("max_inflight"))
    depth = config.num_recursions if path in ("naive", "llama") else row["mean_depth"]
    row["flops_per_token"] = decode_flops_per_token(config, int(context), depth)
    return row


def finder(results: list[dict]):
    """find(checkpoint, path, batch) -> the results row or None."""
    index = {(r["checkpoint"], r["path"], r["batch_size"]): r for r in results}
    return lambda name, path, b: index.get((name, path, b))


def add_speedups(results: list[dict], vanilla: str | None) -> None:
    """Each row against vanilla at the same batch: FLOPs-predicted and measured speedup on the same
    path (Llama against vanilla's gather path), their ratio, against vanilla's fastest path, and for
    the engine the weight-pass prediction."""
    find = finder(results)
    for row in results:
        b = row["batch_size"]
        base = find(vanilla, row["path"] if row["path"] != "llama" else "gather", b) if vanilla else None
        if base is None:
            row.update(predicted_speedup=None, measured_speedup=None, speedup_ratio=None)
            continue
        row["predicted_speedup"] = base["flops_per_token"] / row["flops_per_token"]
        row["measured_speedup"] = row["decode_tokens_per_second"] / base["decode_tokens_per_second"]
        row["speedup_ratio"] = row["measured_speedup"] / row["predicted_speedup"]
        best = max((find(vanilla, p, b) for p in PATHS), key=lambda r: r["decode_tokens_per_second"])
        row["speedup_vs_best_vanilla"] = row["decode_tokens_per_second"] / best["decode_tokens_per_second"]
        if row["path"] == "engine":
            row["passes_predicted_speedup"] = base["passes_per_token"] / row["passes_per_token"]
            row["passes_ratio"] = row["measured_speedup"] / row["passes_predicted_speedup"]


def measure_growth(models, names, vanilla, lengths, batches, repeats, vocab, data_dir) -> dict:
    """Trace seconds against sequence length (THRESHOLDS' trace length always included) and engine
    decode time per token against context, for vanilla and up to two routed checkpoints."""
    growth = {"trace": [], "decode": []}
    if not lengths:
        return growth
    chosen = [n for n in names if n == vanilla or models[n].config.routing != "none"][:3] or names[:1]
    trace_lengths = sorted(set(lengths + [THRESHOLDS["trace_tokens"]]))
    long_ids, _ = make_prompts(1, max(trace_lengths), vocab, data_dir, seed=1)
    for name in chosen:
        m = models[name]
        for length in trace_lengths:
            growth["trace"].append({"checkpoint": name, "seq_len": length,
                                    "seconds": trace_seconds(m, length, max(repeats, 1), long_ids[0])})
        for b in batches:
            for length in lengths:
                ms = decode_ms_per_token(m, length, b, min(16, max(length // 4, 2)),
                                         lambda n, l: make_prompts(n, l, vocab, data_dir, seed=2)[0])
                growth["decode"].append({"checkpoint": name, "context": length, "batch_size": b,
                                         "ms_per_token_per_request": ms, "tokens_per_second": 1000 * b / ms})
    return growth


def run_benchmark(checkpoints, batch_sizes, new_tokens, prompt_len, repeats, growth_lengths, growth_batches,
                  llama=True, profile=True, threads=2, data_dir=None, log=print, serving=None,
                  matmul_sizes=(1024, 2048)) -> dict:
    """The whole measurement (see the module docstring), as the data `mor bench --json` prints.
    serving: {"widths", "requests_per_slot", "new_tokens"} of the serving section (None or no
    widths: none)."""
    if threads:
        torch.set_num_threads(threads)
    load_before = other_cpu_load()
    if load_before is not None and load_before > 0.25 * (os.cpu_count() or 1):
        log(f"bench: warning: other processes keep {load_before:.1f} of {os.cpu_count()} CPUs busy; they will "
            "distort the timings (multi-threaded operators suffer most)")
    models = load_models(checkpoints)
    names = list(models)
    vanilla = next((n for n in names if models[n].config.num_recursions == 1), None)
    vocab = min(m.config.vocab_size for m in models.values())
    data_dir = Path(data_dir) if data_dir else ROOT / "data"
    prompts_all, source = make_prompts(ENGINE_REQUESTS * max(batch_sizes), prompt_len, vocab, data_dir)
    subjects = [(n, p) for n in names for p in PATHS]
    if llama and vanilla:
        models["llama"] = llama_twin(models[vanilla].config)
        subjects.append(("llama", "llama"))
    log(f"bench: {len(names)} checkpoints, batch sizes {batch_sizes}, {new_tokens} new tokens, prompts of "
        f"{prompt_len} ({source}), {repeats} interleaved repeats, {torch.get_num_threads()} threads")
    t_start = time.perf_counter()
    serve = {}
    if serving and serving["widths"] and vanilla:
        serve = measure_serving(models, names, vanilla, serving["widths"], serving["requests_per_slot"],
                                serving["new_tokens"], prompt_len, repeats, vocab, data_dir, matmul_sizes, log)
    runs = timed_runs(models, subjects, prompts_all, batch_sizes, repeats, new_tokens, log)
    context = prompt_len + (new_tokens + 1) / 2  # mean context of a decoded token
    results = [result_row(key, rs, models[vanilla if key[0] == "llama" else key[0]].config, prompts_all, context)
               for key, rs in runs.items()]
    add_speedups(results, vanilla)
    growth = measure_growth(models, names, vanilla, growth_lengths, growth_batches, repeats, vocab, data_dir)
    log(f"  growth: done ({time.perf_counter() - t_start:.0f} s)")
    sweep = {}
    if vanilla and any(models[n].config.routing != "none" for n in names):
        sweep = depth_cap_sweep(models, names, vanilla, profile_batch(batch_sizes), prompts_all, new_tokens, repeats,
                                ROOT / "docs" / "results.json")
        log(f"  depth caps: done ({time.perf_counter() - t_start:.0f} s)")
    prof = profile_engine(models, names, vanilla, profile_batch(batch_sizes), prompts_all, new_tokens) if profile else {}
    meta = run_meta(new_tokens, prompt_len, repeats, batch_sizes, source, vanilla, context, subjects)
    meta.update(seconds=time.perf_counter() - t_start, other_cpu_load_at_start=load_before)
    report = {"meta": meta, "checkpoints": {n: describe(models[n]) for n in names},
              "configs": {n: models[n].config.to_diff_dict() for n in names},
              "results": results, "growth": growth, "profile": prof, "depth_caps": sweep, "serving": serve}
    return summarize(report)


def run_meta(new_tokens, prompt_len, repeats, batch_sizes, source, vanilla, context, subjects) -> dict:
    """The report's "meta": the machine, the software and the settings of the per-batch paths."""
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "new_tokens": new_tokens, "prompt_len": prompt_len, "repeats": repeats,
            "batch_sizes": list(batch_sizes), "prompt_source": source, "vanilla": vanilla, "mean_context": context,
            "paths": [p for p in (*PATHS, "llama") if any(s[1] == p for s in subjects)], "path_titles": PATH_TITLES,
            "engine_requests_per_batch": ENGINE_REQUESTS}


def profile_batch(batch_sizes) -> int:
    """The batch size of the profile and the depth-cap sweep: the largest measured one <= 32."""
    return max([x for x in batch_sizes if x <= 32] or [min(batch_sizes)])


# ---- where the time goes ---------------------------------------------------------------------------


def _decode_ms(a, z) -> float:
    """Engine decode milliseconds between two events (prefill time excluded)."""
    return 1000 * ((z.elapsed - z.prefill_seconds) - (a.elapsed - a.prefill_seconds))


def _pass_costs(model, batch: int, prompts, new_tokens: int) -> dict:
    """Without the profiler: the wall time per token over the window `_profiled` profiles, and over
    the whole stream the decode time per weight pass and the rows a pass carries on average."""
    engine = Engine(model, max_batch=batch)
    stream = engine.stream(prompts, max(new_tokens, 48), stop_at_eos=False)
    events = list(itertools.islice(stream, PROFILE_WARMUP + PROFILE_STEPS))
    final = ([*events, *stream] or [None])[-1]
    a, z = (events[PROFILE_WARMUP - 1], events[-1]) if len(events) == PROFILE_WARMUP + PROFILE_STEPS else (None, None)
    passes = sum(engine.passes.values())
    return {"wall_ms_per_token_unprofiled": _decode_ms(a, z) / max(z.tokens_generated - a.tokens_generated, 1) if a else None,
            "ms_per_pass": 1000 * (final.elapsed - final.prefill_seconds) / passes if final and passes else None,
            "rows_per_pass": engine.pass_rows / max(passes, 1)}


def _profiled(model, batch: int, prompts, new_tokens: int) -> dict | None:
    """torch.profiler over PROFILE_STEPS engine events after PROFILE_WARMUP start-up ones."""
    from torch.profiler import ProfilerActivity, profile

    stream = Engine(model, max_batch=batch).stream(prompts, max(new_tokens, 48), stop_at_eos=False)
    first = None
    for first in itertools.islice(stream, PROFILE_WARMUP):
        pass
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        window = list(itertools.islice(stream, PROFILE_STEPS))
    for _ in stream:  # finish the stream outside the profiler
        pass
    if not window or first is None:
        return None
    return _breakdown(prof.key_averages(), window[-1].tokens_generated - first.tokens_generated, len(window))


def _breakdown(events, tokens: int, steps: int) -> dict:
    """CPU time per decoded token split into matrix multiplies, the K/V row gather (index_select)
    and everything else, aten calls, and the top operators (profiler times are microseconds)."""
    total = sum(e.self_cpu_time_total for e in events)
    mm = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS)
    gather = sum(e.self_cpu_time_total for e in events if e.key == "aten::index_select")
    top = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
    per_token = 1e-3 / max(tokens, 1)  # us -> ms per token
    calls = sum(e.count for e in events)
    return {"iterations": steps, "tokens": tokens,
            "matmul_share": mm / total if total else None, "gather_share": gather / total if total else None,
            "ms_per_token": {"matmul": mm * per_token, "kv_gather": gather * per_token,
                             "other": (total - mm - gather) * per_token},
            "aten_calls_per_iteration": calls / steps, "aten_calls_per_token": calls / max(tokens, 1),
            "top": [{"op": e.key, "share": e.self_cpu_time_total / total, "calls": e.count} for e in top]}


def profile_engine(models, names, vanilla, batch, prompts_all, new_tokens) -> dict:
    """Where the engine's time goes, for vanilla and each routed model at `batch`: `_profiled`'s
    breakdown with `_pass_costs`' unprofiled numbers beside it."""
    out = {"batch_size": batch, "warmup_events": PROFILE_WARMUP, "events": PROFILE_STEPS, "models": {}}
    prompts = prompts_all[: ENGINE_REQUESTS * batch]
    for name in names:
        if name != vanilla and models[name].config.routing == "none":
            continue
        costs = _pass_costs(models[name], batch, prompts, new_tokens)
        breakdown = _profiled(models[name], batch, prompts, new_tokens)
        if breakdown is not None:
            out["models"][name] = {**breakdown, **costs}
    return out


def validation_nll(results_json: Path) -> dict:
    """{checkpoint: {depth cap or None (the router's own rule): validation NLL}} from a results.json
    (`mor results`; a dict with "rows", or the plain list older versions wrote); {} without one."""
    if not results_json.is_file():
        return {}
    data = json.loads(results_json.read_text(encoding="utf-8"))
    nll = {}
    for row in data["rows"] if isinstance(data, dict) else data:
        nll[row["name"]] = {int(k): v for k, v in row.get("cap_nll", {}).items()}
        nll[row["name"]][None] = row["val_nll"]
    return nll


def depth_cap_sweep(models, names, vanilla, batch, prompts, new_tokens, repeats, results_json: Path) -> dict:
    """Test-time scaling on the engine at one batch size: every routed checkpoint at each depth cap
    below N_r and under its own rule, interleaved with vanilla's engine; median decode tokens/s,
    the speedup over vanilla, and the validation NLL of that setting from docs/results.json (the
    quality side of the trade, measured by `mor results`) when it is there."""
    nll = validation_nll(results_json)
    subjects = [(vanilla, None)] + [(n, cap) for n in names if models[n].config.routing != "none"
                                    for cap in [*range(1, models[n].config.num_recursions), None]]
    runs: dict[tuple, list[dict]] = {}
    for _ in range(repeats):
        for name, cap in subjects:
            runs.setdefault((name, cap), []).append(
                run_engine(models[name], prompts[: ENGINE_REQUESTS * batch], batch, new_tokens, cap))
    rows = []
    for (name, cap), rs in runs.items():
        tps = statistics.median(r["tokens"] / r["decode_seconds"] for r in rs)
        rows.append({"checkpoint": name, "depth_cap": cap, "decode_tokens_per_second": tps,
                     "mean_depth": rs[0]["mean_depth"], "passes_per_token": rs[0]["passes_per_token"],
                     "val_nll": nll.get(name, {}).get(cap)})
    base = rows[0]
    for row in rows:
        row["speedup"] = row["decode_tokens_per_second"] / base["decode_tokens_per_second"]
        row["passes_predicted_speedup"] = base["passes_per_token"] / row["passes_per_token"]
    return {"batch_size": batch, "rows": rows}


# ---- what the numbers say, as data (the report words it; nothing here writes prose) ---------------


def summarize(report: dict) -> dict:
    """Add the derived data to a measured (or saved) report: `targets` and `findings`, recomputed
    from the measurements, so `--from-json` renders exactly what a fresh run would."""
    m = report["meta"]
    m.setdefault("paths", list(dict.fromkeys(r["path"] for r in report["results"])))
    m.setdefault("path_titles", PATH_TITLES)
    report["targets"] = targets(report)
    report["findings"] = findings(report)
    return report


def _ratio(a: dict | None, b: dict | None) -> float | None:
    """a's decode tokens/s over b's (None when either row is missing)."""
    return a["decode_tokens_per_second"] / b["decode_tokens_per_second"] if a and b else None


def routed_engine_rows(report: dict, min_batch: int = 1) -> list[dict]:
    """Engine rows of routed checkpoints with a vanilla baseline, at batch >= min_batch."""
    info = report["checkpoints"]
    return [r for r in report["results"] if r["path"] == "engine" and r["batch_size"] >= min_batch
            and r["checkpoint"] in info and info[r["checkpoint"]]["routing"] != "none" and r.get("predicted_speedup")]


def targets(report: dict) -> dict:
    """The issue's targets (THRESHOLDS) against the measurements: each routed checkpoint's engine
    rows at batch >= min_batch (speedup over vanilla's engine, its ratio to the FLOPs prediction,
    and against vanilla's model.generate and HF Llama), which checkpoints meet the speedup and the
    ratio target at every such batch, vanilla's own engine over its model.generate, and the trace
    times at THRESHOLDS' length."""
    t, vanilla = THRESHOLDS, report["meta"]["vanilla"]
    find = finder(report["results"])
    rows = routed_engine_rows(report, t["min_batch"])
    out = {"thresholds": dict(t), "engine_rows": []}
    for row in rows:
        b = row["batch_size"]
        entry = {k: row.get(k) for k in ("checkpoint", "batch_size", "measured_speedup", "predicted_speedup",
                                         "speedup_ratio", "steady_speedup", "speedup_vs_best_vanilla")}
        entry["speedup_vs_vanilla_generate"] = _ratio(row, find(vanilla, "gather", b))
        entry["speedup_vs_hf_llama"] = _ratio(row, find("llama", "llama", b))
        out["engine_rows"].append(entry)
    names = sorted({r["checkpoint"] for r in rows})
    out["ratio_met_by"] = [n for n in names if all(r["speedup_ratio"] >= t["ratio"] for r in rows if r["checkpoint"] == n)]
    out["speedup_met_by"] = [n for n in names if all(r["measured_speedup"] >= t["speedup"]
                                                     for r in rows if r["checkpoint"] == n)]
    out["ratio_at_least_0.9"] = bool(out["ratio_met_by"])
    out["speedup_at_least_1.3"] = bool(out["speedup_met_by"])
    batches = sorted({r["batch_size"] for r in rows})
    out["vanilla_engine_over_generate"] = [
        {"batch_size": b, "ratio": _ratio(find(vanilla, "engine", b), find(vanilla, "gather", b))}
        for b in batches if find(vanilla, "engine", b) and find(vanilla, "gather", b)]
    traces = [g for g in report["growth"]["trace"] if g["seq_len"] == t["trace_tokens"]]
    out["trace_1000_seconds"] = {g["checkpoint"]: g["seconds"] for g in traces}
    out["trace_under_0.5s"] = bool(traces) and all(g["seconds"] < t["trace_seconds"] for g in traces)
    return out


def _where(row: dict, key: str) -> dict:
    return {"checkpoint": row["checkpoint"], "batch_size": row["batch_size"], "value": row[key]}


def _extremes(rows: list[dict], key: str) -> dict:
    """The lowest, the highest and the median of `key` over rows, with where the extremes are."""
    return {"rows": len(rows), "median": statistics.median(r[key] for r in rows),
            "lowest": _where(min(rows, key=lambda r: r[key]), key),
            "highest": _where(max(rows, key=lambda r: r[key]), key)}


def findings(report: dict) -> dict:
    """The numbers the report's analysis states, computed here once: how well FLOPs and weight
    passes predict the measured engine speedup, the depth each routed model would need for the
    speedup target, the three paths side by side at the largest batch, what a weight pass costs,
    and the LM head's size."""
    routed = routed_engine_rows(report)
    vanilla = report["meta"]["vanilla"]
    van = report["checkpoints"].get(vanilla)
    return {"flops_fit": _extremes(routed, "speedup_ratio") if routed else None,
            "pass_model": pass_model(report),
            "ceilings": ceilings(report, routed),
            "paths": path_comparison(report),
            "pass_cost": pass_cost(report.get("profile") or {}),
            "lm_head_multiply_adds": van["vocab_size"] * van["hidden_size"] if van else None}


def pass_model(report: dict) -> dict | None:
    """Weight passes per decoded token against the measured speedup: the engine rows of every
    non-vanilla checkpoint at batch > 1, the median error of the pass prediction and of the FLOPs
    prediction on the same rows, and vanilla's passes per token at the largest batch."""
    vanilla = report["meta"]["vanilla"]
    rows = [r for r in report["results"] if r["path"] == "engine" and r.get("passes_ratio") and r["batch_size"] > 1
            and r["checkpoint"] not in (vanilla, "llama")]
    if not rows:
        return None
    keys = ("checkpoint", "batch_size", "mean_depth", "passes_per_token", "passes_predicted_speedup",
            "predicted_speedup", "measured_speedup", "passes_ratio")
    big = max(r["batch_size"] for r in rows)
    base = finder(report["results"])(vanilla, "engine", big)
    return {"rows": [{k: r[k] for k in keys} for r in sorted(rows, key=lambda r: (r["checkpoint"], r["batch_size"]))],
            "median_error": statistics.median(abs(r["passes_ratio"] - 1) for r in rows),
            "flops_median_error": statistics.median(abs(r["speedup_ratio"] - 1) for r in rows),
            "ratio": _extremes(rows, "passes_ratio"),
            "vanilla_batch": big, "vanilla_passes_per_token": base["passes_per_token"] if base else None}


def ceilings(report: dict, routed: list[dict]) -> list[dict]:
    """Per routed checkpoint at its measured mean decode depth (over batch sizes): the speedup its
    FLOPs allow, and the mean depth the speedup target needs by FLOPs and by the weight-pass model."""
    from ..model.configuration import MoRConfig

    m, target = report["meta"], THRESHOLDS["speedup"]
    base = next((r for r in report["results"] if r["checkpoint"] == m["vanilla"] and r["path"] == "engine"), None)
    if base is None:
        return []
    out = []
    for name in sorted({r["checkpoint"] for r in routed}):
        cfg = MoRConfig(**report["configs"][name])
        depth = statistics.mean(r["mean_depth"] for r in routed if r["checkpoint"] == name)
        out.append({"checkpoint": name, "mean_depth": depth, "num_recursions": cfg.num_recursions, "target": target,
                    "flops_allow": base["flops_per_token"] / decode_flops_per_token(cfg, int(m["mean_context"]), depth),
                    "depth_needed_flops": depth_for_speedup(cfg, base["flops_per_token"], int(m["mean_context"]), target),
                    "depth_needed_passes": passes_depth_for_speedup(report, name, target)})
    return out


def path_comparison(report: dict) -> dict | None:
    """Decode tokens/s of the three paths at the largest batch, per non-vanilla checkpoint that
    ran all three, and which path was fastest."""
    vanilla, res = report["meta"]["vanilla"], report["results"]
    others = [r for r in res if r["path"] in PATHS and r["checkpoint"] not in (vanilla, "llama")]
    if not others:
        return None
    big = max(r["batch_size"] for r in others)
    find = finder(res)
    rows = []
    for name in sorted({r["checkpoint"] for r in others}):
        tps = {p: find(name, p, big) for p in PATHS}
        if all(tps.values()):
            tps = {p: r["decode_tokens_per_second"] for p, r in tps.items()}
            rows.append({"checkpoint": name, **tps, "fastest": max(tps, key=tps.get)})
    return {"batch_size": big, "rows": rows} if rows else None


def pass_cost(profile: dict) -> dict | None:
    """Unprofiled ms per weight pass against the rows a pass carries, over the profiled models."""
    rows = [{"checkpoint": n, "ms_per_pass": p["ms_per_pass"], "rows_per_pass": p["rows_per_pass"]}
            for n, p in (profile.get("models") or {}).items() if p.get("ms_per_pass") and p.get("rows_per_pass")]
    if len(rows) < 2:
        return None
    fewest, most = min(rows, key=lambda r: r["rows_per_pass"]), max(rows, key=lambda r: r["rows_per_pass"])
    return {"rows": rows, "fewest_rows": fewest, "most_rows": most,
            "rows_ratio": most["rows_per_pass"] / fewest["rows_per_pass"],
            "cost_ratio": most["ms_per_pass"] / fewest["ms_per_pass"]}


def depth_for_speedup(config, vanilla_flops: float, context: int, target: float) -> float | None:
    """Mean depth at which `config`'s decode FLOPs are vanilla's / target (None if even depth 1
    does not get there)."""
    lo, hi = 1.0, float(config.num_recursions)
    if decode_flops_per_token(config, context, lo) > vanilla_flops / target:
        return None
    for _ in range(40):
        mid = (lo + hi) / 2
        if decode_flops_per_token(config, context, mid) <= vanilla_flops / target:
            lo = mid
        else:
            hi = mid
    return lo


def passes_depth_for_speedup(report: dict, name: str, target: float) -> float | None:
    """Mean depth at which the weight-pass model gives `name` `target` x vanilla in the steady state
    (every slot busy): a MoR iteration runs every prelude, block and coda layer once plus the LM
    head and finishes batch / depth tokens; vanilla runs its layers and the head for a full batch."""
    info, van = report["checkpoints"][name], report["checkpoints"][report["meta"]["vanilla"]]
    if info["sharing"] not in ("cycle", "middle_cycle"):
        return None  # sequence sharing: an iteration's passes depend on which steps are in flight
    R, L = info["num_recursions"], info["num_hidden_layers"]
    middle = L - 2 if info["sharing"] == "middle_cycle" else L
    per_iteration = (L - middle) + middle // R + 1  # unique layers, one block, the LM head
    depth = (van["num_hidden_layers"] + 1) / (target * per_iteration)
    return depth if depth >= 1 else None


def measure(args: argparse.Namespace, log) -> dict:
    """run_benchmark on the checkpoints the arguments name (default: every shipped one of DEFAULT_CHECKPOINTS)."""
    names = args.checkpoints
    if not names:
        found = {p.name for p in list_checkpoints()}
        names = [n for n in DEFAULT_CHECKPOINTS if n in found] or sorted(found)
        if not names:
            raise FileNotFoundError("no checkpoints found; train some (mor train) or pass --checkpoints PATH ...")
    if any(b < 1 for b in args.batch_sizes) or args.new_tokens < 1 or args.prompt_len < 1 or args.repeats < 1:
        raise ValueError("batch sizes, --new-tokens, --prompt-len and --repeats must be >= 1.")
    return run_benchmark(names, args.batch_sizes, args.new_tokens, args.prompt_len, args.repeats,
                         args.growth_lengths, args.growth_batch_sizes, llama=not args.no_llama,
                         profile=not args.no_profile, threads=args.threads, data_dir=args.data, log=log)


def write_report(report: dict, out: Path) -> list[str]:
    """The markdown report at `out`, its data beside it (.json) and its plots; the files written."""
    from .report import performance_plots, render_performance

    out.parent.mkdir(parents=True, exist_ok=True)
    images = performance_plots(report, out.parent)
    out.write_text(render_performance(report, images), encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return [str(out), str(out.with_suffix(".json")), *images]


def run(args: argparse.Namespace) -> int:
    from .report import performance_checks

    log = (lambda *a: None) if args.json else (lambda *a: print(*a, flush=True))
    if args.from_json:
        report = summarize(json.loads(Path(args.from_json).read_text(encoding="utf-8")))
    else:
        report = measure(args, log)
    if args.out:
        log("wrote " + ", ".join(write_report(report, Path(args.out))))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for check in performance_checks(report):
            print(check.line())
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the full report as JSON on stdout (no progress lines)")
    p.add_argument("--checkpoints", nargs="+", metavar="NAME_OR_PATH",
                   help="checkpoints to measure (default: every shipped one of "
                        f"{', '.join(DEFAULT_CHECKPOINTS)}); the one with num_recursions=1 is the vanilla baseline")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 16, 32, 64], metavar="B",
                   help="batch sizes (requests decoded together) to measure (default: 1 8 16 32 64)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens decoded per request (default: 64)")
    p.add_argument("--prompt-len", type=int, default=64, help="prompt length in tokens (default: 64)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are reported (default: 3)")
    p.add_argument("--growth-lengths", nargs="*", type=int, default=[128, 256, 512, 1024], metavar="L",
                   help="sequence lengths for the cost-growth plot (trace and decode; 1000 is always added to "
                        "the traces); give none to skip (default: 128 256 512 1024)")
    p.add_argument("--growth-batch-sizes", nargs="+", type=int, default=[1, 8], metavar="B",
                   help="batch sizes of the decode-vs-context curves (default: 1 8)")
    p.add_argument("--no-llama", action="store_true", help="skip the transformers LlamaForCausalLM reference")
    p.add_argument("--no-profile", action="store_true", help="skip the torch.profiler breakdown")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2; 0 keeps torch's default)")
    p.add_argument("--data", default=None, help="folder with val*.u16 for prompts (default: the repo's data/)")
    p.add_argument("--from-json", metavar="PATH",
                   help="re-render the report and plots from a saved performance.json instead of measuring")
    p.add_argument("--out", default=str(ROOT / "docs" / "performance.md"),
                   help="markdown report to write (with .json and PNG plots beside it; default: docs/performance.md); "
                        "empty string to skip")


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("bench", help="measure decode speed, prefill, KV memory and FLOPs; write docs/performance.md",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mor.analysis.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
