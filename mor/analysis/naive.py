"""The naive path (full width, masked): the benchmark's comparison point for the engine.

Every recursion step computes every token of the batch and masks the update of tokens that exited
(or were never selected), as the paper's reference implementation does; K/V entries of masked
tokens are stored but marked invalid. Static batches of left-padded prompts. It uses the model's own
decoder layers and depth policy and gives the same tokens and depths as `model.generate` run alone.

Run example::

    import mor
    from mor.analysis.naive import naive_generate
    model, tok = mor.load("mor-ec-r3")
    ids = tok("The king", add_special_tokens=False)["input_ids"]
    (tokens, depths), = naive_generate(model, [ids], max_new_tokens=16)
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

from ..inference.requests import eos_ids, parse_prompts, per_request
from ..model.modeling import MoRForCausalLM, Tokens
from ..model.policy import DepthPolicy
from ..model.sampling import pick_next


class _DenseKV:
    """A dense per-column K/V store with per-entry validity (the naive path's cache): column t
    holds the token at column t of the left-padded batch, valid if it was active when written."""

    def __init__(self, B: int, capacity: int, G: int, D: int, device, dtype):
        self.k = torch.zeros(B, capacity, G, D, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.pos = torch.zeros(B, capacity, dtype=torch.long, device=device)
        self.valid = torch.zeros(B, capacity, dtype=torch.bool, device=device)
        self.n = 0

    def append(self, k, v, pos, valid):
        T = k.shape[1]
        self.k[:, self.n:self.n + T] = k
        self.v[:, self.n:self.n + T] = v
        self.pos[:, self.n:self.n + T] = pos
        self.valid[:, self.n:self.n + T] = valid
        self.n += T
        return self.view()

    def view(self):
        n = self.n
        return self.k[:, :n], self.v[:, :n], self.pos[:, :n], self.valid[:, :n]


@torch.inference_mode()
def naive_generate(model: MoRForCausalLM, prompts, max_new_tokens: int | Sequence[int] = 32,
                   batch_size: int | None = None, depth_cap: int | None = None, fixed_depth: int | None = None,
                   eos_token_id: int | Sequence[int] | None = None, stop_at_eos: bool = True,
                   timings: dict | None = None) -> list[tuple[list[int], list[int]]]:
    """Greedy decoding on the naive path: static batches of `batch_size` prompts (left-padded),
    and every layer application computes every token of the batch at full width; a token that
    exited (or was never selected) at a recursion step has its update masked out and its K/V
    entry marked invalid. Uses the model's own decoder layers and depth policy. Returns (new
    token ids, depths) per prompt, equal to `model.generate` run alone. `timings`, if given,
    receives prefill_seconds, decode_seconds and kv_bytes_per_request (the dense caches' bytes)."""
    plist = parse_prompts(prompts)
    news = per_request(max_new_tokens, len(plist))
    policy = DepthPolicy(model.config, depth_cap, fixed_depth)
    eos = eos_ids(model.generation_config, eos_token_id, stop_at_eos)
    bs = batch_size or len(plist)
    results = []
    clock = {"prefill_seconds": 0.0, "decode_seconds": 0.0, "kv_bytes": 0}
    for start in range(0, len(plist), bs):
        results += _naive_batch(model, plist[start:start + bs], news[start:start + bs], policy, eos, clock)
    if timings is not None:
        timings.update(prefill_seconds=clock["prefill_seconds"], decode_seconds=clock["decode_seconds"],
                       kv_bytes_per_request=clock["kv_bytes"] / len(plist))
    return results


def _naive_forward(model, ids, real, pos, caches, policy: DepthPolicy):
    """Full-width forward of (B, T) tokens: every layer sees every token; returns (logits of the
    last column (B, V), depths (B, T))."""
    m, cfg = model.model, model.config
    B, T = ids.shape
    index = torch.arange(T, device=ids.device)[None].expand(B, T)
    everyone = Tokens(index, pos, real)
    h = m.embed_tokens(ids)
    for i, u in enumerate(m.prelude):
        h = m.layers[u](h, everyone, caches[m.slot_of[("prelude", i)]])
    depths = torch.zeros(B, T, dtype=torch.long, device=ids.device)
    active = real
    choice = None
    if cfg.routing == "token_choice":
        choice = policy.token_choice(m.routers[0](h))
        h_in = h
    for r, layers in enumerate(m.steps[:policy.max_depth]):
        gate = None
        if cfg.routing == "expert_choice":
            logits = m.routers[r](h)
            active = policy.takes_step(r, active, logits=logits)
            gate = policy.gate(logits)
        else:
            active = policy.takes_step(r, active, target=None if choice is None else choice.target)
        tokens = Tokens(index, pos, active)
        y = h
        for j, u in enumerate(layers):
            write = cfg.kv_cache == "recursion_wise" or r == 0
            y = m.layers[u](y, tokens, caches[m.slot_of[(r, j)]], write_kv=write)
        if gate is not None:
            y = h + gate[..., None].to(h.dtype) * (y - h)
        h = torch.where(active[..., None], y, h)
        depths = depths + active.long()
    if choice is not None:
        h = h_in + choice.gate[..., None].to(h.dtype) * (h - h_in)
    for i, u in enumerate(m.coda):
        h = m.layers[u](h, everyone, caches[m.slot_of[("coda", i)]])
    h = m.norm(h[:, -1])
    return model.lm_head(h).float(), depths


def _naive_batch(model, plist, news, policy: DepthPolicy, eos: set[int], clock):
    cfg = model.config
    dev, dt = model.device, model.dtype
    B, T = len(plist), max(len(p) for p in plist)
    n_max = max(news)
    if n_max == 0:
        return [([], []) for _ in plist]
    ids = torch.zeros(B, T, dtype=torch.long, device=dev)
    real = torch.zeros(B, T, dtype=torch.bool, device=dev)
    for b, p in enumerate(plist):
        ids[b, T - len(p):] = torch.tensor(p, device=dev)
        real[b, T - len(p):] = True
    pos = (real.long().cumsum(1) - 1).clamp(min=0)
    caches = [_DenseKV(B, T + n_max, cfg.num_key_value_heads, cfg.head_dim, dev, dt)
              for _ in model.model.slot_names]
    t0 = time.perf_counter()
    logits, _ = _naive_forward(model, ids, real, pos, caches, policy)
    t1 = time.perf_counter()
    next_pos = pos[:, -1] + 1
    tokens = [[] for _ in plist]
    depths = [[] for _ in plist]
    done = [n == 0 for n in news]
    ones = torch.ones(B, 1, dtype=torch.bool, device=dev)
    for _ in range(n_max):
        nxt = pick_next(logits)
        for b, t in enumerate(nxt.tolist()):
            if not done[b]:
                tokens[b].append(t)
        logits, d = _naive_forward(model, nxt[:, None], ones, next_pos[:, None], caches, policy)
        next_pos = next_pos + 1
        for b, dd in enumerate(d[:, 0].tolist()):
            if not done[b]:
                depths[b].append(dd)
                if len(tokens[b]) >= news[b] or tokens[b][-1] in eos:
                    done[b] = True
        if all(done):
            break
    clock["prefill_seconds"] += t1 - t0
    clock["decode_seconds"] += time.perf_counter() - t1
    clock["kv_bytes"] += sum(2 * c.k[:, :c.n].numel() * c.k.element_size() for c in caches)
    return list(zip(tokens, depths))


__all__ = ["naive_generate"]
