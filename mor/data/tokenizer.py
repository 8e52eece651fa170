"""The tokenizer: byte-level BPE with one token per digit, and per-token text pieces."""

from __future__ import annotations

import codecs
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

END_OF_TEXT = "<|endoftext|>"



def train_tokenizer(files: Sequence[str | Path], vocab_size: int = 8192) -> PreTrainedTokenizerFast:
    """Train a GPT-2-style byte-level BPE, one token per digit, on `files`, wrapped for transformers.

    No normalizer and add_prefix_space=False, so decode(encode(text)) == text for any
    Unicode string. "<|endoftext|>" is the only special token and serves as bos, eos and
    pad (and unk, which byte-level BPE never produces, for code that expects one). No
    special token is added by encode(): callers put eos between documents themselves.
    """
    tokenizer = Tokenizer(models.BPE())
    # Digits first: every digit is a piece (and so a token) of its own, so numbers are read and
    # written one digit per token (the addition probe depends on it); then GPT-2's byte-level split.
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tokenizer.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps offsets covering the whole text; having a post-processor
    # also stops transformers from installing its own bos/eos template.
    tokenizer.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[END_OF_TEXT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte is encodable
        show_progress=False,
    )
    tokenizer.train([str(file) for file in files], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        unk_token=END_OF_TEXT,
        clean_up_tokenization_spaces=False,  # the cleanup removes spaces before punctuation
    )


def _byte_decoder() -> dict[str, int]:
    """The inverse of the GPT-2 byte -> printable character table that ByteLevel uses.

    Printable Latin-1 bytes map to themselves, the other 68 bytes to U+0100 onwards.
    """
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [byte for byte in range(256) if byte not in printable]
    table = {chr(byte): byte for byte in printable}
    table.update({chr(256 + i): byte for i, byte in enumerate(others)})
    return table


_BYTE_DECODER = _byte_decoder()


def _token_bytes(token: str) -> bytes:
    """Raw bytes of one token string, as the tokenizers ByteLevel decoder computes them.

    A token with characters outside the byte table (an added token) stands for its own
    UTF-8 text, as in the Rust decoder.
    """
    if all(char in _BYTE_DECODER for char in token):
        return bytes(_BYTE_DECODER[char] for char in token)
    return token.encode("utf-8")


def token_texts(tokenizer: PreTrainedTokenizerFast, ids: Sequence[int]) -> list[str]:
    """Per-token text pieces, one per id, that join to exactly ``tokenizer.decode(ids)``.

    A byte-level token can hold part of a multi-byte character (an emoji is often two or
    more tokens). The bytes of such a character are given to the token that completes it,
    and the tokens before it get "" for that part, so a piece never holds a stray U+FFFD
    when the full decode has none. Invalid byte sequences become U+FFFD exactly as in
    decode(). Runs in O(len(ids)).
    """
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    tokens = tokenizer.convert_ids_to_tokens(list(ids))
    pieces = [decoder.decode(_token_bytes(token)) for token in tokens]
    if pieces:
        pieces[-1] += decoder.decode(b"", final=True)  # a character cut off at the end
    return pieces
