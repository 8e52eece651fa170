"""Continuous depth-wise batching (mor/inference/engine.py) and the benchmark command (mor/analysis/bench.py).

The engine must give every request exactly what `model.generate` (transformers' generate driving
the model) gives it alone: same tokens, same per-token depths, whatever else shares the batch. No
timing is asserted anywhere."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

import mor
from helpers import generated, tiny_model
from mor.analysis import bench
from mor.inference.engine import Engine, naive_generate


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread (and the suite stays quick on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def make_prompts(n, seed=0, vocab=99, max_len=12):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, max_len + 1, (n,), generator=g).tolist()
    return [torch.randint(0, vocab, (k,), generator=g).tolist() for k in lengths]


def alone(model, prompts, news, **kwargs):
    """model.generate on each prompt by itself: (new tokens, depths) per prompt."""
    return [generated(model, p, n, **kwargs) for p, n in zip(prompts, news)]


COMBOS = [
    ("expert_choice", "middle_cycle", "recursion_wise"),
    ("expert_choice", "middle_cycle", "shared"),
    ("expert_choice", "sequence", "recursion_wise"),
    ("expert_choice", "middle_sequence", "shared"),
    ("expert_choice", "sequence", "shared"),
    ("token_choice", "middle_cycle", "recursion_wise"),
    ("token_choice", "cycle", "shared"),
    ("token_choice", "middle_sequence", "recursion_wise"),
    ("none", "middle_cycle", "recursion_wise"),
    ("none", "sequence", "shared"),
    ("none", "middle_sequence", "shared"),
]


@pytest.mark.parametrize("routing,sharing,kv_cache", COMBOS, ids=["-".join(c) for c in COMBOS])
def test_engine_and_naive_equal_generate_alone(routing, sharing, kv_cache):
    model = tiny_model(routing=routing, sharing=sharing, kv_cache=kv_cache)
    prompts = make_prompts(7, seed=1)  # mixed lengths 1..12
    news = [5, 9, 0, 3, 8, 1, 6]  # per-request budgets, one request with none
    ref = alone(model, prompts, news)
    # 3 slots for 7 requests: finished requests are replaced from the queue
    assert Engine(model, max_batch=3).generate(prompts, news) == ref
    assert naive_generate(model, prompts, news, batch_size=4) == ref
    depths = {d for _, ds in ref for d in ds}
    if routing == "expert_choice":  # the random routers vary the depth, so the check bites
        assert len(depths) > 1
    if routing == "none":
        assert depths == {3}


@pytest.mark.parametrize("routing", ["expert_choice", "token_choice"])
def test_straight_through_gate(routing):
    model = tiny_model(routing=routing, router_gate="straight_through")
    prompts = make_prompts(5, seed=8)
    ref = alone(model, prompts, [6] * 5)
    assert Engine(model, max_batch=2).generate(prompts, 6) == ref
    assert naive_generate(model, prompts, 6) == ref


@pytest.mark.parametrize("max_batch", [1, 2, 16])
@pytest.mark.parametrize("prefill_together", [True, False])
def test_any_number_of_slots_gives_the_same_result(max_batch, prefill_together):
    model = tiny_model(routing="expert_choice")
    prompts = make_prompts(5, seed=2)
    ref = alone(model, prompts, [6] * 5)
    assert Engine(model, max_batch=max_batch, prefill_together=prefill_together).generate(prompts, 6) == ref


def test_replacement_happens_and_events_track_progress():
    model = tiny_model(routing="expert_choice")
    prompts = make_prompts(6, seed=3)
    engine = Engine(model, max_batch=2)
    events = list(engine.stream(prompts, 4))
    assert max(e.in_flight for e in events) == 2 and events[0].waiting == 4
    assert all(e.block_items <= 2 for e in events)
    assert events[-1].tokens_generated == 24 and events[-1].in_flight == 0
    assert sorted(i for e in events for i in e.finished) == list(range(6))
    assert all(a.elapsed <= b.elapsed and a.tokens_generated <= b.tokens_generated for a, b in zip(events, events[1:]))
    assert events[-1].tokens_per_second > 0
    # every token and depth reported once, matching the results
    per_request = {i: [] for i in range(6)}
    for e in events:
        for i, t in e.new_tokens:
            per_request[i].append(t)
    assert [per_request[i] for i in range(6)] == [toks for toks, _ in engine.results]


@pytest.mark.parametrize("routing", ["expert_choice", "token_choice", "none"])
@pytest.mark.parametrize("depth", [{"depth_cap": 1}, {"depth_cap": 2}, {"fixed_depth": 1}, {"fixed_depth": 3}])
def test_depth_cap_and_fixed_depth(routing, depth):
    model = tiny_model(routing=routing)
    prompts = make_prompts(4, seed=4)
    ref = alone(model, prompts, [5] * 4, **depth)
    out = Engine(model, max_batch=2, **depth).generate(prompts, 5)
    assert out == ref
    assert naive_generate(model, prompts, 5, **depth) == ref
    ds = {d for _, dd in out for d in dd}
    if "depth_cap" in depth:
        assert max(ds) <= depth["depth_cap"]
    else:
        assert ds == {depth["fixed_depth"]}


def test_vanilla_model():
    model = tiny_model(routing="none", sharing="cycle", num_recursions=1, num_hidden_layers=3)
    prompts = make_prompts(4, seed=5)
    ref = alone(model, prompts, [4] * 4)
    assert Engine(model, max_batch=3).generate(prompts, 4) == ref
    assert naive_generate(model, prompts, 4) == ref


def test_end_of_text_stops_a_request_as_generate_does():
    model = tiny_model(routing="expert_choice")
    prompts = make_prompts(4, seed=6)
    free = alone(model, prompts, [8] * 4)
    eos = free[0][0][2]  # a token the first request emits: it must stop at its first occurrence
    stop = free[0][0].index(eos) + 1
    model.generation_config.eos_token_id = eos  # what generate and (by default) the engine stop at
    ref = alone(model, prompts, [8] * 4)
    assert len(ref[0][0]) == stop and len(ref[0][1]) == stop
    assert Engine(model, max_batch=2).generate(prompts, 8) == ref
    assert naive_generate(model, prompts, 8) == ref
    assert Engine(model, max_batch=2).generate(prompts, 8, stop_at_eos=False) == free


def test_sampling_is_seeded_and_matches_generate_from_the_same_seed():
    model = tiny_model(routing="expert_choice")
    prompts = make_prompts(4, seed=7)
    kw = dict(do_sample=True, temperature=0.8, top_k=20, top_p=0.9)
    a = Engine(model, max_batch=2).generate(prompts, 8, seed=11, **kw)
    b = Engine(model, max_batch=3).generate(prompts, 8, seed=11, **kw)
    assert a == b  # reproducible, and independent of how requests share the batch
    assert Engine(model, max_batch=2).generate(prompts, 8, seed=12, **kw) != a
    for i, p in enumerate(prompts):  # transformers' generate samples with the global generator
        torch.manual_seed(11 + i)
        assert a[i] == generated(model, p, 8, **kw)


def test_bad_arguments():
    model = tiny_model()
    with pytest.raises(ValueError, match="depth_cap=4 is outside 1..3"):
        Engine(model, depth_cap=4)
    with pytest.raises(ValueError, match="not both"):
        Engine(model, depth_cap=1, fixed_depth=1)
    with pytest.raises(ValueError, match="empty"):
        Engine(model).generate([[]], 3)
    with pytest.raises(ValueError, match="2 entries for 1 prompts"):
        Engine(model).generate([[1, 2]], [3, 4])


# ---- the benchmark command ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the cat sat on the mat, and the dog sat on the log"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


def test_bench_smoke_run_writes_report_with_schema(tmp_path, tokenizer, capsys):
    folders = []
    for name, kw in [("van", dict(routing="none", sharing="cycle", num_recursions=1, num_hidden_layers=3)),
                     ("ec", dict(routing="expert_choice"))]:
        folders.append(str(mor.save_checkpoint(tiny_model(vocab_size=300, **kw), tokenizer, tmp_path / name,
                                               dtype=torch.float32)))
    parser = argparse.ArgumentParser()
    bench.register_cli(parser.add_subparsers(dest="command"))
    out = tmp_path / "docs" / "performance.md"
    args = parser.parse_args(["bench", "--json", "--checkpoints", *folders, "--batch-sizes", "1", "2",
                              "--new-tokens", "3", "--prompt-len", "5", "--repeats", "1", "--growth-lengths", "8",
                              "--growth-batch-sizes", "1", "--threads", "0", "--data", str(tmp_path / "nodata"),
                              "--out", str(out)])
    assert args.func(args) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"meta", "checkpoints", "configs", "results", "growth", "profile", "depth_caps", "targets"}
    assert report["meta"]["vanilla"] == "van" and set(report["checkpoints"]) == {"van", "ec"}
    rows = report["results"]
    keys = {(r["checkpoint"], r["path"], r["batch_size"]) for r in rows}
    for name in ("van", "ec"):
        for path in ("naive", "gather", "engine"):
            assert {(name, path, 1), (name, path, 2)} <= keys
    assert ("llama", "llama", 2) in keys
    for r in rows:
        assert r["decode_tokens_per_second"] > 0 and r["flops_per_token"] > 0
        assert {"prefill_seconds_per_prompt", "mean_depth", "kv_bytes_per_request", "predicted_speedup",
                "measured_speedup", "speedup_ratio", "peak_memory_bytes"} <= set(r)
    ec = next(r for r in rows if r["checkpoint"] == "ec" and r["path"] == "engine")
    assert 1 <= ec["mean_depth"] <= 3 and ec["kv_bytes_per_request"] > 0
    assert {t["seq_len"] for t in report["growth"]["trace"]} == {8, 1000}  # 1000: the trace target
    assert report["growth"]["decode"] and "ec" in report["profile"]["models"]
    assert {"ratio_at_least_0.9", "speedup_at_least_1.3", "trace_under_0.5s"} <= set(report["targets"])
    sweep = report["depth_caps"]
    assert sweep["batch_size"] == 2
    caps = {(r["checkpoint"], r["depth_cap"]): r for r in sweep["rows"]}
    assert set(caps) == {("van", None), ("ec", 1), ("ec", 2), ("ec", None)}
    assert caps[("van", None)]["speedup"] == 1.0 and caps[("ec", 1)]["mean_depth"] == 1.0
    assert caps[("ec", 2)]["mean_depth"] <= 2 and all(r["decode_tokens_per_second"] > 0 for r in sweep["rows"])
    text = out.read_text()
    assert "## Analysis" in text and "### Batch 2" in text and "## Test-time depth caps" in text
    assert (out.parent / "perf_decode_vs_batch.png").stat().st_size > 0
    assert json.loads(out.with_suffix(".json").read_text())["meta"]["new_tokens"] == 3


def test_peak_memory_sees_a_buffer_the_block_allocates_and_touches():
    with bench.PeakMemory() as small:
        torch.zeros(1000)
    with bench.PeakMemory() as big:
        buf = torch.ones(16 * 2**20 // 4)  # 16 MiB, written so its pages are resident
        del buf
    if big.bytes is None:
        pytest.skip("peak resident memory is only measured on Linux")
    assert big.bytes >= 15 * 2**20
    assert small.bytes < 4 * 2**20


@pytest.mark.parametrize("kv_cache", ["recursion_wise", "shared"])
def test_every_read_plan_gives_generate_s_tokens(kv_cache, monkeypatch):
    """Items read their K/V rows in place (whole block, block with items at their slots, block plus
    gathered minority) or gathered; every kind occurs here and the tokens still match generate."""
    kinds = set()
    plan = Engine._plan

    def spy(self, *args, **kwargs):
        p = plan(self, *args, **kwargs)
        kinds.add(("gather" if p.major is None else "block", p.slots is not None, p.minor is not None))
        return p

    monkeypatch.setattr(Engine, "_plan", spy)
    model = tiny_model(routing="expert_choice", kv_cache=kv_cache)
    prompts = torch.randint(0, 99, (16, 6), generator=torch.Generator().manual_seed(0)).tolist()
    news = [3 + i % 5 for i in range(16)]
    results = Engine(model, max_batch=5).generate(prompts, max_new_tokens=news)
    assert results == alone(model, prompts, news)
    assert {("gather", False, False), ("block", False, False), ("block", True, False)} <= kinds
    if kv_cache == "recursion_wise":
        assert ("block", False, True) in kinds  # a majority step in place, the rest gathered


@pytest.mark.parametrize("slots, reads, kind", [
    ([0, 1, 2, 3, 4, 5, 6, 7], [0, 0, 1, 0, 2, 0, 0, 0], "block+minor"),  # every slot busy: majority in place
    ([0, 1, 2, 3, 5, 6, 7], [0, 0, 1, 0, 0, 0, 0], "block+minor"),        # a free slot: queries at their slots
    ([0, 2, 3, 4, 5, 6, 7], [1] * 7, "block"),                            # one cache slot read by all: in place
    ([1, 4, 5], [0, 1, 0], "gather"),                                      # no large majority: every row gathered
])
def test_attention_read_plans_equal_a_per_item_computation(slots, reads, kind):
    """`_attend` under every read plan against attention computed item by item from the rows."""
    model = tiny_model(routing="expert_choice")
    engine = Engine(model, max_batch=8)
    engine._allocate(12)
    g = torch.Generator().manual_seed(0)
    engine.kv.copy_(torch.randn(engine.kv.shape, generator=g))
    S, G, H, D = 8, engine.G, engine.H, engine.D
    cache_slot = {0: 2, 1: 4, 2: 1}  # the cache slot each read index points at
    items = torch.tensor(slots)
    lengths = torch.randint(1, 10, (len(slots),), generator=g)
    L = int(lengths.max())
    mask = (torch.arange(L)[None, :] >= lengths[:, None])[:, None, None, :]
    q = torch.randn(len(slots), G, H // G, D, generator=g)
    plan = engine._plan(items, len(slots) == S, mask, L, torch.tensor(reads))
    assert ("gather" if plan.major is None else "block") + ("+minor" if plan.minor is not None else "") == kind
    rows = torch.tensor([cache_slot[r] * S + s for r, s in zip(reads, slots)])
    if plan.major is None:
        out = engine._attend(q, plan, None, rows)
    else:
        out = engine._attend(q, plan, cache_slot[plan.major] * S, None if plan.minor is None else rows[plan.minor])
    for n, (row, length) in enumerate(zip(rows.tolist(), lengths.tolist())):
        k = engine.kv[row, :, 0, :length]  # (G, length, D)
        v = engine.kv[row, :, 1, :length]
        want = torch.softmax(q[n] @ k.transpose(-1, -2), -1) @ v  # (G, H/G, D)
        torch.testing.assert_close(out[n], want)


SENTENCES = ["The history of the city begins in the", "To be, or not to be, that is the question:",
             "Water boils at a temperature of", "KING. My lord, the", "In 1905 Einstein published"]


@pytest.mark.parametrize("folder", mor.list_checkpoints(), ids=lambda p: p.name)
def test_engine_equals_generate_on_shipped_checkpoints(folder):
    """Trained weights make every token depend on attention (a random tiny model often does not):
    the engine's tokens and depths equal a lone `generate` per prompt, with slots refilled."""
    model, tokenizer = mor.load(folder, device="cpu")
    model.generation_config.eos_token_id = None  # decode exactly n tokens in both
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in SENTENCES]
    news = [12, 7, 12, 9, 12]
    results = Engine(model, max_batch=3).generate(prompts, max_new_tokens=news)
    assert results == alone(model, prompts, news)
    assert all(len(tokens) == n for (tokens, _), n in zip(results, news))


def test_traced_steps_climb_one_at_a_time_to_each_token_s_depth():
    """trace_steps: every request's items go 1, 2, ..., depth and start again at 1 for the next
    token, and the depths read off the trace are the ones the engine reports."""
    model = tiny_model(routing="expert_choice")
    prompts = torch.randint(0, 99, (7, 5), generator=torch.Generator().manual_seed(3)).tolist()
    engine = Engine(model, max_batch=3)
    per_request: dict[int, list[int]] = {}
    for event in engine.stream(prompts, max_new_tokens=6, trace_steps=True):
        assert len(event.block_steps) == event.block_items
        for index, step in event.block_steps:
            per_request.setdefault(index, []).append(step)
    assert len({step for steps in per_request.values() for step in steps}) > 1
    for index, steps in per_request.items():
        depths, run = [], 0
        for step in steps:
            assert step == run + 1 or step == 1
            if step == 1 and run:
                depths.append(run)
            run = step
        depths.append(run)
        assert depths == engine.results[index][1]
