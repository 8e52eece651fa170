"""The per-batch decoding paths: one timed run of the naive path, active-token gathering
(`model.generate`'s loop), the engine and transformers' Llama, the interleaved repeats, and their
rows with speedups against vanilla."""

from __future__ import annotations

import statistics
import time

import torch

from ...inference.engine import Engine
from ...model.flops import decode_flops_per_token
from ..naive import naive_generate
from .common import ENGINE_REQUESTS, PATHS, PeakMemory, _median


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
