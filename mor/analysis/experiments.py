"""Levers measured while the v2 suite was designed, that did not make it into a shipped checkpoint.

Issue 10 asks to measure what makes depth matter, keep what works and report what did not. What
was kept is in the presets (mor/training/presets.py); this module holds what was tried and not
kept, as data: the run, the number it was judged by, and that number without and with the lever.
docs/results.md renders them as a table (`mor.analysis.report.results.experiments_table`, from the copy `mor results` saves in results.json); where
the run without the lever is a shipped checkpoint, its number is read from that checkpoint's
measured row rather than from here, so the two cannot drift apart.

Each entry: `lever` (what changed), `preset` (the run with it; `mor train --preset` reproduces it
when it is a preset), `budget` (what the runs were trained on), `metric` (what was compared; a
key `mor results` measures when `reference_checkpoint` is given), `reference` (the run without
the lever: a shipped checkpoint's name, or a recorded value with `reference_value`), `value`
(measured with the lever), `higher_is_better`.
"""

from __future__ import annotations

# Exact match at full depth of mor-ec-r3-probe-rows, the probe shipped before (problems in whole
# rows): the probe variants below were trained in that layout and judged against it.
ROWS_PROBE = 0.724

# The fixed-depth lever's runs, judged by three numbers below.
FIXED_DEPTH_RUNS = dict(lever="fixed full-depth steps (fixed_depth_prob 0.25)", preset="mor-ec-r3 --fixed-depth-prob 0.25",
                        budget="3e13 training FLOPs, v2 corpus, both runs",
                        reference="mor-ec-r3 with fixed_depth_prob 0 at the same budget")

# The probe at batch size 4 instead of 16: the same 2.25e14 FLOPs in 4x the optimizer steps (2,545
# instead of 637). Judged by the probe's exact match at full depth and its drop to depth cap 1, on
# 500 fresh problems of each run's own operand width (k digits), against the shipped 3-digit probe.
BATCH4_PROBE = dict(budget="the suite's 2.25e14 training FLOPs, 80% addition in runs between text (in_text)",
                    reference_checkpoint="mor-ec-r3-probe", higher_is_better=True)
BATCH4_PROBE_RUNS = [  # (digits, exact match at full depth, at depth cap 1)
    (3, 0.994, 0.958), (4, 0.996, 0.994), (5, 0.998, 1.0),
]

# The language suite at batch 16 (its setting until session 14) instead of 4: a quarter of the
# optimizer steps at the same 2.25e14 FLOPs. Both runs measured by `mor results` on data/val.txt
# (causal routing, whole text in overlapping windows); the batch-16 numbers are the rows shipped
# before (docs/results.json in git history, commit 4c3add6).
BATCH16_RUNS = dict(budget="the suite's 2.25e14 training FLOPs, v2 corpus, both runs", higher_is_better=False)
BATCH16_LEVER = "batch size 16 (a quarter of the optimizer steps; the suite's setting before session 14)"

EXPERIMENTS: list[dict] = [
    dict(BATCH16_RUNS, lever=BATCH16_LEVER, preset="vanilla --batch-size 16", metric="validation NLL",
         reference="vanilla (batch 4)", reference_value=4.6722, value=4.8422),
    dict(BATCH16_RUNS, lever=BATCH16_LEVER, preset="recursive-r3 --batch-size 16", metric="validation NLL",
         reference="recursive-r3 (batch 4)", reference_value=4.7517, value=4.8987),
    dict(BATCH16_RUNS, lever=BATCH16_LEVER, preset="mor-ec-r3 --batch-size 16", metric="validation NLL",
         reference="mor-ec-r3 (batch 4)", reference_value=4.5040, value=4.7064),
    dict(BATCH16_RUNS, lever=BATCH16_LEVER, preset="mor-ec-r3 --batch-size 16",
         metric="NLL at depth cap 1 over full depth (%)", reference="mor-ec-r3 (batch 4)", reference_value=1.35,
         value=1.57, higher_is_better=True),
    dict(BATCH16_RUNS, lever=BATCH16_LEVER, preset="mor-ec-r3 --batch-size 16",
         metric="NLL at fixed depth 3 over the router's own depths (%)", reference="mor-ec-r3 (batch 4)",
         reference_value=0.85, value=1.00),
    dict(lever="random depth caps in training (depth_cap_prob 0.3, \"anytime\" readout)", preset="mor-ec-r3",
         budget="3e13 training FLOPs (~0.7M tokens), v2 corpus, both runs", metric="validation NLL",
         reference="mor-ec-r3 with depth_cap_prob 0 at the same budget", reference_value=6.111, value=6.180,
         higher_is_better=False),
    # Steps where every token takes every recursion (routers ignored, no BCE that step), aimed at
    # "fixed full depth is worse than the router". It narrowed that gap, but it also narrowed the
    # cap-1 gap (depth mattered less) and cost NLL at equal FLOPs (the fixed steps cost more FLOPs,
    # so the run saw 664k tokens instead of 696k). Gaps on the first 60k characters of data/val.txt.
    dict(FIXED_DEPTH_RUNS, metric="validation NLL", reference_value=6.1126, value=6.3755, higher_is_better=False),
    dict(FIXED_DEPTH_RUNS, metric="NLL at fixed depth 3 over the router's own depths (%)", reference_value=0.34,
         value=0.12, higher_is_better=False),
    dict(FIXED_DEPTH_RUNS, metric="NLL at depth cap 1 over full depth (%)", reference_value=0.44, value=0.19,
         higher_is_better=True),
    # Problems in whole rows: in a row of problems only the first has no solved problem in view,
    # so the model learned to copy from the line above (teacher-forced: 72% with nothing before a
    # problem, 96% with one solved problem before); `mor probe` asks with nothing before.
    dict(lever="problems in whole rows (addition_layout rows), not in runs between text", preset="mor-ec-r3-probe-rows",
         budget="the suite's 2.25e14 training FLOPs, 80% addition rows", metric="probe_full",
         reference_checkpoint="mor-ec-r3-probe", value=ROWS_PROBE, higher_is_better=True),
    dict(lever="recursive KV sharing on the probe (kv_cache shared)", preset="mor-ec-r3-kvshare-probe",
         budget="the suite's 2.25e14 training FLOPs, 80% addition rows", metric="probe_full",
         reference="mor-ec-r3-probe-rows", reference_value=ROWS_PROBE, value=0.006, higher_is_better=True),
    dict(lever="answer written last digit first (addition_reversed)", preset="mor-ec-r3-probe-reversed",
         budget="the suite's 2.25e14 training FLOPs, 80% addition rows", metric="probe_full",
         reference="mor-ec-r3-probe-rows", reference_value=ROWS_PROBE, value=0.0, higher_is_better=True),
    # Arithmetic only: the training loss on the all-addition stream fell to 0.046 (the operands,
    # zeros and signs included), yet fresh problems came out worse than with 20% text, and the
    # language side was lost (validation NLL 15.8). With lr 3e-3 the run never left loss 1.3.
    dict(lever="addition rows only (addition_share 1.0)", preset="mor-ec-r3-probe-rows --addition-share 1",
         budget="the suite's 2.25e14 training FLOPs", metric="probe_full",
         reference="mor-ec-r3-probe-rows", reference_value=ROWS_PROBE, value=0.484, higher_is_better=True),
    dict(lever="addition rows only, learning rate 3e-3", preset="mor-ec-r3-probe-rows --addition-share 1 --lr 3e-3",
         budget="the suite's 2.25e14 training FLOPs", metric="probe_full",
         reference="mor-ec-r3-probe-rows", reference_value=ROWS_PROBE, value=0.002, higher_is_better=True),
    # Batch 4 trains the probe to near-perfect sums, and then depth stops mattering: one recursion
    # (four layers) already adds 3- to 5-digit numbers, so the cap-1 drop the app is meant to show
    # vanishes (the shipped batch-16 probe is undertrained, and its deeper steps still help). Its
    # answer digits still run shallower than its prompt digits (1.41 vs 2.51 at 5 digits).
    *[dict(BATCH4_PROBE, lever=f"batch size 4 (4x the optimizer steps), {k}-digit operands",
           preset=f"mor-ec-r3-probe --batch-size 4 --addition-digits {k}", metric=metric, value=value)
      for k, full, cap1 in BATCH4_PROBE_RUNS
      for metric, value in (("probe_full", full), ("probe_drop", round(full - cap1, 3)))],
    dict(BATCH4_PROBE, lever="batch size 4 (4x the optimizer steps), 3-digit operands",
         preset="mor-ec-r3-probe --batch-size 4", metric="validation NLL (as `mor train` reports it)",
         reference="mor-ec-r3-probe (batch 16)", reference_value=5.0615, value=4.9799, higher_is_better=False,
         reference_checkpoint=None),
]

METRIC_TITLES = {"probe_full": "probe exact match at full depth (500 fresh problems)",
                 "probe_drop": "probe exact match at full depth less at depth cap 1 (500 fresh problems)"}
