"""The reasoning probe: greedy exact-match accuracy on fixed-width addition.

A checkpoint trained with the addition slice records its problem format in training.json:

    "probe": {"task": "addition", "digits": 3, "prompt_format": "{a:03d}+{b:03d}=",
              "answer_format": "{c:04d}", "answer_reversed": false}

`prompt_format` and `answer_format` are Python format strings over the operands `a`, `b` and
their sum `c`; with `answer_reversed` the answer's characters are written last digit first
(so the model emits the carry-free low digit before the high ones). One problem is one line:
prompt, answer, newline. The probe feeds "\\n" + prompt (a problem always starts a line),
decodes greedily up to the newline, and compares the text with the answer.

Problems are "fresh": the training stream only uses operand pairs whose `pair_bucket` is not
0, the probe only pairs whose bucket is 0, so no probe problem was ever trained on.

    mor probe --checkpoint mor-ec-r3 --json
    mor probe --checkpoint mor-ec-r3 --depth-cap 1 --examples 500 --json
"""

from __future__ import annotations

import torch

from ..data.addition import AdditionFormat, sample_pairs
from ..model.loading import read_training_info

DEFAULT_FORMAT = AdditionFormat.zero_padded(3)


@torch.no_grad()
def run_probe(model, tokenizer, fmt: AdditionFormat, examples: int = 500, seed: int = 1234,
              depth_cap: int | None = None, batch_size: int = 250) -> dict:
    """Greedy exact-match accuracy and mean recursion depth of prompt and answer digits.

    Depths are those of a forward pass over "\\n" + prompt + the model's own answer, under causal
    routing (what decoding does): "prompt" averages over the prompt's digit tokens, "answer"
    over the digit tokens the model generated.
    """
    if examples < 1:
        raise ValueError(f"examples must be >= 1, got {examples}.")
    model.eval()
    device = model.device
    newline = tokenizer("\n", add_special_tokens=False).input_ids
    assert len(newline) == 1, "the tokenizer must encode a newline as one token"
    # a tokenizer that merges digits needs fewer tokens than characters: characters bound them
    max_new = len(fmt.answer(10**fmt.digits - 1, 10**fmt.digits - 1)) + 1
    digit_ids = torch.tensor(sorted({i for d in range(10) for i in tokenizer(str(d), add_special_tokens=False).input_ids}),
                             device=device)
    pairs = sample_pairs(fmt.digits, examples, seed, held_out=True)
    # prompts of one length run as one batch (no padding: every row is a real problem)
    by_length: dict[int, list[tuple[list[int], tuple[int, int]]]] = {}
    for a, b in pairs:
        ids = newline + tokenizer(fmt.prompt(a, b), add_special_tokens=False).input_ids
        by_length.setdefault(len(ids), []).append((ids, (a, b)))
    correct, depth_sums, depth_counts = 0, {"prompt": 0.0, "answer": 0.0}, {"prompt": 0, "answer": 0}
    for length, items in sorted(by_length.items()):
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            ids = torch.tensor([row for row, _ in chunk], device=device)
            out = model.generate(ids, max_new_tokens=max_new, depth_cap=depth_cap, eos_token_id=newline[0])
            new = out[:, length:]
            texts = [tokenizer.decode(row.tolist()).split("\n")[0] for row in new]
            correct += sum(text == fmt.answer(a, b) for text, (_, (a, b)) in zip(texts, chunk))
            depths = model(out, depth_cap=depth_cap, use_cache=False).depths  # (B, T)
            is_digit = torch.isin(out, digit_ids)
            answer_mask = torch.zeros_like(is_digit)
            answer_mask[:, length:] = (new == newline[0]).long().cumsum(1) == 0  # up to the first newline
            prompt_mask = torch.zeros_like(is_digit)
            prompt_mask[:, :length] = True
            for key, mask in (("prompt", prompt_mask & is_digit), ("answer", answer_mask & is_digit)):
                depth_sums[key] += depths[mask].float().sum().item()
                depth_counts[key] += int(mask.sum())
    return {
        "task": fmt.task,
        "format": fmt.record(),
        "num_recursions": model.config.num_recursions,
        "examples": len(pairs),
        "depth_cap": depth_cap,
        "accuracy": correct / len(pairs),
        # None when the model wrote no digit at all
        "mean_depth_answer": depth_sums["answer"] / depth_counts["answer"] if depth_counts["answer"] else None,
        "mean_depth_prompt": depth_sums["prompt"] / depth_counts["prompt"] if depth_counts["prompt"] else None,
    }


def checkpoint_format(name_or_path) -> tuple[AdditionFormat, bool]:
    """The addition format a checkpoint was trained on (its training.json "probe" record), and
    True; or the default 3-digit format and False for a checkpoint trained without the slice."""
    record = (read_training_info(name_or_path) or {}).get("probe")
    return (AdditionFormat.from_record(record), True) if record else (DEFAULT_FORMAT, False)
