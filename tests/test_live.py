"""Streaming generation on the engine: the same tokens and depths as `generate`, with a clock."""

from __future__ import annotations

import pytest
import torch

from helpers import generated, tiny_model
from mor.inference.engine import ENTRY, EXIT
from mor.inference.live import measure_decode, stream_generate


def collect(model, prompts, **kwargs):
    """Run stream_generate to the end: (final state, snapshots of (fed, elapsed) per state)."""
    states, clock = [], []
    for state in stream_generate(model, prompts, **kwargs):
        states.append(state)
        clock.append((state.fed, state.elapsed, state.tokens_per_second))
    return states[-1], clock


@pytest.mark.parametrize("routing", ["expert_choice", "token_choice", "none"])
@pytest.mark.parametrize("depth", [{}, {"depth_cap": 2}, {"fixed_depth": 1}])
def test_greedy_stream_equals_generate_of_each_row_alone(routing, depth):
    model = tiny_model(routing=routing)  # eos_token_id is None, so generate never stops early
    torch.manual_seed(0)
    ids = torch.randint(0, 99, (4, 7))  # several rows: a random model repeats one token per row
    last, _ = collect(model, ids, max_new_tokens=10, **depth)
    for row in range(4):
        assert (last.tokens[row], last.depths[row]) == generated(model, ids[row].tolist(), 10, **depth)
    if routing != "none" and not depth:
        assert len({d for row in last.depths for d in row}) > 1  # random routers vary the depth


def test_prompts_of_different_lengths():
    model = tiny_model(routing="expert_choice")
    prompts = [[5, 6, 7, 8, 9, 10], [11, 12], [13, 14, 15]]
    last, _ = collect(model, prompts, max_new_tokens=6)
    for row, p in enumerate(prompts):
        assert (last.tokens[row], last.depths[row]) == generated(model, p, 6)


def test_prompts_longer_than_a_chunk():
    """A prompt longer than a pass is prefilled in several chunks; the stream still equals generate."""
    model = tiny_model(routing="expert_choice", max_position_embeddings=256)
    g = torch.Generator().manual_seed(6)
    prompts = [torch.randint(0, 99, (n,), generator=g).tolist() for n in (150, 70, 3)]
    last, _ = collect(model, prompts, max_new_tokens=5)
    for row, p in enumerate(prompts):
        assert (last.tokens[row], last.depths[row]) == generated(model, p, 5)


def test_sampling_gives_row_i_the_generator_seeded_seed_plus_i():
    model = tiny_model(routing="expert_choice")
    ids = torch.randint(0, 99, (2, 5), generator=torch.Generator().manual_seed(4))
    last, _ = collect(model, ids, max_new_tokens=8, do_sample=True, temperature=0.8, top_k=10, seed=7)
    for row in range(2):  # transformers' generate samples with the global generator
        torch.manual_seed(7 + row)
        ref = model.generate(ids[row:row + 1], max_new_tokens=8, do_sample=True, temperature=0.8, top_k=10)
        assert last.tokens[row] == ref[0, 5:].tolist()


def test_states_carry_a_running_clock():
    model = tiny_model(routing="expert_choice")
    ids = torch.randint(0, 99, (4, 6), generator=torch.Generator().manual_seed(5))
    last, clock = collect(model, ids, max_new_tokens=5)
    fed = [c[0] for c in clock]
    assert fed == sorted(fed) and fed[-1] == 4 * 5  # every new token was fed through the model once
    assert last.fed == sum(len(d) for d in last.depths)
    assert all(b[1] >= a[1] for a, b in zip(clock, clock[1:])) and clock[-1][1] > clock[0][1]
    assert last.prefill_seconds > 0 and last.tokens_per_second == pytest.approx(20 / last.elapsed)
    # the last token leaves its last recursion step (in the entry pass or a block pass) and retires
    assert 1 <= last.block_items <= 4 and last.stage in (ENTRY, "block")
    assert set(last.queued) == {ENTRY, "block", EXIT} and sum(last.queued.values()) == 0


def test_zero_new_tokens_or_no_rows_yield_nothing():
    model = tiny_model()
    assert list(stream_generate(model, torch.zeros(1, 3, dtype=torch.long), max_new_tokens=0)) == []
    assert list(stream_generate(model, [], max_new_tokens=3)) == []


def test_bad_prompts_are_rejected():
    model = tiny_model()
    with pytest.raises(ValueError, match="empty"):
        list(stream_generate(model, [[1, 2], []], max_new_tokens=2))
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        list(stream_generate(model, torch.zeros(3, dtype=torch.long), max_new_tokens=2))


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
