"""Training text, the addition slice and the tokenizer: everything `mor data` builds.

    mor data --out data            # data/train.txt, data/val.txt, data/sources.json,
                                   # data/tokenizer/ (loadable with AutoTokenizer)
    mor data --out data --json     # same, summary printed as JSON

Modules: `corpus` (documents, the deterministic split, writing), `sources` and `plays` (one
reader per installed package), `addition` (the synthetic reasoning slice and its format),
`tokenizer` (byte-level BPE with one token per digit, per-token text), `windows` (token ids of a
split, training batches and fixed validation windows), `cli` (the `mor data` command).
"""

from .corpus import SPLITS, DataError, Document, Source, build_corpus, split_documents, write_corpus
from .tokenizer import END_OF_TEXT, token_texts, train_tokenizer

__all__ = [
    "END_OF_TEXT", "SPLITS", "DataError", "Document", "Source", "build_corpus", "split_documents",
    "token_texts", "train_tokenizer", "write_corpus",
]
