"""The addition slice and the reasoning probe: formats, fresh problems, masked rows, scoring."""

from __future__ import annotations

import argparse
import json
import random
import re

import pytest
import torch

from mor.analysis import probe
from mor.cli import main
from mor.data.addition import AdditionFormat, AdditionStream, draw_pair, pair_bucket, sample_pairs
from mor.data.tokenizer import train_tokenizer
from mor.training import loop


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    sample = tmp_path_factory.mktemp("tok") / "sample.txt"
    sample.write_text("In 1987 the 12 ships sailed 345 miles.\n" * 50 + "047+586=0633\n", encoding="utf-8")
    return train_tokenizer([sample], vocab_size=300)


def test_formats():
    plain, rev = AdditionFormat.zero_padded(3), AdditionFormat.zero_padded(3, reversed_answer=True)
    assert plain.line(47, 586) == "047+586=0633" and rev.line(47, 586) == "047+586=3360"
    assert plain.record() == {"task": "addition", "digits": 3, "prompt_format": "{a:03d}+{b:03d}=",
                              "answer_format": "{c:04d}", "answer_reversed": False}
    assert list(plain.record()) == ["task", "digits", "prompt_format", "answer_format", "answer_reversed"]
    assert AdditionFormat.from_record(rev.record()) == rev
    assert AdditionFormat.zero_padded(2).line(9, 99) == "09+99=108"
    with pytest.raises(ValueError, match="unknown probe task"):
        AdditionFormat.from_record({"task": "multiplication"})
    with pytest.raises(ValueError, match="digits"):
        AdditionFormat.zero_padded(0)


def test_probe_problems_are_never_trained_on():
    rng = random.Random(0)
    trained = {draw_pair(3, rng, held_out=False) for _ in range(20_000)}
    held_out = set(sample_pairs(3, 2000, seed=1234, held_out=True))
    assert not trained & held_out
    assert all(pair_bucket(a, b) == 0 for a, b in held_out)
    assert 0.08 < sum(pair_bucket(a, b) == 0 for a in range(100) for b in range(100)) / 10_000 < 0.12
    assert sample_pairs(3, 10, 5, True) == sample_pairs(3, 10, 5, True)  # reproducible


@pytest.mark.parametrize("reverse", [False, True])
def test_stream_rows_mask_the_operands(tokenizer, reverse):
    fmt = AdditionFormat.zero_padded(3, reversed_answer=reverse)
    stream = AdditionStream(fmt, tokenizer)
    ids, labels = stream.row(60, random.Random(1))
    assert len(ids) == len(labels) == 60
    text = tokenizer.decode(ids)
    lines = text.split("\n")
    assert lines[0] == ""  # a row starts with a newline, so every problem starts a line
    for line in lines[1:-1]:  # whole problems
        a, b = int(line[:3]), int(line[4:7])
        assert line == fmt.line(a, b) and pair_bucket(a, b) != 0
    # labels keep exactly the answers and the newlines after them
    kept = tokenizer.decode([i for i, l in zip(ids, labels) if l != -100])
    assert kept.startswith("".join(fmt.answer(int(line[:3]), int(line[4:7])) + "\n" for line in lines[1:-1]))
    assert all(l in (-100, i) for i, l in zip(ids, labels))


def test_in_text_rows_put_runs_of_problems_between_text_snippets(tokenizer):
    fmt = AdditionFormat.zero_padded(3)
    stream = AdditionStream(fmt, tokenizer)
    text = tokenizer("In 1987 the 12 ships sailed 345 miles." * 40, add_special_tokens=False).input_ids[:400]
    assert len(text) == 400 and stream.newline not in text
    ids, labels = stream.row(400, random.Random(3), text)
    assert len(ids) == len(labels) == 400
    # Split the row at newlines: each piece is a whole problem or a text snippet, and the snippets,
    # joined, are the start of `text` in order.
    pieces, start = [], 1
    for end in [i for i, t in enumerate(ids) if t == stream.newline][1:]:
        pieces.append((start, end))
        start = end + 1
    problems, snippet_ids, runs, run = 0, [], [], 0
    for start, end in pieces:
        line = tokenizer.decode(ids[start:end])
        if re.fullmatch(r"\d{3}\+\d{3}=\d{4}", line):
            a, b = int(line[:3]), int(line[4:7])
            assert line == fmt.line(a, b) and pair_bucket(a, b) != 0
            assert tokenizer.decode([l for l in labels[start:end + 1] if l != -100]) == fmt.answer(a, b) + "\n"
            problems, run = problems + 1, run + 1
        else:  # a snippet: every token labelled, the newline that opens the next run is not
            assert 8 <= end - start <= 32 and labels[start:end] == ids[start:end] and labels[end] == -100
            snippet_ids += ids[start:end]
            runs.append(run)
            run = 0
    assert snippet_ids == text[:len(snippet_ids)]
    assert runs and all(1 <= r <= 4 for r in runs) and problems >= 2 * len(runs) - 2
    # the layout reaches the batch: the same rows with and without it differ only in addition rows
    from mor.data.windows import TokenData
    import numpy as np

    data = TokenData(np.array(text * 3, dtype=np.uint16))
    rows_x, rows_labels = loop.training_batch(data, stream, 0.5, 16, 200, torch.Generator().manual_seed(0))
    mixed_x, _ = loop.training_batch(data, stream, 0.5, 16, 200, torch.Generator().manual_seed(0), "in_text")
    problem_rows = (rows_labels == -100).any(1)
    assert torch.equal(rows_x[~problem_rows], mixed_x[~problem_rows])
    assert all(set(text) & set(row.tolist()) for row in mixed_x[problem_rows])


def test_fixed_depth_steps_follow_their_probability():
    from mor.model.configuration import MoRConfig

    config = MoRConfig(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=1,
                       num_hidden_layers=5, num_recursions=3, routing="expert_choice", vocab_size=50)
    gen = torch.Generator().manual_seed(0)
    draws = [loop.sample_fixed_depth(config, 0.25, gen) for _ in range(2000)]
    assert set(draws) == {None, 3} and 0.2 < draws.count(3) / 2000 < 0.3
    assert loop.sample_fixed_depth(config, 0.0, gen) is None


def test_stream_needs_one_token_per_digit(tmp_path):
    sample = tmp_path / "s.txt"
    sample.write_text("100 200 300 047 586 0633\n" * 200, encoding="utf-8")
    merging = train_tokenizer([sample], vocab_size=300)
    merging.backend_tokenizer.pre_tokenizer = __import__("tokenizers").pre_tokenizers.ByteLevel(add_prefix_space=False)
    fmt = AdditionFormat.zero_padded(3)
    if len(merging("00", add_special_tokens=False).input_ids) == 1:  # only meaningful if "00" merged
        with pytest.raises(ValueError, match="one"):
            AdditionStream(fmt, merging).row(20, random.Random(0))


def test_training_batch_mixes_the_share(tokenizer):
    from mor.data.windows import TokenData
    import numpy as np

    data = TokenData(np.arange(1000, dtype=np.uint16) % 200)
    stream = AdditionStream(AdditionFormat.zero_padded(3), tokenizer)
    gen = torch.Generator().manual_seed(0)
    x, labels = loop.training_batch(data, stream, 0.5, 64, 40, gen)
    masked_rows = (labels == -100).any(1)
    assert 16 < masked_rows.sum() < 48  # about half the rows are problems
    assert torch.equal(x[~masked_rows], labels[~masked_rows])  # text rows keep every label
    again = loop.training_batch(data, stream, 0.5, 64, 40, torch.Generator().manual_seed(0))
    assert torch.equal(again[0], x) and torch.equal(again[1], labels)  # a resumed run sees the same rows


def test_presets_fill_what_the_command_line_leaves_out():
    parser = argparse.ArgumentParser(prog="mor")
    loop.register_cli(parser.add_subparsers(dest="command"))
    args = loop.resolve_settings(parser.parse_args(["train", "--preset", "mor-ec-r3-probe", "--out", "x"]))
    assert (args.addition_share, args.addition_layout, args.seq_len, args.flops_budget) == (0.8, "in_text", 512, 2.25e14)
    args = loop.resolve_settings(parser.parse_args(["train", "--preset", "mor-ec-r3-probe-rows", "--out", "x"]))
    assert (args.addition_share, args.addition_layout) == (0.8, "rows")
    args = loop.resolve_settings(parser.parse_args(["train", "--preset", "vanilla", "--out", "x", "--seq-len", "64"]))
    assert (args.addition_share, args.seq_len) == (0.0, 64)
    with pytest.raises(ValueError, match="addition-share"):
        loop.resolve_settings(parser.parse_args(["train", "--out", "x", "--addition-share", "1.5"]))
    with pytest.raises(ValueError, match="fixed-depth-prob"):
        loop.resolve_settings(parser.parse_args(["train", "--out", "x", "--fixed-depth-prob", "-0.1"]))


class FakeAdder(torch.nn.Module):
    """Stands in for a model: `generate` writes the right sum except when a + b is odd (then 0000),
    every token takes depth 1, answer digits depth 2: a known accuracy and known depths."""

    def __init__(self, tokenizer, fmt):
        super().__init__()
        self.tok, self.fmt = tokenizer, fmt
        self.config = argparse.Namespace(num_recursions=3)
        self.device = torch.device("cpu")

    def generate(self, ids, max_new_tokens, depth_cap=None, eos_token_id=None):
        rows = []
        for row in ids.tolist():
            line = self.tok.decode(row).strip("\n")
            a, b = int(line[:3]), int(line[4:7])
            answer = self.fmt.answer(a, b) if (a + b) % 2 == 0 else "0000"
            rows.append(row + self.tok(answer + "\n", add_special_tokens=False).input_ids)
        return torch.tensor(rows)

    def forward(self, ids, depth_cap=None, use_cache=False):
        depths = torch.ones_like(ids)
        depths[:, -5:-1] = 2  # the four answer digits
        return argparse.Namespace(depths=depths)


def test_probe_scores_exact_matches_and_depths(tokenizer):
    fmt = AdditionFormat.zero_padded(3)
    result = probe.run_probe(FakeAdder(tokenizer, fmt), tokenizer, fmt, examples=200, seed=7)
    expected = sum((a + b) % 2 == 0 for a, b in sample_pairs(3, 200, 7, True)) / 200
    assert abs(result["accuracy"] - expected) < 1e-9
    assert result["mean_depth_answer"] == 2.0 and result["mean_depth_prompt"] == 1.0
    assert {"task", "examples", "accuracy", "mean_depth_answer", "mean_depth_prompt"} <= set(result)
    with pytest.raises(ValueError, match="examples"):
        probe.run_probe(FakeAdder(tokenizer, fmt), tokenizer, fmt, examples=0)


def test_probe_cli_on_a_shipped_checkpoint(checkpoint_name, capsys):
    assert main(["probe", "--checkpoint", checkpoint_name, "--examples", "20", "--depth-cap", "1", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"task", "examples", "accuracy", "mean_depth_answer", "mean_depth_prompt"} <= set(result)
    assert result["examples"] == 20 and result["depth_cap"] == 1 and 0 <= result["accuracy"] <= 1
    assert result["mean_depth_prompt"] == 1.0 and result["mean_depth_answer"] in (None, 1.0)  # capped at one
    assert main(["probe", "--checkpoint", checkpoint_name, "--depth-cap", "9"]) == 2
    assert re.search(r"above this checkpoint's \d+ recursions", capsys.readouterr().err)


def test_balanced_operands_make_short_numbers_common():
    rng = random.Random(0)
    pairs = [draw_pair(3, rng, held_out=False, balanced=True) for _ in range(3000)]
    short = sum(a < 10 for a, _ in pairs) / len(pairs)
    assert 0.25 < short < 0.42  # a third of the operands have one digit (uniform: 1%)
    assert all(pair_bucket(a, b) != 0 for a, b in pairs)
