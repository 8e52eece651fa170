"""What the tests share: tiny random models, the shipped checkpoints, and `generate` on one prompt.

Test files import from here (never from each other or from conftest.py). Every test that needs a
shipped checkpoint gets it through `shipped_checkpoints()` or the `shipped` fixtures in conftest.py,
which fail loudly when `checkpoints/` holds none: a missing suite is a broken checkout, not a reason
to skip.
"""

from __future__ import annotations

import pytest
import torch

import mor
from mor import MoRConfig, MoRForCausalLM
from mor.model.loading import load_config

SHARINGS = ("cycle", "sequence", "middle_cycle", "middle_sequence")
ROUTINGS = ("none", "expert_choice", "token_choice")
KV_CACHES = ("recursion_wise", "shared")
# The checkpoint a test uses when any routed one will do (the app's and the screenshots' default).
PREFERRED = "mor-ec-r3"


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


def generated(model, prompt, max_new_tokens, **kwargs) -> tuple[list[int], list[int]]:
    """transformers' `model.generate` on one prompt (token ids) alone: (new token ids, their depths).
    A budget of 0 gives nothing (generate itself rejects max_new_tokens=0)."""
    if max_new_tokens == 0:
        return [], []
    out = model.generate(torch.tensor([list(prompt)]), max_new_tokens=max_new_tokens, return_dict_in_generate=True,
                         **kwargs)
    return out.sequences[0, len(prompt):].tolist(), out.depths[0].tolist()


class MissingCheckpoints(RuntimeError):
    """The shipped checkpoints are not where the package looks for them."""


def shipped_checkpoints(routing: str | None = None, min_recursions: int = 1) -> list:
    """Folders of the shipped checkpoints (with weights), optionally only those with `routing` and at
    least `min_recursions` recursions. Raises MissingCheckpoints when there are none at all, so a test
    module that parametrizes over them fails at collection instead of silently collecting nothing."""
    folders = [f for f in mor.list_checkpoints() if (f / "model.safetensors").is_file()]
    if not folders:
        raise MissingCheckpoints("no shipped checkpoints found under checkpoints/ (or $MOR_CHECKPOINTS): "
                                 "this checkout is incomplete; restore checkpoints/ from git")
    if routing is None and min_recursions <= 1:
        return folders
    return [f for f in folders if (routing is None or load_config(f).routing == routing)
            and load_config(f).num_recursions >= min_recursions]


def preferred_checkpoint() -> str:
    """The name of the routed checkpoint tests use by default: PREFERRED if shipped, else the first
    expert-choice one with two or more recursions. Fails the test when there is none."""
    routed = [f.name for f in shipped_checkpoints("expert_choice", min_recursions=2)]
    if not routed:
        pytest.fail("no shipped expert-choice checkpoint with two or more recursions", pytrace=False)
    return PREFERRED if PREFERRED in routed else routed[0]
