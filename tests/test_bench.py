"""`mor bench` (mor/analysis/bench/) and its report (mor/analysis/report/performance.py).

The report is rendered from data only: the rendering tests feed hand-made measurements through
`bench.summarize` and check that every stated result follows its numbers (a missed target renders
as missed, words follow the direction of a ratio, a value just below a target is never written as
the target). No timing is asserted anywhere; the end-to-end run checks the data's shape."""

from __future__ import annotations

import argparse
import copy
import itertools
import json

import pytest
import torch

import mor
from helpers import tiny_config, tiny_model
from mor import MoRConfig
from mor.analysis import bench, report
from mor.inference.engine import PASS_TOKENS, PREFILL_TOKENS, Engine
from mor.data.tokenizer import train_tokenizer

IMAGES = ["perf_serving.png", "perf_decode_vs_batch.png", "perf_cost_growth.png"]
VAN, EC, SPARSE = "vanilla", "mor-ec-r3", "mor-ec-r3-sparse"  # the names issue 14's targets are stated for


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
        row.update(kv_bytes_allocated=8192, block_utilisation=1.0, passes_per_token=passes, max_inflight=4 * b)
    return row


def _serving_row(name, w, tps, flops, runner="engine", depth=2.0, fill=0.8) -> dict:
    """A serving row of 4w requests of 64 + 32 tokens at `tps` tokens/s and `flops` run FLOPs; on the
    engine, passes per token 1 / fill times what full passes of w rows would make."""
    wall = 4 * w * 32 / tps
    row = {"checkpoint": name, "runner": runner, "width": w, "requests": 4 * w, "tokens": 4 * w * 32,
           "wall_seconds": wall, "tokens_per_second": tps, "tokens_per_second_runs": [tps], "mean_depth": depth,
           "mean_depth_all": depth, "flops": flops, "gflops_per_second": flops / wall / 1e9, "ttft_p50": 0.05,
           "ttft_p95": 0.09, "token_gap_p50": 0.004, "token_gap_p95": 0.008}
    if runner == "engine":
        cfg = tiny_config(routing="none", sharing="cycle", num_recursions=1, num_hidden_layers=8) if name == VAN \
            else tiny_config()
        chunk = max(w, 64)
        full = bench.full_passes(cfg, 64, 32, depth, w, chunk) / 32
        row.update(max_inflight=16 * w, prefill_chunk=chunk, max_tokens=chunk, passes_per_token=full / fill,
                   pass_rows=1000)
    return row


def made_serving(ec=(1.2, 1.2), sparse=(1.3, 1.45), van_over_llama=(1.1, 1.05), ec_flops=1.25) -> dict:
    """Serving rows at widths 1 and 16: the checkpoints' tokens/s as multiples of vanilla's (per
    width), vanilla's over Llama's, and FLOPs that predict `ec_flops` x for mor-ec-r3, 1.5x for sparse."""
    rows = []
    for k, w in enumerate((1, 16)):
        base, flops = 1000.0 * w, 1e9 * w
        rows += [_serving_row(VAN, w, base, flops, depth=1.0), _serving_row(EC, w, base * ec[k], flops / ec_flops),
                 _serving_row(SPARSE, w, base * sparse[k], flops / 1.5, depth=1.2),
                 _serving_row("llama", w, base / van_over_llama[k], flops, runner="generate", depth=1.0)]
    peak = {"gflops": 50.0, "size": 1024, "repeats": 5, "threads": 1, "sizes": [],
            "measurements": [{"gflops": 48.0}, {"gflops": 50.0}]}
    return {"widths": [1, 16], "requests_per_slot": 4, "new_tokens": 32, "prompt_len": 64,
            "prompt_source": "windows of val.u16", "repeats": 1, "matmul_peak": peak, "rows": rows}


def made(ec_speedup=0.8, vanilla_engine_gain=1.5, pass_error=1.0, cap_speedup=1.4, own_speedup=0.9,
         cap2_speedup=1.0, engine_fastest=True, trace_seconds=0.2, serving=None) -> dict:
    """A vanilla and an expert-choice (mor-ec-r3) checkpoint at batches 1 and 16 on the per-batch
    paths. mor-ec-r3's engine runs at `ec_speedup` x vanilla's, FLOPs predict 1.25x, passes predict
    ec_speedup / pass_error; vanilla's engine runs at `vanilla_engine_gain` x its model.generate.
    serving: `made_serving`'s keyword arguments (the serving section; default made_serving())."""
    van_cfg = tiny_config(routing="none", sharing="cycle", num_recursions=1, num_hidden_layers=8)  # as mor-ec-r3's
    ec_cfg = tiny_config()
    results = []
    for b in (1, 16):
        gather = 800.0 * b
        engine = gather * vanilla_engine_gain
        results += [_row(VAN, "naive", b, 1000.0 * b, 1.0, 100.0), _row(VAN, "gather", b, gather, 1.0, 100.0),
                    _row(VAN, "engine", b, engine, 1.0, 100.0, passes=0.5)]
        ec_engine = engine * ec_speedup
        ec_naive = ec_engine * (0.9 if engine_fastest else 1.1)
        results += [_row(EC, "naive", b, ec_naive, 3.0, 100.0),
                    _row(EC, "gather", b, ec_engine * 0.8, 2.0, 80.0),
                    _row(EC, "engine", b, ec_engine, 2.0, 80.0, passes=0.5 * pass_error / ec_speedup)]
    results.append(_row("llama", "llama", 16, 700.0 * 16, None, 100.0))
    bench.add_speedups(results, VAN)
    sweep = [{"checkpoint": name, "depth_cap": cap, "speedup": speedup}
             for name, cap, speedup in [(VAN, None, 1.0), (EC, 1, cap_speedup), (EC, 2, cap2_speedup),
                                        (EC, None, own_speedup)]]
    for r in sweep:
        nll = None if r["checkpoint"] == VAN else 5.0 + 0.1 * (r["depth_cap"] or 0)
        r.update(decode_tokens_per_second=1000 * r["speedup"], mean_depth=1.5, passes_per_token=0.5 / r["speedup"],
                 passes_predicted_speedup=r["speedup"], val_nll=nll)
    data = {
        "meta": {"date": "now", "torch": "2", "threads": 1, "cpu": "x86_64", "cpus": 2, "new_tokens": 8,
                 "prompt_len": 8, "repeats": 1, "batch_sizes": [1, 16], "prompt_source": "random token ids (seed 0)",
                 "vanilla": VAN, "mean_context": 12.5, "seconds": 3.0, "other_cpu_load_at_start": 0.0},
        "checkpoints": {VAN: _info(van_cfg), EC: _info(ec_cfg), SPARSE: _info(ec_cfg)},
        "configs": {VAN: van_cfg.to_diff_dict(), EC: ec_cfg.to_diff_dict(), SPARSE: ec_cfg.to_diff_dict()},
        "results": results,
        "growth": {"trace": [{"checkpoint": VAN, "seq_len": 1000, "seconds": trace_seconds}],
                   "decode": [{"checkpoint": VAN, "context": 64, "batch_size": 1, "ms_per_token_per_request": 2.0,
                               "tokens_per_second": 500.0}]},
        "profile": {},
        "depth_caps": {"batch_size": 16, "rows": sweep},
        "serving": made_serving(**(serving or {})),
    }
    return bench.summarize(data)


def rendered(**kwargs) -> str:
    return report.render_performance(made(**kwargs), IMAGES)


def line_with(text: str, words: str) -> str:
    [line] = [line for line in text.splitlines() if words in line]
    return line


def target(data: dict, kind: str, name: str) -> dict:
    [entry] = [c for c in data["targets"]["serving"] if c["kind"] == kind and c["checkpoint"] == name]
    return entry


# ---- the report states only what its numbers say --------------------------------------------------


def test_target_logic_on_hand_made_numbers_met_missed_and_by_how_much():
    data = made(serving=dict(ec=(1.2, 1.15), sparse=(1.3, 1.45), van_over_llama=(1.1, 0.95), ec_flops=1.25))
    ec = target(data, "speedup", EC)
    assert ec["met"] and ec["missed_by"] == 0 and ec["missed_at"] == [] and ec["target"] == 1.1
    assert [v["width"] for v in ec["rows"]] == [1, 16] and ec["worst"]["width"] == 16
    assert ec["rows"][1]["margin"] == pytest.approx(0.05)
    sparse = target(data, "speedup", SPARSE)
    assert not sparse["met"] and sparse["missed_at"] == [1] and sparse["worst"]["width"] == 1
    assert sparse["missed_by"] == pytest.approx(0.1) and sparse["missed_by_fraction"] == pytest.approx(0.1 / 1.4)
    ratio = target(data, "ratio", EC)  # measured / FLOPs-predicted: 1.2 / 1.25 and 1.15 / 1.25
    assert [v["value"] for v in ratio["rows"]] == pytest.approx([0.96, 0.92]) and ratio["met"]
    llama = target(data, "vanilla_over_llama", VAN)
    assert not llama["met"] and llama["missed_at"] == [16] and llama["missed_by"] == pytest.approx(0.05)
    t = data["targets"]
    assert t["met"] == ["speedup:mor-ec-r3", "ratio:mor-ec-r3"]
    assert t["missed"] == ["speedup:mor-ec-r3-sparse", "vanilla_over_llama:vanilla"]
    assert t["workload"]["met"] is False and t["workload"]["holds"]["widths_1_to_128"] is False
    row = next(r for r in data["serving"]["rows"] if r["checkpoint"] == EC and r["width"] == 16)
    assert row["peak_fraction"] == pytest.approx(row["gflops_per_second"] / 50.0)
    assert row["predicted_speedup"] == pytest.approx(1.25) and row["speedup_vs_llama"] == pytest.approx(1.15 * 0.95)

    text = report.render_performance(data, IMAGES)
    line = line_with(text, "mor-ec-r3-sparse: tokens/s on the engine at least 1.4x")
    assert line.startswith("- ❌") and "**does NOT hold**" in line and "width 1 1.30x, width 16 1.45x" in line
    assert "missed at 1 of 2 widths, at worst by 0.10x (width 1, 7.1% short of the target)" in line
    line = line_with(text, "mor-ec-r3: tokens/s on the engine at least 1.1x")
    assert line.startswith("- ✅") and "**holds**" in line and "missed" not in line
    line = line_with(text, "mor-ec-r3: at least 0.9 of the speedup its run FLOPs predict")
    assert "width 1 0.96 of 1.25x, width 16 0.92 of 1.25x" in line and line.startswith("- ✅")
    line = line_with(text, "vanilla on the engine at least 1.0x the tokens/s of transformers' LlamaForCausalLM")
    assert line.startswith("- ❌") and "at worst by 0.05x (width 16, 5.0% short of the target)" in line
    held, total = (int(x) for x in text.split("## Targets: ", 1)[1].split(" hold", 1)[0].split(" of "))
    assert held == text.count("- ✅") and total == held + text.count("- ❌")


@pytest.mark.parametrize("speedup", [1.3, 1.3996, 1.4, 1.5])
def test_checks_agree_with_the_targets_data(speedup):
    data = made(serving=dict(sparse=(speedup, speedup)))
    [check] = [c for c in report.performance_checks(data) if c.claim.startswith(SPARSE + ": tokens/s")]
    assert check.holds == ("speedup:" + SPARSE in data["targets"]["met"]) == (speedup >= 1.4)


def test_a_target_without_rows_is_listed_as_not_measured_not_as_missed():
    data = made()
    data["serving"]["rows"] = [r for r in data["serving"]["rows"] if r["checkpoint"] != SPARSE]
    data = bench.summarize(data)
    assert {"kind": "speedup", "checkpoint": SPARSE, "target": 1.4} in data["targets"]["not_measured"]
    text = report.render_performance(data, IMAGES)
    assert "mor-ec-r3-sparse: tokens/s" not in text
    assert "Not measured in this run (no serving rows for them): mor-ec-r3-sparse at 1.4x vanilla's tokens/s." in text


def test_a_value_just_below_a_target_is_not_written_as_the_target():
    line = line_with(rendered(serving=dict(sparse=(1.3996, 1.5))), "mor-ec-r3-sparse: tokens/s on the engine")
    assert "does NOT hold" in line and "1.3996x" in line and "1.40x" not in line and "by 0.0004x" in line
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
    faster = line_with(rendered(cap_speedup=1.4, own_speedup=0.9), "- mor-ec-r3: fastest under")
    assert "cap 1, 1.40x vanilla's engine (40% faster)" in faster and "own rule 0.90x (10% slower)" in faster
    slower = line_with(rendered(cap_speedup=0.7, cap2_speedup=0.8, own_speedup=0.95), "- mor-ec-r3: fastest under")
    assert "fastest under its own rule, 0.95x vanilla's engine (5% slower)." in slower and "faster" not in slower

    better = line_with(rendered(pass_error=1.02), "Measured / FLOPs-predicted speedup")
    assert "error of 2%, FLOPs with 36%" in better and "passes track decode speed better than FLOPs" in better
    worse = line_with(rendered(ec_speedup=1.25, pass_error=1.5), "Measured / FLOPs-predicted speedup")
    assert "FLOPs with 0%" in worse and "no better than FLOPs" in worse

    assert "The engine is the fastest path for every model." in rendered(engine_fastest=True)
    assert ("The engine is the fastest path for 0 of 1 models (fastest otherwise: naive for mor-ec-r3)."
            in rendered(engine_fastest=False))


def test_serving_section_renders_from_the_data():
    data = made()
    text = report.render_performance(data, IMAGES)
    assert "## Serving: issue 14's workload" in text and "![perf_serving.png](perf_serving.png)" in text
    assert text.index("## Serving") < text.index("## Targets") < text.index("## Decoding paths at a batch size")
    assert "### Width 1 (4 requests)" in text and "### Width 16 (64 requests)" in text
    assert "50.0 GFLOP/s (`torch.mm` of 1024x1024 matrices" in text and "48.0 and 50.0 GFLOP/s" in text
    row = line_with(text.split("### Width 16", 1)[1].split("\n\n")[1], "| mor-ec-r3 |")
    assert "| 2.00 / 2.00 | 19200 | 1.20 | 1.25 | 50.0 | 90.0 | 4.00 | 8.00 |" in row
    peak = data["findings"]["serving"]["peak_share"]
    assert f"{100 * peak['highest']['value']:.1f}% ({peak['highest']['checkpoint']}" in text
    ceilings = {c["checkpoint"]: c for c in data["findings"]["serving"]["ceilings"]}
    assert set(ceilings) == {EC, SPARSE} and ceilings[SPARSE]["target"] == 1.4 and ceilings[EC]["width"] == 16
    assert ceilings[EC]["flops_allow"] == pytest.approx(1.25)


def test_the_depth_a_target_needs_is_where_the_model_reaches_it():
    data = made()
    cfg, van = (MoRConfig(**data["configs"][n]) for n in (EC, VAN))
    d = bench.depth_for_speedup(data, EC, 1.1)
    assert 1 <= d <= cfg.num_recursions
    assert bench.run_flops(van, 64, 32, 1, 1.0) / bench.run_flops(cfg, 64, 32, 1, d) == pytest.approx(1.1, rel=1e-6)
    d = bench.passes_depth_for_speedup(data, EC, 1.1)
    if d is not None and d < cfg.num_recursions:
        assert (bench.full_pass_rows(van, 64, 32, 1.0) / bench.full_pass_rows(cfg, 64, 32, d)
                == pytest.approx(1.1, rel=1e-6))
    assert bench.depth_for(lambda x: x, 0.5, 3) is None and bench.depth_for(lambda x: x, 5, 3) == 3


def test_targets_keep_their_keys():
    t = made()["targets"]
    assert {"workload", "serving", "not_measured", "met", "missed", "trace_1000_seconds",
            "trace_under_0.5s"} <= set(t)
    assert t["thresholds"] == bench.THRESHOLDS
    assert bench.THRESHOLDS["speedup"] == {EC: 1.1, SPARSE: 1.4} and bench.THRESHOLDS["ratio"] == {EC: 0.9}
    assert bench.THRESHOLDS["trace_seconds"] == 0.5


def test_latency_stats_from_token_times():
    stats = bench.latency_stats([[0.1, 0.3, 0.4], [0.2, 0.25]])
    assert stats["ttft_p50"] == pytest.approx(0.15) and stats["ttft_p95"] == pytest.approx(0.195)
    assert stats["token_gap_p50"] == pytest.approx(0.1)  # gaps 0.2, 0.1, 0.05
    assert bench.latency_stats([[0.1]])["token_gap_p50"] is None


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


def test_from_json_renders_a_report_without_a_serving_section(tmp_path):
    raw = {k: v for k, v in copy.deepcopy(made()).items() if k not in ("targets", "findings", "serving")}
    saved = tmp_path / "old.json"
    saved.write_text(json.dumps(raw), encoding="utf-8")
    out = tmp_path / "performance.md"
    assert run_cli(["--from-json", str(saved), "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert "## Serving" not in text and "## Targets: 1 of 1 hold" in text and "Not measured in this run" in text
    assert not (tmp_path / "perf_serving.png").exists()


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
                    "--threads", "1", "--data", str(tmp_path / "nodata"), "--out", str(out),
                    "--serving-widths", "1", "2", "--serving-requests-per-slot", "2", "--serving-new-tokens", "3",
                    "--matmul-sizes", "32", "64"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {"meta", "checkpoints", "configs", "results", "growth", "profile", "depth_caps", "targets",
            "findings", "serving"} <= set(data)
    check_serving(data)
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
    assert "## Serving: issue 14's workload" in text and "### Width 1 (2 requests)" in text
    assert "### Width 2 (4 requests)" in text and "![perf_serving.png](perf_serving.png)" in text
    assert line_with(text, "the serving workload is issue 14's").startswith("- ❌")  # 2 per slot, 3 tokens, random ids
    assert all((out.parent / image).stat().st_size > 0 for image in IMAGES)
    assert json.loads(out.with_suffix(".json").read_text())["meta"]["new_tokens"] == 3
    again = tmp_path / "again" / "performance.md"
    assert run_cli(["--from-json", str(out.with_suffix(".json")), "--out", str(again)]) == 0
    assert again.read_text(encoding="utf-8") == text


def check_serving(data: dict) -> None:
    """The serving section of a tiny run (widths 1 2, 2 requests per slot, 3 new tokens): its keys and
    what must hold between its numbers whatever the timings."""
    s = data["serving"]
    assert {"widths", "requests_per_slot", "new_tokens", "prompt_len", "prompt_source", "repeats", "matmul_peak",
            "rows"} <= set(s)
    assert s["widths"] == [1, 2] and s["requests_per_slot"] == 2 and s["new_tokens"] == 3
    peak = s["matmul_peak"]
    assert peak["gflops"] > 0 and {r["size"] for r in peak["sizes"]} == {32, 64} and len(peak["measurements"]) == 2
    rows = {(r["checkpoint"], r["width"]): r for r in s["rows"]}
    assert set(rows) == {(n, w) for n in ("van", "ec", "llama") for w in (1, 2)}
    for (name, w), r in rows.items():
        assert r["requests"] == 2 * w and r["tokens"] == r["requests"] * 3
        assert 0 < r["ttft_p50"] <= r["ttft_p95"] <= r["wall_seconds"]
        assert 0 <= r["token_gap_p50"] <= r["token_gap_p95"] <= r["wall_seconds"]
        assert r["tokens_per_second"] > 0 and r["gflops_per_second"] > 0 and r["flops"] > 0
        assert r["peak_fraction"] == pytest.approx(r["gflops_per_second"] / peak["gflops"])
        assert r["runner"] == ("generate" if name == "llama" else "engine")
    assert rows[("van", 1)]["speedup_vs_vanilla"] == 1.0 and rows[("van", 2)]["speedup_vs_llama"] > 0
    for name in ("van", "ec"):
        cfg = MoRConfig(**data["configs"][name])
        for w in (1, 2):
            r = rows[(name, w)]
            assert 1 <= r["mean_depth"] <= cfg.num_recursions and 1 <= r["mean_depth_all"] <= cfg.num_recursions
            # the full-pass row count is the engine's own: every row of every weight pass
            assert r["pass_rows"] == pytest.approx(r["requests"] * bench.full_pass_rows(cfg, 5, 3, r["mean_depth_all"]))
            assert r["prefill_chunk"] == max(w, PREFILL_TOKENS) and r["max_tokens"] == max(w, PASS_TOKENS)
            assert r["max_inflight"] == 4 * w
    fill = data["findings"]["serving"]["fill"]
    assert len(fill) == 4 and all(0 < f["fill"] <= 1 + 1e-9 for f in fill)
    assert rows[("van", 1)]["mean_depth_all"] == 1.0
    for f in fill:  # the 5-token prompts ride in wide passes: fewer passes than one per row at width 1
        r = rows[(f["checkpoint"], f["width"])]
        one_row_passes = bench.full_pass_rows(MoRConfig(**data["configs"][f["checkpoint"]]), 5, 3, r["mean_depth_all"]) / 3
        assert r["passes_per_token"] == f["passes_per_token"] and (f["width"] > 1 or f["passes_per_token"] < one_row_passes)


def test_the_profile_window_is_taken_while_decoding_not_during_prefill():
    # Chunked prefill rides in the engine's passes, so the first events carry prompt rows only; a
    # window taken there decodes nothing (the bug that put 0.000 ms/token in the report).
    from mor.analysis.bench import costs

    model = tiny_model()
    prompts = [list(range(5 + i, 5 + i + 24)) for i in range(4)]
    stream = Engine(model, max_batch=4).stream(prompts, 48, stop_at_eos=False)
    start = costs._decode_start(stream, len(prompts))
    assert start.tokens_generated >= len(prompts)
    window = list(itertools.islice(stream, bench.PROFILE_STEPS))
    assert window[-1].tokens_generated > start.tokens_generated
    assert window[-1].prefill_seconds == start.prefill_seconds  # no prompt rows left in the window
    out = costs._pass_costs(model, 4, prompts, 48)
    assert out["wall_ms_per_token_unprofiled"] > 0 and out["rows_per_pass"] > 0
