"""`mor results`: the report states only what its numbers say, and measuring runs end to end."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from mor.analysis import report, results
from mor.data.tokenizer import train_tokenizer
from mor.model.loading import save_checkpoint

from helpers import tiny_model


def row(name: str, R: int, caps: list[float], **extra) -> dict:
    routing = "none" if R == 1 else "expert_choice"
    base = {"name": name, "routing": routing, "sharing": "middle_cycle", "kv_cache": "recursion_wise", "R": R, "L": 8,
            "context": 512, "unique_params": 8e6 if R == 1 else 5e6, "tokens_seen": 4e6, "training_flops": 2.25e14,
            "val_nll": caps[-1], "mean_depth": 1.0, "depth_hist": [1] * R, "cap_nll": {str(k + 1): v for k, v in enumerate(caps)},
            "texts": {"validation": {"nll": caps[-1], "bits_per_byte": caps[-1] / 4, "tokens": 100, "mean_depth": 1.0}},
            "kv_tokens": 512, "kv_bytes": {"full": 4096, "recursion_wise": 2048, "shared": 1024}, "kv_formula_ok": True,
            "probe": {"trained_on_format": False, "format": {}, "by_cap": {str(k + 1): {"accuracy": 0.0, "mean_depth_answer": None,
                                                                                        "mean_depth_prompt": 1.0} for k in range(R)}}}
    if R > 1:
        base.update(fixed_full_nll=caps[-1], capacity_mode_nll=caps[-1], causal_capacity_agreement=0.95,
                    sentence_depth_std=0.6, spearman_depth_own_nll=-0.2, spearman_depth_next_nll=0.15)
    base.update(extra)
    return base


def suite() -> dict:
    return {"texts": {"validation": {"source": "val.txt", "chars": 1000}}, "generated": "now", "torch_threads": 2,
            "baseline": [], "baseline_folder": None,
            "rows": [row("vanilla", 1, [5.0]), row("mor-ec-r3", 3, [5.2, 5.0, 4.9])]}


def lines_with(text: str, words: str) -> list[str]:
    return [line for line in text.splitlines() if words in line]


def test_checks_follow_the_numbers():
    data = suite()
    text = report.render_results(data, {"depth_cap": "a.png", "probe": "b.png"})
    [cap_line] = lines_with(text, "at depth cap 1 is at least 3% worse")
    assert "**holds**" in cap_line and "+6.12%" in cap_line
    [rise] = lines_with(text, "mor-ec-r3: NLL does not rise")
    assert "**holds**" in rise
    flat = copy.deepcopy(data)
    flat["rows"][1]["cap_nll"] = {"1": 4.95, "2": 4.88, "3": 4.9}  # cap 1 only 1% worse, cap 3 above cap 2
    text = report.render_results(flat, {"depth_cap": "a.png", "probe": "b.png"})
    assert "does NOT hold" in lines_with(text, "at depth cap 1 is at least 3% worse")[0]
    assert "rises at cap 3" in lines_with(text, "mor-ec-r3: NLL does not rise")[0]
    held, total = (int(x) for x in text.split("## Targets: ", 1)[1].split(" hold", 1)[0].split(" of "))
    assert held == text.count("✅") and total == text.count("✅") + text.count("❌")


def test_probe_and_baseline_checks():
    data = suite()
    data["rows"][1]["probe"]["by_cap"] = {"1": {"accuracy": 0.5, "mean_depth_answer": 1.0, "mean_depth_prompt": 1.0},
                                          "3": {"accuracy": 0.95, "mean_depth_answer": 2.6, "mean_depth_prompt": 1.4}}
    data["baseline"] = [{"name": "old", "unique_params": 1, "texts": {"validation": {"bits_per_byte": 1.5}}}]
    checks = {c.claim.split(" ")[0] + c.claim[-30:]: c for c in report.probe_checks(data["rows"]) + report.quality_checks(data)}
    probe = [c for c in checks.values() if "90% exact match" in c.claim][0]
    assert probe.holds and "95.0%" in probe.measured
    assert [c for c in checks.values() if "20 points lower" in c.claim][0].holds
    assert [c for c in checks.values() if "deeper than prompt" in c.claim][0].holds
    bpb = [c for c in checks.values() if "bits per byte" in c.claim][0]
    assert bpb.holds == (4.9 / 4 <= 0.92 * 1.5)


def test_sentence_depth_std():
    tokens = ["The", " cat", " sat", " on", " it", ".", " A", " b", "."]
    assert results.sentence_depth_std(tokens, [1, 1, 1, 1, 1, 1, 3, 3, 3]) == 0.0  # 2nd sentence too short
    assert abs(results.sentence_depth_std(tokens, [1, 3, 1, 3, 1, 3, 1, 1, 1]) - 1.0) < 1e-9


def test_spearman():
    import numpy as np

    a = np.array([1.0, 2, 3, 4])
    assert results.spearman(a, a * 10) == pytest.approx(1.0)
    assert results.spearman(a, -a) == pytest.approx(-1.0)
    assert np.isnan(results.spearman(a, np.ones(4)))


@pytest.mark.slow
def test_measure_a_tiny_checkpoint(tmp_path):
    sample = tmp_path / "train.txt"
    sample.write_text("the cat sat on the mat. the dog ran to the sea.\n" * 40 + "047+586=0633\n", encoding="utf-8")
    tokenizer = train_tokenizer([sample], vocab_size=300)
    model = tiny_model(vocab_size=len(tokenizer), max_position_embeddings=32)
    save_checkpoint(model, tokenizer, tmp_path / "ckpt")
    texts = {"validation": "the cat sat on the mat. " * 8, "fortunes": "a dog ran. " * 5}
    row = results.measure_checkpoint(tmp_path / "ckpt", texts, None, probe_examples=5)
    assert set(row["cap_nll"]) == {"1", "2", "3"} and row["R"] == 3
    assert row["cap_nll"]["3"] == pytest.approx(row["val_nll"], rel=1e-6)  # cap N_r changes nothing
    assert set(row["probe"]["by_cap"]) == {"1", "2", "3"}
    assert set(row["texts"]) == {"validation", "fortunes"}
    json.dumps({k: v for k, v in row.items() if k != "_trace"})  # plain data
    with torch.no_grad():
        ids = torch.tensor([tokenizer(texts["validation"]).input_ids])
        assert row["mean_depth"] == pytest.approx(model(ids).depths.float().mean().item())


def test_levers_table_reads_the_reference_from_the_measured_row():
    rows = [{"name": "mor-ec-r3-probe", "R": 3, "probe": {"by_cap": {"1": {"accuracy": 0.5}, "3": {"accuracy": 0.724}}}}]
    entries = [dict(lever="L1", preset="p1", budget="b", metric="probe_full", reference_checkpoint="mor-ec-r3-probe",
                    value=0.006, higher_is_better=True),
               dict(lever="L2", preset="p2", budget="b", metric="validation NLL", reference="r", reference_value=6.111,
                    value=6.0, higher_is_better=False),
               dict(lever="L3", preset="p3", budget="b", metric="probe_full", reference_checkpoint="absent",
                    value=0.5, higher_is_better=True),
               dict(lever="L4", preset="p4", budget="b", metric="probe_drop", reference_checkpoint="mor-ec-r3-probe",
                    value=0.036, higher_is_better=True)]
    lines = report.results.experiments_table({"rows": rows, "experiments": {"entries": entries}})
    assert len(lines) == 2 + 4
    assert "22.4%" in lines[5] and "3.6%" in lines[5] and "-18.8 points" in lines[5] and lines[5].endswith("worse |")
    assert "72.4%" in lines[2] and "0.6%" in lines[2] and "-71.8 points" in lines[2] and lines[2].endswith("worse |")
    assert "6.111" in lines[3] and "-1.8%" in lines[3] and lines[3].endswith("better |")
    assert "not measured here" in lines[4]
    assert report.results.experiments_table({"rows": rows}) == []


def test_only_remeasures_the_named_checkpoints_and_keeps_checked_rows(tmp_path, monkeypatch, capsys):
    """`mor results --only NAME`: the other rows come from the saved results.json, unless their
    weights changed, the texts differ or the name is unknown (then a clear error, nothing written)."""
    import argparse
    from types import SimpleNamespace

    folders = [tmp_path / "ckpts" / name for name in ("vanilla", "mor-x")]
    for folder in folders:
        folder.mkdir(parents=True)
        (folder / "model.safetensors").write_bytes(b"weights of " + folder.name.encode())
    texts = {"validation": "the val text"}
    monkeypatch.setattr(results, "list_checkpoints", lambda: list(folders))
    monkeypatch.setattr(results, "evaluation_texts", lambda *a: (dict(texts), dict.fromkeys(texts, "src")))
    monkeypatch.setattr(results, "load", lambda folder, device: (None, None))
    monkeypatch.setattr(results.analysis, "trace", lambda m, t, text: SimpleNamespace(token_ids=[7], token_nll=[None]))
    measured = []

    def fake_measure(folder, texts_, vanilla, n):
        measured.append((folder.name, vanilla))
        return {**row(folder.name, 1 if folder.name == "vanilla" else 3, [5.0, 4.9, 4.8]), "measured": "now", "measure_seconds": 1.0,
                "weights_sha256": results.weights_sha256(folder), "_trace": {"token_ids": [1], "token_nll": [None]}}

    monkeypatch.setattr(results, "measure_checkpoint", fake_measure)
    args = argparse.Namespace(data=str(tmp_path), baseline_val=None, fortunes_chars=10, probe_examples=5,
                              out=str(tmp_path), baseline=None, only=None)
    full = results.measure_suite(args)
    assert [m[0] for m in measured] == ["vanilla", "mor-x"] and "kept" not in full
    full["rows"][0]["val_nll"] = 4.321  # a mark to find in the kept row
    (tmp_path / "results.json").write_text(json.dumps(full))

    measured.clear()
    part = results.measure_suite(argparse.Namespace(**{**vars(args), "only": ["mor-x"]}))
    assert measured == [("mor-x", {"token_ids": [7], "token_nll": [None]})]  # vanilla traced for the difficulty readings
    assert part["rows"][0]["val_nll"] == 4.321 and part["kept"] == {"rows": ["vanilla"], "baseline": True}
    assert "This run measured mor-x; the rows of vanilla (now) were kept" in report.results.kept_note(part)

    with pytest.raises(ValueError, match="no shipped checkpoint: nope"):
        results.measure_suite(argparse.Namespace(**{**vars(args), "only": ["nope"]}))
    (folders[0] / "model.safetensors").write_bytes(b"retrained")
    with pytest.raises(ValueError, match="vanilla's weights changed"):
        results.measure_suite(argparse.Namespace(**{**vars(args), "only": ["mor-x"]}))
    texts["validation"] = "another, longer validation text"
    with pytest.raises(ValueError, match="other texts"):
        results.measure_suite(argparse.Namespace(**{**vars(args), "only": ["vanilla"]}))
    texts["validation"] = "the val text"
    del full["rows"][0]["weights_sha256"], full["rows"][0]["measured"]  # a row from before fingerprints
    (tmp_path / "results.json").write_text(json.dumps({**full, "generated": "2026-12-01 10:00 UTC"}))
    part = results.measure_suite(argparse.Namespace(**{**vars(args), "only": ["mor-x"]}))
    assert part["rows"][0]["measured"] == "2026-12-01 10:00 UTC"
    assert "measured before rows recorded their weights' SHA-256" in capsys.readouterr().out
