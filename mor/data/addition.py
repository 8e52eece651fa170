"""The synthetic reasoning slice: fixed-width addition problems, one per line.

A problem is written by an `AdditionFormat` (its training.json "probe" record), e.g.

    {"task": "addition", "digits": 3, "prompt_format": "{a:03d}+{b:03d}=",
     "answer_format": "{c:04d}", "answer_reversed": false}      ->  "047+586=0633"

`prompt_format` and `answer_format` are Python format strings over the operands `a`, `b` and
their sum `c`; with `answer_reversed` the answer's characters are written last digit first. The
tokenizer puts every digit in a token of its own, so an operand is always `digits` tokens.

The slice is not a corpus file: `mor train --set`-able `addition_share` of the training rows are
drawn from `AdditionStream` on the fly (fresh problems every row, reproducible from the step).
Fresh problems: `pair_bucket` splits all operand pairs 9:1; the training stream draws only from
buckets 1-9 and the probe (`mor probe`) only from bucket 0, so no probe problem is ever trained on.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass

HELD_OUT_BUCKETS = 10  # 1 in 10 operand pairs is reserved for the probe


@dataclass(frozen=True)
class AdditionFormat:
    """How one addition problem is written (the training.json "probe" record)."""

    digits: int
    prompt_format: str
    answer_format: str
    answer_reversed: bool = False
    task: str = "addition"

    @classmethod
    def zero_padded(cls, digits: int, reversed_answer: bool = False) -> "AdditionFormat":
        """Operands of exactly `digits` digits and a `digits + 1`-digit sum, zero-padded."""
        if digits < 1:
            raise ValueError(f"digits must be >= 1, got {digits}.")
        return cls(digits, f"{{a:0{digits}d}}+{{b:0{digits}d}}=", f"{{c:0{digits + 1}d}}", reversed_answer)

    @classmethod
    def from_record(cls, record: dict) -> "AdditionFormat":
        if record.get("task") != "addition":
            raise ValueError(f"unknown probe task {record.get('task')!r}; only 'addition' exists.")
        return cls(int(record["digits"]), str(record["prompt_format"]), str(record["answer_format"]),
                   bool(record.get("answer_reversed", False)))

    def record(self) -> dict:
        """The training.json "probe" record, task first."""
        return {"task": self.task, **{k: v for k, v in asdict(self).items() if k != "task"}}

    def prompt(self, a: int, b: int) -> str:
        return self.prompt_format.format(a=a, b=b, c=a + b)

    def answer(self, a: int, b: int) -> str:
        text = self.answer_format.format(a=a, b=b, c=a + b)
        return text[::-1] if self.answer_reversed else text

    def line(self, a: int, b: int) -> str:
        return self.prompt(a, b) + self.answer(a, b)


def pair_bucket(a: int, b: int) -> int:
    """A stable bucket in 0..HELD_OUT_BUCKETS-1 for an operand pair (same on every platform)."""
    digest = hashlib.sha256(f"{a}+{b}".encode()).digest()
    return digest[0] % HELD_OUT_BUCKETS


def _operand(digits: int, rng: random.Random, balanced: bool) -> int:
    """Uniform in 0..10^digits - 1, or (balanced) first a length uniform in 1..digits, then a number
    of that length, so short operands (mostly leading zeros, easy sums) are as common as long ones."""
    if not balanced:
        return rng.randrange(10**digits)
    length = rng.randint(1, digits)
    return rng.randrange(10 ** (length - 1) if length > 1 else 0, 10**length)


def draw_pair(digits: int, rng: random.Random, held_out: bool, balanced: bool = False) -> tuple[int, int]:
    """One operand pair of `digits` digits: from the probe's bucket (held_out) or the others."""
    while True:
        a, b = _operand(digits, rng, balanced), _operand(digits, rng, balanced)
        if (pair_bucket(a, b) == 0) == held_out:
            return a, b


def sample_pairs(digits: int, count: int, seed: int, held_out: bool) -> list[tuple[int, int]]:
    """`count` operand pairs of `digits` digits: the probe's (held_out) or the training stream's."""
    rng = random.Random(seed)
    return [draw_pair(digits, rng, held_out) for _ in range(count)]


ADDITION_LAYOUTS = ("rows", "in_text")
RUN_PROBLEMS = (1, 4)  # "in_text": problems per run between two text snippets (inclusive)
SNIPPET_TOKENS = (8, 32)  # "in_text": tokens of text between two runs (inclusive)


class AdditionStream:
    """Training rows of addition problems, drawn fresh (outside the probe's bucket) for each row.

    Layout "rows": a row is "\n" + problem + "\n" + problem ... cut to `seq_len` tokens, so every
    problem starts a line as in the probe. Layout "in_text": the row starts the same way, but runs
    of 1-4 problems alternate with snippets of 8-32 tokens of the row's own text window, so most
    runs open with no solved problem in view. Why: in "rows" only the first problem of a row has no
    earlier problem to copy the procedure from, and the v2 probe checkpoint learned to lean on one:
    teacher-forced, 72% exact match with nothing before the problem (what `mor probe` asks), 94% with
    one solved problem before it, 0.4% after a line of prose.

    `balanced` draws operand lengths uniformly (see `_operand`); the probe always draws uniform
    full-width operands. `labels` masks the operands (-100): they are random digits with nothing to
    learn, and their loss would drown the signal of the answers; a newline that opens a run after
    text is masked too (nothing announces it).
    """

    def __init__(self, fmt: AdditionFormat, tokenizer, balanced: bool = False):
        self.fmt, self.balanced = fmt, balanced
        self.newline = self._one_token(tokenizer, "\n")
        chars = set("0123456789") | set(fmt.line(0, 0))
        self.vocab = {char: self._one_token(tokenizer, char) for char in sorted(chars)}

    @staticmethod
    def _one_token(tokenizer, char: str) -> int:
        ids = tokenizer(char, add_special_tokens=False).input_ids
        if len(ids) != 1:
            raise ValueError(f"the tokenizer encodes {char!r} as {len(ids)} tokens, not one; retrain it "
                             "with `mor data` (digits are split one per token).")
        return ids[0]

    def row(self, seq_len: int, rng: random.Random, text: list[int] | None = None) -> tuple[list[int], list[int]]:
        """(ids, labels) of one row of `seq_len` tokens; with `text` (at least `seq_len` token ids),
        the "in_text" layout, its snippets taken in order from `text`."""
        ids, labels = [self.newline], [-100]
        run_left = rng.randint(*RUN_PROBLEMS) if text is not None else None  # problems before the next snippet
        used = 0  # tokens of `text` used so far
        while len(ids) < seq_len:
            if run_left == 0:  # a snippet of text, then a newline that opens the next run
                n = rng.randint(*SNIPPET_TOKENS)
                snippet = text[used:used + n]
                used += n
                ids += snippet + [self.newline]
                labels += snippet + [-100]
                run_left = rng.randint(*RUN_PROBLEMS)
            a, b = draw_pair(self.fmt.digits, rng, held_out=False, balanced=self.balanced)
            prompt, answer = self.fmt.prompt(a, b), self.fmt.answer(a, b)
            ids += [self.vocab[c] for c in prompt + answer] + [self.newline]
            labels += [-100] * len(prompt) + [self.vocab[c] for c in answer] + [self.newline]
            if run_left is not None:
                run_left -= 1
        return ids[:seq_len], labels[:seq_len]
