"""KV cache byte accounting, checked against storage sizes and closed-form counts."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_model
from mor.model.cache import GROWTH_BLOCK

PER_TOKEN = 2 * 2 * 8 * 4  # K and V, 2 kv heads, head dim 8, float32


def storage_bytes(cache) -> int:
    """Bytes of the distinct storages behind the cache's tensors, measured by torch."""
    storages = {}
    for slot in cache.slots:
        for t in slot.tensors():
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


def prefill(model, T, routing_mode="causal", **kwargs):
    ids = torch.randint(0, 99, (1, T))
    cache = model.model.new_cache(1)
    with torch.no_grad():
        if routing_mode == "capacity":  # capacity routing has no incremental form: fill via forward
            out = model(ids, routing_mode="capacity", **kwargs)
            cache = None
        else:
            out = model(ids, past_key_values=cache, **kwargs)
    return out, cache


@pytest.mark.parametrize("routing", ["none", "expert_choice", "token_choice"])
@pytest.mark.parametrize("kv_cache", ["recursion_wise", "shared"])
def test_cache_bytes_equal_held_tensors_and_closed_form(routing, kv_cache):
    model = tiny_model(routing=routing, kv_cache=kv_cache)  # middle_cycle: prelude, 2 layers/step, coda
    T = 40
    out, cache = prefill(model, T)
    depths = out.depths[0]
    # closed form from the depths the model reported
    if kv_cache == "shared":
        tokens_per_step = [T, 0, 0]
    else:
        tokens_per_step = [int((depths >= r).sum()) for r in (1, 2, 3)]
    expected = {"unique layers": 2 * T * PER_TOKEN}
    expected.update({f"step {r + 1}": 2 * n * PER_TOKEN for r, n in enumerate(tokens_per_step) if n or r == 0})
    assert {k: v for k, v in cache.bytes_per_step().items() if v} == {k: v for k, v in expected.items() if v}
    assert cache.used_bytes() == sum(expected.values())
    assert cache.nbytes() == storage_bytes(cache) == cache.used_bytes()  # prefill allocates exactly


def test_recursion_wise_capacity_saving_matches_paper_ratio():
    """With capacities 1, 2/3, 1/3 the recursion steps cache (N_r + 1) / (2 N_r) = 2/3 of the
    recursive baseline's tokens."""
    T = 30
    mor = tiny_model(routing="expert_choice")
    base = tiny_model(routing="none")
    out, _ = prefill(mor, T, routing_mode="capacity")
    cached = sum(int((out.depths >= r).sum()) for r in (1, 2, 3))
    assert cached == sum(math.ceil(c * T) for c in (1, 2 / 3, 1 / 3)) == 60
    _, base_cache = prefill(base, T)
    assert base_cache.tokens_per_step() == {"step 1": 30, "step 2": 30, "step 3": 30}
    assert cached / sum(base_cache.tokens_per_step().values()) == pytest.approx(2 / 3)


def test_shared_kv_keeps_only_first_recursion():
    model = tiny_model(routing="none", kv_cache="shared")
    _, cache = prefill(model, 16)
    assert cache.tokens_per_step() == {"step 1": 16}
    assert len(cache.slots) == 2 + 2  # prelude, coda, and the two layers of step 1


def test_decode_growth_is_bounded_and_accounted():
    model = tiny_model(routing="expert_choice")
    ids = torch.randint(0, 99, (1, 20))
    cache = model.model.new_cache(1)
    depths = []
    with torch.no_grad():
        depths.append(model(ids[:, :4], past_key_values=cache).depths)
        for t in range(4, 20):
            depths.append(model(ids[:, t:t + 1], past_key_values=cache).depths)
    depths = torch.cat(depths, 1)[0]
    used = 2 * 20 * PER_TOKEN + 2 * PER_TOKEN * sum(int((depths >= r).sum()) for r in (1, 2, 3))
    assert cache.used_bytes() == used
    assert cache.nbytes() == storage_bytes(cache)
    assert used <= cache.nbytes() <= used + len(cache.slots) * GROWTH_BLOCK * PER_TOKEN
    assert cache.get_seq_length() == 20
