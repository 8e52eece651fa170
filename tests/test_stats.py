"""Depth statistics over a corpus (mor/analysis/stats.py) and `mor stats`.

Every group the statistics report is recomputed here from one batched `windowed_pass` over the
same text (the pass `mor trace` runs), the windows of `sliding_windows` and `token_class`, so the
window-by-window pass, the grouping and the frequency bands are each checked independently.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

import mor
from mor import analysis
from mor.analysis import stats
from mor.cli import main
from mor.data import token_texts, train_tokenizer

from helpers import shipped_checkpoints, tiny_model

CORPUS = ("The cat sat on the mat. The dog sat on the log, and then the cat and the dog ran into the garden "
          "where the sun was warm in 1648. A bird flew over the house and sang: la, la, la!\n\n")
TEXT = CORPUS * 3 + "Theory of the cat's mind: 42 birds, 7 dogs."


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("tok") / "corpus.txt"
    corpus.write_text(CORPUS * 20, encoding="utf-8")
    return train_tokenizer([corpus], vocab_size=300)


def text_model(**kwargs):
    """A tiny model over the tokenizer's 300 ids with a 16-token context (TEXT takes many windows)."""
    return tiny_model(vocab_size=300, max_position_embeddings=16, **kwargs)


# ---- token classes ------------------------------------------------------------------------------

@pytest.mark.parametrize("piece, prev, nxt, expected", [
    (",", "cat", " the", "punctuation"),
    ("$", " ", "5", "punctuation"),
    ("7", " ", "2", "digit"),
    (" the", "cat", " dog", "function word"),
    ("The", "", " cat", "function word"),  # the first token starts a word
    (" the", "", "ory", "word-initial piece"),  # " the" + "ory": not the word "the"
    ("ory", " the", ".", "continuation piece"),
    ("tis", "'", " nobler", "word-initial piece"),  # after punctuation a word starts
    (" cat", "the", ".", "word-initial piece"),
    (" \n", ".", "The", "whitespace"),
    ("", " ", "x", "other"),  # holds no text (part of a multi-byte character)
    ("😀", " ", "!", "other"),
])
def test_token_class(piece, prev, nxt, expected):
    assert stats.token_class(piece, prev, nxt) == expected
    assert expected in stats.TOKEN_CLASSES


# ---- the statistics against a batched pass --------------------------------------------------------

def reference_groups(model, tokenizer, text):
    """Depths, router scores, classes and window positions from one batched windowed_pass."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    run = analysis.windowed_pass(model, ids)
    pieces = token_texts(tokenizer, ids)
    classes = [stats.token_class(p, pieces[i - 1] if i else "", pieces[i + 1] if i + 1 < len(ids) else "")
               for i, p in enumerate(pieces)]
    position = {}
    for start, end, first in analysis.sliding_windows(len(ids), model.config.max_position_embeddings):
        position.update({t: t - start for t in range(first, end)})
    return ids, run, classes, [position[t] for t in range(len(ids))]


def mean(values):
    return sum(values) / len(values) if values else None


@pytest.mark.parametrize("routing", ["expert_choice", "token_choice", "none"])
def test_corpus_stats_match_a_batched_pass(tokenizer, routing):
    model = text_model(routing=routing)
    R = model.config.num_recursions
    steps = []
    out = stats.corpus_stats(model, tokenizer, TEXT, min_count=2, top=4, checkpoint="tiny",
                             progress=lambda done, total: steps.append((done, total)))
    ids, run, classes, positions = reference_groups(model, tokenizer, TEXT)
    depths = run.depths
    assert out["tokens"] == len(ids) and out["windows"] == run.windows > 5
    assert steps == [(w, run.windows) for w in range(1, run.windows + 1)]
    assert out["mean_depth"] == pytest.approx(mean(depths))
    assert out["depth_histogram"] == {str(d): depths.count(d) for d in range(1, R + 1)}
    assert json.loads(json.dumps(out)) == out
    # by class
    assert list(out["by_class"]) == list(stats.TOKEN_CLASSES)
    for name, group in out["by_class"].items():
        mine = [d for d, c in zip(depths, classes) if c == name]
        assert group["tokens"] == len(mine) and group["mean_depth"] == pytest.approx(mean(mine))
    assert out["by_class"]["function word"]["tokens"] > 10 and out["by_class"]["digit"]["tokens"] == 3 * 4 + 3
    # by position in the window: 16 buckets of one position each for a 16-token context
    for bucket in out["by_position"]:
        mine = [d for d, p in zip(depths, positions) if bucket["from"] <= p <= bucket["to"]]
        assert bucket["tokens"] == len(mine) and bucket["mean_depth"] == pytest.approx(mean(mine))
    assert sum(b["tokens"] for b in out["by_position"]) == len(ids)
    # deepest and shallowest, with counts
    seen = Counter(ids)
    by_token = {t: mean([d for d, i in zip(depths, ids) if i == t]) for t in seen if seen[t] >= 2}
    assert [r["mean_depth"] for r in out["deepest"]] == sorted(by_token.values(), reverse=True)[:4]
    assert [r["mean_depth"] for r in out["shallowest"]] == sorted(by_token.values())[:4]
    for row in out["deepest"] + out["shallowest"]:
        assert row["count"] == seen[row["token_id"]] >= 2
        assert row["token"] == token_texts(tokenizer, [row["token_id"]])[0]
    # router scores per step
    router = out["router"]
    assert router["kind"] == routing
    scores = np.asarray(run.router_scores, dtype=float)
    for step in router["steps"]:
        column = scores[:, step["step"] - 1]
        column = column[~np.isnan(column)]
        assert step["evaluated"] == len(column) == sum(step["histogram"])
        if routing == "expert_choice" and step["step"] > 1:
            threshold = model.config.router_threshold[step["step"] - 2]
            assert step["threshold"] == threshold
            assert step["above_threshold"] == pytest.approx(float((column > threshold).mean()))
        else:
            assert step["threshold"] is None and step["above_threshold"] is None
    assert len(router["steps"]) == (0 if routing == "none" else R)


def test_frequency_bands_fall_back_to_token_ids(tokenizer):
    model = text_model()
    out = stats.corpus_stats(model, tokenizer, TEXT)
    ids, run, _, _ = reference_groups(model, tokenizer, TEXT)
    assert out["frequency"]["basis"].startswith("token id (BPE merge order)")
    assert "no token_counts.json" in out["frequency"]["reason"]
    low = [d for d, t in zip(run.depths, ids) if t < 256]
    assert out["by_frequency_band"]["token id 0-255"]["tokens"] == len(low)
    assert out["by_frequency_band"]["token id 256-1,023"]["tokens"] == len(ids) - len(low)


def test_token_counts_give_the_frequency_bands(tokenizer, tmp_path):
    model = text_model()
    train = tmp_path / "train.txt"
    train.write_text(CORPUS * 5 + "Zebra zebra zebra.\n\n", encoding="utf-8")
    # A stale id cache beside the text, named as TokenData names it (another tokenizer's ids), is ignored.
    stale = tmp_path / f"train.{train.stat().st_size}.{len(tokenizer)}.u16"
    np.zeros(1000, dtype=np.uint16).tofile(stale)
    record = stats.write_token_counts(tmp_path, tokenizer, train)
    # Independent count: documents split on blank lines, each followed by EOS, as training reads them.
    expected = Counter()
    for doc in filter(str.strip, train.read_text(encoding="utf-8").split("\n\n")):
        expected.update(tokenizer(doc, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id])
    assert record["counts"] == [expected[t] for t in range(len(tokenizer))]
    assert json.loads((tmp_path / stats.COUNTS_FILE).read_text())["tokens"] == sum(expected.values())

    out = stats.corpus_stats(model, tokenizer, TEXT, checkpoint_folder=tmp_path)
    assert out["frequency"]["basis"] == "training counts"
    assert out["frequency"]["training_tokens"] == sum(expected.values())
    ids, run, _, _ = reference_groups(model, tokenizer, TEXT)
    ranked = sorted(range(len(tokenizer)), key=lambda t: (-expected[t], t))
    unseen = [d for d, t in zip(run.depths, ids) if expected[t] == 0]
    top = [d for d, t in zip(run.depths, ids) if expected[t] and ranked.index(t) < 256]
    assert unseen, "TEXT should hold tokens the training text never had"
    assert out["by_frequency_band"]["unseen in training"]["tokens"] == len(unseen)
    assert out["by_frequency_band"]["frequency rank 1-256"]["tokens"] == len(top)
    assert out["by_frequency_band"]["frequency rank 1-256"]["mean_depth"] == pytest.approx(mean(top))

    other = train_tokenizer([train], vocab_size=280)  # another tokenizer: the counts are not its own
    assert "different tokenizer" in stats.frequency_ranks(tmp_path, other)[1]["reason"]
    (tmp_path / stats.COUNTS_FILE).write_text("{not json", encoding="utf-8")
    ranks, basis = stats.frequency_ranks(tmp_path, tokenizer)
    assert ranks is None and "is not readable" in basis["reason"]


def test_corpus_stats_rejects_bad_input(tokenizer):
    model = text_model()
    with pytest.raises(ValueError, match="the text is empty"):
        stats.corpus_stats(model, tokenizer, "")
    with pytest.raises(ValueError, match="min_count and top must be positive"):
        stats.corpus_stats(model, tokenizer, TEXT, min_count=0)


# ---- the CLI on a saved tiny checkpoint and on the shipped ones -------------------------------

@pytest.fixture
def saved(tokenizer, tmp_path):
    folder = tmp_path / "tiny-ckpt"
    mor.save_checkpoint(text_model(), tokenizer, folder, dtype=torch.float32)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    return folder, corpus


def test_cli_stats_prints_the_same_json(saved, capsys, tmp_path):
    folder, corpus = saved
    assert main(["stats", "--checkpoint", str(folder), "--text-file", str(corpus), "--json", "--device", "cpu",
                 "--min-count", "2", "--top", "5"]) == 0
    out = json.loads(capsys.readouterr().out)
    model, tokenizer = mor.load(folder, device="cpu")
    expected = stats.corpus_stats(model, tokenizer, TEXT, checkpoint_folder=folder, min_count=2, top=5,
                                  checkpoint=str(folder))
    assert {k: v for k, v in out.items() if k != "seconds"} == {k: v for k, v in expected.items() if k != "seconds"}
    assert {"checkpoint", "tokens", "mean_depth", "by_class", "deepest", "shallowest"} <= set(out)

    assert main(["stats", "--checkpoint", str(folder), "--count-tokens", str(corpus)]) == 0
    assert "wrote" in capsys.readouterr().out and (folder / stats.COUNTS_FILE).is_file()
    assert main(["stats", "--checkpoint", str(folder), "--text-file", str(corpus), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["frequency"]["basis"] == "training counts"

    empty = tmp_path / "empty.txt"
    empty.write_text("", encoding="utf-8")
    assert main(["stats", "--checkpoint", str(folder), "--text-file", str(empty)]) == 2
    assert "the text is empty" in capsys.readouterr().err
    assert main(["stats", "--checkpoint", str(folder), "--text-file", str(tmp_path / "missing.txt")]) == 2
    assert "does not exist" in capsys.readouterr().err


SHIPPED = [f.name for f in shipped_checkpoints()]


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_stats_on_every_shipped_checkpoint(name):
    model, tokenizer = mor.load(name, device="cpu")
    cfg = model.config
    text = (CORPUS * 6)[:3000]
    out = stats.corpus_stats(model, tokenizer, text, checkpoint_folder=mor.resolve_checkpoint(name))
    trace = analysis.trace(model, tokenizer, text)
    assert out["tokens"] == len(trace.tokens) and out["mean_depth"] == pytest.approx(trace.mean_depth)
    assert out["router"]["kind"] == cfg.routing
    thresholds = [s["threshold"] for s in out["router"]["steps"]]
    if cfg.routing == "expert_choice":
        assert thresholds == [None, *cfg.router_threshold]
    assert sum(g["tokens"] for g in out["by_class"].values()) == out["tokens"]
    assert sum(g["tokens"] for g in out["by_frequency_band"].values()) == out["tokens"]
    assert math.isclose(sum(g["tokens"] * g["mean_depth"] for g in out["by_class"].values() if g["tokens"]),
                        sum(trace.depths))
