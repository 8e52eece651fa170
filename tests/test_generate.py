"""transformers' own `generate` driving MoR: its features, `pipeline`, streamers, depths, bad arguments.

`MoRForCausalLM` is a `GenerationMixin`: greedy and sampled decoding, beam search, logits
processors and stopping criteria are transformers' code; the cache is `MoRCache`. Each feature is
checked on a shipped checkpoint against an independent computation (full forwards, hand-applied
processors, the engine), and greedy tokens and depths equal the continuous-batching engine's for
every routing x sharing x KV combination."""

from __future__ import annotations

import itertools
import threading

import pytest
import torch
from transformers import TextIteratorStreamer, TextStreamer, pipeline

import mor
from helpers import KV_CACHES, ROUTINGS, SHARINGS, generated, tiny_model
from mor.inference.engine import Engine
from mor.model.modeling import MoRGenerateBeamOutput, MoRGenerateOutput
from reference import reference_forward

ALL_COMBOS = list(itertools.product(ROUTINGS, SHARINGS, KV_CACHES))
PROMPTS = ["To be, or not to be", "The king", "Water boils at a temperature of"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small models run fastest on one thread (and the suite stays quick on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shipped(checkpoint_name):
    """The preferred routed checkpoint (mor-ec-r3: expert-choice, 3 recursions) with a left-padding
    tokenizer, end-of-text off so every call decodes its full budget unless a test asks otherwise."""
    model, tokenizer = mor.load(checkpoint_name, device="cpu")
    model.generation_config.eos_token_id = None
    tokenizer.padding_side = "left"
    return model, tokenizer


def left_padded(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    T = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for b, p in enumerate(prompts):
        ids[b, T - len(p):], mask[b, T - len(p):] = torch.tensor(p), 1
    return ids, mask


def new_rows(out, prompt_len: int) -> list[tuple[list[int], list[int]]]:
    """(new tokens, depths) per row of a `return_dict_in_generate` output."""
    return [(row[prompt_len:].tolist(), d.tolist()) for row, d in zip(out.sequences, out.depths)]


@torch.no_grad()
def decoded_depths(model, seq: torch.Tensor, mask: torch.Tensor, **depth) -> torch.Tensor:
    """Depths of seq's columns after the prompt (mask's width), fed token by token through a
    MoRCache: the incremental path, independent of the one full forward generate reads depths from."""
    P = mask.shape[1]
    cache = model.model.new_cache(seq.shape[0])
    model(seq[:, :P], attention_mask=mask, cache=cache, **depth)
    depths = []
    for t in range(P, seq.shape[1]):
        mask = torch.cat([mask, mask.new_ones(seq.shape[0], 1)], 1)
        depths.append(model(seq[:, t:t + 1], attention_mask=mask, cache=cache, **depth).depths)
    return torch.cat(depths, 1)


# ---- the same tokens and depths as the engine, every combination ---------------------------------

@pytest.mark.parametrize("routing,sharing,kv_cache", ALL_COMBOS, ids=["-".join(c) for c in ALL_COMBOS])
def test_generate_equals_engine_for_every_combination(routing, sharing, kv_cache):
    """One left-padded batch through transformers' generate against the engine (3 slots refilled)."""
    model = tiny_model(routing=routing, sharing=sharing, kv_cache=kv_cache)
    g = torch.Generator().manual_seed(5)
    prompts = [torch.randint(0, 99, (k,), generator=g).tolist() for k in (4, 11, 1, 7, 9)]
    ids, mask = left_padded(prompts)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=7, return_dict_in_generate=True)
    assert isinstance(out, MoRGenerateOutput) and out.depths.shape == (5, 7)
    rows = new_rows(out, ids.shape[1])
    assert rows == Engine(model, max_batch=3).generate(prompts, 7)
    depths = {d for _, ds in rows for d in ds}
    assert depths == {3} if routing == "none" else len(depths) > 1  # the random routers vary the depth


@pytest.mark.parametrize("routing", ROUTINGS)
@pytest.mark.parametrize("depth", [{}, {"depth_cap": 2}], ids=["free", "cap2"])
def test_greedy_tokens_and_depths_equal_a_dense_reference(routing, depth):
    """Each greedy token is the argmax of the independent dense forward over its prefix, and the
    depths are that forward's depths."""
    model = tiny_model(routing=routing)
    prompt = torch.randint(0, 99, (1, 7), generator=torch.Generator().manual_seed(3))
    out = model.generate(prompt, max_new_tokens=6, return_dict_in_generate=True, **depth)
    seq = out.sequences
    ref_logits, ref_depths = reference_forward(model, seq, **depth)
    assert torch.equal(seq[0, 7:], ref_logits[0, 6:-1].argmax(-1))
    assert torch.equal(out.depths, ref_depths[:, 7:])
    assert torch.equal(out.depths, decoded_depths(model, seq, torch.ones_like(prompt), **depth))


def test_generate_decodes_causally_in_training_mode_too():
    model = tiny_model(routing="expert_choice")
    prompt = torch.randint(0, 99, (2, 5), generator=torch.Generator().manual_seed(8))
    want = model.generate(prompt, max_new_tokens=5, return_dict_in_generate=True)
    model.train()
    got = model.generate(prompt, max_new_tokens=5, return_dict_in_generate=True)
    assert model.training and torch.equal(got.sequences, want.sequences) and torch.equal(got.depths, want.depths)


# ---- features on a shipped checkpoint -------------------------------------------------------------

def test_left_padded_batch_equals_each_prompt_alone(shipped):
    model, tok = shipped
    enc = tok(PROMPTS, return_tensors="pt", padding=True)
    assert (enc.attention_mask[:, 0] == 0).any()  # some rows really are padded
    out = model.generate(**enc, max_new_tokens=10, return_dict_in_generate=True)
    alone = [generated(model, tok(t)["input_ids"], 10) for t in PROMPTS]
    assert new_rows(out, enc.input_ids.shape[1]) == alone
    prompts = [tok(t)["input_ids"] for t in PROMPTS]
    assert alone == Engine(model, max_batch=2).generate(prompts, 10)


@pytest.mark.parametrize("depth", [{"depth_cap": 1}, {"depth_cap": 2}, {"fixed_depth": 3}])
def test_depth_options_reach_every_forward(shipped, depth):
    model, tok = shipped
    prompts = [tok(t)["input_ids"] for t in PROMPTS]
    ids, mask = left_padded(prompts)
    out = model.generate(ids, attention_mask=mask, max_new_tokens=8, return_dict_in_generate=True, **depth)
    rows = new_rows(out, ids.shape[1])
    assert rows == Engine(model, max_batch=3, **depth).generate(prompts, 8)
    all_depths = out.depths.unique().tolist()
    assert all_depths == [depth["fixed_depth"]] if "fixed_depth" in depth else max(all_depths) <= depth["depth_cap"]
    if depth == {"depth_cap": 1}:  # a shallower model writes other text: the option is not ignored
        assert out.sequences.tolist() != model.generate(ids, attention_mask=mask, max_new_tokens=8).tolist()


def test_sampling_is_seeded_matches_the_engine_and_top_k_1_is_greedy(shipped):
    model, tok = shipped
    ids = tok(PROMPTS[0], return_tensors="pt").input_ids
    kw = dict(do_sample=True, temperature=0.9, top_k=40, top_p=0.95, max_new_tokens=12)
    runs = []
    for seed in (3, 3, 4):
        torch.manual_seed(seed)
        runs.append(model.generate(ids, **kw)[0, ids.shape[1]:].tolist())
    assert runs[0] == runs[1] != runs[2]
    (engine_tokens, _), = Engine(model).generate([ids[0].tolist()], 12, seed=3, do_sample=True, temperature=0.9,
                                                 top_k=40, top_p=0.95)
    assert engine_tokens == runs[0]
    torch.manual_seed(0)
    assert torch.equal(model.generate(ids, do_sample=True, top_k=1, max_new_tokens=6),
                       model.generate(ids, max_new_tokens=6))


def test_beam_search_scores_and_depths(shipped):
    """length_penalty=0: a beam's score is the sum of its tokens' log-probabilities, recomputed
    here by one full forward per returned sequence; the depths equal token-by-token decoding."""
    model, tok = shipped
    enc = tok(PROMPTS[:2], return_tensors="pt", padding=True)
    P = enc.input_ids.shape[1]
    out = model.generate(**enc, max_new_tokens=6, num_beams=4, num_return_sequences=2, length_penalty=0.0,
                         output_scores=True, return_dict_in_generate=True)
    assert isinstance(out, MoRGenerateBeamOutput) and out.sequences.shape == (4, P + 6)
    mask = enc.attention_mask.repeat_interleave(2, 0)
    full_mask = torch.cat([mask, torch.ones(4, 6, dtype=torch.long)], 1)
    with torch.no_grad():
        logp = model(out.sequences, attention_mask=full_mask).logits.log_softmax(-1)
    sums = logp[:, P - 1:-1].gather(2, out.sequences[:, P:, None]).squeeze(2).sum(1)
    assert torch.allclose(sums, out.sequences_scores, atol=1e-3)
    assert (out.sequences_scores[0::2] >= out.sequences_scores[1::2]).all()  # best beam first, per prompt
    assert torch.equal(out.depths, decoded_depths(model, out.sequences, mask))
    greedy = model.generate(**enc, max_new_tokens=6)
    assert not torch.equal(out.sequences[0::2], greedy)  # the beams found other text than greedy


def test_logits_processors_match_hand_applied_rules(shipped):
    model, tok = shipped
    ids = tok(PROMPTS[1], return_tensors="pt").input_ids
    P = ids.shape[1]
    plain = model.generate(ids, max_new_tokens=10)
    # repetition penalty: each token is the argmax of the full forward's logits, penalised by hand
    seq = model.generate(ids, max_new_tokens=10, repetition_penalty=1.3)
    with torch.no_grad():
        for t in range(P, seq.shape[1]):
            logits = model(seq[:, :t]).logits[0, -1]
            seen = seq[0, :t].unique()
            logits[seen] = torch.where(logits[seen] < 0, logits[seen] * 1.3, logits[seen] / 1.3)
            assert logits.argmax() == seq[0, t]
    assert not torch.equal(seq, plain)
    # bad words: the banned greedy token is replaced by the runner-up and never appears
    first = int(plain[0, P])
    banned = model.generate(ids, max_new_tokens=10, bad_words_ids=[[first]])
    with torch.no_grad():
        runner_up = model(ids).logits[0, -1].topk(2).indices[1]
    assert banned[0, P] == runner_up and first not in banned[0, P:].tolist()
    # end of text, and min_new_tokens holding it off
    stopped = model.generate(ids, max_new_tokens=10, eos_token_id=first)
    assert stopped[0, P:].tolist() == [first]
    held = model.generate(ids, max_new_tokens=10, eos_token_id=first, min_new_tokens=5)
    assert held.shape[1] >= P + 5 and first not in held[0, P:P + 5].tolist()


def test_stop_strings_end_generation_where_the_text_first_contains_them(shipped):
    model, tok = shipped
    ids = tok(PROMPTS[0], return_tensors="pt").input_ids
    P = ids.shape[1]
    free = model.generate(ids, max_new_tokens=20)[0, P:].tolist()
    # the stop string: the text of a token the free run writes after a few tokens (it may occur earlier too)
    stop = next(tok.decode(free[j:j + 1]).strip() for j in range(3, 20) if tok.decode(free[j:j + 1]).strip())
    k = next(k for k in range(1, 21) if stop in tok.decode(free[:k]))  # first prefix that contains it
    out = model.generate(ids, max_new_tokens=20, stop_strings=[stop], tokenizer=tok)
    assert out[0, P:].tolist() == free[:k] and k < 20


def test_streamers_see_the_returned_text(shipped, capsys):
    model, tok = shipped
    enc = tok(PROMPTS[2], return_tensors="pt")
    P = enc.input_ids.shape[1]
    out = model.generate(**enc, max_new_tokens=15, streamer=TextStreamer(tok, skip_prompt=True, skip_special_tokens=True))
    text = tok.decode(out[0, P:], skip_special_tokens=True)
    assert capsys.readouterr().out == text + "\n" and text.strip()

    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True)
    result = {}
    worker = threading.Thread(target=lambda: result.update(
        out=model.generate(**enc, max_new_tokens=15, do_sample=False, streamer=streamer)))
    worker.start()
    pieces = list(streamer)
    worker.join()
    assert "".join(pieces) == tok.decode(result["out"][0, P:], skip_special_tokens=True) == text
    assert len(pieces) > 1  # it streamed, not one piece at the end


def test_return_dict_scores_logits_and_a_prompt_free_start(shipped):
    model, tok = shipped
    ids = tok(PROMPTS[0], return_tensors="pt").input_ids
    P = ids.shape[1]
    out = model.generate(ids, max_new_tokens=5, output_scores=True, output_logits=True, return_dict_in_generate=True)
    assert len(out.scores) == len(out.logits) == 5 and out.depths.shape == (1, 5)
    with torch.no_grad():
        full = model(out.sequences).logits[0]
    for k in range(5):
        assert (out.logits[k][0] - full[P - 1 + k]).abs().max() < 1e-4
        assert out.scores[k][0].argmax() == out.sequences[0, P + k]
    # no prompt: generation starts from the BOS token, and the depths are the engine's for it
    bos = model.generate(max_new_tokens=4, return_dict_in_generate=True)
    assert bos.sequences[0, 0] == model.generation_config.bos_token_id
    assert new_rows(bos, 1) == Engine(model).generate([[model.generation_config.bos_token_id]], 4)


def test_without_cache_and_continuing_from_a_returned_cache(shipped):
    model, tok = shipped
    ids = tok(PROMPTS[1], return_tensors="pt").input_ids
    ten = model.generate(ids, max_new_tokens=10)
    assert torch.equal(model.generate(ids, max_new_tokens=10, use_cache=False), ten)
    first = model.generate(ids, max_new_tokens=4, return_dict_in_generate=True)
    # the returned cache holds every column but the last token, which generate feeds next
    assert first.cache.get_seq_length() == first.sequences.shape[1] - 1
    more = model.generate(first.sequences, cache=first.cache, max_new_tokens=6)
    assert torch.equal(more, ten)


def test_pipeline_text_generation(shipped):
    model, tok = shipped
    pipe = pipeline("text-generation", model=model, tokenizer=tok)
    results = pipe(PROMPTS, batch_size=2, max_new_tokens=8, do_sample=False, return_full_text=False)
    for text, (result,) in zip(PROMPTS, results):
        new, _ = generated(model, tok(text)["input_ids"], 8)
        assert result["generated_text"] == tok.decode(new, skip_special_tokens=True)
    (full,), = pipe(PROMPTS[:1], max_new_tokens=4, do_sample=False)
    assert full["generated_text"].startswith(PROMPTS[0]) and len(full["generated_text"]) > len(PROMPTS[0])


# ---- bad arguments ----------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs,message", [
    (dict(depth_cap=0), r"depth_cap=0 is outside 1\.\.3"),
    (dict(depth_cap=4), r"depth_cap=4 is outside 1\.\.3"),
    (dict(fixed_depth=5), r"fixed_depth=5 is outside 1\.\.3"),
    (dict(depth_cap=1, fixed_depth=2), "not both"),
    (dict(num_beams=2, max_batch=4), "max_batch: option.*of mor.inference.engine.Engine"),
    (dict(num_beams=2, seed=1, stop_at_eos=False), "seed, stop_at_eos: option.*Engine"),
    (dict(max_new_tokens=[3, 4]), "budget per prompt is an Engine option"),
    (dict(routing_mode="capacity"), "generate decodes causally"),
    (dict(return_depths=True), "return_dict_in_generate=True and read the output's .depths"),
    (dict(do_sample=True, generator=torch.Generator()), "call torch.manual_seed"),
])
def test_bad_arguments_raise_a_clear_value_error(kwargs, message):
    model = tiny_model()
    with pytest.raises(ValueError, match=message):
        model.generate(torch.zeros(2, 3, dtype=torch.long), **({"max_new_tokens": 2} | kwargs))


def test_the_engine_rejects_the_same_depth_arguments():
    model = tiny_model()
    for kwargs in (dict(depth_cap=0), dict(fixed_depth=4), dict(depth_cap=1, fixed_depth=1)):
        with pytest.raises(ValueError, match="outside 1..3|not both"):
            Engine(model, **kwargs)
