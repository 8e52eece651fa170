"""What the model did with a text, as plain data: per-token traces and evaluations of whole texts.

Everything here returns dataclasses or dicts of numbers and strings (never UI objects), so the
CLI prints them as JSON and the app renders them; both show exactly the same measurements. A text
longer than the context window runs in overlapping windows (`sliding_windows`), so it is traced
whole.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from ..data.tokenizer import token_texts
from ..model.flops import forward_flops
from ..model.modeling import MoRForCausalLM


@dataclass
class Trace:
    """Per-token record of one forward pass over a text."""

    checkpoint: str
    num_recursions: int
    tokens: list[str]  # text of each token; "".join(tokens) is the (possibly truncated) input
    token_ids: list[int]
    depths: list[int]  # recursions taken, 1..num_recursions
    token_nll: list[float | None]  # -log p(token | prefix); None for the first token
    router_scores: list[list[float | None]]  # per token, one score per step (None: router not run)
    routing_mode: str = "causal"
    depth_cap: int | None = None
    fixed_depth: int | None = None
    truncated_tokens: int = 0  # tokens dropped (0: texts longer than the context are traced in windows)
    windows: int = 1  # overlapping context windows the text was traced in (sliding_windows)
    context: int = 0  # the model's context window, in tokens
    replaced_chars: int = 0  # unpaired surrogates replaced by U+FFFD before tokenizing
    seconds: float = 0.0  # forward time

    @property
    def mean_depth(self) -> float:
        return sum(self.depths) / len(self.depths) if self.depths else 0.0

    @property
    def nll(self) -> float | None:
        values = [v for v in self.token_nll if v is not None]
        return sum(values) / len(values) if values else None

    def depth_histogram(self) -> dict[str, int]:
        return {str(d): self.depths.count(d) for d in range(1, self.num_recursions + 1)}

    def compute_saved(self) -> float:
        """Fraction of recursion-block applications skipped against every token at full depth."""
        if not self.depths:
            return 0.0
        return 1.0 - sum(self.depths) / (self.num_recursions * len(self.depths))

    def to_json(self) -> dict:
        out = asdict(self)
        out.update(mean_depth=self.mean_depth, nll=self.nll, depth_histogram=self.depth_histogram())
        return out


def sanitize(text: str) -> tuple[str, int]:
    """`text` with unpaired UTF-16 surrogates (which cannot be encoded as UTF-8, e.g. from a
    broken paste) replaced by U+FFFD, and how many were replaced. Surrogate pairs are joined."""
    if not isinstance(text, str):
        raise ValueError(f"text must be a string, not {type(text).__name__}.")
    try:
        text.encode("utf-8")
        return text, 0
    except UnicodeEncodeError:
        fixed = text.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
        return fixed, fixed.count("\ufffd") - text.count("\ufffd")


def encode(tokenizer, text: str, context: int) -> tuple[list[int], int]:
    """Token ids of `text` (first `context` of them) and how many were dropped."""
    text, _ = sanitize(text)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[:context], max(0, len(ids) - context)


def sliding_windows(n: int, context: int, stride: int | None = None) -> list[tuple[int, int, int]]:
    """Windows (start, end, first scored index) that cover n tokens, each at most `context` long.

    Consecutive windows start `stride` apart (default half the context) and overlap; a window
    reports only the tokens after its predecessor's end, so every token is scored once, with at
    least `context - stride` tokens of left context (all it has, in the first window).
    """
    if context < 2:
        raise ValueError(f"context must be >= 2, got {context}.")
    stride = stride or max(1, context // 2)
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be in 1..{context}, got {stride}.")
    windows, start, scored_to = [], 0, 0
    while scored_to < n:
        end = min(start + context, n)
        windows.append((start, end, scored_to))
        scored_to, start = end, start + stride
    return windows


@dataclass
class WindowedPass:
    """Per-token outputs of a causal pass over a whole text, window by window."""

    depths: list[int]
    token_nll: list[float | None]  # -log p(token | left context); None for the first token
    router_scores: list[list[float]]  # per token, one score per step (NaN: router not run)
    windows: int
    seconds: float


@torch.no_grad()
def windowed_pass(model: MoRForCausalLM, ids: list[int], *, depth_cap: int | None = None,
                  fixed_depth: int | None = None, routing_mode: str = "causal",
                  stride: int | None = None, batch_size: int = 8) -> WindowedPass:
    """Run the model over token ids of any length in overlapping context windows (sliding_windows):
    each token gets its depth, router scores and NLL from the window that scores it. Windows of
    equal length run as one batch."""
    context = model.config.max_position_embeddings
    plan = sliding_windows(len(ids), context, stride)
    depths, nll, scores = [0] * len(ids), [None] * len(ids), [[]] * len(ids)
    start_time = time.perf_counter()
    for length in sorted({end - start for start, end, _ in plan}, reverse=True):
        same = [w for w in plan if w[1] - w[0] == length]
        for i in range(0, len(same), batch_size):
            group = same[i:i + batch_size]
            x = torch.tensor([ids[start:end] for start, end, _ in group], device=model.device)
            out = model(x, depth_cap=depth_cap, fixed_depth=fixed_depth, routing_mode=routing_mode, use_cache=False)
            logp = torch.log_softmax(out.logits[:, :-1].float(), -1)
            token_nll = (-logp.gather(2, x[:, 1:, None])[..., 0]).tolist()  # (B, length - 1)
            window_depths, window_scores = out.depths.tolist(), out.router_scores.tolist()
            for row, (start, end, first) in enumerate(group):
                for t in range(first, end):
                    depths[t] = window_depths[row][t - start]
                    scores[t] = window_scores[row][t - start]
                    nll[t] = token_nll[row][t - start - 1] if t > start else None
    return WindowedPass(depths, nll, scores, len(plan), time.perf_counter() - start_time)


@torch.no_grad()
def trace(model: MoRForCausalLM, tokenizer, text: str, *, depth_cap: int | None = None,
          fixed_depth: int | None = None, routing_mode: str = "causal", checkpoint: str = "") -> Trace:
    """Record each token's depth, router scores and NLL over the whole text: one forward when it
    fits the context window, overlapping windows (`windowed_pass`) when it is longer."""
    text, replaced = sanitize(text)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    R = model.config.num_recursions
    if not ids:
        return Trace(checkpoint, R, [], [], [], [], [], routing_mode, depth_cap, fixed_depth,
                     replaced_chars=replaced)
    run = windowed_pass(model, ids, depth_cap=depth_cap, fixed_depth=fixed_depth, routing_mode=routing_mode)
    scores = [[None if math.isnan(s) else round(s, 6) for s in row] for row in run.router_scores]
    return Trace(
        checkpoint=checkpoint, num_recursions=R, tokens=token_texts(tokenizer, ids), token_ids=ids,
        depths=run.depths, token_nll=[None if v is None else round(v, 6) for v in run.token_nll],
        router_scores=scores, routing_mode=routing_mode, depth_cap=depth_cap, fixed_depth=fixed_depth,
        replaced_chars=replaced, seconds=run.seconds, windows=run.windows,
        context=model.config.max_position_embeddings)


@torch.no_grad()
def evaluate(model: MoRForCausalLM, tokenizer, text: str, *, depth_cap: int | None = None,
             fixed_depth: int | None = None, routing_mode: str = "causal") -> dict:
    """Mean next-token NLL, perplexity and bits per byte over the whole text (overlapping context
    windows, every token but the first scored once), with depth statistics.

    bits_per_byte = (NLL summed over the scored tokens, in bits) / (UTF-8 bytes of their text):
    a tokenizer-independent measure, so checkpoints with different tokenizers compare on the same text.
    """
    text = sanitize(text)[0]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < 2:
        raise ValueError("the text needs at least two tokens to measure a next-token NLL.")
    run = windowed_pass(model, ids, depth_cap=depth_cap, fixed_depth=fixed_depth, routing_mode=routing_mode)
    total = sum(v for v in run.token_nll if v is not None)
    count = len(ids) - 1
    scored_bytes = len("".join(token_texts(tokenizer, ids)[1:]).encode("utf-8"))
    R = model.config.num_recursions
    return {"nll": total / count, "ppl": math.exp(total / count), "tokens": len(ids),
            "bits_per_byte": total / math.log(2) / max(1, scored_bytes), "windows": run.windows,
            "mean_depth": sum(run.depths) / len(run.depths),
            "depth_histogram": {str(d): run.depths.count(d) for d in range(1, R + 1)}}


def step_flops(model: MoRForCausalLM, tr: Trace) -> dict[str, float]:
    """Forward FLOPs of the traced pass against the same text at full depth."""
    cfg = model.config
    T = len(tr.depths)
    used = [sum(d >= r for d in tr.depths) for r in range(1, cfg.num_recursions + 1)]
    return {"flops": forward_flops(cfg, T, used), "full_depth_flops": forward_flops(cfg, T, [T] * cfg.num_recursions)}
