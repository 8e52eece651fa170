"""Depth statistics over a corpus: which kinds of token the routers send deep, as plain data.

`corpus_stats` = `summarize(corpus_pass(...))`. `corpus_pass` runs a whole text in the overlapping
windows of `mor trace` (each token's depth and router scores from the window that scores it);
`summarize` groups the depths by token class (punctuation, digits, function words, word-initial
and continuation pieces, ...), by frequency band in the training data, by position in the window,
and by token, and gives each router's score distribution against its causal threshold. The app
caches the two separately: the pass is the slow part, the summary takes options.

Frequency bands come from `token_counts.json` in the checkpoint folder when it is there (written by
`write_token_counts` from a training text file: `mor stats --count-tokens data/train.txt`), and
otherwise from the token id: byte-level BPE numbers its merges in the order it learned them, most
frequent pair first, so a low id is a (rough) stand-in for a frequent token. The result says which.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
import time
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.tokenizer import token_texts
from ..data.windows import TokenData
from ..model.modeling import MoRForCausalLM
from .trace import sanitize, sliding_windows, windowed_pass

COUNTS_FILE = "token_counts.json"
DEFAULT_CORPUS = Path("data") / "val.txt"  # the validation split `mor data --out data` writes
TOKEN_CLASSES = ("punctuation", "digit", "function word", "word-initial piece", "continuation piece",
                 "whitespace", "other")
# Frequency-rank boundaries of the bands: the 256 most frequent tokens, the next 768, ...
BAND_EDGES = (256, 1024, 4096)
SCORE_BINS = 20  # router-score histogram bins over [0, 1]
POSITION_BUCKETS = 16  # the window is split into this many equal spans of positions

# English function words (closed classes: articles, pronouns, prepositions, conjunctions,
# auxiliaries and modals, common determiners and particles), matched whole and lower-cased.
FUNCTION_WORDS = frozenset("""
a an the this that these those my your his her its our their some any no every each either neither
i me you he him she it we us they them mine yours hers ours theirs myself yourself himself herself
itself ourselves themselves who whom whose which what whoever whatever
of in on at by for with from to into onto upon about above below over under between among through
during before after since until till against without within along across behind beyond near off
out up down around toward towards via per than like as
and or but nor so yet if then else because although though while whereas unless whether
be am is are was were been being have has had having do does did doing done
will would shall should can could may might must ought
not no yes there here also too very just only even still again ever never
""".split())


# ---- token classes and frequency bands -----------------------------------------------------------

def token_class(piece: str, prev: str, nxt: str) -> str:
    """The class of one token from its text and its neighbours' (one of TOKEN_CLASSES).

    A piece starts a word when it begins with whitespace or follows a piece that does not end in
    a letter or digit (or starts the text); a function word is a word-initial piece that is a
    whole word (the next piece does not continue it) and is in FUNCTION_WORDS."""
    core = piece.strip()
    if not piece:  # holds no text: its bytes finish a character in the next token
        return "other"
    if not core:
        return "whitespace"
    if core.isdigit():
        return "digit"
    # Punctuation and the symbols that behave like it (math, currency, modifiers); "So" (emoji,
    # dingbats, ...) is left to "other".
    if all(unicodedata.category(c)[0] == "P" or unicodedata.category(c) in ("Sm", "Sc", "Sk") for c in core):
        return "punctuation"
    if not core[0].isalpha():
        return "other"
    if not (piece[0].isspace() or not prev or not prev[-1].isalnum()):
        return "continuation piece"
    if not nxt[:1].isalpha() and core.lower() in FUNCTION_WORDS:
        return "function word"
    return "word-initial piece"


def tokenizer_fingerprint(tokenizer) -> str:
    """SHA-256 of the tokenizer's serialized model: counts belong to exactly one tokenizer."""
    return hashlib.sha256(tokenizer.backend_tokenizer.to_str().encode("utf-8")).hexdigest()


def write_token_counts(folder: str | Path, tokenizer, text_file: str | Path) -> dict:
    """Count every token id of a training text file (tokenized as the training loop does it,
    `TokenData.from_text_file`) and write them to `folder`/token_counts.json; returns the record."""
    # A fresh tokenization, never the ids cached beside the text: that cache is keyed by file size
    # and vocabulary size only, so it can hold another tokenizer's ids (data/ built with a newer
    # tokenizer of the same size does).
    with tempfile.TemporaryDirectory() as scratch:
        data = TokenData.from_text_file(Path(text_file), tokenizer, cache_dir=Path(scratch))
    counts = np.bincount(data.ids.astype(np.int64), minlength=len(tokenizer))
    record = {"source": str(text_file), "tokens": int(counts.sum()),
              "tokenizer_sha256": tokenizer_fingerprint(tokenizer), "counts": counts.tolist()}
    (Path(folder) / COUNTS_FILE).write_text(json.dumps(record), encoding="utf-8")
    return record


def frequency_ranks(folder: str | Path | None, tokenizer) -> tuple[list[int | None] | None, dict]:
    """(rank of every token id by training frequency, 0 = most frequent and None = never seen, or
    None for the token-id fallback; a description of the basis for the JSON). A token_counts.json
    that cannot be read or was counted with another tokenizer is not used, and the description
    says why."""
    path = Path(folder) / COUNTS_FILE if folder is not None else None
    reason = f"no {COUNTS_FILE} in the checkpoint folder"
    if path is not None and path.is_file():
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
            counts = [int(c) for c in record["counts"]]
            stale = record["tokenizer_sha256"] != tokenizer_fingerprint(tokenizer) or len(counts) != len(tokenizer)
        except (OSError, UnicodeDecodeError, ValueError, KeyError, TypeError) as err:
            reason = f"{path} is not readable ({type(err).__name__}: {err})"
        else:
            if not stale:
                order = sorted(range(len(counts)), key=lambda t: (-counts[t], t))
                ranks: list[int | None] = [None] * len(counts)
                for rank, token in enumerate(order):
                    ranks[token] = rank if counts[token] else None
                return ranks, {"basis": "training counts", "source": record.get("source"), "file": str(path),
                               "training_tokens": sum(counts)}
            reason = f"{path} was counted with a different tokenizer"
    return None, {"basis": "token id (BPE merge order), a proxy for frequency", "reason": reason}


def band_labels(by_counts: bool) -> list[str]:
    """Labels of the frequency bands, most frequent first, by training-count rank or by token id
    (the fallback), then the band of tokens never seen in training (empty in the fallback)."""
    bounds = list(zip((0, *BAND_EDGES), (*BAND_EDGES, None)))
    if by_counts:
        labels = [f"frequency rank {lo + 1:,}+" if hi is None else f"frequency rank {lo + 1:,}-{hi:,}"
                  for lo, hi in bounds]
    else:
        labels = [f"token id {lo:,}+" if hi is None else f"token id {lo:,}-{hi - 1:,}" for lo, hi in bounds]
    return labels + ["unseen in training"]


def band_of(rank: int) -> int:
    """Index into band_labels of a frequency rank (or, in the fallback, of a token id)."""
    return sum(rank >= edge for edge in BAND_EDGES)


# ---- the pass over the corpus -------------------------------------------------------------------

@dataclass
class CorpusPass:
    """Per token of a text: its id, depth, router scores and position in the window that scored it."""

    ids: list[int]
    depths: list[int]
    router_scores: list[list[float]]  # NaN where a router was not evaluated
    positions: list[int]
    windows: int
    replaced_chars: int = 0
    seconds: float = 0.0


@torch.no_grad()
def corpus_pass(model: MoRForCausalLM, tokenizer, text: str, *, routing_mode: str = "causal",
                progress: Callable[[int, int], None] | None = None) -> CorpusPass:
    """Each token's depth and router scores from the window of `sliding_windows` that scores it
    (as `mor trace`), one window at a time so `progress(done, total)` can follow."""
    text, replaced = sanitize(text)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError("the text is empty: there are no tokens to measure.")
    plan = sliding_windows(len(ids), model.config.max_position_embeddings)
    run = CorpusPass(ids, [], [], [], len(plan), replaced)
    start_time = time.perf_counter()
    for done, (start, end, first) in enumerate(plan, start=1):
        window = windowed_pass(model, ids[start:end], routing_mode=routing_mode)  # fits: a single window
        run.depths += window.depths[first - start:]
        run.router_scores += window.router_scores[first - start:]
        run.positions += range(first - start, end - start)
        if progress is not None:
            progress(done, len(plan))
    run.seconds = time.perf_counter() - start_time
    return run


def _group(depths: list[int], keys: list, R: int) -> dict:
    """Per key: token count, mean depth (None when empty) and depth histogram."""
    groups: dict = defaultdict(list)
    for key, depth in zip(keys, depths):
        groups[key].append(depth)
    return {key: _summary(values, R) for key, values in groups.items()}


def _summary(values: list[int], R: int) -> dict:
    return {"tokens": len(values), "mean_depth": sum(values) / len(values) if values else None,
            "depth_histogram": {str(d): values.count(d) for d in range(1, R + 1)}}


def _extremes(depths: list[int], ids: list[int], tokenizer, min_count: int, top: int) -> tuple[list[dict], list[dict]]:
    """(deepest, shallowest): tokens seen at least `min_count` times, by mean depth, with counts."""
    total, seen = Counter(), Counter()
    for token, depth in zip(ids, depths):
        total[token] += depth
        seen[token] += 1
    rows = [{"token_id": t, "count": n, "mean_depth": total[t] / n} for t, n in seen.items() if n >= min_count]
    deepest = sorted(rows, key=lambda r: (-r["mean_depth"], -r["count"], r["token_id"]))[:top]
    shallowest = sorted(rows, key=lambda r: (r["mean_depth"], -r["count"], r["token_id"]))[:top]
    for row in deepest + shallowest:
        row["token"] = token_texts(tokenizer, [row["token_id"]])[0]
    return deepest, shallowest


def _router_steps(scores: list[list[float]], cfg) -> dict:
    """Per recursion step: the distribution of router scores where the router ran, and for
    expert-choice steps 2..N_r the causal threshold and the share of scores above it."""
    if cfg.routing == "none":
        return {"kind": "none", "steps": []}
    values = np.asarray(scores, dtype=float).reshape(-1, cfg.num_recursions)  # NaN: not evaluated
    edges = np.linspace(0.0, 1.0, SCORE_BINS + 1)
    steps = []
    for r in range(cfg.num_recursions):
        column = values[:, r][~np.isnan(values[:, r])]
        threshold = cfg.router_threshold[r - 1] if cfg.routing == "expert_choice" and r > 0 else None
        steps.append({
            "step": r + 1, "threshold": threshold, "evaluated": int(column.size),
            "mean": float(column.mean()) if column.size else None,
            "above_threshold": float((column > threshold).mean()) if threshold is not None and column.size else None,
            "histogram": np.histogram(column, bins=edges)[0].tolist()})
    meaning = ("sigmoid score of the step's router; a token takes step r >= 2 when it is above the threshold"
               if cfg.routing == "expert_choice" else "probability of each depth; the most probable depth is taken")
    return {"kind": cfg.routing, "meaning": meaning, "bin_edges": edges.round(6).tolist(), "steps": steps}


def _check_limits(min_count: int, top: int) -> None:
    if min_count < 1 or top < 1:
        raise ValueError(f"min_count and top must be positive, got {min_count} and {top}.")


def summarize(run: CorpusPass, config, tokenizer, *, checkpoint_folder: str | Path | None = None,
              routing_mode: str = "causal", min_count: int = 3, top: int = 15, checkpoint: str = "") -> dict:
    """The statistics of a pass (see the module docstring) as a JSON-ready dict. `config`: the
    model's; `min_count`: how often a token must occur to be ranked among the deepest and
    shallowest; `top`: how many of each."""
    _check_limits(min_count, top)
    R, context, ids, depths = config.num_recursions, config.max_position_embeddings, run.ids, run.depths
    pieces = token_texts(tokenizer, ids)
    classes = [token_class(p, pieces[i - 1] if i else "", pieces[i + 1] if i + 1 < len(pieces) else "")
               for i, p in enumerate(pieces)]
    by_class = _group(depths, classes, R)
    ranks, basis = frequency_ranks(checkpoint_folder, tokenizer)
    labels = band_labels(by_counts=ranks is not None)
    if ranks is None:  # the fallback: a token's id stands in for its frequency rank
        ranks = list(range(len(tokenizer)))
    by_band = _group(depths, [len(labels) - 1 if ranks[t] is None else band_of(ranks[t]) for t in ids], R)
    width = max(1, math.ceil(context / POSITION_BUCKETS))
    by_position = _group(depths, [p // width for p in run.positions], R)
    deepest, shallowest = _extremes(depths, ids, tokenizer, min_count, top)
    overall = _summary(depths, R)
    return {
        "checkpoint": checkpoint, "num_recursions": R, "routing_mode": routing_mode, "tokens": len(ids),
        "windows": run.windows, "context": context, "replaced_chars": run.replaced_chars,
        "mean_depth": overall["mean_depth"], "depth_histogram": overall["depth_histogram"],
        "by_class": {c: by_class.get(c, _summary([], R)) for c in TOKEN_CLASSES},
        "by_frequency_band": {labels[b]: by_band[b] for b in sorted(by_band)},
        "frequency": basis,
        "by_position": [{"from": b * width, "to": min(context, (b + 1) * width) - 1, **by_position[b]}
                        for b in sorted(by_position)],
        "min_count": min_count, "deepest": deepest, "shallowest": shallowest,
        "router": _router_steps(run.router_scores, config), "seconds": run.seconds,
    }


def corpus_stats(model: MoRForCausalLM, tokenizer, text: str, *, checkpoint_folder: str | Path | None = None,
                 routing_mode: str = "causal", min_count: int = 3, top: int = 15, checkpoint: str = "",
                 progress: Callable[[int, int], None] | None = None) -> dict:
    """Depth statistics of a whole text: `summarize(corpus_pass(...))`."""
    _check_limits(min_count, top)  # before the pass, which is the slow part
    run = corpus_pass(model, tokenizer, text, routing_mode=routing_mode, progress=progress)
    return summarize(run, model.config, tokenizer, checkpoint_folder=checkpoint_folder, routing_mode=routing_mode,
                     min_count=min_count, top=top, checkpoint=checkpoint)
