"""Streaming generation with live timing, for watching decode speed as it happens.

`stream_generate` decodes the way `MoRForCausalLM.generate` does (one prefill through the model's
own cache, then one token per row per step, causal routing, the same `_pick` sampling rule), but
yields after every step so a caller can show tokens, depths and tokens/s while they arrive.
`measure_decode` runs it to the end and returns the numbers, for side-by-side comparisons.

Timing counts only the time spent inside the model: whatever the caller does between two steps
(redrawing a page, say) is excluded, so a slow UI does not make the model look slow.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from .modeling_mor import MoRForCausalLM


@dataclass
class DecodeStep:
    """What one decoding step produced, plus the running clock.

    step: how many tokens each row has decoded so far (1-based).
    token_ids: (B,) the token each row decoded at this step.
    depths: (B,) recursions each of those tokens took.
    elapsed: seconds of decoding so far (prefill excluded).
    tokens_per_second: B * step / elapsed, decoded tokens over all rows per second.
    prefill_seconds: time of the prompt's forward pass.
    """

    step: int
    token_ids: torch.Tensor
    depths: torch.Tensor
    elapsed: float
    tokens_per_second: float
    prefill_seconds: float


def _sync(device: torch.device) -> None:
    """Wait for queued GPU work, so the clock measures compute rather than kernel launches."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def stream_generate(
    model: MoRForCausalLM,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    max_new_tokens: int = 32,
    depth_cap: int | None = None,
    fixed_depth: int | None = None,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
) -> Iterator[DecodeStep]:
    """Decode `max_new_tokens` tokens for every row of `input_ids` (B, T), yielding a
    `DecodeStep` after each one.

    Left-pad rows of different lengths and mark the padding with 0 in `attention_mask`. Every
    row decodes exactly `max_new_tokens` tokens (there is no stop at end-of-text), so runs of
    different settings do the same amount of work. Greedy output equals `model.generate` with
    no end-of-text token; sampling uses a generator seeded with `seed`."""
    if max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0.")
    device = input_ids.device
    B = input_ids.shape[0]
    depth = dict(depth_cap=depth_cap, fixed_depth=fixed_depth)
    # Stated explicitly rather than taken from model.training: the cache needs causal routing,
    # and the model may be shared with other callers, so its mode is not ours to change.
    routing = dict(routing_mode="causal", use_cache=True)
    generator = torch.Generator(device=device).manual_seed(seed) if do_sample else None
    cache = model.model.new_cache(B)

    start = time.perf_counter()
    out = model(input_ids, attention_mask=attention_mask, past_key_values=cache, **depth, **routing)
    _sync(device)
    prefill = time.perf_counter() - start

    elapsed = 0.0
    for step in range(1, max_new_tokens + 1):
        start = time.perf_counter()
        token = model._pick(out.logits[:, -1], do_sample, temperature, top_k, None, generator)
        # Feeding the token through the model is what gives its depth (and the next logits).
        out = model(token[:, None], past_key_values=cache, **depth, **routing)
        _sync(device)
        elapsed += time.perf_counter() - start
        yield DecodeStep(step, token, out.depths[:, 0], elapsed, B * step / elapsed, prefill)


def measure_decode(model: MoRForCausalLM, prompt_ids: Sequence[int] | torch.Tensor, batch_size: int,
                   new_tokens: int, **depth_kwargs) -> dict:
    """Greedy-decode `new_tokens` tokens for `batch_size` copies of one prompt and report speed.

    `prompt_ids`: the prompt's token ids, (T,) or (1, T). `depth_kwargs`: `depth_cap` or
    `fixed_depth`. Returns tokens_per_second, prefill_seconds, decode_seconds, mean_depth (of the
    decoded tokens), batch_size and new_tokens."""
    if batch_size < 1 or new_tokens < 1:
        raise ValueError("batch_size and new_tokens must be >= 1.")
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long, device=model.device).reshape(1, -1)
    if prompt.shape[1] == 0:
        raise ValueError("the prompt is empty: it needs at least one token.")
    batch = prompt.expand(batch_size, -1)
    # An untimed two-token warm-up: the first pass at a new shape pays one-off allocation costs
    # that would otherwise penalise whichever setting happens to be measured first.
    for _ in stream_generate(model, batch, max_new_tokens=2, **depth_kwargs):
        pass
    depth_sum, last = 0, None
    for last in stream_generate(model, batch, max_new_tokens=new_tokens, **depth_kwargs):
        depth_sum += int(last.depths.sum())
    return {
        "tokens_per_second": last.tokens_per_second,
        "prefill_seconds": last.prefill_seconds,
        "decode_seconds": last.elapsed,
        "mean_depth": depth_sum / (batch_size * new_tokens),
        "batch_size": batch_size,
        "new_tokens": new_tokens,
    }


__all__ = ["DecodeStep", "measure_decode", "stream_generate"]
