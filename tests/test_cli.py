"""The `mor` command line: tiny training runs, resume, DDP, and eval/trace on shipped checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import mor
from mor.cli import main
from mor.data import build_corpus, train_tokenizer

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A corpus slice (real text from the packages) and a 600-token tokenizer."""
    root = tmp_path_factory.mktemp("data")
    build_corpus(root / "full")
    for split, size in (("train", 120_000), ("val", 20_000)):
        text = (root / "full" / f"{split}.txt").read_text(encoding="utf-8")[:size]
        (root / f"{split}.txt").write_text(text, encoding="utf-8")
    train_tokenizer([root / "train.txt"], vocab_size=600).save_pretrained(root / "tokenizer")
    return root


def train_args(data: Path, out: Path, steps: int) -> list[str]:
    return ["train", "--preset", "tiny", "--data", str(data), "--out", str(out), "--max-steps", str(steps),
            "--batch-size", "2", "--seq-len", "32", "--val-windows", "4", "--eval-every", "2",
            "--save-every", "2", "--log-every", "1", "--threads", "1"]


@pytest.mark.slow
def test_train_writes_a_loadable_checkpoint_and_resumes(tiny_data, tmp_path):
    out = tmp_path / "run"
    assert main(train_args(tiny_data, out, 3)) == 0
    first = json.loads((out / "training.json").read_text())
    assert first["steps"] == 3 and first["tokens_seen"] == 3 * 2 * 32
    assert {"arguments", "training_flops", "wall_seconds", "final_val_nll", "loss_curve", "corpus"} <= set(first)
    assert first["training_flops"] > 0 and (out / "README.md").read_text().startswith("# run")
    model, tokenizer = mor.load(out, device="cpu")
    assert model.config.routing == "expert_choice" and len(tokenizer) <= model.config.vocab_size
    # a second run with a larger budget continues from step 3
    assert main(train_args(tiny_data, out, 5)) == 0
    second = json.loads((out / "training.json").read_text())
    assert second["steps"] == 5 and second["tokens_seen"] == 5 * 2 * 32
    assert second["loss_curve"][:3] == first["loss_curve"]


@pytest.mark.slow
def test_train_rejects_bad_input(tiny_data, tmp_path, capsys):
    assert main(train_args(tiny_data, tmp_path / "a", 1) + ["--preset", "huge"]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err
    assert main(train_args(tiny_data, tmp_path / "b", 1) + ["--set", "sharing=ring"]) == 2
    assert "sharing='ring' is not supported" in capsys.readouterr().err
    assert main(["train", "--out", str(tmp_path / "c"), "--data", str(tmp_path / "nowhere"), "--max-steps", "1"]) == 2
    assert "run `mor data" in capsys.readouterr().err


@pytest.mark.slow
def test_ddp_two_processes_on_gloo(tiny_data, tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    out = tmp_path / "ddp"
    args = [torchrun, "--nproc-per-node", "2", "--master-port", "29517", "-m", "mor.cli", *train_args(tiny_data, out, 2)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads((out / "training.json").read_text())
    assert info["world_size"] == 2 and info["tokens_seen"] == 2 * 2 * 2 * 32


# ---- eval / trace on what the project ships -------------------------------------------------------

@pytest.fixture(scope="module")
def shipped_mor(checkpoint_name):
    return checkpoint_name


def run_cli(args, capsys) -> tuple[int, str, str]:
    code = main(args)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_trace_json_schema(shipped_mor, capsys):
    text = "To be, or not to be, that is the question. 🙂 Ωμέγα"
    code, out, _ = run_cli(["trace", "--checkpoint", shipped_mor, "--text", text, "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert set(data) >= {"checkpoint", "num_recursions", "tokens", "depths", "token_nll", "router_scores"}
    n, R = len(data["tokens"]), data["num_recursions"]
    assert "".join(data["tokens"]) == text
    assert len(data["depths"]) == len(data["token_nll"]) == len(data["router_scores"]) == n
    assert all(1 <= d <= R for d in data["depths"])
    assert data["token_nll"][0] is None and all(v > 0 for v in data["token_nll"][1:])
    assert all(len(s) == R for s in data["router_scores"])
    code, out, _ = run_cli(["trace", "--checkpoint", shipped_mor, "--text", text, "--fixed-depth", "1", "--json"], capsys)
    assert set(json.loads(out)["depths"]) == {1}


def test_eval_json_schema_and_depth_cap(shipped_mor, tmp_path, capsys):
    f = tmp_path / "t.txt"
    f.write_text("The river flows to the sea. " * 30 + "HAMLET: Words, words, words.", encoding="utf-8")
    results = {}
    for cap in ("1", None):
        args = ["eval", "--checkpoint", shipped_mor, "--text-file", str(f), "--json"] + (["--depth-cap", cap] if cap else [])
        code, out, _ = run_cli(args, capsys)
        assert code == 0
        results[cap] = json.loads(out)
        assert set(results[cap]) == {"nll", "ppl", "tokens", "mean_depth", "depth_histogram", "bits_per_byte", "windows"}
    assert results["1"]["mean_depth"] == 1.0
    assert results["1"]["nll"] != results[None]["nll"]
    assert sum(results[None]["depth_histogram"].values()) == results[None]["tokens"]


def test_list_shows_the_suite(shipped_names, capsys):
    code, out, _ = run_cli(["list", "--json"], capsys)
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and set(shipped_names) <= set(rows)
    assert all(rows[name]["val_nll"] is not None for name in shipped_names)


@pytest.mark.parametrize("args,message", [
    (["eval", "--checkpoint", "no-such-model", "--text-file", "x.txt"], "No checkpoint folder named 'no-such-model'"),
    (["trace", "--checkpoint", "x"], "give --text or --text-file"),
])
def test_cli_errors_are_one_line_not_tracebacks(args, message, capsys):
    code, _, err = run_cli(args, capsys)
    assert code == 2 and message in err and "Traceback" not in err


def test_bad_flags_give_usage(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["trace", "--depth-cap", "zero"])
    assert exit_info.value.code == 2 and "usage:" in capsys.readouterr().err
