"""Closed-form compute counts for MoR forward passes.

A multiply-add is 2 FLOPs. Matmul FLOPs are 2 x (weights a token passes through); attention adds
2 x 2 x (query tokens) x (keys each query sees) x (heads x head_dim) for QK^T and AV. Training
costs 3x the forward (backward = 2x forward). Only active tokens are counted at each recursion,
so a model whose tokens exit early costs less per token, which is the point of MoR.
"""

from __future__ import annotations

from .configuration import MoRConfig


def layer_weights(config: MoRConfig) -> int:
    """Weights of one decoder layer's matmuls (norms are elementwise and not counted)."""
    C, I = config.hidden_size, config.intermediate_size
    q_o = 2 * C * config.num_attention_heads * config.head_dim
    k_v = 2 * C * config.num_key_value_heads * config.head_dim
    return q_o + k_v + 3 * C * I


def forward_flops(config: MoRConfig, seq_len: int, tokens_per_step: list[float]) -> float:
    """FLOPs of one forward over a sequence of `seq_len` tokens (no cache), when
    `tokens_per_step[r]` tokens take recursion step r+1 (all of them for a baseline)."""
    prelude, steps, coda = config.layer_plan()
    W, A = layer_weights(config), config.num_attention_heads * config.head_dim
    T = seq_len
    # attention in a causal sequence of n tokens: each query sees (n + 1) / 2 keys on average
    def attention(n_queries: float, n_keys: float) -> float:
        return 4 * n_queries * (n_keys + 1) / 2 * A

    flops = 2 * config.vocab_size * config.hidden_size * T  # LM head
    flops += (len(prelude) + len(coda)) * (2 * W * T + attention(T, T))
    for r, n in enumerate(tokens_per_step):
        keys = T if (config.kv_cache == "shared" and r > 0) else n
        flops += len(steps[r]) * (2 * W * n + attention(n, keys))
    if config.routing == "expert_choice":
        flops += 2 * config.hidden_size * sum(tokens_per_step)
    elif config.routing == "token_choice":
        flops += 2 * config.hidden_size * config.num_recursions * T
    return float(flops)


def decode_flops_per_token(config: MoRConfig, context: int, depth: float) -> float:
    """FLOPs to decode one token at `context` cached positions when it takes `depth` recursions
    and, for attention, every cached token of a step is visible (an upper bound for MoR)."""
    prelude, steps, coda = config.layer_plan()
    W, A = layer_weights(config), config.num_attention_heads * config.head_dim
    flops = 2 * config.vocab_size * config.hidden_size
    flops += (len(prelude) + len(coda)) * (2 * W + 4 * context * A)
    full, frac = int(depth), depth - int(depth)
    for r in range(len(steps)):
        share = 1.0 if r < full else (frac if r == full else 0.0)
        flops += share * len(steps[r]) * (2 * W + 4 * context * A)
    return float(flops)
