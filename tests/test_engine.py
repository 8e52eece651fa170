"""Continuous depth-wise batching (mor/inference/engine.py, runner.py, plan.py), the naive path
(mor/analysis/naive.py).

The engine must give every request exactly what `model.generate` (transformers' generate driving
the model) gives it alone: same tokens, same per-token depths, whatever else shares its passes, how
many requests are in flight and how its prompt is chunked. No timing is asserted anywhere; the
work the engine does is checked on its weight-pass counters."""

from __future__ import annotations

import itertools

import pytest
import torch

import mor
from helpers import KV_CACHES, ROUTINGS, SHARINGS, generated, shipped_checkpoints, tiny_model
from mor.analysis.naive import naive_generate
from mor.inference import plan as plan_module
from mor.inference.engine import ENTRY, EXIT, PASS_TOKENS, PREFILL_TOKENS, Engine
from mor.inference.runner import Runner


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


COMBOS = list(itertools.product(ROUTINGS, SHARINGS, KV_CACHES))


@pytest.mark.parametrize("routing,sharing,kv_cache", COMBOS, ids=["-".join(c) for c in COMBOS])
def test_engine_and_naive_equal_generate_alone(routing, sharing, kv_cache):
    model = tiny_model(routing=routing, sharing=sharing, kv_cache=kv_cache)
    prompts = make_prompts(7, seed=1)  # mixed lengths 1..12
    news = [5, 9, 0, 3, 8, 1, 6]  # per-request budgets, one request with none, one with one
    ref = alone(model, prompts, news)
    # 3 rows per pass, 4 requests in flight for 7 (slots are refilled), prompts in chunks of 2
    assert Engine(model, max_batch=3, max_inflight=4, prefill_chunk=2).generate(prompts, news) == ref
    # the defaults: 12 slots, so every request is in flight at once, prompts in chunks of 3
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


@pytest.mark.parametrize("max_batch,max_inflight,prefill_chunk", [
    (1, 1, 1),     # one request, one token per pass: prefill token by token
    (1, 3, 1),     # more requests in flight than rows per pass
    (2, None, 1),  # default slots (8, more than the 5 requests), one prompt token per chunk
    (4, 2, 4),     # fewer slots than requests: admission waits for retirements
    (16, None, None),  # every prompt in one chunk
    (16, 1, 5),    # one request at a time, long passes
])
def test_any_batch_shape_gives_the_same_result(max_batch, max_inflight, prefill_chunk):
    model = tiny_model(routing="expert_choice")
    prompts = make_prompts(5, seed=2)
    ref = alone(model, prompts, [6] * 5)
    engine = Engine(model, max_batch=max_batch, max_inflight=max_inflight, prefill_chunk=prefill_chunk)
    assert engine.generate(prompts, 6) == ref


def test_a_narrow_engine_reads_each_prompt_in_one_wide_pass():
    """max_batch bounds the decode rows of a pass, not its prompt rows: at max_batch 1 a 40-token
    prompt enters in one entry pass (not 40), beside at most one decode row, and the tokens are
    still generate's. With the default pass budget (PASS_TOKENS rows) all three prompts enter in
    one pass; with 64 rows the third rides beside a decode row."""
    model = tiny_model(routing="expert_choice", sharing="middle_cycle")
    g = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 99, (n,), generator=g).tolist() for n in (40, 12, 25)]
    wide = Engine(model, max_batch=1)
    assert wide.max_tokens == PASS_TOKENS
    wide_events = list(wide.stream(prompts, 5))
    assert [e.prefill_rows for e in wide_events if e.stage == ENTRY and e.prefill_rows] == [77]
    engine = Engine(model, max_batch=1, max_tokens=64)
    events = list(engine.stream(prompts, 5))
    assert engine.results == wide.results
    assert engine.results == alone(model, prompts, [5] * 3)
    prelude_prompt_passes = [e.prefill_rows for e in events if e.stage == ENTRY and e.prefill_rows]
    assert sum(prelude_prompt_passes) == 77 and len(prelude_prompt_passes) <= 3  # a pass per prompt at most
    assert all(e.rows - e.prefill_rows <= 1 for e in events)
    assert any(e.prefill_rows and e.rows > e.prefill_rows for e in events), "a prompt rode beside a decode row"
    narrow = Engine(model, max_batch=1, prefill_chunk=1, max_tokens=1)  # the old default: one prompt token per pass
    narrow_events = list(narrow.stream(prompts, 5))
    assert narrow.results == engine.results
    assert sum(e.stage == ENTRY for e in narrow_events) > 77 > sum(e.stage == ENTRY for e in events)


def test_chunked_prefill_of_long_prompts_in_many_shapes():
    """Prompts much longer than a chunk, of very different lengths, with requests at every stage
    of their prefill and decode sharing passes."""
    model = tiny_model(routing="expert_choice", sharing="middle_cycle")
    g = torch.Generator().manual_seed(9)
    prompts = [torch.randint(0, 99, (n,), generator=g).tolist() for n in (1, 40, 7, 23, 2, 31, 16, 3, 50, 11)]
    news = [4, 3, 6, 1, 5, 2, 7, 3, 2, 6]
    ref = alone(model, prompts, news)
    for shape in [dict(max_batch=8, max_inflight=3, prefill_chunk=5, max_tokens=8),
                  dict(max_batch=6, max_inflight=10, max_tokens=64),
                  dict(max_batch=16, max_inflight=4, prefill_chunk=3, max_tokens=16)]:
        engine = Engine(model, **shape)
        events = list(engine.stream(prompts, news))
        assert engine.results == ref, shape
        prompt_rows = sum(e.prefill_rows for e in events if e.stage == ENTRY)
        assert prompt_rows == sum(map(len, prompts))  # every prompt token entered exactly once
        assert any(e.prefill_rows and e.rows > e.prefill_rows for e in events), "prefill rode with decode items"


def test_requests_queue_for_slots_and_events_track_progress():
    model = tiny_model(routing="expert_choice")
    prompts = make_prompts(6, seed=3)
    engine = Engine(model, max_batch=2, max_inflight=3)
    events = list(engine.stream(prompts, 4))
    assert max(e.in_flight for e in events) == 3 and events[0].waiting == 3
    # at most 2 decode rows per pass; prompt chunks (default max(2, PREFILL_TOKENS) tokens) on top,
    # PASS_TOKENS rows in all
    assert engine.prefill_chunk == PREFILL_TOKENS and engine.max_tokens == PASS_TOKENS
    assert all(1 <= e.rows <= engine.max_tokens and e.rows - e.prefill_rows <= 2 for e in events)
    assert {e.stage for e in events} == {ENTRY, "block", EXIT}
    assert events[-1].tokens_generated == 24 and events[-1].in_flight == 0
    assert sorted(i for e in events for i in e.finished) == list(range(6))
    assert [e.iteration for e in events] == list(range(1, len(events) + 1))
    assert all(a.elapsed <= b.elapsed and a.tokens_generated <= b.tokens_generated for a, b in zip(events, events[1:]))
    assert all(0 <= e.prefill_seconds <= e.elapsed for e in events)
    assert events[-1].tokens_per_second > 0
    assert all(set(e.queued) == {ENTRY, "block", EXIT} for e in events)
    assert sum(events[-1].queued.values()) == 0  # every queue drained
    # every token and depth reported once, matching the results; one pick time per token
    per_request = {i: [] for i in range(6)}
    for e in events:
        for i, t in e.new_tokens:
            per_request[i].append(t)
    assert [per_request[i] for i in range(6)] == [toks for toks, _ in engine.results]
    assert [len(t) for t in engine.token_times] == [4] * 6
    assert all(a <= b for times in engine.token_times for a, b in zip(times, times[1:]))
    assert len(engine.request_kv_bytes) == 6 and min(engine.request_kv_bytes) > 0


def test_budgets_of_zero_and_one():
    model = tiny_model(routing="expert_choice")
    prompts = make_prompts(5, seed=10)
    engine = Engine(model, max_batch=2)
    events = list(engine.stream(prompts, 0))
    assert engine.results == [([], [])] * 5
    assert len(events) == 1 and events[0].iteration == 0 and sorted(events[0].finished) == list(range(5))
    news = [1, 0, 1, 2, 0]
    assert Engine(model, max_batch=2).generate(prompts, news) == alone(model, prompts, news)
    ones = Engine(model, max_batch=2).generate(prompts, 1)
    assert all(len(t) == 1 and len(d) == 1 for t, d in ones)
    assert Engine(model).generate([], 3) == [] and list(Engine(model).stream([], 3)) == []


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
    assert Engine(model, max_batch=2, max_inflight=2, prefill_chunk=1).generate(prompts, 8) == ref
    assert naive_generate(model, prompts, 8) == ref
    assert Engine(model, max_batch=2).generate(prompts, 8, stop_at_eos=False) == free


def test_sampling_is_seeded_and_matches_generate_from_the_same_seed():
    model = tiny_model(routing="expert_choice")
    prompts = make_prompts(4, seed=7)
    kw = dict(do_sample=True, temperature=0.8, top_k=20, top_p=0.9)
    a = Engine(model, max_batch=2).generate(prompts, 8, seed=11, **kw)
    b = Engine(model, max_batch=3, max_inflight=2, prefill_chunk=1).generate(prompts, 8, seed=11, **kw)
    assert a == b  # reproducible, and independent of how requests share the passes
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
    with pytest.raises(ValueError, match="max_batch must be >= 1"):
        Engine(model, max_batch=0)
    with pytest.raises(ValueError, match="max_inflight must be >= 1"):
        Engine(model, max_inflight=0)
    with pytest.raises(ValueError, match="prefill_chunk must be >= 1, got 0"):
        Engine(model, max_batch=4, prefill_chunk=0)
    with pytest.raises(ValueError, match=r"max_tokens must be >= max\(max_batch, prefill_chunk\) = 8, got 4"):
        Engine(model, max_batch=8, prefill_chunk=8, max_tokens=4)
    with pytest.raises(ValueError, match="empty"):
        Engine(model).generate([[]], 3)
    with pytest.raises(ValueError, match="2 entries for 1 prompts"):
        Engine(model).generate([[1, 2]], [3, 4])


# ---- the work the engine does: weight passes -------------------------------------------------------


def counted_layers(monkeypatch):
    """Count the runner's decoder-layer calls and LM-head calls, with their rows, independently of
    its own counters (by wrapping the methods that do the work)."""
    seen = {"layer": 0, "layer_rows": 0, "head": 0, "head_rows": 0}
    layer, exit_pass = Runner._layer, Runner.exit

    def count_layer(self, u, x, *args):
        seen["layer"] += 1
        seen["layer_rows"] += x.shape[0]
        return layer(self, u, x, *args)

    def count_head(self, p):
        out = exit_pass(self, p)
        if out is not None:
            seen["head"] += 1
            seen["head_rows"] += out.shape[0]
        return out

    monkeypatch.setattr(Runner, "_layer", count_layer)
    monkeypatch.setattr(Runner, "exit", count_head)
    return seen


@pytest.mark.parametrize("W", [4, 8])
def test_passes_run_full_width_when_the_queue_allows(W, monkeypatch):
    """4W requests, a full batch at W rows: every stage's passes carry nearly full batches (only
    the start-up and the drain run short), and the counters agree with an independent count of layer
    and head calls and with the events."""
    seen = counted_layers(monkeypatch)
    model = tiny_model(routing="expert_choice")  # middle_cycle: 1 prelude, 2 block, 1 coda layers
    prompts = make_prompts(4 * W, seed=12, max_len=8)
    engine = Engine(model, max_batch=W, prefill_chunk=W)
    events = list(engine.stream(prompts, 12, stop_at_eos=False))
    stats = engine.stage_stats
    assert list(stats) == [ENTRY, "block", EXIT]
    for stage in stats:
        assert stats[stage]["rows"] / stats[stage]["runs"] >= 0.85 * W, (stage, stats)
        assert stats[stage]["runs"] == sum(e.stage == stage for e in events)
        assert stats[stage]["rows"] == sum(e.rows for e in events if e.stage == stage)
    passes = engine.passes
    # an entry pass runs the prelude layer and step 1's two block layers; an exit pass the coda
    # layer and, when a unit in it needs logits, the LM head
    assert passes["prelude"] == stats[ENTRY]["runs"] and passes["coda"] == stats[EXIT]["runs"]
    assert passes["block"] == 2 * (stats[ENTRY]["runs"] + stats["block"]["runs"])
    assert passes["head"] <= stats[EXIT]["runs"]
    assert seen["layer"] == passes["prelude"] + passes["block"] + passes["coda"]
    assert seen["head"] == passes["head"]
    assert seen["layer_rows"] + seen["head_rows"] == engine.pass_rows
    # the head computes logits for every new token (the last one of a request is only fed) and no other
    assert seen["head_rows"] == 4 * W * 12
    assert engine.results == alone(model, prompts[:3], [12] * 3) + engine.results[3:]


def test_vanilla_passes_are_full_and_one_set_per_batch_of_tokens():
    """Without routing every token takes the same path: W decode rows per pass, and decoding N
    tokens for 4W requests makes 4N sets of layer passes plus prefill, not one per request. The
    16 four-token prompts fill one pass of the default max_tokens, or 16 passes of W rows when a
    pass carries no more than W."""
    W, N = 4, 6
    model = tiny_model(routing="none", sharing="cycle", num_recursions=1, num_hidden_layers=3)
    prompts = [[1 + i, 2, 3, 4] for i in range(4 * W)]  # one chunk each
    for chunk, prefill_runs in ((None, 1), (W, 4 * W)):
        engine = Engine(model, max_batch=W, prefill_chunk=chunk, max_tokens=chunk)
        engine.generate(prompts, N, stop_at_eos=False)
        stats = engine.stage_stats
        assert list(stats) == [ENTRY, EXIT]  # one recursion: no block stage after the entry's step 1
        assert stats[ENTRY]["rows"] == 4 * W * (4 + N) and stats[ENTRY]["runs"] == prefill_runs + 4 * N
    assert stats[EXIT]["rows"] == 4 * W * N and stats[EXIT]["runs"] == 4 * N  # one row per new token
    # no prelude or coda layers: the embedding and the hand-over are no weight passes
    assert engine.passes["prelude"] == engine.passes["coda"] == 0


# ---- attention read plans ---------------------------------------------------------------------------


def test_cohorts_keep_requests_together_so_decode_passes_read_in_place(monkeypatch):
    """Prompts of scattered lengths finish prefill in a scrambled order; passes that take the
    oldest unit's cohort (its aligned range of max_batch slots) first regroup the requests, so
    without routing every decode-only pass reads one slot range in place (no gathered rows), and
    the tokens are still generate's."""
    gathers = []
    plan_lists = plan_module._plan_lists

    def spy(*args):
        p = plan_lists(*args)
        if "chunk" not in p.kinds:
            gathers.append("gather" in p.kinds)
        return p

    monkeypatch.setattr(plan_module, "_plan_lists", spy)
    model = tiny_model(routing="none", sharing="cycle", num_recursions=1, num_hidden_layers=3)
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 99, (n,), generator=g).tolist() for n in torch.randint(3, 30, (16,), generator=g).tolist()]
    engine = Engine(model, max_batch=4)
    assert engine.generate(prompts, 12) == alone(model, prompts, [12] * 16)
    assert len(gathers) > 20 and not any(gathers)


@pytest.mark.parametrize("kv_cache", ["recursion_wise", "shared"])
def test_every_read_plan_occurs_and_gives_generate_s_tokens(kv_cache, monkeypatch):
    """Items read their K/V rows gathered, in place (the whole pass, or a slot range with the rest
    gathered) and as prompt chunks; every kind occurs here and the tokens still match generate."""
    kinds = set()
    plan_lists = plan_module._plan_lists

    def spy(*args):
        p = plan_lists(*args)
        kinds.add(tuple(sorted(set(p.kinds))))
        return p

    monkeypatch.setattr(plan_module, "_plan_lists", spy)
    model = tiny_model(routing="expert_choice", kv_cache=kv_cache)
    prompts = torch.randint(0, 99, (16, 6), generator=torch.Generator().manual_seed(0)).tolist()
    news = [3 + i % 5 for i in range(16)]
    results = Engine(model, max_batch=5, max_inflight=5, prefill_chunk=3).generate(prompts, max_new_tokens=news)
    assert results == alone(model, prompts, news)
    assert {("gather",), ("block",), ("chunk",)} <= kinds
    assert any("chunk" in k and len(k) > 1 for k in kinds)  # chunks beside decode items
    if kv_cache == "recursion_wise":
        assert ("block", "gather") in kinds  # one step's items in place, another's gathered


def per_item_attention(kv, q, rows, vis):
    """Reference: each query alone over its row's first `vis` entries."""
    out = []
    for n, (row, length) in enumerate(zip(rows, vis)):
        k, v = kv[row, :, 0, :length], kv[row, :, 1, :length]  # (G, length, D)
        out.append(torch.softmax(q[n] @ k.transpose(-1, -2), -1) @ v)  # (G, H/G, D)
    return torch.stack(out)


@pytest.mark.parametrize("slots, keys, units, kinds", [
    ([0, 1, 2, 3, 4, 5, 6, 7], [0, 0, 1, 0, 2, 0, 0, 0], None, ["block"] * 3),  # each key's slots in place
    ([0, 1, 2, 3, 5, 6, 7], [0, 0, 1, 0, 0, 0, 0], None, ["block"] * 2),        # a gap: queries at offsets
    ([7, 2, 3, 4, 5, 6, 0], [1] * 7, None, ["block"]),                           # one cache slot, out of order
    ([0, 1, 2, 3], [1] * 4, None, ["block"]),                                    # every item in order
    ([0, 4, 7], [1] * 3, None, ["gather"]),                                      # too sparse for a range
    ([1, 4, 6], [0, 1, 0], None, ["gather", "block"]),                           # the larger group first
    ([0, 4, 7, 1, 2, 3], [1, 1, 1, 0, 0, 0], None, ["gather", "block"]),         # one key gathered, one in place
    ([3, 3, 3, 0, 5, 5], [1, 1, 1, 0, 2, 2], [(0, 3), (3, 1), (4, 2)], ["block", "chunk"]),  # prompt chunks
    ([3, 3, 3, 0, 6, 5, 5], [1, 1, 1, 0, 2, 2, 2], [(0, 3), (3, 1), (4, 1), (5, 2)], ["block", "block", "chunk"]),
    ([2, 2], [0, 0], [(0, 2)], ["chunk"]),
])
def test_attention_read_plans_equal_a_per_item_computation(slots, keys, units, kinds):
    """`attend` under every read plan against attention computed item by item from the rows; each
    part attends over exactly the entries its own items may see (a deep step's rows are short)."""
    check_read_plan(slots, keys, units, kinds)


@pytest.mark.parametrize("slots, kinds", [
    ([0, 1, 2, 3, 7], ["block", "gather"]),          # cut at the widest gap: a dense run, one item left over
    ([0, 1, 6, 7], ["block", "block"]),              # two dense runs, each in place
    ([0, 1, 2, 4, 7], ["block", "gather"]),          # after one cut 0-4 is dense (4 of its 5 slots), 7 is left
    ([0, 3, 6, 7], ["block", "gather"]),             # cut twice: 6-7 in place, 0 and 3 gathered together
])
def test_a_sparse_group_is_cut_into_dense_runs_read_in_place(slots, kinds, monkeypatch):
    """One step's items spread over a few slot ranges (cohorts): each dense run of at least
    MIN_IN_PLACE items is read in place, the rest gathered, and attention is still each item's own."""
    monkeypatch.setattr(plan_module, "MIN_IN_PLACE", 2)
    check_read_plan(slots, [1] * len(slots), None, kinds)


def check_read_plan(slots, keys, units, kinds):
    engine = Engine(tiny_model(routing="expert_choice"), max_batch=8)
    r = engine.runner
    r.allocate(8, 16, 12)
    g = torch.Generator().manual_seed(0)
    r.kv.copy_(torch.randn(r.kv.shape, generator=g))
    M, G, H, D = 8, r.G, r.H, r.D
    table = [[2, 4, 1], [5, 3, 6]]  # two layers: the cache slot of each key
    N = len(slots)
    units = units or [(i, 1) for i in range(N)]
    vis = torch.randint(1, 10, (N,), generator=g).tolist()
    for s, c in units:  # a chunk's items see one more entry each, as consecutive tokens do
        vis[s:s + c] = [vis[s] + k for k in range(c)]
    items = plan_module.Items(rows=list(range(N)), pos=[0] * N, slots=slots, keys=keys, widx=[-1] * N, vis=vis,
                              units=units)
    p = plan_module.build_pass(items, table, M, r.device, r.arange)
    assert p.read.kinds == kinds
    covered = []
    for part in p.read.parts:
        members = list(range(N)) if part.idx is None else part.idx.tolist()
        assert part.L == max(vis[i] for i in members)
        covered += members
    assert sorted(covered) == list(range(N))
    q = torch.randn(N, G, H // G, D, generator=g)
    for j in range(2):
        rows = [table[j][k] * M + s for k, s in zip(keys, slots)]
        torch.testing.assert_close(plan_module.attend(r.kv, q, p.read, j), per_item_attention(r.kv, q, rows, vis))


# ---- trained weights --------------------------------------------------------------------------------


SENTENCES = ["The history of the city begins in the", "To be, or not to be, that is the question:",
             "Water boils at a temperature of", "KING. My lord, the", "In 1905 Einstein published"]


@pytest.mark.parametrize("folder", shipped_checkpoints(), ids=lambda p: p.name)
def test_engine_equals_generate_on_shipped_checkpoints(folder):
    """Trained weights make every token depend on attention (a random tiny model often does not):
    the engine's tokens and depths equal a lone `generate` per prompt, with requests queued for
    slots, more in flight than rows per pass and prompts in several chunks."""
    model, tokenizer = mor.load(folder, device="cpu")
    model.generation_config.eos_token_id = None  # decode exactly n tokens in both
    prompts = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in SENTENCES]
    news = [12, 7, 12, 9, 12]
    ref = alone(model, prompts, news)
    assert Engine(model, max_batch=3, max_inflight=4).generate(prompts, max_new_tokens=news) == ref
    results = Engine(model, max_batch=8, max_inflight=2, prefill_chunk=4).generate(prompts, max_new_tokens=news)
    assert results == ref
    assert all(len(tokens) == n for (tokens, _), n in zip(results, news))


def test_traced_steps_climb_one_at_a_time_to_each_token_s_depth():
    """trace_steps: every request's new tokens go 1, 2, ..., depth and start again at 1 for the
    next token, and the depths read off the trace are the ones the engine reports."""
    model = tiny_model(routing="expert_choice")
    prompts = torch.randint(0, 99, (7, 5), generator=torch.Generator().manual_seed(3)).tolist()
    engine = Engine(model, max_batch=3)
    per_request: dict[int, list[int]] = {}
    for event in engine.stream(prompts, max_new_tokens=6, trace_steps=True):
        assert len(event.block_steps) == event.block_items - (event.prefill_rows if event.stage != EXIT else 0)
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
