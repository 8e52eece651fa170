"""The model package: sharing, routing, caches, causality, test-time depth, baselines."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from helpers import KV_CACHES, ROUTINGS, SHARINGS, tiny_config, tiny_model
from mor import MoRConfig, MoRForCausalLM
from mor.model.policy import DepthPolicy
from reference import reference_forward

ALL_COMBOS = list(itertools.product(ROUTINGS, SHARINGS, KV_CACHES))
combo_ids = ["-".join(c) for c in ALL_COMBOS]


# ---- forward against an independent dense computation -----------------------------------------

@pytest.mark.parametrize("routing,sharing,kv_cache", ALL_COMBOS, ids=combo_ids)
def test_forward_matches_dense_reference(routing, sharing, kv_cache, ids):
    model = tiny_model(routing=routing, sharing=sharing, kv_cache=kv_cache)
    with torch.no_grad():
        out = model(ids)
    ref_logits, ref_depths = reference_forward(model, ids)
    assert torch.equal(out.depths, ref_depths)
    assert (out.logits - ref_logits).abs().max() < 1e-4
    if routing != "none":  # random routers must actually vary the depth, or the test proves little
        assert out.depths.unique().numel() > 1


# ---- incremental decoding == full forward --------------------------------------------------------

@pytest.mark.parametrize("routing,sharing,kv_cache", ALL_COMBOS, ids=combo_ids)
def test_token_by_token_decoding_matches_full_forward(routing, sharing, kv_cache, ids):
    model = tiny_model(routing=routing, sharing=sharing, kv_cache=kv_cache)
    with torch.no_grad():
        full = model(ids)
        cache = model.model.new_cache(ids.shape[0])
        # a prefill of 5 tokens, then one token at a time
        steps = [model(ids[:, :5], cache=cache)]
        steps += [model(ids[:, t:t + 1], cache=cache) for t in range(5, ids.shape[1])]
    logits = torch.cat([s.logits for s in steps], 1)
    depths = torch.cat([s.depths for s in steps], 1)
    assert torch.equal(depths, full.depths)
    assert (logits - full.logits).abs().max() < 1e-4


def test_left_padded_batch_matches_unpadded_rows():
    model = tiny_model(routing="expert_choice")
    torch.manual_seed(3)
    a, b = torch.randint(0, 99, (1, 10)), torch.randint(0, 99, (1, 6))
    batch = torch.cat([a, torch.cat([torch.zeros(1, 4, dtype=torch.long), b], 1)])
    mask = torch.ones_like(batch)
    mask[1, :4] = 0
    with torch.no_grad():
        out = model(batch, attention_mask=mask)
        alone_a, alone_b = model(a), model(b)
    assert (out.logits[0] - alone_a.logits[0]).abs().max() < 1e-4
    assert (out.logits[1, 4:] - alone_b.logits[0]).abs().max() < 1e-4
    assert torch.equal(out.depths[1, 4:], alone_b.depths[0])
    assert (out.depths[1, :4] == 0).all()


# ---- causality --------------------------------------------------------------------------------

@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("kv_cache", KV_CACHES)
def test_appending_text_changes_nothing_before_it(routing, kv_cache):
    model = tiny_model(routing=routing, kv_cache=kv_cache)
    torch.manual_seed(4)
    prefix, suffix = torch.randint(0, 99, (1, 12)), torch.randint(0, 99, (1, 9))
    with torch.no_grad():
        short, long = model(prefix), model(torch.cat([prefix, suffix], 1))
    assert torch.equal(short.depths, long.depths[:, :12])
    assert (short.logits - long.logits[:, :12]).abs().max() < 1e-5


def test_capacity_mode_is_not_causal_but_keeps_capacities():
    """Top-k routing looks at the whole sequence: it is the training rule, kept for analysis."""
    model = tiny_model(routing="expert_choice")
    ids = torch.randint(0, 99, (1, 30))
    with torch.no_grad():
        out = model(ids, routing_mode="capacity")
    counts = [(out.depths >= r).sum().item() for r in (1, 2, 3)]
    assert counts == [30, 20, 10]  # ceil(capacity x 30) for capacities 1, 2/3, 1/3
    with pytest.raises(ValueError, match="capacity"):
        model(ids, routing_mode="capacity", cache=model.model.new_cache(1))


# ---- test-time depth control --------------------------------------------------------------------

@pytest.mark.parametrize("routing", ROUTINGS)
def test_depth_cap_and_fixed_depth(routing, ids):
    model = tiny_model(routing=routing)
    with torch.no_grad():
        assert (model(ids, depth_cap=1).depths == 1).all()
        free = model(ids).depths
        assert torch.equal(model(ids, depth_cap=2).depths, free.clamp(max=2))
        for k in (1, 2, 3):
            assert (model(ids, fixed_depth=k).depths == k).all()
        ref_logits, ref_depths = reference_forward(model, ids, depth_cap=2)
        out = model(ids, depth_cap=2)
    assert torch.equal(out.depths, ref_depths) and (out.logits - ref_logits).abs().max() < 1e-4
    with pytest.raises(ValueError, match="outside 1..3"):
        model(ids, depth_cap=4)
    with pytest.raises(ValueError, match="not both"):
        model(ids, depth_cap=1, fixed_depth=2)


@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("depth", [{}, {"depth_cap": 2}, {"fixed_depth": 1}], ids=["free", "cap2", "fixed1"])
def test_depth_policy_per_token_steps_follow_the_rule(routing, depth):
    """The engine asks the depth policy with one step per item, the model with one step for all
    tokens: both forms equal the rule written out here (causal threshold, cap, fixed depth,
    token-choice depth), including items past the last step (step N_r: they exit)."""
    cfg = tiny_config(routing=routing, router_threshold=[0.3, 0.7])  # unequal: a wrong step index shows
    policy = DepthPolicy(cfg, **depth)
    g = torch.Generator().manual_seed(0)
    steps = torch.randint(0, 4, (300,), generator=g)  # 0-based step each token asks about
    logits = 3 * torch.randn(300, generator=g)
    tc_logits = torch.randn(300, 3, generator=g)
    target = policy.token_choice(tc_logits).target
    cap = depth.get("fixed_depth") or depth.get("depth_cap") or 3
    if routing == "token_choice":
        chosen = tc_logits.argmax(-1) + 1
        want_target = torch.full_like(chosen, depth["fixed_depth"]) if "fixed_depth" in depth else chosen.clamp(max=cap)
        assert torch.equal(target, want_target)
        want = steps < target
    elif routing == "expert_choice" and "fixed_depth" not in depth:
        thr = torch.tensor([0.0, 0.3, 0.7, 1.0])[steps]  # step 0 keeps everyone; step 3 is past the last
        want = (steps < cap) & ((steps == 0) | (torch.sigmoid(logits) > thr))
    else:
        want = steps < cap
    assert torch.equal(policy.takes_step(steps, logits=logits, target=target), want)
    for r in range(4):
        on = steps == r
        one = policy.takes_step(r, torch.ones(int(on.sum()), dtype=torch.bool), logits=logits[on], target=target[on])
        assert torch.equal(one, want[on])
    assert want.any() and not want.all()


def test_router_scores_nan_where_not_evaluated(ids):
    model = tiny_model(routing="expert_choice")
    with torch.no_grad():
        out = model(ids)
    scores, depths = out.router_scores, out.depths
    assert scores.shape == (*ids.shape, 3)
    assert not scores[..., 0].isnan().any()
    # step r+1's router runs exactly on the tokens that took step r
    for r in (1, 2):
        assert torch.equal(~scores[..., r].isnan(), depths >= r)
    assert tiny_model(routing="none")(ids).router_scores.isnan().all()
    tc = tiny_model(routing="token_choice")(ids).router_scores
    assert torch.allclose(tc.sum(-1), torch.ones(ids.shape))


# ---- baselines against transformers' Llama --------------------------------------------------------

def unrolled_llama(model: MoRForCausalLM) -> LlamaForCausalLM:
    """A LlamaForCausalLM with L separate layers, each a copy of the MoR layer it stands for."""
    cfg = model.config
    prelude, steps, coda = cfg.layer_plan()
    plan = prelude + [u for s in steps for u in s] + coda
    llama = LlamaForCausalLM(LlamaConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=len(plan), num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, rms_norm_eps=cfg.rms_norm_eps, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        max_position_embeddings=cfg.max_position_embeddings)).eval()
    state = {"model.embed_tokens.weight": model.model.embed_tokens.weight, "model.norm.weight": model.model.norm.weight}
    for e, u in enumerate(plan):
        for name, p in model.model.layers[u].named_parameters():
            state[f"model.layers.{e}.{name}"] = p
    missing, unexpected = llama.load_state_dict({k: v.detach().clone() for k, v in state.items()}, strict=False)
    assert set(missing) <= {"lm_head.weight"} and not unexpected, (missing, unexpected)
    llama.tie_weights()
    return llama


@pytest.mark.parametrize("sharing", SHARINGS)
@pytest.mark.parametrize("num_recursions", [1, 3])
def test_recursive_baseline_equals_unrolled_llama(sharing, num_recursions, ids):
    model = tiny_model(routing="none", sharing=sharing, num_recursions=num_recursions)
    llama = unrolled_llama(model)
    with torch.no_grad():
        ours, theirs = model(ids).logits, llama(ids).logits
    assert (ours - theirs).abs().max() < 1e-4
    assert (model(ids).depths == num_recursions).all()


# ---- parameter sharing ----------------------------------------------------------------------------

@pytest.mark.parametrize("sharing,layers,recursions,unique", [
    ("cycle", 6, 3, 2), ("sequence", 6, 3, 2), ("middle_cycle", 8, 3, 4), ("middle_sequence", 8, 3, 4),
    ("cycle", 6, 1, 6), ("middle_cycle", 10, 4, 4),
])
def test_unique_parameter_counts_match_hand_count(sharing, layers, recursions, unique):
    cfg = tiny_config(sharing=sharing, routing="none", num_hidden_layers=layers, num_recursions=recursions)
    model = MoRForCausalLM(cfg)
    C, I, V, D = 32, 64, 99, 8
    attn = C * 4 * D + 2 * C * 2 * D + 4 * D * C  # q, k, v (2 kv heads), o
    layer = attn + 3 * C * I + 2 * C  # + SwiGLU + two norms
    base = V * C + C  # tied embedding, final norm
    assert cfg.num_unique_layers == unique
    assert model.num_parameters() == base + unique * layer
    assert model.num_effective_parameters() == base + layers * layer


@pytest.mark.parametrize("sharing,expected", [
    ("cycle", [[0, 1], [0, 1], [0, 1]]),
    ("sequence", [[0, 0], [0, 1], [1, 1]]),
    ("middle_cycle", [[1, 2], [1, 2], [1, 2]]),
    ("middle_sequence", [[1, 1], [1, 2], [2, 2]]),
])
def test_layer_plan_follows_the_paper(sharing, expected):
    prelude, steps, coda = tiny_config(sharing=sharing).layer_plan()
    assert steps == expected
    assert (prelude, coda) == (([0], [3]) if sharing.startswith("middle") else ([], []))


def test_shared_layers_share_storage_and_gradients():
    model = tiny_model(routing="none", sharing="cycle")
    ptrs = {p.data_ptr() for p in model.parameters()}
    assert len(ptrs) == len(list(model.parameters()))  # no hidden copies
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    # a change to the one unique layer changes every recursion: zero its MLP, output changes
    ids = torch.randint(0, 99, (1, 8))
    before = model(ids).logits
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight.zero_()
    assert not torch.allclose(before, model(ids).logits)


# ---- configs --------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,message", [
    (dict(sharing="ring"), "sharing='ring' is not supported"),
    (dict(routing="soft"), "routing='soft'"),
    (dict(kv_cache="paged"), "kv_cache='paged'"),
    (dict(num_hidden_layers=9), "multiple of num_recursions"),
    (dict(sharing="cycle", num_hidden_layers=7), "multiple of num_recursions"),
    (dict(capacities=[1.0, 0.5]), "one per recursion"),
    (dict(capacities=[0.9, 0.5, 0.2]), "capacities\\[0\\] must be 1.0"),
    (dict(capacities=[1.0, 0.3, 0.5]), "not increase"),
    (dict(routing="expert_choice", num_recursions=1, num_hidden_layers=4), "num_recursions >= 2"),
    (dict(routing="token_choice", capacities=[1.0, 0.5, 0.2]), "only apply to routing='expert_choice'"),
    (dict(router_threshold=[0.5]), "one value per step"),
    (dict(num_key_value_heads=3), "multiple of num_key_value_heads"),
])
def test_invalid_configs_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        tiny_config(**kwargs)


def test_default_capacities_and_alpha():
    cfg = MoRConfig(num_recursions=4, num_hidden_layers=10)
    assert cfg.capacities == [1.0, 0.75, 0.5, 0.25] and cfg.router_alpha == 0.1
    assert MoRConfig(routing="token_choice").router_alpha == 1.0


# ---- training signal ------------------------------------------------------------------------------

@pytest.mark.parametrize("routing", ["expert_choice", "token_choice"])
def test_training_forward_gives_router_gradients(routing, ids):
    model = tiny_model(routing=routing, router_scale=1.0).train()
    out = model(ids, labels=ids)
    assert out.aux_loss is not None and out.aux_loss > 0
    assert torch.isclose(out.loss, out.lm_loss + out.aux_loss)
    out.loss.backward()
    for router in model.model.routers[1:] if routing == "expert_choice" else model.model.routers:
        assert router.linear.weight.grad.abs().sum() > 0


def test_straight_through_gate_keeps_update_size(ids):
    scaled = tiny_model(routing="expert_choice", router_gate="scaled")
    st = tiny_model(routing="expert_choice", router_gate="straight_through")
    st.load_state_dict(scaled.state_dict())
    baseline = tiny_model(routing="none")
    baseline.load_state_dict({k: v for k, v in scaled.state_dict().items() if "router" not in k}, strict=False)
    with torch.no_grad():  # straight-through at full depth equals the ungated recursive baseline
        assert (st(ids, fixed_depth=3).logits - baseline(ids).logits).abs().max() < 1e-4
        assert (scaled(ids, fixed_depth=3).logits - baseline(ids).logits).abs().max() > 1e-3


@pytest.mark.parametrize("routing", ROUTINGS)
def test_step_states(routing, ids):
    """The state after step r stops changing once a token has exited (a depth-1 token never changes
    after step 1), and asking for the states changes nothing else."""
    model = tiny_model(routing=routing)
    R = model.config.num_recursions
    with torch.no_grad():
        base = model.model(ids, output_step_states=True)
        assert len(base.step_states) == R
        for r in range(1, R):
            exited = base.depths <= r  # took at most r steps: no change from step r to r + 1
            assert torch.equal(base.step_states[r][exited], base.step_states[r - 1][exited])
        changed = (base.step_states[-1] != base.step_states[0]).any(-1)
        assert torch.equal(changed & (base.depths == 1), torch.zeros_like(changed))
        plain = model.model(ids)
        assert plain.step_states is None and torch.equal(plain.last_hidden_state, base.last_hidden_state)
