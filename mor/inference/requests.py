"""What the engine's scheduler moves around: requests, and the units of work they put in stage queues.

A *request* is one prompt and its budget; it holds a K/V slot from admission to retirement. At any
moment it has at most one *unit* in flight, and the unit is what waits in a stage queue and rides
in a pass:

- a prompt chunk: up to `prefill_chunk` consecutive prompt tokens (chunked prefill), or
- a decode item: the one new token the request is pushing through the model.

One unit at a time per request is what keeps the K/V rows in position order (the engine's causal
mask is "entry index < entries visible"): a chunk's tokens move through every stage together,
the next chunk enters only after this one has left the coda, and the next decode token only
after the LM head picked it.

Also here: the argument parsing the engine and the naive path (mor/analysis/naive.py) share.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch


@dataclass
class Request:
    """One prompt's state. `steplen[r]`: entries its recursion-step-r cache rows hold (step 1's
    rows hold every fed token, so steplen[0] is also the next position). `fed`: the position of
    the next token to enter the prelude. `times`: engine-clock seconds at which each new token was
    picked (the first one is the time to first token)."""

    index: int
    prompt: list[int]
    max_new: int
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    slot: int = -1
    fed: int = 0
    prompt_sent: int = 0  # prompt tokens already put into chunks
    steplen: list[int] = field(default_factory=list)

    def kv_entries(self, prelude: int, coda: int, step_layers: list[int], shared: bool) -> int:
        """K/V entries the request holds: each prelude layer every fed token, each coda layer all
        but the last (a finishing token skips the coda), each step's layers that step's tokens
        (under recursive sharing only step 1 stores)."""
        entries = prelude * self.fed + coda * max(self.fed - 1, 0)
        for r, n in enumerate(step_layers):
            if not shared or r == 0:
                entries += n * self.steplen[r]
        return entries


@dataclass
class Unit:
    """A request's work in flight: a prompt chunk or a decode item.

    rows / positions: pool rows (hidden-state rows) and positions of the items still to run the
    next stage, in position order; in the block, those still recursing. chunk_rows /
    chunk_positions: the whole chunk (what the coda runs over once every item left the block).
    step: the recursion step (0-based) the items take next. token_ids: what the prelude embeds.
    last: the unit holds the prompt's last token or is a decode item, so the head computes logits
    (of its last item)."""

    req: Request
    rows: list[int]
    positions: list[int]
    token_ids: list[int]
    prompt: bool
    last: bool
    step: int = 0
    chunk_rows: list[int] = field(default_factory=list)
    chunk_positions: list[int] = field(default_factory=list)

    def __post_init__(self):
        self.chunk_rows, self.chunk_positions = list(self.rows), list(self.positions)

    @property
    def size(self) -> int:
        return len(self.rows)


def eos_ids(generation_config, eos_token_id: int | Sequence[int] | None, stop_at_eos: bool) -> set[int]:
    """The end-of-text ids a request stops at: `eos_token_id`, else the generation config's (the
    one `generate` uses); none without `stop_at_eos`."""
    eos = generation_config.eos_token_id if eos_token_id is None else eos_token_id
    if not stop_at_eos or eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(e) for e in eos}


def per_request(max_new_tokens: int | Sequence[int], n: int) -> list[int]:
    """One budget per prompt from an int or a sequence of n ints (ValueError otherwise)."""
    if isinstance(max_new_tokens, int):
        values = [max_new_tokens] * n
    else:
        values = [int(v) for v in max_new_tokens]
        if len(values) != n:
            raise ValueError(f"max_new_tokens has {len(values)} entries for {n} prompts.")
    if any(v < 0 for v in values):
        raise ValueError("max_new_tokens must be >= 0.")
    return values


def parse_prompts(prompts) -> list[list[int]]:
    """Token id lists from lists or tensors; an empty prompt is a ValueError."""
    out = []
    for p in prompts:
        ids = p.reshape(-1).tolist() if isinstance(p, torch.Tensor) else [int(t) for t in p]
        if not ids:
            raise ValueError("a prompt is empty: it needs at least one token.")
        out.append(ids)
    return out


__all__ = ["Request", "Unit", "eos_ids", "parse_prompts", "per_request"]
