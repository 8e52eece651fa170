"""Whole texts: sliding context windows, checked against one forward per token."""

from __future__ import annotations

import math

import pytest
import torch

from mor import analysis

from helpers import tiny_model


@pytest.mark.parametrize("n,context,stride", [(1, 8, None), (8, 8, None), (9, 8, None), (50, 8, 3), (50, 8, 8), (1000, 512, None)])
def test_windows_score_every_token_once(n, context, stride):
    windows = analysis.sliding_windows(n, context, stride)
    scored = [t for _, end, first in windows for t in range(first, end)]
    assert scored == list(range(n))
    step = stride or context // 2
    for start, end, first in windows:
        assert 0 <= start <= first < end <= n and end - start <= context
        if start:  # after the first window every scored token keeps context - stride tokens of left context
            assert first - start >= context - step


def test_bad_window_arguments():
    with pytest.raises(ValueError, match="context"):
        analysis.sliding_windows(10, 1)
    with pytest.raises(ValueError, match="stride"):
        analysis.sliding_windows(10, 8, 9)


@pytest.mark.parametrize("routing", ["expert_choice", "token_choice", "none"])
def test_windowed_pass_equals_one_forward_per_token(routing):
    context, stride = 12, 5
    model = tiny_model(routing=routing, max_position_embeddings=context)
    torch.manual_seed(3)
    ids = torch.randint(0, 99, (40,)).tolist()
    run = analysis.windowed_pass(model, ids, stride=stride, batch_size=2)
    assert run.windows == len(analysis.sliding_windows(len(ids), context, stride))
    for t in range(len(ids)):
        # the window that scores t is the first (stride-aligned) one containing it: most left context
        start = min(k * stride for k in range(len(ids)) if k * stride <= t < k * stride + context)
        with torch.no_grad():
            out = model(torch.tensor([ids[start:t + 1]]), use_cache=False)
        assert run.depths[t] == out.depths[0, -1].item()
        if t == start:
            assert run.token_nll[t] is None and t == 0
        else:
            logp = torch.log_softmax(out.logits[0, -2], -1)[ids[t]].item()
            assert abs(run.token_nll[t] + logp) < 1e-4


class CharTokenizer:
    """One token per character of a small alphabet: enough tokenizer for `evaluate` and `trace`."""

    alphabet = "abcdefghijklmnopqrstuvwxyz .é"
    eos_token_id = 0

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [self.alphabet.index(c) + 1 for c in text]}

    def convert_ids_to_tokens(self, ids):
        # byte-level style: the characters of each token's UTF-8 bytes (Latin-1 bytes map to themselves)
        return ["".join(chr(b) if 0x21 <= b <= 0x7e or 0xae <= b else chr(256 + b % 68) for b in self.alphabet[i - 1].encode())
                for i in ids]


def test_evaluate_bits_per_byte_against_a_direct_forward():
    model = tiny_model(max_position_embeddings=64)
    tok = CharTokenizer()
    text = "the cat sat on the mat. a bee."
    ids = tok(text)["input_ids"]
    result = analysis.evaluate(model, tok, text)
    with torch.no_grad():
        logits = model(torch.tensor([ids]), use_cache=False).logits[0]
    total = torch.nn.functional.cross_entropy(logits[:-1], torch.tensor(ids[1:]), reduction="sum").item()
    assert result["windows"] == 1 and result["tokens"] == len(ids)
    assert math.isclose(result["nll"], total / (len(ids) - 1), rel_tol=1e-5)
    assert math.isclose(result["bits_per_byte"], total / math.log(2) / len(text[1:].encode()), rel_tol=1e-5)


def test_trace_keeps_a_long_text_whole():
    model = tiny_model(max_position_embeddings=16)
    tok = CharTokenizer()
    text = "a long text is traced whole. " * 5
    tr = analysis.trace(model, tok, text)
    assert "".join(tr.tokens) == text and len(tr.depths) == len(text)
    assert tr.windows == len(analysis.sliding_windows(len(text), 16)) > 1 and tr.truncated_tokens == 0
    assert tr.token_nll[0] is None and all(v is not None for v in tr.token_nll[1:])
