"""`mor data`: build the corpus and train the tokenizer.

    mor data --out data            # data/train.txt, data/val.txt, data/sources.json, data/tokenizer/
    mor data --out data --json     # same, summary printed as JSON
    mor data --out data_v1 --sources wikipedia shakespeare   # the v1 corpus (its val split is v2's benchmark)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from .corpus import SPLITS, DataError, Document, split_documents, write_corpus
from .sources import LANGUAGE_SOURCES
from .tokenizer import train_tokenizer


def _count_tokens(tokenizer: PreTrainedTokenizerFast, docs: Sequence[Document]) -> int:
    texts = [doc.text for doc in docs]
    encodings = tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False)
    return sum(len(encoding.ids) for encoding in encodings)


def _run_data(args: argparse.Namespace) -> int:
    """`mor data`: build the corpus, train and save the tokenizer, print a summary."""
    out = Path(args.out)
    tokenizer_out = Path(args.tokenizer_out) if args.tokenizer_out else out / "tokenizer"
    try:
        sources = [LANGUAGE_SOURCES[name]() for name in args.sources]
        splits = split_documents(sources, args.val_fraction, args.seed)
    except (DataError, ValueError) as error:
        print(f"mor data: error: {error}", file=sys.stderr)
        return 2
    corpus = write_corpus(out, sources, splits, args.val_fraction, args.seed)

    start = time.perf_counter()
    tokenizer = train_tokenizer([out / "train.txt"], vocab_size=args.vocab_size)
    train_seconds = time.perf_counter() - start
    tokenizer.save_pretrained(str(tokenizer_out))

    for name, info in corpus["sources"].items():
        info["tokens"] = {
            split: _count_tokens(tokenizer, [doc for doc in docs if doc.source == name])
            for split, docs in splits.items()
        }
    summary = {
        "out": str(out),
        "corpus": corpus,
        "tokenizer": {
            "path": str(tokenizer_out),
            "vocab_size": len(tokenizer),
            "train_seconds": round(train_seconds, 2),
        },
    }
    if args.json:
        print(json.dumps(summary, indent=2, ensure_ascii=False))
    else:
        _print_summary(summary)
    return 0


def _print_summary(summary: dict) -> None:
    print(f"corpus in {summary['out']}/ (train.txt, val.txt, sources.json)")
    print(
        f"{'source':<12} {'package':<30} {'split':<5} {'docs':>6} {'chars':>10} "
        f"{'tokens':>10} {'tok/char':>8}"
    )
    for name, info in summary["corpus"]["sources"].items():
        package = f"{info['package']} {info['version']}"
        for split in SPLITS:
            chars, tokens = info["chars"][split], info["tokens"][split]
            ratio = f"{tokens / chars:.3f}" if chars else "-"
            print(
                f"{name:<12} {package:<30} {split:<5} {info['documents'][split]:>6} "
                f"{chars:>10,} {tokens:>10,} {ratio:>8}"
            )
    tok = summary["tokenizer"]
    print(
        f"tokenizer: vocab {tok['vocab_size']}, trained in {tok['train_seconds']} s, "
        f"saved to {tok['path']}/"
    )


def register_cli(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the `data` subcommand to an argparse subparsers object and return its parser."""
    parser = subparsers.add_parser(
        "data",
        help="build the training corpus and train the tokenizer",
        description="Build train.txt/val.txt from English text shipped by installed packages "
        "(see mor/data/sources.py for each source, its package and licence), then train a "
        "byte-level BPE tokenizer (one token per digit) on train.txt.",
    )
    parser.add_argument(
        "--sources", nargs="+", choices=list(LANGUAGE_SOURCES), default=list(LANGUAGE_SOURCES),
        help="which sources to use (default: all of them)",
    )
    parser.add_argument(
        "--out",
        default="data",
        help="directory for train.txt, val.txt and sources.json (default: data)",
    )
    parser.add_argument(
        "--val-fraction",
        type=float,
        default=0.02,
        help="fraction of document groups (articles, scenes, chapters, pages) held out in val.txt (default: 0.02)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the deterministic train/val split (default: 0)"
    )
    parser.add_argument(
        "--vocab-size", type=int, default=8192, help="tokenizer vocabulary size (default: 8192)"
    )
    parser.add_argument(
        "--tokenizer-out",
        default=None,
        help="directory the tokenizer is saved to with save_pretrained (default: OUT/tokenizer)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=_run_data)
    return parser
