"""Anything a user can paste: every text gives a well-formed trace or a clear ValueError."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mor import analysis


@pytest.fixture(scope="module")
def shipped_model(checkpoint):
    """(model, tokenizer) of a shipped expert-choice checkpoint (conftest's `checkpoint`)."""
    return checkpoint


def check_invariants(tr: analysis.Trace, text: str) -> None:
    n = len(tr.tokens)
    assert len(tr.depths) == len(tr.token_nll) == len(tr.router_scores) == len(tr.token_ids) == n
    assert all(1 <= d <= tr.num_recursions for d in tr.depths)
    if tr.truncated_tokens == 0 and tr.replaced_chars == 0:
        assert "".join(tr.tokens) == text  # token texts join back to the input
    if n:
        assert tr.token_nll[0] is None and all(v is not None and v >= 0 for v in tr.token_nll[1:])


@pytest.mark.slow  # 60 traces
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=80))
def test_random_unicode_traces_keep_invariants(shipped_model, text):
    model, tokenizer = shipped_model
    check_invariants(analysis.trace(model, tokenizer, text), text)


@pytest.mark.parametrize("text", [
    "", " ", "\n\n\t", "a", "🙂👩‍👩‍👧‍👦", "中文文本，日本語のテキスト", "مرحبا بالعالم שלום עולם",
    "e\u0301\u0302\u0303 Z\u0351\u0352", "\x00\x01\x1b[31mred\x7f", "<img src=x onerror=alert(1)></div><script>",
    "\u202eRTL override\u202c", "\ufeffBOM",
])
def test_hostile_samples(shipped_model, text):
    model, tokenizer = shipped_model
    check_invariants(analysis.trace(model, tokenizer, text), text)


def test_unpaired_surrogates_are_replaced_and_counted(shipped_model):
    model, tokenizer = shipped_model
    tr = analysis.trace(model, tokenizer, "ok \ud800 then \udfff end")
    assert tr.replaced_chars == 2 and "".join(tr.tokens) == "ok \ufffd then \ufffd end"


@pytest.mark.slow  # about 3,000 tokens, traced in overlapping windows
def test_text_longer_than_context_is_traced_whole(shipped_model):
    model, tokenizer = shipped_model
    text = "The quick brown fox jumps over the lazy dog. " * 300  # ~13,500 characters
    tr = analysis.trace(model, tokenizer, text)
    assert len(tr.tokens) == len(tokenizer(text)["input_ids"]) > model.config.max_position_embeddings
    assert "".join(tr.tokens) == text and tr.truncated_tokens == 0
    assert tr.windows == len(analysis.sliding_windows(len(tr.tokens), model.config.max_position_embeddings)) > 1


def test_non_string_input_is_a_value_error(shipped_model):
    with pytest.raises(ValueError, match="text must be a string"):
        analysis.trace(*shipped_model, b"bytes")
