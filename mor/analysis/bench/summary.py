"""What the numbers say, as data: targets met or missed (by how much), findings, weight-pass and
FLOPs ceilings. The report words these; nothing here writes prose."""

from __future__ import annotations

import json
import statistics


from ...model.configuration import MoRConfig
from .common import PATHS, PATH_TITLES, THRESHOLDS
from .paths import finder
from .serving import derive_serving, run_flops


# ---- what the numbers say, as data (the report words it; nothing here writes prose) ---------------


def summarize(report: dict) -> dict:
    """Add the derived data to a measured (or saved) report: `derive_serving`, `targets` and
    `findings`, recomputed from the measurements, so `--from-json` renders exactly what a fresh run
    would."""
    m = report["meta"]
    m.setdefault("paths", list(dict.fromkeys(r["path"] for r in report["results"])))
    m.setdefault("path_titles", PATH_TITLES)
    serving = report.setdefault("serving", {})
    if serving.get("rows"):
        derive_serving(serving, m["vanilla"])
    report["targets"] = targets(report)
    report["findings"] = findings(report)
    return report


def routed_engine_rows(report: dict, min_batch: int = 1) -> list[dict]:
    """Engine rows of routed checkpoints with a vanilla baseline, at batch >= min_batch."""
    info = report["checkpoints"]
    return [r for r in report["results"] if r["path"] == "engine" and r["batch_size"] >= min_batch
            and r["checkpoint"] in info and info[r["checkpoint"]]["routing"] != "none" and r.get("predicted_speedup")]


def target_check(rows: list[dict], key: str, target: float) -> dict:
    """`key` of every row (one per width) against `target` (met when value >= target): each value and
    its margin, whether every width meets it, the worst width, and by how much the worst misses
    (absolute and as a fraction of the target; 0 when met)."""
    values = [{"width": r["width"], "value": r[key], "margin": r[key] - target}
              for r in sorted(rows, key=lambda r: r["width"])]
    worst = min(values, key=lambda v: v["value"])
    met = all(v["value"] >= target for v in values)
    missed_by = 0.0 if met else target - worst["value"]
    return {"target": target, "rows": values, "met": met, "worst": worst, "missed_by": missed_by,
            "missed_by_fraction": missed_by / target, "missed_at": [v["width"] for v in values if v["value"] < target]}


def serving_targets(report: dict) -> tuple[list[dict], list[dict]]:
    """The serving targets of THRESHOLDS against the serving rows, as `target_check`s: each named
    checkpoint's engine speedup over vanilla's engine and its ratio to the FLOPs prediction, and
    vanilla's engine over Llama's generate; and the targets with no rows to check (not measured)."""
    t, vanilla = THRESHOLDS, report["meta"]["vanilla"]
    rows = (report.get("serving") or {}).get("rows") or []
    checks, missing = [], []
    wanted = [("speedup", name, "speedup_vs_vanilla", target) for name, target in t["speedup"].items()]
    wanted += [("ratio", name, "speedup_ratio", target) for name, target in t["ratio"].items()]
    wanted.append(("vanilla_over_llama", vanilla, "speedup_vs_llama", t["vanilla_over_llama"]))
    for kind, name, key, target in wanted:
        mine = [r for r in rows if r["checkpoint"] == name and r.get(key) is not None]
        entry = {"kind": kind, "checkpoint": name}
        if mine:
            checks.append({**entry, **target_check(mine, key, target)})
        else:
            missing.append({**entry, "target": target})
    return checks, missing


def workload_check(serving: dict) -> dict | None:
    """Whether the serving workload is the issue's: >= requests_per_slot x W requests, new tokens in
    THRESHOLDS' range, prompts of real text (validation windows), widths from 1 to 128."""
    if not serving.get("rows"):
        return None
    t = THRESHOLDS
    lo, hi = t["new_tokens"]
    widths = serving["widths"]
    checks = {"requests_per_slot": serving["requests_per_slot"] >= t["requests_per_slot"],
              "new_tokens": lo <= serving["new_tokens"] <= hi,
              "real_text": serving["prompt_source"].startswith("windows of"),
              "widths_1_to_128": min(widths) <= 1 and max(widths) >= 128}
    return {"requests_per_slot": serving["requests_per_slot"], "new_tokens": serving["new_tokens"],
            "prompt_source": serving["prompt_source"], "widths": widths, "holds": checks, "met": all(checks.values())}


def targets(report: dict) -> dict:
    """The issue's targets (THRESHOLDS) against the measurements: the serving workload, every
    serving target (`serving_targets`) with which are met and which missed by how much, those not
    measured, and the trace times at THRESHOLDS' length."""
    t = THRESHOLDS
    checks, missing = serving_targets(report)
    out = {"thresholds": json.loads(json.dumps(t)), "workload": workload_check(report.get("serving") or {}),
           "serving": checks, "not_measured": missing,
           "met": [f"{c['kind']}:{c['checkpoint']}" for c in checks if c["met"]],
           "missed": [f"{c['kind']}:{c['checkpoint']}" for c in checks if not c["met"]]}
    traces = [g for g in report["growth"]["trace"] if g["seq_len"] == t["trace_tokens"]]
    out["trace_1000_seconds"] = {g["checkpoint"]: g["seconds"] for g in traces}
    out["trace_under_0.5s"] = bool(traces) and all(g["seconds"] < t["trace_seconds"] for g in traces)
    return out


def _where(row: dict, key: str, at: str = "batch_size") -> dict:
    return {"checkpoint": row["checkpoint"], at: row[at], "value": row[key]}


def _extremes(rows: list[dict], key: str, at: str = "batch_size") -> dict:
    """The lowest, the highest and the median of `key` over rows, with where the extremes are."""
    return {"rows": len(rows), "median": statistics.median(r[key] for r in rows),
            "lowest": _where(min(rows, key=lambda r: r[key]), key, at),
            "highest": _where(max(rows, key=lambda r: r[key]), key, at)}


def findings(report: dict) -> dict:
    """The numbers the report's analysis states, computed here once: on the serving workload, the
    share of the matmul peak reached, how full the engine's passes were and the depth each routed
    model would need for its speedup target; on the per-batch paths, how well FLOPs and weight
    passes predict the measured engine speedup, the three paths side by side at the largest batch,
    what a weight pass costs, and the LM head's size."""
    routed = routed_engine_rows(report)
    vanilla = report["meta"]["vanilla"]
    van = report["checkpoints"].get(vanilla)
    return {"serving": serving_findings(report),
            "flops_fit": _extremes(routed, "speedup_ratio") if routed else None,
            "pass_model": pass_model(report),
            "paths": path_comparison(report),
            "pass_cost": pass_cost(report.get("profile") or {}),
            "lm_head_multiply_adds": van["vocab_size"] * van["hidden_size"] if van else None}


def serving_findings(report: dict) -> dict | None:
    """The serving rows' share of the matmul peak (extremes over every row), the engine's pass fill
    (`pass_fill`) and the depth ceilings at the largest width (`serving_ceilings`)."""
    rows = [r for r in (report.get("serving") or {}).get("rows") or [] if r.get("peak_fraction") is not None]
    if not rows:
        return None
    fill = pass_fill(report)
    return {"peak_share": _extremes(rows, "peak_fraction", "width"), "fill": fill,
            "fill_extremes": _extremes(fill, "fill", "width") if fill else None,
            "ceilings": serving_ceilings(report)}


def full_pass_rows(config, prompt_len: int, new_tokens: int, depth: float) -> float:
    """Rows one request sends through weight passes on the engine (one per token per layer call,
    one per LM-head call): every token fed (prompt_len + new_tokens: the last new token still takes
    its recursion steps, so its depth is known) through each prelude layer and, at mean depth
    `depth`, through the layers of each step it takes; all but the last through each coda layer;
    new_tokens rows through the LM head. With every pass full (W rows), a request costs this / W."""
    through, coda = _token_layers(config, depth)
    fed = prompt_len + new_tokens
    return fed * through + (fed - 1) * coda + new_tokens


def _token_layers(config, depth: float) -> tuple[float, int]:
    """Layer calls of one token at mean depth `depth`: (prelude + the steps it takes, coda)."""
    prelude, steps, coda = config.layer_plan()
    block = sum(len(layers) * min(max(depth - r, 0.0), 1.0) for r, layers in enumerate(steps))
    return len(prelude) + block, len(coda)


def full_passes(config, prompt_len: int, new_tokens: int, depth: float, width: int, max_tokens: int) -> float:
    """Weight passes one request needs on the engine when every pass is full: its prompt tokens'
    layer rows (`full_pass_rows` of the prompt alone, less its LM-head row) in passes of
    `max_tokens` rows, the rest (decode rows and every LM-head row) in passes of `width` rows."""
    prompt = prompt_len * sum(_token_layers(config, depth))
    rest = full_pass_rows(config, prompt_len, new_tokens, depth) - prompt
    return prompt / max_tokens + rest / width


def pass_fill(report: dict) -> list[dict]:
    """Per serving engine row: the weight passes per new token it made, the count `full_passes`
    gives at its measured depth with every pass full (W decode rows, prompt chunks up to the
    engine's max_tokens), and fill = full / made (1: every pass full; lower: passes ran part-empty,
    at start-up, drain or on short queues)."""
    s = report.get("serving") or {}
    out = []
    for r in s.get("rows") or []:
        if not r.get("passes_per_token") or r["checkpoint"] not in report["configs"]:
            continue
        cfg = MoRConfig(**report["configs"][r["checkpoint"]])
        tokens = r.get("max_tokens") or max(r["width"], r["prefill_chunk"])
        full = full_passes(cfg, s["prompt_len"], s["new_tokens"], r["mean_depth_all"], r["width"], tokens)
        full /= s["new_tokens"]
        out.append({"checkpoint": r["checkpoint"], "width": r["width"], "passes_per_token": r["passes_per_token"],
                    "full_passes_per_token": full, "fill": full / r["passes_per_token"]})
    return out


def serving_ceilings(report: dict) -> list[dict]:
    """Per routed checkpoint at the largest serving width with a vanilla row: its measured mean depth
    over every token, the speedup its run FLOPs allow there, and the mean depth its speedup target
    (its own, else THRESHOLDS' speedup_default) needs by run FLOPs and by full passes."""
    s, vanilla = report.get("serving") or {}, report["meta"]["vanilla"]
    index = {(r["checkpoint"], r["width"]): r for r in s.get("rows") or []}
    widths = [w for (n, w) in index if n == vanilla]
    if not widths:
        return []
    w, out = max(widths), []
    for name, info in report["checkpoints"].items():
        row = index.get((name, w))
        if row is None or info["routing"] == "none" or row.get("predicted_speedup") is None:
            continue
        cfg = MoRConfig(**report["configs"][name])
        target = THRESHOLDS["speedup"].get(name, THRESHOLDS["speedup_default"])
        out.append({"checkpoint": name, "width": w, "mean_depth": row["mean_depth_all"],
                    "num_recursions": cfg.num_recursions, "target": target, "own_target": name in THRESHOLDS["speedup"],
                    "flops_allow": row["predicted_speedup"],
                    "depth_needed_flops": depth_for_speedup(report, name, target),
                    "depth_needed_passes": passes_depth_for_speedup(report, name, target)})
    return out


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


def depth_for(cost, budget: float, max_depth: int) -> float | None:
    """The largest mean depth in [1, max_depth] at which cost(depth) <= budget (cost grows with the
    depth); None if even depth 1 costs more."""
    lo, hi = 1.0, float(max_depth)
    if cost(lo) > budget:
        return None
    if cost(hi) <= budget:
        return hi
    for _ in range(40):
        mid = (lo + hi) / 2
        if cost(mid) <= budget:
            lo = mid
        else:
            hi = mid
    return lo


def _serving_configs(report: dict, name: str):
    s, vanilla = report["serving"], report["meta"]["vanilla"]
    return (MoRConfig(**report["configs"][name]), MoRConfig(**report["configs"][vanilla]), s["prompt_len"],
            s["new_tokens"])


def depth_for_speedup(report: dict, name: str, target: float) -> float | None:
    """Mean depth (over every token) at which `name`'s run FLOPs on the serving workload (`run_flops`)
    are vanilla's / target (None if even depth 1 does not get there)."""
    cfg, van, p, n = _serving_configs(report, name)
    return depth_for(lambda d: run_flops(cfg, p, n, 1, d), run_flops(van, p, n, 1, 1.0) / target, cfg.num_recursions)


def passes_depth_for_speedup(report: dict, name: str, target: float) -> float | None:
    """Mean depth at which the new engine, every pass full (`full_pass_rows`: passes carry W rows in
    every stage, the prelude, coda and LM head too), gives `name` `target` x vanilla's passes per
    token on the serving workload: the speedup a pass-bound CPU would show."""
    cfg, van, p, n = _serving_configs(report, name)
    return depth_for(lambda d: full_pass_rows(cfg, p, n, d), full_pass_rows(van, p, n, 1.0) / target,
                     cfg.num_recursions)
