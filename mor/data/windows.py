"""Token ids of a corpus split: random training batches and fixed validation windows."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch


def tokenizer_fingerprint(tokenizer) -> str:
    """A short hash of the tokenizer's full definition (vocabulary, merges, pre-tokenizer)."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode("utf-8")).hexdigest()[:12]


@dataclass
class TokenData:
    """A corpus split as one flat array of token ids, sampled as random windows."""

    ids: np.ndarray

    @classmethod
    def from_text_file(cls, path: Path, tokenizer, cache_dir: Path | None = None) -> "TokenData":
        """Tokenize `path` (documents separated by blank lines, each ending in EOS); the ids are
        cached beside it as raw uint16, keyed by the file's size and a fingerprint of the tokenizer
        (two tokenizers of one vocabulary size give different ids, so the size alone is no key)."""
        text_path = Path(path)
        if not text_path.is_file():
            raise FileNotFoundError(f"{text_path} not found; build the corpus with `mor data --out data`.")
        stat = text_path.stat()
        cache = (cache_dir or text_path.parent) / f"{text_path.stem}.{stat.st_size}.{tokenizer_fingerprint(tokenizer)}.u16"
        if cache.is_file():
            return cls(np.fromfile(cache, dtype=np.uint16))
        docs = [d for d in text_path.read_text(encoding="utf-8").split("\n\n") if d.strip()]
        eos = tokenizer.eos_token_id
        ids = []
        for start in range(0, len(docs), 2048):
            for row in tokenizer(docs[start:start + 2048], add_special_tokens=False)["input_ids"]:
                ids.extend(row + [eos])
        arr = np.asarray(ids, dtype=np.uint16)
        arr.tofile(cache)
        return cls(arr)

    def batch(self, batch_size: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
        if len(self.ids) <= seq_len + 1:
            raise ValueError(f"the corpus has {len(self.ids)} tokens, fewer than one window of {seq_len + 1}.")
        starts = torch.randint(0, len(self.ids) - seq_len, (batch_size,), generator=generator)
        return torch.from_numpy(np.stack([self.ids[s:s + seq_len].astype(np.int64) for s in starts.tolist()]))

    def fixed_windows(self, count: int, seq_len: int) -> torch.Tensor:
        """Evenly spaced, non-overlapping windows: the same validation set every time."""
        n = min(count, len(self.ids) // seq_len)
        if n == 0:
            raise ValueError(f"the validation split has {len(self.ids)} tokens, fewer than one window of {seq_len}.")
        stride = len(self.ids) // n
        return torch.from_numpy(np.stack([self.ids[i * stride:i * stride + seq_len].astype(np.int64) for i in range(n)]))
