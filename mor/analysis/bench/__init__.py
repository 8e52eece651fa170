"""`mor bench`: serving throughput and latency, decode speed, prefill time, K/V memory and FLOPs of
the shipped checkpoints.

    mor bench                                   # every checkpoint, writes docs/performance.md (+ .json, PNGs)
    mor bench --serving-widths 1 4 16 32 64 128 --serving-requests-per-slot 4 --serving-new-tokens 32
    mor bench --checkpoints vanilla mor-ec-r3 mor-ec-r3-sparse --serving-widths 16 64 --batch-sizes 16 --repeats 3
    mor bench --serving-widths --no-llama       # no serving section, no Llama reference
    mor bench --matmul-sizes 512 1024 2048      # where the matmul peak is measured
    mor bench --from-json docs/performance.json # re-render the report from saved data, no measuring
    python -m mor.analysis.bench --help         # the same command without the `mor` entry point

The package measures and returns plain data (what --json prints and performance.json holds);
`summarize` adds what the numbers say, as numbers (`derive_serving`, `targets`, `findings`); the
markdown and the plots are rendered from that data by `mor.analysis.report` (performance.py,
plots.py), which writes no sentence its numbers do not support.

Serving (issue 14's workload and targets, `measure_serving`): at every width W of
--serving-widths (rows per pass, the engine's max_batch), --serving-requests-per-slot x W requests
(default 4W) of --prompt-len real-text tokens all arrive at t = 0 and decode
--serving-new-tokens tokens each (default 32), greedy, end-of-text ignored. Each checkpoint runs
them on the engine (`Engine(model, max_batch=W)`, its default max_inflight, prefill_chunk and max_tokens);
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

Modules: `common` (the checkpoints, paths, targets, prompts, peak memory), `paths` (the per-batch
decoding paths), `serving` (the serving workload), `costs` (cost growth, the profiler breakdown,
the depth-cap sweep), `summary` (what the numbers say, as data), `cli` (`run_benchmark`, the
report files, the flags).
"""

from __future__ import annotations

from .common import (  # noqa: F401
    PATHS, PATH_TITLES, DEFAULT_CHECKPOINTS, ROOT, ENGINE_REQUESTS, SERVING_WIDTHS, THRESHOLDS, PROFILE_WARMUP, PROFILE_STEPS, MATMUL_OPS, make_prompts, describe, PeakMemory, other_cpu_load, load_models, _median,
)
from .paths import (  # noqa: F401
    run_gather, run_naive, run_engine, llama_twin, run_llama, RUNNERS, prompts_for, timed_runs, result_row, finder, add_speedups,
)
from .serving import (  # noqa: F401
    TokenTimes, percentile, latency_stats, serve_engine, serve_llama, run_flops, matmul_peak, SERVERS, serving_runs, serving_row, measure_serving, derive_serving,
)
from .costs import (  # noqa: F401
    _median_time, trace_seconds, decode_ms_per_token, measure_growth, _decode_ms, _pass_costs, _profiled, _breakdown, profile_engine, validation_nll, depth_cap_sweep,
)
from .summary import (  # noqa: F401
    summarize, routed_engine_rows, target_check, serving_targets, workload_check, targets, _where, _extremes, findings, serving_findings, full_pass_rows, full_passes, pass_fill, serving_ceilings, pass_model, path_comparison, pass_cost, depth_for, _serving_configs, depth_for_speedup, passes_depth_for_speedup,
)
from .cli import (  # noqa: F401
    run_benchmark, run_meta, profile_batch, measure, write_report, run, add_arguments, register_cli, main, bench_doc,
)
