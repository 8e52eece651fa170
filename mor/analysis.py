"""What the model did with a text, as plain data: traces, evaluations, KV-cache accounting.

Everything here returns dataclasses or dicts of numbers and strings (never UI objects), so the
CLI prints them as JSON and the app renders them; both show exactly the same measurements.
"""

from __future__ import annotations

import copy
import math
import time
import weakref
from dataclasses import asdict, dataclass, field

import torch

from .data import token_texts
from .flops import forward_flops
from .modeling_mor import MoRForCausalLM


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
    truncated_tokens: int = 0  # tokens dropped beyond the context window
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


@torch.no_grad()
def trace(model: MoRForCausalLM, tokenizer, text: str, *, depth_cap: int | None = None,
          fixed_depth: int | None = None, routing_mode: str = "causal", checkpoint: str = "") -> Trace:
    """Run the model once over `text` (truncated to the context window) and record each token's
    depth, router scores and NLL."""
    text, replaced = sanitize(text)
    ids, dropped = encode(tokenizer, text, model.config.max_position_embeddings)
    R = model.config.num_recursions
    if not ids:
        return Trace(checkpoint, R, [], [], [], [], [], routing_mode, depth_cap, fixed_depth,
                     truncated_tokens=dropped, replaced_chars=replaced)
    x = torch.tensor([ids], device=model.device)
    start = time.perf_counter()
    out = model(x, depth_cap=depth_cap, fixed_depth=fixed_depth, routing_mode=routing_mode, use_cache=False)
    seconds = time.perf_counter() - start
    logp = torch.log_softmax(out.logits[0, :-1].float(), -1)
    nll = (-logp.gather(1, x[0, 1:, None])[:, 0]).tolist()
    scores = [[None if math.isnan(s) else round(s, 6) for s in row] for row in out.router_scores[0].tolist()]
    return Trace(
        checkpoint=checkpoint, num_recursions=R, tokens=token_texts(tokenizer, ids), token_ids=ids,
        depths=out.depths[0].tolist(), token_nll=[None] + [round(v, 6) for v in nll], router_scores=scores,
        routing_mode=routing_mode, depth_cap=depth_cap, fixed_depth=fixed_depth, truncated_tokens=dropped,
        replaced_chars=replaced, seconds=seconds)


@torch.no_grad()
def evaluate(model: MoRForCausalLM, tokenizer, text: str, *, depth_cap: int | None = None,
             fixed_depth: int | None = None, routing_mode: str = "causal") -> dict:
    """Mean next-token NLL over the whole text, in consecutive windows of the context length."""
    ids = tokenizer(sanitize(text)[0], add_special_tokens=False)["input_ids"]
    if len(ids) < 2:
        raise ValueError("the text needs at least two tokens to measure a next-token NLL.")
    ctx = model.config.max_position_embeddings
    total, count, depths = 0.0, 0, []
    for start in range(0, len(ids), ctx):
        window = ids[start:start + ctx]
        if len(window) < 2:
            break
        x = torch.tensor([window], device=model.device)
        out = model(x, depth_cap=depth_cap, fixed_depth=fixed_depth, routing_mode=routing_mode, use_cache=False)
        total += torch.nn.functional.cross_entropy(out.logits[0, :-1], x[0, 1:], reduction="sum").item()
        count += len(window) - 1
        depths += out.depths[0].tolist()
    R = model.config.num_recursions
    return {"nll": total / count, "ppl": math.exp(total / count), "tokens": len(ids),
            "mean_depth": sum(depths) / len(depths),
            "depth_histogram": {str(d): depths.count(d) for d in range(1, R + 1)}}


@dataclass
class KVReport:
    """Bytes of K/V held after a prefill of the text, per strategy and step, measured and by formula."""

    tokens: int
    bytes_per_token_per_layer: int
    measured: dict[str, dict[str, int]] = field(default_factory=dict)  # strategy -> step -> bytes
    formula: dict[str, dict[str, int]] = field(default_factory=dict)
    cached_tokens: dict[str, dict[str, int]] = field(default_factory=dict)  # strategy -> step -> tokens

    def totals(self) -> dict[str, int]:
        return {s: sum(v.values()) for s, v in self.measured.items()}


_KV_VARIANTS: "weakref.WeakKeyDictionary[MoRForCausalLM, dict[str, MoRForCausalLM]]" = weakref.WeakKeyDictionary()


def with_kv_cache(model: MoRForCausalLM, kv_cache: str) -> MoRForCausalLM:
    """The same weights under another KV strategy: a copy made once per model and strategy
    (the original is never modified, so a model shared between app sessions stays intact)."""
    if model.config.kv_cache == kv_cache:
        return model
    variants = _KV_VARIANTS.setdefault(model, {})
    if kv_cache not in variants:
        config = copy.deepcopy(model.config)
        config.kv_cache = kv_cache
        other = MoRForCausalLM(config).to(model.device).eval()
        other.load_state_dict(model.state_dict())
        variants[kv_cache] = other
    return variants[kv_cache]


@torch.no_grad()
def kv_report(model: MoRForCausalLM, tokenizer, text: str) -> KVReport:
    """Prefill the text three ways and read the caches: every token at full depth
    ("full"), router depths with recursion-wise caching, router depths with recursive KV sharing.
    The formula column recomputes the same bytes from the token counts alone."""
    cfg = model.config
    ids, _ = encode(tokenizer, text, cfg.max_position_embeddings)
    if not ids:
        raise ValueError("the text is empty: nothing to cache.")
    x = torch.tensor([ids], device=model.device)
    per = 2 * cfg.num_key_value_heads * cfg.head_dim * torch.finfo(model.dtype).bits // 8
    prelude, steps, coda = cfg.layer_plan()
    unique_bytes = (len(prelude) + len(coda)) * len(ids) * per
    runs = {"full": (with_kv_cache(model, "recursion_wise"), dict(fixed_depth=cfg.num_recursions)),
            "recursion_wise": (with_kv_cache(model, "recursion_wise"), {}),
            "shared": (with_kv_cache(model, "shared"), {})}
    report = KVReport(tokens=len(ids), bytes_per_token_per_layer=per)
    for name, (m, kwargs) in runs.items():
        cache = m.model.new_cache(1)
        out = m(x, past_key_values=cache, **kwargs)
        report.measured[name] = cache.bytes_per_step()
        counts = [int((out.depths[0] >= r).sum()) for r in range(1, cfg.num_recursions + 1)]
        if name == "shared":
            counts = [counts[0]] + [0] * (cfg.num_recursions - 1)
        report.cached_tokens[name] = {f"step {r + 1}": n for r, n in enumerate(counts)}
        formula = {"unique layers": unique_bytes} if unique_bytes else {}
        formula.update({f"step {r + 1}": len(steps[r]) * n * per for r, n in enumerate(counts) if n})
        report.formula[name] = formula
    return report


def step_flops(model: MoRForCausalLM, tr: Trace) -> dict[str, float]:
    """Forward FLOPs of the traced pass against the same text at full depth."""
    cfg = model.config
    T = len(tr.depths)
    used = [sum(d >= r for d in tr.depths) for r in range(1, cfg.num_recursions + 1)]
    return {"flops": forward_flops(cfg, T, used), "full_depth_flops": forward_flops(cfg, T, [T] * cfg.num_recursions)}
