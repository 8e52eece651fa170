"""Shared fixtures: tiny random MoR models (CPU, float32, seconds to build)."""

from __future__ import annotations

import pytest
import torch

from mor import MoRConfig, MoRForCausalLM

SHARINGS = ("cycle", "sequence", "middle_cycle", "middle_sequence")
ROUTINGS = ("none", "expert_choice", "token_choice")
KV_CACHES = ("recursion_wise", "shared")


def tiny_config(sharing="middle_cycle", routing="expert_choice", kv_cache="recursion_wise",
                num_recursions=3, **overrides) -> MoRConfig:
    """Hidden 32, GQA 4/2 heads, vocab 99; L chosen so the sharing strategy divides evenly."""
    layers = (2 if sharing.startswith("middle") else 0) + 2 * num_recursions
    kwargs = dict(vocab_size=99, hidden_size=32, intermediate_size=64, num_attention_heads=4,
                  num_key_value_heads=2, num_hidden_layers=layers, num_recursions=num_recursions,
                  sharing=sharing, routing=routing, kv_cache=kv_cache, max_position_embeddings=128)
    kwargs.update(overrides)
    return MoRConfig(**kwargs)


def tiny_model(seed=0, router_scale=60.0, **config_kwargs) -> MoRForCausalLM:
    """A random model in eval mode. Router weights are scaled up so random routers make clear
    decisions (scores far from the 0.5 threshold) and depths vary from token to token."""
    torch.manual_seed(seed)
    model = MoRForCausalLM(tiny_config(**config_kwargs)).eval()
    with torch.no_grad():
        for router in model.model.routers:
            router.linear.weight.mul_(router_scale)
    return model


@pytest.fixture
def ids():
    torch.manual_seed(1)
    return torch.randint(0, 99, (2, 24))


def generated(model, prompt, max_new_tokens, **kwargs) -> tuple[list[int], list[int]]:
    """transformers' `model.generate` on one prompt (token ids) alone: (new token ids, their depths).
    A budget of 0 gives nothing (generate itself rejects max_new_tokens=0)."""
    if max_new_tokens == 0:
        return [], []
    out = model.generate(torch.tensor([list(prompt)]), max_new_tokens=max_new_tokens, return_dict_in_generate=True,
                         **kwargs)
    return out.sequences[0, len(prompt):].tolist(), out.depths[0].tolist()
