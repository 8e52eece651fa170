"""`mor bench`: the whole measurement (`run_benchmark`), the report files, and the command's flags."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from ...model.loading import list_checkpoints
from .common import DEFAULT_CHECKPOINTS, ENGINE_REQUESTS, PATHS, PATH_TITLES, ROOT, SERVING_WIDTHS, describe, load_models, make_prompts, other_cpu_load
from .costs import depth_cap_sweep, measure_growth, profile_engine
from .paths import add_speedups, llama_twin, result_row, timed_runs
from .serving import measure_serving
from .summary import summarize


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
    if serving and serving["widths"]:
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
    if (any(w < 1 for w in args.serving_widths) or args.serving_requests_per_slot < 1 or args.serving_new_tokens < 1
            or not args.matmul_sizes or any(n < 1 for n in args.matmul_sizes)):
        raise ValueError("--serving-widths, --serving-requests-per-slot, --serving-new-tokens and --matmul-sizes "
                         "must be >= 1 (give --serving-widths with no value to skip the serving section).")
    serving = {"widths": args.serving_widths, "requests_per_slot": args.serving_requests_per_slot,
               "new_tokens": args.serving_new_tokens}
    return run_benchmark(names, args.batch_sizes, args.new_tokens, args.prompt_len, args.repeats,
                         args.growth_lengths, args.growth_batch_sizes, llama=not args.no_llama,
                         profile=not args.no_profile, threads=args.threads, data_dir=args.data, log=log,
                         serving=serving, matmul_sizes=args.matmul_sizes)


def write_report(report: dict, out: Path) -> list[str]:
    """The markdown report at `out`, its data beside it (.json) and its plots; the files written."""
    from ..report import performance_plots, render_performance

    out.parent.mkdir(parents=True, exist_ok=True)
    images = performance_plots(report, out.parent)
    out.write_text(render_performance(report, images), encoding="utf-8")
    out.with_suffix(".json").write_text(json.dumps(report, indent=1), encoding="utf-8")
    return [str(out), str(out.with_suffix(".json")), *images]


def run(args: argparse.Namespace) -> int:
    from ..report import performance_checks

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
    p.add_argument("--serving-widths", nargs="*", type=int, default=list(SERVING_WIDTHS), metavar="W",
                   help="widths (rows per pass: the engine's max_batch; generate's static batch) of the serving "
                        "section, issue 14's workload and targets; give none to skip it "
                        f"(default: {' '.join(map(str, SERVING_WIDTHS))})")
    p.add_argument("--serving-requests-per-slot", type=int, default=4, metavar="K",
                   help="the serving workload's requests per width: K x W requests, all arriving at once "
                        "(default: 4; the issue's targets hold for K >= 4)")
    p.add_argument("--serving-new-tokens", type=int, default=32, metavar="N",
                   help="tokens each serving request decodes (default: 32; the issue's targets: 32-64)")
    p.add_argument("--matmul-sizes", nargs="+", type=int, default=[1024, 2048], metavar="N",
                   help="square float32 torch.mm sizes at which this CPU's matmul peak is measured, before and "
                        "after the serving runs; the best size's median counts (default: 1024 2048)")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 8, 16, 32, 64], metavar="B",
                   help="batch sizes (requests decoded together) of the per-batch paths (default: 1 8 16 32 64)")
    p.add_argument("--new-tokens", type=int, default=64,
                   help="tokens decoded per request on the per-batch paths (default: 64)")
    p.add_argument("--prompt-len", type=int, default=64,
                   help="prompt length in tokens, serving section included (default: 64)")
    p.add_argument("--repeats", type=int, default=3,
                   help="interleaved repeats of the serving runs and the per-batch paths; medians are reported "
                        "(default: 3)")
    p.add_argument("--growth-lengths", nargs="*", type=int, default=[128, 256, 512, 1024], metavar="L",
                   help="sequence lengths for the cost-growth plot (trace and decode; 1000 is always added to "
                        "the traces); give none to skip (default: 128 256 512 1024)")
    p.add_argument("--growth-batch-sizes", nargs="+", type=int, default=[1, 8], metavar="B",
                   help="batch sizes of the decode-vs-context curves (default: 1 8)")
    p.add_argument("--no-llama", action="store_true",
                   help="skip the transformers LlamaForCausalLM reference (per-batch paths and serving)")
    p.add_argument("--no-profile", action="store_true", help="skip the torch.profiler breakdown")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2; 0 keeps torch's default)")
    p.add_argument("--data", default=None, help="folder with val*.u16 for prompts (default: the repo's data/)")
    p.add_argument("--from-json", metavar="PATH",
                   help="re-render the report and plots from a saved performance.json instead of measuring")
    p.add_argument("--out", default=str(ROOT / "docs" / "performance.md"),
                   help="markdown report to write (with .json and PNG plots beside it; default: docs/performance.md); "
                        "empty string to skip")


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("bench", help="measure serving throughput and latency, decode speed, prefill, KV "
                                            "memory and FLOPs; write docs/performance.md",
                              description=bench_doc(), formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(func=run)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mor.analysis.bench", description=bench_doc(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


def bench_doc() -> str:
    """The package docstring (the command's description: run examples and what is measured)."""
    from . import __doc__ as doc

    return doc
