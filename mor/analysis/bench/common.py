"""What every part of `mor bench` shares: the checkpoints and paths it knows, the targets (THRESHOLDS), the
prompts (windows of the validation split), the models loaded for timing, peak memory and CPU load."""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from ...model.loading import load, resolve_checkpoint


PATHS = ("naive", "gather", "engine")
PATH_TITLES = {
    "naive": "naive path (full width, masked)",
    "gather": "active-token gathering (model.generate)",
    "engine": "depth-wise batching (Engine)",
    "llama": "transformers LlamaForCausalLM.generate",
}
DEFAULT_CHECKPOINTS = ("vanilla", "recursive-r3", "mor-ec-r3", "mor-tc-r3", "mor-ec-r3-kvshare", "mor-ec-r4",
                       "mor-ec-r3-sparse")
ROOT = Path(__file__).resolve().parents[3]  # the repository
ENGINE_REQUESTS = 2  # the per-batch engine path decodes ENGINE_REQUESTS x B requests with max_batch = B
SERVING_WIDTHS = (1, 4, 16, 32, 64, 128)
# Issue 14's targets, on the serving workload at every measured width: tokens/s (wall, prefill included)
# on the engine over vanilla's on the engine ("speedup", per checkpoint), the measured speedup over
# the one its run FLOPs predict ("ratio"), vanilla's engine over transformers' Llama generate on the
# same requests ("vanilla_over_llama"); the workload they hold for (>= requests_per_slot x W requests
# of real text, new tokens in new_tokens); and a 1,000-token trace in < 0.5 s. "speedup_default" is
# what the ceilings ask of a routed checkpoint without a target of its own (mor-ec-r3's).
THRESHOLDS = {"speedup": {"mor-ec-r3": 1.1, "mor-ec-r3-sparse": 1.4}, "ratio": {"mor-ec-r3": 0.9},
              "vanilla_over_llama": 1.0, "requests_per_slot": 4, "new_tokens": [32, 64], "speedup_default": 1.1,
              "trace_tokens": 1000, "trace_seconds": 0.5}
PROFILE_WARMUP, PROFILE_STEPS = 6, 40  # engine events skipped, then profiled
MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}


# ---- inputs ----------------------------------------------------------------------------------------


def make_prompts(n: int, length: int, vocab: int, data_dir: Path | None, seed: int = 0) -> tuple[list[list[int]], str]:
    """n prompts of `length` ids: windows of the validation token file when one exists and fits
    the vocabulary, else seeded random ids. Returns (prompts, description of the source)."""
    files = sorted(Path(data_dir).glob("val*.u16")) if data_dir and Path(data_dir).is_dir() else []
    if files:
        ids = np.fromfile(files[0], dtype=np.uint16).astype(np.int64)
        if len(ids) >= length + 1 and int(ids.max()) < vocab:
            rng = np.random.default_rng(seed)
            starts = rng.integers(0, len(ids) - length, size=n)
            return [ids[s:s + length].tolist() for s in starts], f"windows of {files[0].name}"
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (n, length), generator=g).tolist(), "random token ids (seed 0)"


def describe(model) -> dict:
    c = model.config
    return {"routing": c.routing, "sharing": c.sharing, "kv_cache": c.kv_cache, "num_recursions": c.num_recursions,
            "num_hidden_layers": c.num_hidden_layers, "hidden_size": c.hidden_size, "vocab_size": c.vocab_size,
            "unique_parameters": model.num_parameters(), "effective_parameters": model.num_effective_parameters()}


class PeakMemory:
    """Peak resident memory a block of code adds to this process (Linux; `bytes` stays None
    elsewhere): glibc's free lists are trimmed first (so memory freed by an earlier run is not
    reused unseen), the kernel's high-water mark is reset through /proc/self/clear_refs, and
    VmHWM after the block minus VmRSS before it is the peak growth: weights already loaded are
    not counted, every buffer, activation and allocator cache the run creates is."""

    def __init__(self):
        self.bytes: int | None = None
        self._before: int | None = None

    @staticmethod
    def _status(field: str) -> int | None:
        try:
            with open("/proc/self/status", encoding="ascii") as f:
                for line in f:
                    if line.startswith(field + ":"):
                        return int(line.split()[1]) * 1024
        except OSError:
            return None
        return None

    def __enter__(self) -> "PeakMemory":
        try:
            import ctypes

            ctypes.CDLL("libc.so.6").malloc_trim(0)
            with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
                f.write("5")  # reset VmHWM to the current RSS
            self._before = self._status("VmRSS")
        except (OSError, AttributeError):
            self._before = None
        return self

    def __exit__(self, *exc) -> None:
        peak = self._status("VmHWM") if self._before is not None else None
        self.bytes = None if peak is None else max(peak - self._before, 0)


# ---- the whole benchmark ---------------------------------------------------------------------------


def other_cpu_load(seconds: float = 1.0) -> float | None:
    """CPUs kept busy by other processes, sampled from /proc/stat over `seconds` while this one
    sleeps (None where /proc/stat does not exist)."""
    def sample():
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        return sum(values), values[3] + (values[4] if len(values) > 4 else 0)

    try:
        total0, idle0 = sample()
        time.sleep(seconds)
        total1, idle1 = sample()
    except OSError:
        return None
    busy = 1.0 - (idle1 - idle0) / max(total1 - total0, 1)
    return busy * (os.cpu_count() or 1)


def load_models(checkpoints) -> dict:
    """{folder name: model} on the CPU, end-of-text ignored (every path decodes exactly --new-tokens)."""
    models = {}
    for name in checkpoints:
        folder = resolve_checkpoint(name)
        model, _ = load(folder, device="cpu", with_tokenizer=False)
        model.config.eos_token_id = None
        models[folder.name] = model
    return models


def _median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None
