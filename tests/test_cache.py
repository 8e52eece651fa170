"""KV cache byte accounting, checked against storage sizes and closed-form counts."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import Cache, DynamicCache

from helpers import tiny_model
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
            out = model(ids, cache=cache, **kwargs)
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
        depths.append(model(ids[:, :4], cache=cache).depths)
        for t in range(4, 20):
            depths.append(model(ids[:, t:t + 1], cache=cache).depths)
    depths = torch.cat(depths, 1)[0]
    used = 2 * 20 * PER_TOKEN + 2 * PER_TOKEN * sum(int((depths >= r).sum()) for r in (1, 2, 3))
    assert cache.used_bytes() == used
    assert cache.nbytes() == storage_bytes(cache)
    assert used <= cache.nbytes() <= used + len(cache.slots) * GROWTH_BLOCK * PER_TOKEN
    assert cache.get_seq_length() == 20


def test_cache_is_a_transformers_cache_that_beam_search_can_reorder():
    """`reorder_cache` (what beam search calls) moves every slot's rows and positions: decoding on
    from reordered rows equals a full forward of the reordered sequences."""
    model = tiny_model(routing="expert_choice")
    ids = torch.randint(0, 99, (3, 10), generator=torch.Generator().manual_seed(2))
    cache = model.model.new_cache(3)
    order = torch.tensor([2, 0, 0])
    with torch.no_grad():
        model(ids[:, :6], cache=cache)
        assert isinstance(cache, Cache) and len(cache) == len(model.model.slot_names) == len(cache.slots)
        cache.reorder_cache(order)
        steps = [model(ids[order, t:t + 1], cache=cache) for t in range(6, 10)]
        full = model(ids[order])
    assert torch.equal(torch.cat([s.depths for s in steps], 1), full.depths[:, 6:])
    assert (torch.cat([s.logits for s in steps], 1) - full.logits[:, 6:]).abs().max() < 1e-4
    assert full.depths[:, 6:].unique().numel() > 1  # the routers vary the depth, so slots differ in length


def test_sequence_length_counts_columns_and_positions_count_real_tokens():
    """transformers slices new input by `get_seq_length()` (columns, padding included); attention
    positions are per row, counting only real tokens."""
    model = tiny_model(routing="none")
    ids = torch.randint(0, 99, (2, 7))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # row 1 is left-padded
    cache = model.model.new_cache(2)
    with torch.no_grad():
        model(ids, attention_mask=mask, cache=cache)
        model(ids[:, :1], attention_mask=torch.cat([mask, torch.ones(2, 1, dtype=torch.long)], 1), cache=cache)
    assert cache.get_seq_length() == 8
    assert cache.next_pos.tolist() == [8, 5]
    assert cache.tokens_per_step() == {"step 1": 13, "step 2": 13, "step 3": 13}


def test_only_a_mor_cache_is_accepted_and_the_old_argument_name_still_works():
    model = tiny_model()
    ids = torch.randint(0, 99, (1, 5))
    with pytest.raises(ValueError, match="MoRCache"):
        model(ids, cache=DynamicCache())
    with torch.no_grad():
        new, old = model.model.new_cache(1), model.model.new_cache(1)
        a = model(ids, cache=new)
        with pytest.warns(FutureWarning, match="past_key_values"):  # transformers 4.x's name, renamed to cache
            b = model(ids, past_key_values=old)
    assert b.cache is old and torch.equal(a.logits, b.logits) and old.used_bytes() == new.used_bytes() > 0
