"""Next-token choice shared by the engine, the naive path and transformers' `generate`.

`generate` (the model is a `GenerationMixin`) turns temperature / top-k / top-p into
transformers' logits warpers and samples with `torch.multinomial` on the softmax; `pick_next` does
exactly that with the same warper classes in the same order, so a request the engine samples
with `torch.Generator().manual_seed(s)` draws what `torch.manual_seed(s); model.generate(...)`
draws for it alone (given equal logits). Greedy picking is the first maximum, like `argmax`.
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper


def sampling_warpers(temperature: float = 1.0, top_k: int | None = None,
                     top_p: float | None = None) -> LogitsProcessorList:
    """The warpers `generate(do_sample=True, temperature=..., top_k=..., top_p=...)` applies, in its
    order; each validates its value (ValueError). 1.0 / None / 0 / None mean "no warping"."""
    warpers = LogitsProcessorList()
    if temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(temperature))
    if top_k:
        warpers.append(TopKLogitsWarper(top_k))
    if top_p is not None and top_p < 1.0:
        warpers.append(TopPLogitsWarper(top_p))
    return warpers


def pick_next(logits: torch.Tensor, warpers: LogitsProcessorList | None = None,
              generator: torch.Generator | None = None) -> torch.Tensor:
    """Next token of each row of (B, V) float logits: the argmax when `warpers` is None, else a
    sample from softmax(warpers(logits)) drawn with `generator` (the global one when None)."""
    if warpers is None:
        return logits.max(-1).indices  # argmax's first-maximum rule, several times faster on CPU
    probs = warpers(None, logits).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


__all__ = ["pick_next", "sampling_warpers"]
