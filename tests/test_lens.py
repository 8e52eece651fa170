"""The recursion lens and "where depth helped" (mor/analysis/lens.py), against slow, obvious references.

The batched read-out (every step of every token through the coda in one pass, the context's keys
and values shared) is checked against a per-token recomputation that runs the coda of
tests/reference.py once per (token, step) with only that token's state replaced; at the token's own
depth it must equal the model's logits. Then the whole-text functions on tiny models with a tiny
tokenizer and a 16-token context (so texts run in several windows), and `mor lens` / `mor gain` on
every shipped checkpoint.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import mor
from mor import analysis
from mor.analysis.lens import prediction_windows
from mor.cli import main
from mor.data import train_tokenizer

from helpers import ROUTINGS, shipped_checkpoints, tiny_model
from reference import _layer, _rms

# Every routing, the sharings without a coda layer (cycle, sequence), shared KV, and N_r = 1 (vanilla).
CASES = {
    **{routing: dict(routing=routing) for routing in ROUTINGS},
    "cycle": dict(sharing="cycle"),
    "sequence-token-choice": dict(sharing="sequence", routing="token_choice"),
    "kv-shared": dict(kv_cache="shared"),
    "vanilla": dict(routing="none", num_recursions=1, sharing="cycle"),
}
TEXT = ("The cat sat on the mat. The dog sat on the log, and then the cat and the dog ran into the garden "
        "where the sun was warm.")


@torch.no_grad()
def reference_readout(model, states: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """(R, B, T, V): for every step r and token i, the coda run causally (dense, tests/reference.py)
    over the full pass's coda input with only row i replaced by its step-r state, read at row i."""
    cfg, m = model.config, model.model
    B, T, _ = states[0].shape
    causal = torch.ones(T, T, dtype=torch.bool).tril()[None].expand(B, T, T)
    out = torch.empty(len(states), B, T, cfg.vocab_size)
    for r, state in enumerate(states):
        for i in range(T):
            h = states[-1].clone()
            h[:, i] = state[:, i]
            for u in m.coda:
                h, _ = _layer(m.layers[u], h, causal, cfg)
            out[r, :, i] = _rms(h[:, i], m.norm.weight, cfg.rms_norm_eps) @ model.lm_head.weight.T
    return out


def pass_with_states(model, ids, **kwargs):
    with torch.no_grad():
        return model.model(ids, output_step_states=True, **kwargs)


def at_depth(per_step: torch.Tensor, depths: torch.Tensor) -> torch.Tensor:
    """(R, B, T, V) -> (B, T, V): each token's row at step = its depth."""
    index = (depths - 1)[None, :, :, None].expand(1, -1, -1, per_step.shape[-1])
    return per_step.gather(0, index)[0]


# ---- the batched read-out ---------------------------------------------------------------------

SETTINGS = {"causal": {}, "capacity": dict(routing_mode="capacity"), "cap-2": dict(depth_cap=2),
            "fixed-1": dict(fixed_depth=1)}


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("case", CASES)
def test_readout_matches_per_token_recomputation(case, setting, ids):
    model = tiny_model(**CASES[case])
    if model.config.num_recursions == 1 and setting != "causal":
        pytest.skip("one recursion: no depth setting to vary")
    out = pass_with_states(model, ids, **SETTINGS[setting])
    fast = analysis.readout_logits(model, out.step_states)
    assert fast.shape == (model.config.num_recursions, *ids.shape, model.config.vocab_size)
    assert (fast - reference_readout(model, out.step_states)).abs().max() < 1e-4


@pytest.mark.parametrize("setting", SETTINGS)
@pytest.mark.parametrize("case", CASES)
def test_lens_at_the_tokens_depth_is_the_models_own_logits(case, setting, ids):
    model = tiny_model(**CASES[case])
    if model.config.num_recursions == 1 and setting != "causal":
        pytest.skip("one recursion: no depth setting to vary")
    out = pass_with_states(model, ids, **SETTINGS[setting])
    per_step = analysis.readout_logits(model, out.step_states)
    with torch.no_grad():
        full = model(ids, **SETTINGS[setting])
    assert torch.equal(out.depths, full.depths)
    assert (at_depth(per_step, out.depths) - full.logits).abs().max() < 1e-4
    # After its exit a token's state no longer changes, so neither does its prediction.
    R = model.config.num_recursions
    for r in range(R):
        done = (out.depths <= r + 1)[..., None]  # exited at or before step r + 1
        assert ((per_step[r] - full.logits).abs() * done).max() < 1e-4
    if R > 1 and case != "none" and setting in ("causal", "capacity"):  # routers give different depths
        assert len(set(out.depths.flatten().tolist())) > 1


def test_earlier_steps_predict_differently(ids):
    """The lens is not the final prediction repeated: a token that took 3 steps reads differently at step 1."""
    model = tiny_model(routing="none")
    out = pass_with_states(model, ids)
    per_step = analysis.readout_logits(model, out.step_states)
    assert (per_step[0] - per_step[-1]).abs().max() > 1e-2


# ---- whole texts with a tokenizer ----------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A 300-token byte-level BPE trained on a few sentences (so tiny models can read text)."""
    corpus = tmp_path_factory.mktemp("tok") / "corpus.txt"
    corpus.write_text((TEXT + " A bird flew over the house and sang.\n\n") * 20, encoding="utf-8")
    return train_tokenizer([corpus], vocab_size=300)


def text_model(**kwargs):
    """A tiny model over the tokenizer's 300 ids with a 16-token context: TEXT runs in several windows."""
    return tiny_model(vocab_size=300, max_position_embeddings=16, **kwargs)


def test_prediction_windows_tile_the_text_where_trace_scores_the_next_token():
    for n, context in [(1, 16), (15, 16), (16, 16), (17, 16), (100, 16), (9, 2), (50, 7)]:
        plan = analysis.sliding_windows(n, context)
        windows = prediction_windows(n, context)
        covered = [i for _, _, keep_from, keep_to in windows for i in range(keep_from, keep_to)]
        assert covered == list(range(n))
        for (start, end, first), (s, e, keep_from, keep_to) in zip(plan, windows):
            assert (s, e) == (start, end) and start <= keep_from
            for i in range(keep_from, keep_to):  # i predicts i + 1, which this window scores
                assert first <= i + 1 < end or i == n - 1


@pytest.mark.parametrize("case", ["expert_choice", "token_choice", "none", "vanilla"])
def test_lens_of_a_long_text(tokenizer, case):
    model = text_model(**CASES[case])
    R = model.config.num_recursions
    result = analysis.lens(model, tokenizer, TEXT, top_k=4, checkpoint="tiny")
    out = result.to_json()
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) > 2 * 16 and out["windows"] > 2
    assert {"checkpoint", "num_recursions", "tokens", "steps"} <= set(out)
    assert out["tokens"] == mor.data.token_texts(tokenizer, ids) and out["num_recursions"] == R
    assert json.loads(json.dumps(out)) == out  # plain JSON
    trace = analysis.trace(model, tokenizer, TEXT)
    for i, row in enumerate(out["steps"]):
        assert [s["step"] for s in row] == list(range(1, R + 1))
        assert [s["active"] for s in row] == [r <= out["depths"][i] for r in range(1, R + 1)]
        for s in row:
            probs = [p for _, p in s["top"]]
            assert len(probs) == 4 and probs == sorted(probs, reverse=True) and sum(probs) <= 1 + 1e-6
        if i == len(ids) - 1:
            assert all(s["next_token_prob"] is None and s["next_token_nll"] is None for s in row)
            continue
        # At its depth the lens is the model's own prediction: the NLL `mor trace` gives the next token.
        assert row[out["depths"][i] - 1]["next_token_nll"] == pytest.approx(trace.token_nll[i + 1], abs=1e-4)
        for s in row:
            assert s["next_token_prob"] == pytest.approx(math.exp(-s["next_token_nll"]), rel=1e-4)
    # Each position read in its window, computed here window by window from the model itself.
    for start, end, keep_from, keep_to in prediction_windows(len(ids), 16):
        x = torch.tensor([ids[start:end]])
        window = pass_with_states(model, x)
        logits = analysis.readout_logits(model, window.step_states)[:, 0]  # (R, T, V)
        assert out["depths"][keep_from:keep_to] == window.depths[0, keep_from - start:keep_to - start].tolist()
        for i in range(keep_from, keep_to):
            for r in range(R):
                top1 = int(logits[r, i - start].argmax())
                assert out["steps"][i][r]["top"][0][0] == mor.data.token_texts(tokenizer, [top1])[0]


def test_lens_rejects_bad_top_k_and_handles_empty_text(tokenizer):
    model = text_model()
    with pytest.raises(ValueError, match="top_k=0 is outside 1..300"):
        analysis.lens(model, tokenizer, TEXT, top_k=0)
    with pytest.raises(ValueError, match="top_k=301"):
        analysis.lens(model, tokenizer, TEXT, top_k=301)
    empty = analysis.lens(model, tokenizer, "").to_json()
    assert empty["tokens"] == [] and empty["steps"] == [] and empty["windows"] == 0


@pytest.mark.parametrize("case", ["expert_choice", "token_choice", "none", "vanilla"])
def test_depth_gain_is_trace_at_every_cap(tokenizer, case):
    model = text_model(**CASES[case])
    R = model.config.num_recursions
    result = analysis.depth_gain(model, tokenizer, TEXT, checkpoint="tiny").to_json()
    n = len(result["tokens"])
    assert result["next_token_nll"][-1] is None and result["gain"][-1] is None
    assert result["depths"] == analysis.trace(model, tokenizer, TEXT).depths
    for k in range(1, R + 1):
        capped = analysis.trace(model, tokenizer, TEXT, depth_cap=k)
        for i in range(n - 1):
            assert result["next_token_nll"][i][k - 1] == pytest.approx(capped.token_nll[i + 1], abs=1e-5)
    full = [row[-1] for row in result["next_token_nll"][:-1]]
    for row, nll, last in zip(result["gain"][:-1], result["next_token_nll"][:-1], full):
        assert row == pytest.approx([v - last for v in nll], abs=2e-6) and row[-1] == 0
    assert set(result["most_changed"]) == {str(k) for k in range(1, R)}
    if R > 1:
        assert any(abs(g) > 1e-3 for row in result["gain"][:-1] for g in row[:-1])  # the caps change something


def test_most_changed_ranks_by_gain(tokenizer):
    model = text_model(routing="none")
    result = analysis.depth_gain(model, tokenizer, TEXT)
    changed = analysis.most_changed(result, 1, count=5)
    gains = [row[0] for row in result.gain if row is not None]
    assert [r["gain"] for r in changed["gained"]] == sorted((g for g in gains if g > 0), reverse=True)[:5]
    assert [r["gain"] for r in changed["lost"]] == sorted(g for g in gains if g < 0)[:5]
    for r in changed["gained"] + changed["lost"]:
        assert r["token"] == result.tokens[r["position"]]
        assert r["gain"] == pytest.approx(r["nll_at_cap"] - r["nll_full_depth"], abs=2e-6)
    assert analysis.most_changed(result.to_json(), 1, count=5) == changed  # from the JSON too
    with pytest.raises(ValueError, match="cap=4 is outside 1..3"):
        analysis.most_changed(result, 4)


# ---- shipped checkpoints and the CLI -----------------------------------------------------------

SHIPPED = [f.name for f in shipped_checkpoints()]


def run_json(capsys, *argv) -> dict:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_cli_lens_and_gain_on_every_shipped_checkpoint(name, capsys):
    text = "To be, or not to be, that is the question."
    model, tokenizer = mor.load(name, device="cpu")
    R = model.config.num_recursions
    out = run_json(capsys, "lens", "--checkpoint", name, "--text", text, "--top", "3", "--json", "--device", "cpu")
    expected = analysis.lens(model, tokenizer, text, top_k=3, checkpoint=name).to_json()
    assert {k: v for k, v in out.items() if k != "seconds"} == {k: v for k, v in expected.items() if k != "seconds"}
    assert out["num_recursions"] == R and all(len(row) == R for row in out["steps"])  # vanilla: one step
    trace = analysis.trace(model, tokenizer, text)
    assert out["depths"] == trace.depths
    for i, row in enumerate(out["steps"][:-1]):
        assert row[out["depths"][i] - 1]["next_token_nll"] == pytest.approx(trace.token_nll[i + 1], abs=1e-4)

    gain = run_json(capsys, "gain", "--checkpoint", name, "--text", text, "--json", "--device", "cpu")
    assert all(len(row) == R for row in gain["next_token_nll"][:-1])
    assert [row[-1] for row in gain["next_token_nll"][:-1]] == pytest.approx(trace.token_nll[1:], abs=1e-5)


def test_cli_lens_reports_bad_input(capsys):
    assert main(["lens", "--checkpoint", SHIPPED[0]]) == 2
    assert "give --text or --text-file" in capsys.readouterr().err
    assert main(["lens", "--checkpoint", SHIPPED[0], "--text", "hi", "--depth-cap", "9"]) == 2
    assert "depth_cap=9 is outside" in capsys.readouterr().err
