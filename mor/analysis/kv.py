"""KV-cache accounting: what a prefill of a text leaves in the cache, per strategy and recursion step,
read back from the cache and recomputed by formula."""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field

import torch

from ..model.modeling import MoRForCausalLM
from .trace import encode


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
        out = m(x, cache=cache, **kwargs)
        report.measured[name] = cache.bytes_per_step()
        counts = [int((out.depths[0] >= r).sum()) for r in range(1, cfg.num_recursions + 1)]
        if name == "shared":
            counts = [counts[0]] + [0] * (cfg.num_recursions - 1)
        report.cached_tokens[name] = {f"step {r + 1}": n for r, n in enumerate(counts)}
        formula = {"unique layers": unique_bytes} if unique_bytes else {}
        formula.update({f"step {r + 1}": len(steps[r]) * n * per for r, n in enumerate(counts) if n})
        report.formula[name] = formula
    return report


# What a token leaves at one recursion step, by strategy: its own K/V, a read of step 1's, or nothing.
CACHE_STATES = ("cached", "reads step 1", "exited")


def cache_states(depths: list[int], num_recursions: int, strategy: str) -> list[list[str]]:
    """[token][step - 1]: one of CACHE_STATES for every token at every recursion step, from the
    router's depths, by the rule `kv_report` measures (so its cached counts are these cells):

    full: the baseline runs every token at every step, so every cell is "cached".
    recursion_wise: a step caches exactly the tokens that take it (depth >= step).
    shared: only step 1 caches (every token); deeper steps read it for the tokens that take them."""
    if strategy not in ("full", "recursion_wise", "shared"):
        raise ValueError(f"strategy must be 'full', 'recursion_wise' or 'shared', not {strategy!r}")
    cached, shared, exited = CACHE_STATES
    return [[cached if strategy == "full" or (step <= depth and (strategy == "recursion_wise" or step == 1))
             else shared if step <= depth else exited
             for step in range(1, num_recursions + 1)] for depth in depths]
