"""Streaming generation with a live clock, through the continuous depth-wise batching engine.

`stream_generate` decodes several rows with `mor.inference.engine.Engine` (the fast inference path:
stage queues, each pass as wide as the queue allows, prompts prefilled in chunks beside the decode
items) and yields the running state after every engine pass, so a caller can show tokens, their
depths and tokens/s while they arrive. `measure_decode` runs it to the end and returns the
numbers, for side-by-side comparisons.

Run example::

    import mor
    from mor.inference.live import stream_generate
    model, tok = mor.load("mor-ec-r3")
    ids = tok("The king", add_special_tokens=False)["input_ids"]
    for state in stream_generate(model, [ids] * 8, max_new_tokens=32):
        print(f"{state.tokens_per_second:,.0f} tok/s", state.depths[0])

Timing counts only the time spent inside the engine: whatever the caller does between two
iterations (redrawing a page, say) is excluded, so a slow UI does not make the model look slow.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from .engine import Engine
from ..model.modeling import MoRForCausalLM


@dataclass
class DecodeState:
    """The decode so far, after one engine pass.

    iteration: engine passes so far (any stage), 1-based.
    tokens: per row, the new token ids picked so far.
    depths: per row, the recursions of the tokens that went through the model so far (a token
        is picked first and fed next, so a row's last token can still be waiting for its depth).
    fed: tokens fed through the model after the prefill, over all rows (= sum of len(depths)).
    elapsed: seconds of decoding so far (the engine's time, less the part attributed to prompt
        tokens: see `EngineEvent.prefill_seconds`).
    tokens_per_second: fed / elapsed.
    prefill_seconds: time attributed to the prompts (chunked prefill shares passes with decoding).
    block_items: rows that took a recursion step in this pass (an entry or block pass; 0 for an exit pass).
    stage / queued: the stage that ran, and the rows waiting in each stage's queue after it.

    `tokens` and `depths` are the stream's own lists, extended in place as decoding goes on:
    copy them to keep a snapshot.
    """

    iteration: int
    tokens: list[list[int]]
    depths: list[list[int]]
    fed: int
    elapsed: float
    tokens_per_second: float
    prefill_seconds: float
    block_items: int
    stage: str = ""
    queued: dict[str, int] = field(default_factory=dict)


def _prompt_lists(prompts: Sequence[Sequence[int]] | torch.Tensor) -> list[list[int]]:
    if isinstance(prompts, torch.Tensor):
        if prompts.dim() != 2:
            raise ValueError(f"prompts as a tensor must be (B, T), got shape {tuple(prompts.shape)}.")
        return prompts.tolist()
    return [list(p) for p in prompts]


def stream_generate(model: MoRForCausalLM, prompts: Sequence[Sequence[int]] | torch.Tensor,
                    max_new_tokens: int = 32, depth_cap: int | None = None, fixed_depth: int | None = None,
                    do_sample: bool = False, temperature: float = 1.0, top_k: int | None = None,
                    seed: int = 0) -> Iterator[DecodeState]:
    """Decode `max_new_tokens` tokens for every prompt (token id lists, or a (B, T) tensor of
    equal-length prompts), all rows in flight together (passes of up to the engine's default
    `max_batch` rows), yielding a `DecodeState` after each engine pass once decoding has begun.

    Every row decodes exactly `max_new_tokens` tokens (there is no stop at end-of-text), so runs
    of different settings do the same amount of work. Greedy output equals `model.generate` of
    each prompt alone with no end-of-text token; sampling gives row i its own generator seeded
    with `seed + i`, so rows differ and results do not depend on the batch."""
    rows = _prompt_lists(prompts)
    if max_new_tokens < 0:
        raise ValueError("max_new_tokens must be >= 0.")
    if not rows or max_new_tokens == 0:
        return
    engine = Engine(model, max_inflight=len(rows), depth_cap=depth_cap, fixed_depth=fixed_depth)
    tokens: list[list[int]] = [[] for _ in rows]
    depths: list[list[int]] = [[] for _ in rows]
    fed = 0
    for event in engine.stream(rows, max_new_tokens, do_sample=do_sample, temperature=temperature,
                               top_k=top_k, seed=seed, stop_at_eos=False):
        for i, t in event.new_tokens:
            tokens[i].append(t)
        for i, d in event.new_depths:
            depths[i].append(d)
        fed += len(event.new_depths)
        if fed == 0:  # prefill only: nothing has been decoded yet
            continue
        elapsed = event.elapsed - event.prefill_seconds
        yield DecodeState(event.iteration, tokens, depths, fed, elapsed, fed / max(elapsed, 1e-9),
                          event.prefill_seconds, event.block_items, event.stage, event.queued)


def warm_up(model: MoRForCausalLM, prompts: Sequence[Sequence[int]] | torch.Tensor, **depth_kwargs) -> None:
    """An untimed two-token decode of `prompts`: the first pass at a new shape pays one-off
    allocation costs that would otherwise count against whichever run comes first."""
    for _ in stream_generate(model, prompts, max_new_tokens=2, **depth_kwargs):
        pass


def measure_decode(model: MoRForCausalLM, prompt_ids: Sequence[int] | torch.Tensor, batch_size: int,
                   new_tokens: int, **depth_kwargs) -> dict:
    """Greedy-decode `new_tokens` tokens for `batch_size` copies of one prompt and report speed.

    `prompt_ids`: the prompt's token ids, (T,) or (1, T). `depth_kwargs`: `depth_cap` or
    `fixed_depth`. Returns tokens_per_second, prefill_seconds, decode_seconds, mean_depth (of the
    decoded tokens), batch_size and new_tokens."""
    if batch_size < 1 or new_tokens < 1:
        raise ValueError("batch_size and new_tokens must be >= 1.")
    prompt = torch.as_tensor(prompt_ids, dtype=torch.long).reshape(-1).tolist()
    if not prompt:
        raise ValueError("the prompt is empty: it needs at least one token.")
    batch = [prompt] * batch_size
    warm_up(model, batch, **depth_kwargs)
    last = None
    for last in stream_generate(model, batch, max_new_tokens=new_tokens, **depth_kwargs):
        pass
    return {
        "tokens_per_second": last.tokens_per_second,
        "prefill_seconds": last.prefill_seconds,
        "decode_seconds": last.elapsed,
        "mean_depth": sum(map(sum, last.depths)) / last.fed,
        "batch_size": batch_size,
        "new_tokens": new_tokens,
    }


__all__ = ["DecodeState", "measure_decode", "stream_generate", "warm_up"]
