"""Streaming generation: the same tokens and depths as `generate`, step by step, with a clock."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_model
from mor.live import measure_decode, stream_generate


def collect(model, ids, **kwargs):
    """Run stream_generate to the end: (ids with the new tokens appended, depths (B, new), steps)."""
    steps = list(stream_generate(model, ids, **kwargs))
    new = torch.stack([s.token_ids for s in steps], 1)
    depths = torch.stack([s.depths for s in steps], 1)
    return torch.cat([ids, new], 1), depths, steps


@pytest.mark.parametrize("routing", ["expert_choice", "token_choice", "none"])
@pytest.mark.parametrize("depth", [{}, {"depth_cap": 2}, {"fixed_depth": 1}])
def test_greedy_stream_equals_generate(routing, depth):
    model = tiny_model(routing=routing)  # eos_token_id is None, so generate never stops early
    torch.manual_seed(0)
    ids = torch.randint(0, 99, (4, 7))  # several rows: a random model repeats one token per row
    seq, depths, _ = collect(model, ids, max_new_tokens=10, **depth)
    ref_seq, ref_depths = model.generate(ids, max_new_tokens=10, return_depths=True, **depth)
    assert torch.equal(seq, ref_seq)
    assert torch.equal(depths, ref_depths)
    if routing != "none" and not depth:
        assert depths.unique().numel() > 1  # random routers vary the depth, so the check bites


def test_left_padded_batch_equals_generate():
    model = tiny_model(routing="expert_choice")
    torch.manual_seed(2)
    ids = torch.randint(1, 99, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # row 1 is a shorter prompt, left-padded
    ids[1, :3] = 0
    seq, depths, steps = collect(model, ids, attention_mask=mask, max_new_tokens=6)
    ref_seq, ref_depths = model.generate(ids, attention_mask=mask, max_new_tokens=6, return_depths=True)
    assert torch.equal(seq, ref_seq)
    assert torch.equal(depths, ref_depths)
    assert all(s.token_ids.shape == (3,) and s.depths.shape == (3,) for s in steps)


def test_sampling_matches_generate_with_the_same_seed():
    model = tiny_model(routing="expert_choice")
    ids = torch.randint(0, 99, (2, 5), generator=torch.Generator().manual_seed(4))
    seq, _, _ = collect(model, ids, max_new_tokens=8, do_sample=True, temperature=0.8, top_k=10, seed=7)
    ref = model.generate(ids, max_new_tokens=8, do_sample=True, temperature=0.8, top_k=10,
                         generator=torch.Generator().manual_seed(7))
    assert torch.equal(seq, ref)


def test_steps_carry_a_running_clock():
    model = tiny_model(routing="expert_choice")
    ids = torch.randint(0, 99, (4, 6), generator=torch.Generator().manual_seed(5))
    _, _, steps = collect(model, ids, max_new_tokens=5)
    assert [s.step for s in steps] == [1, 2, 3, 4, 5]
    assert all(s.prefill_seconds > 0 and s.tokens_per_second > 0 for s in steps)
    assert all(a.elapsed < b.elapsed for a, b in zip(steps, steps[1:]))
    last = steps[-1]
    assert last.tokens_per_second == pytest.approx(4 * 5 / last.elapsed)


def test_zero_new_tokens_yields_nothing():
    model = tiny_model()
    assert list(stream_generate(model, torch.zeros(1, 3, dtype=torch.long), max_new_tokens=0)) == []


def test_measure_decode_reports_positive_speed_and_depth():
    model = tiny_model(routing="expert_choice")
    result = measure_decode(model, [5, 6, 7, 8], batch_size=3, new_tokens=4)
    assert result["tokens_per_second"] > 0 and result["prefill_seconds"] > 0
    assert result["batch_size"] == 3 and result["new_tokens"] == 4
    assert 1 <= result["mean_depth"] <= model.config.num_recursions
    fixed = measure_decode(model, torch.tensor([[5, 6, 7, 8]]), batch_size=2, new_tokens=3, fixed_depth=2)
    assert fixed["mean_depth"] == 2


def test_measure_decode_rejects_an_empty_prompt():
    with pytest.raises(ValueError, match="empty"):
        measure_decode(tiny_model(), [], batch_size=1, new_tokens=2)
