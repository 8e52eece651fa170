"""`mor bench` (mor/analysis/bench.py) and its report (mor/analysis/report/performance.py).

The report is rendered from data only: the rendering tests feed hand-made measurements through
`bench.summarize` and check that every stated result follows its numbers (a missed target renders
as missed, words follow the direction of a ratio, a value just below a target is never written as
the target). No timing is asserted anywhere; the end-to-end run checks the data's shape."""

from __future__ import annotations

import argparse
import copy
import json

import pytest
import torch

import mor
from helpers import tiny_config, tiny_model
from mor.analysis import bench, report
from mor.data.tokenizer import train_tokenizer

IMAGES = ["perf_decode_vs_batch.png", "perf_cost_growth.png"]


# ---- hand-made measurements ------------------------------------------------------------------------


def _info(cfg) -> dict:
    return {"routing": cfg.routing, "sharing": cfg.sharing, "kv_cache": cfg.kv_cache,
            "num_recursions": cfg.num_recursions, "num_hidden_layers": cfg.num_hidden_layers,
            "hidden_size": cfg.hidden_size, "vocab_size": cfg.vocab_size, "unique_parameters": 1000,
            "effective_parameters": 2000}


def _row(name, path, b, tps, depth, flops, passes=None) -> dict:
    row = {"checkpoint": name, "path": path, "batch_size": b, "decode_tokens_per_second": tps,
           "decode_tokens_per_second_runs": [tps], "prefill_seconds_per_prompt": 0.01, "mean_depth": depth,
           "kv_bytes_per_request": 4096, "peak_memory_bytes": 2**20, "flops_per_token": flops}
    if path == "engine":
        row.update(steady_tokens_per_second=tps, kv_bytes_allocated=8192, block_utilisation=1.0,
                   passes_per_token=passes, max_inflight=4 * b)
    return row


def made(ec_speedup=0.8, vanilla_engine_gain=1.5, pass_error=1.0, cap_speedup=1.4, own_speedup=0.9,
         cap2_speedup=1.0, engine_fastest=True, trace_seconds=0.2) -> dict:
    """A vanilla ("van") and an expert-choice ("ec") checkpoint at batches 1 and 16. ec's engine runs
    at `ec_speedup` x vanilla's, FLOPs predict 1.25x, passes predict ec_speedup / pass_error; vanilla's
    engine runs at `vanilla_engine_gain` x its model.generate."""
    van_cfg = tiny_config(routing="none", sharing="cycle", num_recursions=1, num_hidden_layers=3)
    ec_cfg = tiny_config()
    results = []
    for b in (1, 16):
        gather = 800.0 * b
        engine = gather * vanilla_engine_gain
        results += [_row("van", "naive", b, 1000.0 * b, 1.0, 100.0), _row("van", "gather", b, gather, 1.0, 100.0),
                    _row("van", "engine", b, engine, 1.0, 100.0, passes=0.5)]
        ec_engine = engine * ec_speedup
        ec_naive = ec_engine * (0.9 if engine_fastest else 1.1)
        results += [_row("ec", "naive", b, ec_naive, 3.0, 100.0),
                    _row("ec", "gather", b, ec_engine * 0.8, 2.0, 80.0),
                    _row("ec", "engine", b, ec_engine, 2.0, 80.0, passes=0.5 * pass_error / ec_speedup)]
    results.append(_row("llama", "llama", 16, 700.0 * 16, None, 100.0))
    bench.add_speedups(results, "van")
    sweep = [{"checkpoint": name, "depth_cap": cap, "speedup": speedup}
             for name, cap, speedup in [("van", None, 1.0), ("ec", 1, cap_speedup), ("ec", 2, cap2_speedup),
                                        ("ec", None, own_speedup)]]
    for r in sweep:
        nll = None if r["checkpoint"] == "van" else 5.0 + 0.1 * (r["depth_cap"] or 0)
        r.update(decode_tokens_per_second=1000 * r["speedup"], mean_depth=1.5, passes_per_token=0.5 / r["speedup"],
                 passes_predicted_speedup=r["speedup"], val_nll=nll)
    data = {
        "meta": {"date": "now", "torch": "2", "threads": 1, "cpu": "x86_64", "cpus": 2, "new_tokens": 8,
                 "prompt_len": 8, "repeats": 1, "batch_sizes": [1, 16], "prompt_source": "random token ids (seed 0)",
                 "vanilla": "van", "mean_context": 12.5, "seconds": 3.0, "other_cpu_load_at_start": 0.0},
        "checkpoints": {"van": _info(van_cfg), "ec": _info(ec_cfg)},
        "configs": {"van": van_cfg.to_diff_dict(), "ec": ec_cfg.to_diff_dict()},
        "results": results,
        "growth": {"trace": [{"checkpoint": "van", "seq_len": 1000, "seconds": trace_seconds}],
                   "decode": [{"checkpoint": "van", "context": 64, "batch_size": 1, "ms_per_token_per_request": 2.0,
                               "tokens_per_second": 500.0}]},
        "profile": {},
        "depth_caps": {"batch_size": 16, "rows": sweep},
    }
    return bench.summarize(data)


def rendered(**kwargs) -> str:
    return report.render_performance(made(**kwargs), IMAGES)


def line_with(text: str, words: str) -> str:
    [line] = [line for line in text.splitlines() if words in line]
    return line


# ---- the report states only what its numbers say --------------------------------------------------


def test_a_missed_target_renders_as_missed_and_a_met_one_as_met():
    text = rendered(ec_speedup=0.8)
    line = line_with(text, "ec: engine decode at least 1.3x vanilla's engine")
    assert line.startswith("- ❌") and "**does NOT hold**" in line and "batch 16 0.80x" in line
    text = rendered(ec_speedup=1.5)
    line = line_with(text, "ec: engine decode at least 1.3x vanilla's engine")
    assert line.startswith("- ✅") and "**holds**" in line and "batch 16 1.50x" in line
    held, total = (int(x) for x in text.split("## Targets: ", 1)[1].split(" hold", 1)[0].split(" of "))
    assert held == text.count("- ✅") and total == held + text.count("- ❌")


@pytest.mark.parametrize("speedup", [0.8, 1.2996, 1.3, 1.5])
def test_checks_agree_with_the_targets_data(speedup):
    data = made(ec_speedup=speedup)
    [check] = [c for c in report.performance_checks(data) if "vanilla's engine" in c.claim]
    assert check.holds == ("ec" in data["targets"]["speedup_met_by"]) == (speedup >= 1.3)
    [ratio] = [c for c in report.performance_checks(data) if "FLOPs-predicted" in c.claim]
    assert ratio.holds == ("ec" in data["targets"]["ratio_met_by"])


def test_a_value_just_below_a_target_is_not_written_as_the_target():
    line = line_with(rendered(ec_speedup=1.2996), "ec: engine decode at least 1.3x vanilla's engine")
    assert "does NOT hold" in line and "1.2996x" in line and "1.30x" not in line
    line = line_with(rendered(trace_seconds=0.4999), "1,000-token trace")
    assert "**holds**" in line and "499.9 ms" in line
    assert report.shown(1.2996, 1.3) == "1.2996" and report.shown(1.3, 1.3) == "1.30"
    assert report.shown(499.96, 500, 0, below=True) == "499.96"


def test_relative_follows_the_direction_of_a_ratio():
    assert report.relative(1.24) == "24% faster"
    assert report.relative(0.82) == "18% slower"
    assert report.relative(1.0) == "as fast"
    assert report.relative(0.998) == "0.2% slower"


def test_sentences_follow_the_numbers_in_both_directions():
    faster = line_with(rendered(cap_speedup=1.4, own_speedup=0.9), "- ec: fastest under")
    assert "cap 1, 1.40x van's engine (40% faster)" in faster and "own rule 0.90x (10% slower)" in faster
    slower = line_with(rendered(cap_speedup=0.7, cap2_speedup=0.8, own_speedup=0.95), "- ec: fastest under")
    assert "fastest under its own rule, 0.95x van's engine (5% slower)." in slower and "faster" not in slower

    credit = line_with(rendered(vanilla_engine_gain=1.5), "Against vanilla decoded by `model.generate`")
    assert "runs at 1.50x to 1.50x its model.generate" in credit and "credit MoR" in credit
    no_credit = line_with(rendered(vanilla_engine_gain=0.8), "Against vanilla decoded by `model.generate`")
    assert "0.80x to 0.80x" in no_credit and "credit" not in no_credit

    better = line_with(rendered(pass_error=1.02), "Measured / FLOPs-predicted speedup")
    assert "error of 2%, FLOPs with 36%" in better and "passes track decode speed better than FLOPs" in better
    worse = line_with(rendered(ec_speedup=1.25, pass_error=1.5), "Measured / FLOPs-predicted speedup")
    assert "FLOPs with 0%" in worse and "no better than FLOPs" in worse

    assert "The engine is the fastest path for every model." in rendered(engine_fastest=True)
    assert ("The engine is the fastest path for 0 of 1 models (fastest otherwise: naive for ec)."
            in rendered(engine_fastest=False))


def test_targets_keep_their_keys():
    t = made()["targets"]
    assert {"engine_rows", "ratio_met_by", "speedup_met_by", "ratio_at_least_0.9", "speedup_at_least_1.3",
            "trace_1000_seconds", "trace_under_0.5s"} <= set(t)
    assert t["thresholds"] == bench.THRESHOLDS


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    bench.register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["bench", *argv])
    return args.func(args)


def test_from_json_renders_what_the_data_renders(tmp_path):
    data = made()
    saved = tmp_path / "saved.json"
    raw = {k: v for k, v in copy.deepcopy(data).items() if k not in ("targets", "findings")}  # measurements only
    saved.write_text(json.dumps(raw), encoding="utf-8")
    out = tmp_path / "a" / "performance.md"
    assert run_cli(["--from-json", str(saved), "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert text == report.render_performance(data, IMAGES)
    again = tmp_path / "b" / "performance.md"
    assert run_cli(["--from-json", str(out.with_suffix(".json")), "--out", str(again)]) == 0
    assert again.read_text(encoding="utf-8") == text
    assert all((out.parent / image).stat().st_size > 0 for image in IMAGES)


def test_validation_nll_reads_both_results_json_layouts(tmp_path):
    row = {"name": "ec", "val_nll": 5.0, "cap_nll": {"1": 5.2, "2": 5.1}}
    for layout in ({"rows": [row]}, [row]):
        path = tmp_path / "results.json"
        path.write_text(json.dumps(layout), encoding="utf-8")
        assert bench.validation_nll(path) == {"ec": {1: 5.2, 2: 5.1, None: 5.0}}
    assert bench.validation_nll(tmp_path / "missing.json") == {}


def test_peak_memory_sees_a_buffer_the_block_allocates_and_touches():
    with bench.PeakMemory() as small:
        torch.zeros(1000)
    with bench.PeakMemory() as big:
        buf = torch.ones(16 * 2**20 // 4)  # 16 MiB, written so its pages are resident
        del buf
    if big.bytes is None:
        pytest.skip("peak resident memory is only measured on Linux")
    assert big.bytes >= 15 * 2**20
    assert small.bytes < 4 * 2**20


# ---- end to end on tiny random checkpoints ---------------------------------------------------------


@pytest.mark.slow
def test_bench_on_tiny_checkpoints_writes_data_and_a_report_that_re_renders(tmp_path, capsys):
    sample = tmp_path / "train.txt"
    sample.write_text("the cat sat on the mat, and the dog sat on the log\n" * 20, encoding="utf-8")
    tokenizer = train_tokenizer([sample], vocab_size=300)
    folders = []
    for name, kw in [("van", dict(routing="none", sharing="cycle", num_recursions=1, num_hidden_layers=3)),
                     ("ec", dict(routing="expert_choice"))]:
        model = tiny_model(vocab_size=len(tokenizer), **kw)
        folders.append(str(mor.save_checkpoint(model, tokenizer, tmp_path / name, dtype=torch.float32)))
    out = tmp_path / "docs" / "performance.md"
    assert run_cli(["--json", "--checkpoints", *folders, "--batch-sizes", "1", "2", "--new-tokens", "3",
                    "--prompt-len", "5", "--repeats", "1", "--growth-lengths", "8", "--growth-batch-sizes", "1",
                    "--threads", "1", "--data", str(tmp_path / "nodata"), "--out", str(out)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"meta", "checkpoints", "configs", "results", "growth", "profile", "depth_caps", "targets"} <= set(data)
    assert data["meta"]["vanilla"] == "van" and set(data["checkpoints"]) == {"van", "ec"}
    keys = {(r["checkpoint"], r["path"], r["batch_size"]) for r in data["results"]}
    assert {(n, p, b) for n in ("van", "ec") for p in bench.PATHS for b in (1, 2)} | {("llama", "llama", 2)} <= keys
    for r in data["results"]:
        assert r["decode_tokens_per_second"] > 0 and r["flops_per_token"] > 0
        assert {"prefill_seconds_per_prompt", "mean_depth", "kv_bytes_per_request", "predicted_speedup",
                "measured_speedup", "speedup_ratio", "peak_memory_bytes"} <= set(r)
    ec = next(r for r in data["results"] if r["checkpoint"] == "ec" and r["path"] == "engine")
    assert 1 <= ec["mean_depth"] <= 3 and ec["kv_bytes_per_request"] > 0
    assert {t["seq_len"] for t in data["growth"]["trace"]} == {8, 1000}  # 1000: the trace target
    assert data["growth"]["decode"] and "ec" in data["profile"]["models"]
    sweep = data["depth_caps"]
    caps = {(r["checkpoint"], r["depth_cap"]): r for r in sweep["rows"]}
    assert sweep["batch_size"] == 2 and set(caps) == {("van", None), ("ec", 1), ("ec", 2), ("ec", None)}
    assert caps[("van", None)]["speedup"] == 1.0 and caps[("ec", 1)]["mean_depth"] == 1.0
    assert caps[("ec", 2)]["mean_depth"] <= 2

    text = out.read_text(encoding="utf-8")
    assert "### Batch 2" in text and "## Test-time depth caps" in text and "## Analysis" in text
    assert (out.parent / "perf_decode_vs_batch.png").stat().st_size > 0
    assert json.loads(out.with_suffix(".json").read_text())["meta"]["new_tokens"] == 3
    again = tmp_path / "again" / "performance.md"
    assert run_cli(["--from-json", str(out.with_suffix(".json")), "--out", str(again)]) == 0
    assert again.read_text(encoding="utf-8") == text
