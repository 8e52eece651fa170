"""docs/results.md from the data `mor results` measured (`mor.analysis.results.measure_suite`)."""

from __future__ import annotations

import math

from .common import Check, checks_heading, num, table

# What the paper reports for the same comparisons (facts from arXiv 2507.10524, not measured here).
PAPER = {
    "vanilla": "Paper baseline: vanilla 360M Llama (315M params), few-shot avg 42.3% at equal FLOPs.",
    "recursive-r3": "Paper: recursive baselines (sharing without routing) trail vanilla slightly at equal FLOPs.",
    "mor-ec-r3": "Paper (360M, equal FLOPs): MoR expert-choice beats vanilla with ~half the unique params "
                 "(N_r=2: 167M params, NLL ~2.75, 43.1% vs 42.3%); recursion-wise caching ~50% less KV memory.",
    "mor-tc-r3": "Paper: token-choice trails expert-choice (load imbalance), still competitive with vanilla.",
    "mor-ec-r3-kvshare": "Paper: recursive KV sharing saves more memory and prefill compute, small quality drop.",
    "mor-ec-r4": "Paper: N_r=4 gives the largest throughput gain (up to 2.06x) at a small quality cost.",
    "mor-ec-r3-sparse": "Not in the paper (its expert-choice capacities for N_r=3 are 3/3, 2/3, 1/3): capacities "
                        "1, 1/6, 1/12 (mean depth 1.25) aim at decode speed; see docs/performance.md.",
    "mor-ec-r3-probe": "Not in the paper: mor-ec-r3 trained mostly on addition, to see depth matter on a task "
                       "that needs sequential computation (carries).",
}


# --------------------------------------------------------------------------- checks


def _row(rows: list[dict], name: str) -> dict | None:
    return next((r for r in rows if r["name"] == name), None)


def _caps(row: dict) -> list[float]:
    return [row["cap_nll"][c] for c in sorted(row["cap_nll"], key=int)]


def depth_checks(rows: list[dict]) -> list[Check]:
    checks = []
    flagship = _row(rows, "mor-ec-r3")
    if flagship:
        caps = _caps(flagship)
        gap = caps[0] / caps[-1] - 1
        checks.append(Check("mor-ec-r3 at depth cap 1 is at least 3% worse (NLL) than at full depth", gap >= 0.03,
                            f"cap 1 {caps[0]:.4f} vs cap {len(caps)} {caps[-1]:.4f}: {100 * gap:+.2f}%"))
    for r in rows:
        if r["R"] < 2:
            continue
        caps = _caps(r)
        rises = [k + 2 for k, (a, b) in enumerate(zip(caps, caps[1:])) if b > a + 1e-4]
        checks.append(Check(f"{r['name']}: NLL does not rise as the depth cap rises", not rises,
                            " ≥ ".join(f"{c:.4f}" for c in caps) + (f"; rises at cap {', '.join(map(str, rises))}" if rises else "")))
        if r["routing"] != "none" and "fixed_full_nll" in r:
            excess = r["fixed_full_nll"] / r["val_nll"] - 1
            checks.append(Check(f"{r['name']}: every token at full depth is no worse than the router's choice by more "
                                "than 0.5%", excess <= 0.005,
                                f"full depth {r['fixed_full_nll']:.4f} vs router {r['val_nll']:.4f}: {100 * excess:+.2f}%"))
    return checks


def quality_checks(data: dict) -> list[Check]:
    rows, checks = data["rows"], []
    baseline = data.get("baseline") or []
    for text in data["texts"]:
        if not baseline:
            break
        best_old = min(baseline, key=lambda b: b["texts"][text]["bits_per_byte"])
        best_new = min(rows, key=lambda r: r["texts"][text]["bits_per_byte"])
        old, new = best_old["texts"][text]["bits_per_byte"], best_new["texts"][text]["bits_per_byte"]
        checks.append(Check(f"bits per byte on the {text} text at least 8% below the best earlier checkpoint",
                            new <= 0.92 * old, f"{best_new['name']} {new:.4f} vs earlier {best_old['name']} {old:.4f}: "
                            f"{100 * (new / old - 1):+.1f}%"))
    vanilla, flagship = _row(rows, "vanilla"), _row(rows, "mor-ec-r3")
    if vanilla and flagship:
        ok = flagship["val_nll"] <= vanilla["val_nll"] and flagship["unique_params"] < vanilla["unique_params"]
        checks.append(Check("mor-ec-r3 at or below vanilla's NLL with fewer unique parameters, at equal training FLOPs", ok,
                            f"{flagship['val_nll']:.4f} vs {vanilla['val_nll']:.4f} with {flagship['unique_params'] / 1e6:.2f}M vs "
                            f"{vanilla['unique_params'] / 1e6:.2f}M unique parameters; training FLOPs "
                            f"{flagship['training_flops']:.3g} vs {vanilla['training_flops']:.3g}"))
    return checks


def probe_checks(rows: list[dict]) -> list[Check]:
    routed = [r for r in rows if r["routing"] != "none" and r["probe"]["by_cap"]]
    if not routed:
        return []
    best = max(routed, key=lambda r: r["probe"]["by_cap"][str(r["R"])]["accuracy"])
    by_cap = best["probe"]["by_cap"]
    full, one = by_cap[str(best["R"])], by_cap["1"]
    deeper = (full["mean_depth_answer"] or 0) > (full["mean_depth_prompt"] or 0)
    return [
        Check(f"the best MoR checkpoint on the probe ({best['name']}) reaches 90% exact match at full depth",
              full["accuracy"] >= 0.9, f"{100 * full['accuracy']:.1f}%"),
        Check(f"{best['name']} is at least 20 points lower at depth cap 1", full["accuracy"] - one["accuracy"] >= 0.2,
              f"{100 * one['accuracy']:.1f}% at cap 1 vs {100 * full['accuracy']:.1f}%"),
        Check(f"{best['name']}'s router sends answer digits deeper than prompt digits", deeper,
              f"mean depth {num(full['mean_depth_answer'], 3)} (answer) vs {num(full['mean_depth_prompt'], 3)} (prompt)"),
    ]


def router_checks(rows: list[dict]) -> list[Check]:
    checks = []
    for r in rows:
        if "causal_capacity_agreement" in r:
            checks.append(Check(f"{r['name']}: the causal rule gives the top-k depth on at least 90% of tokens",
                                r["causal_capacity_agreement"] >= 0.9, f"{100 * r['causal_capacity_agreement']:.1f}%"))
        if r["routing"] != "none":
            std = r.get("sentence_depth_std", float("nan"))
            checks.append(Check(f"{r['name']}: depth varies within sentences (mean within-sentence std > 0.3)",
                                std > 0.3, f"{std:.3f}"))
    return checks


def difficulty_sentence(row: dict) -> str:
    """How depth relates to difficulty, in words computed from the two Spearman readings."""
    own = row.get("spearman_depth_vanilla_own_nll", row.get("spearman_depth_own_nll"))
    nxt = row.get("spearman_depth_vanilla_next_nll", row.get("spearman_depth_next_nll"))
    under = "vanilla" if "spearman_depth_vanilla_own_nll" in row else "the model itself"

    def reading(rho: float, what: str) -> str:
        if rho is None or math.isnan(rho):
            return f"no measurable relation with {what}"
        strength = "weakly " if abs(rho) < 0.1 else ("" if abs(rho) < 0.3 else "clearly ")
        direction = "deeper" if rho > 0 else "shallower"
        return f"{strength}{direction} where {what} is higher (ρ = {rho:+.2f})"

    return (f"- **{row['name']}** (NLL under {under}): tokens go {reading(own, 'their own surprisal')}, and "
            f"{reading(nxt, 'the next token’s NLL')}.")


# --------------------------------------------------------------------------- tables


def summary_table(rows: list[dict]) -> list[str]:
    base = _row(rows, "vanilla")
    lines = ["| checkpoint | routing | N_r | context | unique params | tokens seen | training FLOPs | val NLL | vs vanilla | bits/byte | mean depth |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        delta = f"{100 * (r['val_nll'] / base['val_nll'] - 1):+.1f}%" if base else "n/a"
        seen = f"{r['tokens_seen'] / 1e6:.2f}M" if r.get("tokens_seen") else "?"
        flops = f"{r['training_flops']:.2e}" if r.get("training_flops") else "?"
        lines.append(f"| {r['name']} | {r['routing']} | {r['R']} | {r['context']} | {r['unique_params'] / 1e6:.2f}M | {seen} | "
                     f"{flops} | {r['val_nll']:.4f} | {delta} | {r['texts']['validation']['bits_per_byte']:.4f} | {r['mean_depth']:.2f} |")
    return lines


def bpb_table(data: dict) -> list[str]:
    names = list(data["texts"])
    lines = ["| checkpoint | " + " | ".join(f"{n} (bits/byte)" for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for r in data["rows"]:
        lines.append(f"| {r['name']} | " + " | ".join(f"{r['texts'][n]['bits_per_byte']:.4f}" for n in names) + " |")
    for b in data.get("baseline") or []:
        lines.append(f"| earlier: {b['name']} | " + " | ".join(f"{b['texts'][n]['bits_per_byte']:.4f}" for n in names) + " |")
    return lines


def _cap_columns(rows: list[dict]) -> tuple[int, list[str]]:
    """The deepest N_r over rows and one "cap k" header per depth cap up to it."""
    R = max(r["R"] for r in rows)
    return R, [f"cap {k}" for k in range(1, R + 1)]


def depth_cap_table(rows: list[dict]) -> list[str]:
    R, caps = _cap_columns(rows)
    cells = []
    for r in rows:
        if r["R"] == 1:
            continue
        agree = r.get("causal_capacity_agreement")
        cells.append([r["name"], *(num(r["cap_nll"][str(k)]) if str(k) in r["cap_nll"] else "" for k in range(1, R + 1)),
                      f"{r['val_nll']:.4f}", num(r.get("fixed_full_nll")), num(r.get("capacity_mode_nll")),
                      "" if agree is None else f"{100 * agree:.1f}%"])
    return table(["checkpoint", *caps, "router (causal)", "every token full", "top-k", "causal = top-k depth"],
                 "l" * (R + 5), cells)


def probe_table(rows: list[dict]) -> list[str]:
    R, caps = _cap_columns(rows)
    cells = []
    for r in rows:
        by_cap = r["probe"]["by_cap"]
        full = by_cap[str(r["R"])]
        cells.append([r["name"], "yes" if r["probe"]["trained_on_format"] else "no",
                      *(f"{100 * by_cap[str(k)]['accuracy']:.1f}%" if str(k) in by_cap else "" for k in range(1, R + 1)),
                      num(full["mean_depth_answer"], 2), num(full["mean_depth_prompt"], 2)])
    return table(["checkpoint", "trained on it", *caps, "answer depth", "prompt depth"], "l" * (R + 4), cells)


def _experiment_reference(entry: dict, rows: list[dict]) -> tuple[str, float | None]:
    """The run without the lever and its number: a shipped checkpoint's measured row, or the
    value the entry records."""
    name = entry.get("reference_checkpoint")
    if not name:
        return entry["reference"], entry.get("reference_value")
    row = _row(rows, name)
    if row is None or entry["metric"] not in ("probe_full", "probe_drop"):
        return name, None
    by_cap = row["probe"]["by_cap"]
    full = by_cap[str(row["R"])]["accuracy"]
    return name, full if entry["metric"] == "probe_full" else full - by_cap["1"]["accuracy"]


def experiments_table(data: dict) -> list[str]:
    """Levers tried and not shipped: without and with the lever, the change and whether it helped,
    each word computed from the two numbers."""
    info = data.get("experiments") or {}
    titles = info.get("metric_titles", {})
    cells = []
    for e in info.get("entries", []):
        reference, before = _experiment_reference(e, data["rows"])
        after = e["value"]
        percent = e["metric"].startswith("probe")
        show = (lambda v: f"{100 * v:.1f}%") if percent else (lambda v: f"{v:.3f}")
        if before is None:
            change, verdict = "n/a", "not measured here"
        else:
            change = (f"{100 * (after - before):+.1f} points" if percent
                      else f"{100 * (after / before - 1):+.1f}%")
            better = after > before if e["higher_is_better"] else after < before
            verdict = "better" if better else ("no change" if after == before else "worse")
        cells.append([e["lever"], f"`{e['preset']}`", e["budget"], titles.get(e["metric"], e["metric"]), reference,
                      "n/a" if before is None else show(before), show(after), change, verdict])
    return table(["lever", "run with it", "budget", "judged by", "run without it", "without", "with", "change",
                  "verdict"], "lllllrrrl", cells) if cells else []


def router_table(rows: list[dict]) -> list[str]:
    lines = ["| checkpoint | depth histogram (1..N_r) | within-sentence depth std | own, vanilla NLL | next, vanilla NLL | own, model NLL | next, model NLL |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["routing"] == "none":
            continue
        hist = " / ".join(f"{100 * h / max(1, sum(r['depth_hist'])):.0f}%" for h in r["depth_hist"])
        cells = [r.get(k) for k in ("spearman_depth_vanilla_own_nll", "spearman_depth_vanilla_next_nll",
                                    "spearman_depth_own_nll", "spearman_depth_next_nll")]
        lines.append(f"| {r['name']} | {hist} | {num(r.get('sentence_depth_std'), 3)} | "
                     + " | ".join("n/a" if c is None or math.isnan(c) else f"{c:+.3f}" for c in cells) + " |")
    return lines


def kv_table(rows: list[dict]) -> list[str]:
    lines = ["| checkpoint | prefill tokens | full | recursion-wise | shared | recursion-wise / full | formula |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        kv = r["kv_bytes"]
        lines.append(f"| {r['name']} | {r['kv_tokens']} | {kv['full'] / 1024:.0f} KiB | {kv['recursion_wise'] / 1024:.0f} KiB | "
                     f"{kv['shared'] / 1024:.0f} KiB | {kv['recursion_wise'] / kv['full']:.2f} | {'✓' if r['kv_formula_ok'] else '✗'} |")
    return lines


def recipe_table(rows: list[dict]) -> list[str]:
    keys = ["flops_budget", "seq_len", "batch_size", "lr", "schedule", "addition_share", "depth_cap_prob",
            "router_gate", "router_aux_loss_coef"]
    lines = ["| checkpoint | " + " | ".join(k.replace("_", " ") for k in keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for r in rows:
        values = r.get("recipe") or {}
        lines.append(f"| {r['name']} | " + " | ".join("" if values.get(k) is None else str(values[k]) for k in keys) + " |")
    return lines


def kept_note(data: dict) -> str:
    """A sentence naming the rows `mor results --only` kept from earlier runs, and when they were measured."""
    kept = data.get("kept")
    if not kept:
        return ""
    rows = {row["name"]: row for row in data["rows"]}
    fresh = [name for name in rows if name not in kept["rows"]]
    earlier = ", ".join(f"{name} ({rows[name].get('measured', 'an earlier run')})" for name in kept["rows"])
    return (f" This run measured {', '.join(fresh)}; the rows of {earlier} were kept from earlier runs of the same "
            "weights on the same texts" + (", as was the *earlier* suite's" if kept["baseline"] and data.get("baseline") else "")
            + ".")


def render_results(data: dict, plots: dict[str, str]) -> str:
    rows = data["rows"]
    texts = "; ".join(f"*{name}*: {info['source']}, {info['chars']:,} characters" for name, info in data["texts"].items())
    checks = depth_checks(rows) + quality_checks(data) + probe_checks(rows) + router_checks(rows)
    lines = [
        "# Results", "",
        f"Regenerated by `mor results` from the checkpoints in `checkpoints/` ({data['generated']}, {data['torch_threads']} "
        "torch threads). Causal routing unless stated; whole texts in overlapping context windows. Evaluation texts: "
        f"{texts}. Every checkpoint was trained by `mor train --preset NAME` (mor/training/presets.py) at one "
        "training-FLOPs budget on the same corpus." + kept_note(data), "",
        checks_heading(checks), "", *[c.line() for c in checks], "",
        "## Summary", "", *summary_table(rows), "",
        "## Bits per byte on every text", "",
        "NLL summed over a text, in bits, divided by its UTF-8 bytes: comparable across tokenizers."
        + (f" *earlier* rows are the checkpoints in `{data['baseline_folder']}`, measured in the same run." if data.get("baseline") else ""),
        "", *bpb_table(data), "",
        "## NLL at every depth cap", "",
        "Test-time scaling: the same weights with no token allowed more than k recursions. \"every token full\" forces "
        "N_r recursions on every token; \"top-k\" is the training-time capacity routing (it looks at the whole window, "
        "so it cannot decode).", "", *depth_cap_table(rows), "", f"![validation NLL against the depth cap]({plots['depth_cap']})", "",
        "## The addition probe", "",
        "Greedy exact-match accuracy on fresh problems (operand pairs the training stream never draws) in each "
        "checkpoint's own recorded format (the default 3-digit format for checkpoints trained without the slice), "
        "with the mean recursion depth of the answer digits the model wrote and of the prompt digits (`mor probe`).",
        "", *probe_table(rows), "", f"![probe accuracy against the depth cap]({plots['probe']})", "",
        "## Do the routers mean anything?", "",
        "Spearman rank correlation between a token's depth and how hard it is: *own* = the surprisal of the token "
        "itself, *next* = the NLL of the token its position has to predict; under vanilla (independent of the router, "
        "when the tokenizers match) and under the model itself.", "", *router_table(rows), "",
        *[difficulty_sentence(r) for r in rows if r["routing"] != "none"], "",
        "## KV-cache bytes per strategy", "",
        "After a prefill of the first context window of the validation text (float32), read back from the cache; "
        "\"full\" is every token at full depth (the recursive baseline). ✓: the closed-form count from the token "
        "counts equals the measurement.", "", *kv_table(rows), "",
        *(["## Levers tried and not shipped", "",
            "Issue 10's levers for making depth matter that were measured and not kept (mor/analysis/experiments.py "
            "holds the records; the presets keep what was kept). Where the run without the lever is a shipped "
            "checkpoint, its number is the one measured above.", "", *experiments_table(data), ""]
          if experiments_table(data) else []),
        "## How they were trained", "",
        "The settings each checkpoint's training.json and config.json record (`mor train --preset NAME` reproduces "
        "them; mor/training/presets.py says why each choice was made).", "", *recipe_table(rows), "",
        "## What the paper reports for the same comparisons", "",
        *[f"- **{r['name']}**: {PAPER[r['name']]}" for r in rows if r["name"] in PAPER],
    ]
    return "\n".join(lines) + "\n"
