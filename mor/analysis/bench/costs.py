"""Where the cost goes: trace time and decode time against length (cost growth), the engine's
passes under torch.profiler, and decode speed at every depth cap beside its validation NLL."""

from __future__ import annotations

import itertools
import json
import statistics
import time
from pathlib import Path

import torch

from ...inference.engine import Engine
from .common import ENGINE_REQUESTS, MATMUL_OPS, PROFILE_STEPS, PROFILE_WARMUP, THRESHOLDS, make_prompts
from .paths import run_engine


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


# ---- where the time goes ---------------------------------------------------------------------------


def _decode_ms(a, z) -> float:
    """Engine decode milliseconds between two events (prefill time excluded)."""
    return 1000 * ((z.elapsed - z.prefill_seconds) - (a.elapsed - a.prefill_seconds))


def _decode_start(stream, requests: int):
    """Run `stream` to the start of a decode-only window and return the last event consumed: first
    until every request has its first token (all prompts are in: chunked prefill rides in the same
    passes, so a window taken earlier would hold mostly prompt rows and few decoded tokens), then
    PROFILE_WARMUP events more. The window is the next PROFILE_STEPS events."""
    start = None
    for start in stream:
        if start.tokens_generated >= requests:
            break
    for start in itertools.islice(stream, PROFILE_WARMUP):
        pass
    return start


def _pass_costs(model, batch: int, prompts, new_tokens: int) -> dict:
    """Without the profiler: the wall time per token over a window like `_profiled`'s, and over
    the whole stream the decode time per weight pass and the rows a pass carries on average."""
    engine = Engine(model, max_batch=batch)
    stream = engine.stream(prompts, max(new_tokens, 48), stop_at_eos=False)
    a = _decode_start(stream, len(prompts))
    window = list(itertools.islice(stream, PROFILE_STEPS))
    final = [a, *window, *stream][-1]
    decoded = window[-1].tokens_generated - a.tokens_generated if window else 0
    passes = sum(engine.passes.values())
    return {"wall_ms_per_token_unprofiled": _decode_ms(a, window[-1]) / decoded if decoded else None,
            "ms_per_pass": 1000 * (final.elapsed - final.prefill_seconds) / passes if final and passes else None,
            "rows_per_pass": engine.pass_rows / max(passes, 1)}


def _profiled(model, batch: int, prompts, new_tokens: int) -> dict | None:
    """torch.profiler over the PROFILE_STEPS engine events of `_decode_start`'s window."""
    from torch.profiler import ProfilerActivity, profile

    stream = Engine(model, max_batch=batch).stream(prompts, max(new_tokens, 48), stop_at_eos=False)
    first = _decode_start(stream, len(prompts))
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
