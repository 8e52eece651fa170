"""`mor results`: measure every shipped checkpoint and regenerate docs/results.md from the numbers.

    mor results --data data --out docs                       # the suite in checkpoints/
    mor results --data data --out docs --baseline /tmp/v1 --baseline-val data_v1/val.txt
    mor results --data data --out docs --baseline-val data_v1/val.txt --only mor-ec-r3-probe

`--only NAME ...` measures just those checkpoints (after retraining one) and keeps every other row,
and the baseline, from the results.json already in --out: a kept row must have been measured on
the same texts, from the same weights (each row records its weights file's SHA-256).

Measurement and writing are apart: `measure_suite` returns plain data (docs/results.json holds it
whole), `mor.analysis.report.render_results` turns that data into markdown, and every sentence
there that states a result is computed from the numbers it states.

What is measured, per checkpoint, with causal routing unless stated:
- on each evaluation text (the validation split that `mor data` rebuilds, the v1 validation split
  when given, held-out fortune cookies that no source contains): NLL per token and bits per byte
  (tokenizer-independent, so checkpoints with different tokenizers compare), whole texts in
  overlapping context windows;
- on the validation split: NLL at every depth cap 1..N_r, with every token forced to full depth,
  with training-time top-k routing (and how often the causal rule gives the same depths), depth
  histogram, how much depth varies within sentences, how depth relates to difficulty (Spearman
  with the token's own NLL and with the next token's NLL, under the model and under vanilla), KV
  bytes per strategy on one context window;
- the addition probe at every depth cap (`mor.analysis.probe`).
The levers tried and not shipped (`mor.analysis.experiments`) are rendered beside them.
A `--baseline` folder of earlier checkpoints (e.g. the v1 suite from git history) is measured on
the same texts for bits per byte, so "better than before" is measured in one run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

from .. import analysis
from ..data.heldout import fortunes_provenance, fortunes_text
from ..model.card import model_card
from ..model.loading import list_checkpoints, load, load_config, read_training_info
from . import probe
from .experiments import EXPERIMENTS, METRIC_TITLES

SENTENCE_END = re.compile(r"[.!?]\s*$|\n")
MIN_SENTENCE_TOKENS = 5


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either side is constant."""
    def ranks(x):
        order = x.argsort(kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for value in np.unique(x):  # average the ranks of tied values
            tied = x == value
            r[tied] = r[tied].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1]) if ra.std() > 0 and rb.std() > 0 else float("nan")


def sentence_depth_std(tokens: list[str], depths: list[int]) -> float:
    """Mean standard deviation of depth inside sentences of >= MIN_SENTENCE_TOKENS tokens (a sentence
    ends at a token ending in . ! ? or holding a newline): 0 would mean one depth per sentence."""
    stds, current = [], []
    for token, depth in zip(tokens, depths):
        current.append(depth)
        if SENTENCE_END.search(token):
            if len(current) >= MIN_SENTENCE_TOKENS:
                stds.append(float(np.std(current)))
            current = []
    return float(np.mean(stds)) if stds else float("nan")


def text_scores(model, tokenizer, text: str, **kwargs) -> dict:
    """NLL, bits per byte and mean depth of a whole text (overlapping windows)."""
    result = analysis.evaluate(model, tokenizer, text, **kwargs)
    return {key: result[key] for key in ("nll", "bits_per_byte", "tokens", "mean_depth")}


def routing_measurements(model, tokenizer, val_text: str, trace: analysis.Trace, vanilla: dict | None) -> dict:
    """What the router does on the validation text: caps, full depth, top-k, difficulty."""
    R = model.config.num_recursions
    # keys are strings, as they read back from results.json
    row: dict = {"cap_nll": {str(cap): text_scores(model, tokenizer, val_text, depth_cap=cap)["nll"] for cap in range(1, R + 1)}}
    if R > 1:
        row["fixed_full_nll"] = text_scores(model, tokenizer, val_text, fixed_depth=R)["nll"]
    if model.config.routing == "expert_choice":
        top_k = analysis.trace(model, tokenizer, val_text, routing_mode="capacity")
        row["capacity_mode_nll"] = top_k.nll
        row["causal_capacity_agreement"] = float(np.mean(np.array(top_k.depths) == np.array(trace.depths)))
    if model.config.routing != "none":
        depths = np.array(trace.depths, dtype=float)
        own = np.array([np.nan if v is None else v for v in trace.token_nll])
        # Two readings of "hard": the token's own surprisal, and the NLL of the next token, which is
        # what the position's recursions are computed for. Under the model and under vanilla (when
        # vanilla shares the tokenizer, so the tokens line up).
        row["spearman_depth_own_nll"] = spearman(depths[1:], own[1:])
        row["spearman_depth_next_nll"] = spearman(depths[:-1], own[1:])
        if vanilla is not None and vanilla["token_ids"] == trace.token_ids:
            v = np.array([np.nan if x is None else x for x in vanilla["token_nll"]])
            row["spearman_depth_vanilla_own_nll"] = spearman(depths[1:], v[1:])
            row["spearman_depth_vanilla_next_nll"] = spearman(depths[:-1], v[1:])
        row["sentence_depth_std"] = sentence_depth_std(trace.tokens, trace.depths)
    return row


RECIPE_ARGUMENTS = ("flops_budget", "seq_len", "batch_size", "lr", "schedule", "warmup", "addition_share",
                    "addition_balanced", "depth_cap_prob")


def recipe(info: dict, cfg) -> dict:
    """How a checkpoint was trained: its run settings (training.json) and router settings (config)."""
    arguments = info.get("arguments", {})
    out = {key: arguments.get(key) for key in RECIPE_ARGUMENTS}
    if cfg.routing != "none":
        out.update(router_gate=cfg.router_gate, router_aux_loss_coef=cfg.router_aux_loss_coef)
    return out


def weights_sha256(folder: Path) -> str:
    """SHA-256 of a checkpoint's weights file: what a kept row of `--only` is checked against."""
    digest = hashlib.sha256()
    with open(folder / "model.safetensors", "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def measure_checkpoint(folder: Path, texts: dict[str, str], vanilla: dict | None, probe_examples: int) -> dict:
    """One checkpoint's row (see the module docstring); plain data only."""
    model, tokenizer = load(folder, device="cpu")
    cfg = model.config
    info = read_training_info(folder) or {}
    start = time.perf_counter()
    trace = analysis.trace(model, tokenizer, texts["validation"])
    row = {
        "name": folder.name, "weights_sha256": weights_sha256(folder),
        "measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "routing": cfg.routing, "sharing": cfg.sharing, "kv_cache": cfg.kv_cache,
        "R": cfg.num_recursions, "L": cfg.num_hidden_layers, "context": cfg.max_position_embeddings,
        "capacities": list(cfg.capacities) if cfg.routing == "expert_choice" else None,
        "unique_params": model.num_parameters(), "effective_params": model.num_effective_parameters(),
        "tokens_seen": info.get("tokens_seen"), "training_flops": info.get("training_flops"),
        "wall_seconds": info.get("wall_seconds"), "preset": info.get("preset"),
        "addition_share": info.get("addition_share", 0.0), "depth_cap_prob": info.get("depth_cap_prob", 0.0),
        "recipe": recipe(info, cfg),
        "val_nll": trace.nll, "mean_depth": trace.mean_depth,
        "depth_hist": [trace.depths.count(d) for d in range(1, cfg.num_recursions + 1)],
        "texts": {name: text_scores(model, tokenizer, text) for name, text in texts.items()},
    }
    row.update(routing_measurements(model, tokenizer, texts["validation"], trace, vanilla))
    kv = analysis.kv_report(model, tokenizer, texts["validation"])
    row.update(kv_tokens=kv.tokens, kv_bytes=kv.totals(),
               kv_formula_ok=all(kv.measured[s] == kv.formula[s] for s in kv.measured))
    fmt, trained = probe.checkpoint_format(folder)
    row["probe"] = {"trained_on_format": trained, "format": fmt.record(), "by_cap": {}}
    for cap in range(1, cfg.num_recursions + 1):
        result = probe.run_probe(model, tokenizer, fmt, examples=probe_examples, depth_cap=cap)
        row["probe"]["by_cap"][str(cap)] = {k: result[k] for k in ("accuracy", "mean_depth_answer", "mean_depth_prompt")}
    row["measure_seconds"] = round(time.perf_counter() - start, 1)
    row["_trace"] = {"token_ids": trace.token_ids, "token_nll": trace.token_nll}  # for the next rows, not saved
    return row


def measure_baseline(folder: Path, texts: dict[str, str]) -> dict:
    """Bits per byte of an earlier checkpoint on the same texts."""
    model, tokenizer = load(folder, device="cpu")
    return {"name": folder.name, "unique_params": model.num_parameters(),
            "texts": {name: text_scores(model, tokenizer, text) for name, text in texts.items()}}


def evaluation_texts(data: Path, baseline_val: Path | None, fortunes_chars: int) -> tuple[dict[str, str], dict]:
    """The texts every checkpoint is scored on, and where each comes from."""
    val = data / "val.txt"
    if not val.is_file():
        raise FileNotFoundError(f"{val} not found; build the corpus with `mor data --out {data}`.")
    texts = {"validation": val.read_text(encoding="utf-8")}
    sources = {"validation": f"{val} (the validation split of `mor data`)"}
    if baseline_val is not None:
        texts["v1 validation"] = baseline_val.read_text(encoding="utf-8")
        sources["v1 validation"] = f"{baseline_val} (the v1 corpus's validation split)"
    texts["fortunes"] = fortunes_text(fortunes_chars)
    provenance = fortunes_provenance()
    sources["fortunes"] = f"first {fortunes_chars:,} characters of {provenance['used']} ({provenance['package']} {provenance['version']})"
    return texts, sources


def kept_rows(previous: dict, texts: dict[str, str], folders: list[Path], only: set[str]) -> dict[str, dict]:
    """The rows `--only` keeps from a saved results.json, checked: measured on the same texts, and
    (when the row records it) from the weights the checkpoint holds now. ValueError otherwise."""
    names = {f.name for f in folders}
    if only - names:
        raise ValueError(f"--only names no shipped checkpoint: {', '.join(sorted(only - names))}; "
                         f"choose from {', '.join(sorted(names))}.")
    saved = {name: info.get("chars") for name, info in previous.get("texts", {}).items()}
    now = {name: len(text) for name, text in texts.items()}
    if saved != now:
        raise ValueError(f"the saved results were measured on other texts ({saved}) than this run's ({now}); "
                         "give the same --data / --baseline-val, or measure every checkpoint.")
    rows = {row["name"]: row for row in previous.get("rows", [])}
    kept = {}
    for folder in folders:
        if folder.name in only:
            continue
        if folder.name not in rows:
            raise ValueError(f"{folder.name} has no saved row to keep; add it to --only.")
        recorded = rows[folder.name].get("weights_sha256")
        if recorded is None:
            print(f"note: keeping {folder.name}'s row, measured before rows recorded their weights' SHA-256", flush=True)
        elif recorded != weights_sha256(folder):
            raise ValueError(f"{folder.name}'s weights changed since its row was measured; add it to --only.")
        kept[folder.name] = {**rows[folder.name], "measured": rows[folder.name].get("measured", previous.get("generated"))}
    return kept


def measure_suite(args: argparse.Namespace) -> dict:
    folders = sorted(list_checkpoints(), key=lambda p: (p.name != "vanilla", p.name))
    if not folders:
        raise ValueError("no checkpoints found under checkpoints/.")
    texts, sources = evaluation_texts(Path(args.data), Path(args.baseline_val) if args.baseline_val else None,
                                      args.fortunes_chars)
    previous, kept = {}, {}
    if args.only:
        saved = Path(args.out) / "results.json"
        if not saved.is_file():
            raise FileNotFoundError(f"--only keeps rows from {saved}, which does not exist; measure every checkpoint first.")
        previous = json.loads(saved.read_text())
        kept = kept_rows(previous, texts, folders, set(args.only))
    rows, vanilla = [], None
    for folder in folders:
        if folder.name in kept:
            rows.append(kept[folder.name])
            if folder.name == "vanilla" and len(kept) < len(folders):  # the difficulty readings of the others need it
                model, tokenizer = load(folder, device="cpu")
                trace = analysis.trace(model, tokenizer, texts["validation"])
                vanilla = {"token_ids": trace.token_ids, "token_nll": trace.token_nll}
            continue
        row = measure_checkpoint(folder, texts, vanilla, args.probe_examples)
        trace = row.pop("_trace")
        if folder.name == "vanilla":
            vanilla = trace
        rows.append(row)
        print(f"{folder.name}: val nll {row['val_nll']:.4f}, bits/byte {row['texts']['validation']['bits_per_byte']:.4f}, "
              f"mean depth {row['mean_depth']:.2f} ({row['measure_seconds']:.0f} s)", flush=True)
    if args.baseline:
        baseline = [measure_baseline(folder.parent, texts) for folder in sorted(Path(args.baseline).glob("*/config.json"))]
        baseline_folder = args.baseline
    else:
        baseline, baseline_folder = previous.get("baseline", []), previous.get("baseline_folder")
    data = {"texts": {name: {"source": sources[name], "chars": len(text)} for name, text in texts.items()},
            "rows": rows, "baseline": baseline, "baseline_folder": baseline_folder,
            "torch_threads": torch.get_num_threads(), "generated": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if kept:
        data["kept"] = {"rows": sorted(kept), "baseline": not args.baseline}
    return data


def run(args: argparse.Namespace) -> int:
    from .report import render_results, results_plots

    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = json.loads(Path(args.from_json).read_text()) if args.from_json else measure_suite(args)
    # the levers tried and not shipped are records, not measured by this run: added here once, saved
    # with a fresh measurement, and a results.json saved before they were listed renders with today's
    data.setdefault("experiments", {"entries": EXPERIMENTS, "metric_titles": METRIC_TITLES})
    for folder in list_checkpoints():  # keep the model cards in step with this code
        info = read_training_info(folder)
        if info:
            (folder / "README.md").write_text(model_card(folder.name, load_config(folder), info))
    plots = results_plots(data, out)
    (out / "results.md").write_text(render_results(data, plots), encoding="utf-8")
    if not args.from_json:
        (out / "results.json").write_text(json.dumps(data, indent=1) + "\n")
    print(f"wrote {out / 'results.md'}, {out / 'results.json'} and {', '.join(plots.values())}")
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("results", help="measure the shipped checkpoints and regenerate docs/results.md",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data", help="folder written by `mor data` (val.txt is used)")
    p.add_argument("--out", default="docs", help="where results.md, results.json and the PNG plots go")
    p.add_argument("--baseline", help="a folder of earlier checkpoints to compare bits per byte with (e.g. v1)")
    p.add_argument("--baseline-val", help="an extra evaluation text: the earlier corpus's validation split")
    p.add_argument("--fortunes-chars", type=int, default=100_000, help="characters of held-out fortune cookies")
    p.add_argument("--probe-examples", type=int, default=500, help="fresh addition problems per checkpoint and cap")
    p.add_argument("--from-json", help="re-render results.md from a saved results.json instead of measuring")
    p.add_argument("--only", nargs="+", metavar="NAME",
                   help="measure only these checkpoints; keep the other rows (and the baseline, unless --baseline "
                        "is given) from --out's results.json, checked against the texts and each checkpoint's weights")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.set_defaults(func=run)
