"""The one way checkpoints come in (`load`) and go out (`save_checkpoint`).

A checkpoint is a folder with `config.json`, `model.safetensors` and a tokenizer
(`tokenizer.json` + `tokenizer_config.json`), optionally `generation_config.json` (the defaults
`model.generate` starts from, as transformers saves them), `training.json` and a README card.
Weights are read only through safetensors: nothing is unpickled and no remote code runs.
Every problem becomes a `CheckpointError` that names the file and says what is wrong.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import GenerationConfig

from .configuration import MoRConfig
from .modeling import MoRForCausalLM

WEIGHTS = "model.safetensors"
GENERATION_CONFIG = "generation_config.json"
PICKLE_WEIGHTS = ("pytorch_model.bin", "model.bin", "model.pt", "model.pth", "model.ckpt")


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be loaded; the message names the file and the problem."""


def checkpoint_roots() -> list[Path]:
    """Folders searched for checkpoint names: $MOR_CHECKPOINTS, the repo's checkpoints/, ./checkpoints."""
    roots = []
    if os.environ.get("MOR_CHECKPOINTS"):
        roots.append(Path(os.environ["MOR_CHECKPOINTS"]))
    roots += [Path(__file__).resolve().parents[2] / "checkpoints", Path.cwd() / "checkpoints"]  # repo root = mor/model/../..
    unique = []
    for root in roots:
        if root.is_dir() and root.resolve() not in [u.resolve() for u in unique]:
            unique.append(root)
    return unique


def list_checkpoints() -> list[Path]:
    """Every checkpoint folder (one holding config.json) under the checkpoint roots, by name."""
    found = {}
    for root in checkpoint_roots():
        for cfg in sorted(root.glob("*/config.json")):
            found.setdefault(cfg.parent.name, cfg.parent)
    return [found[name] for name in sorted(found)]


def resolve_checkpoint(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint folder from a path or from the name of a folder under a checkpoint root."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; a checkpoint is a folder holding config.json and {WEIGHTS}.")
    for root in checkpoint_roots():
        if (root / str(name_or_path)).is_dir():
            return root / str(name_or_path)
    names = ", ".join(p.name for p in list_checkpoints()) or "none found"
    raise CheckpointError(f"No checkpoint folder named {str(name_or_path)!r}. Available: {names}.")


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' is CUDA when present, else CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N.") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for CUDA, which this machine/PyTorch build does not have; "
                         f"use auto or cpu.")
    if chosen.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r} is not supported; use auto, cpu, cuda or cuda:N.")
    return chosen


def load_config(folder: Path) -> MoRConfig:
    path = folder / "config.json"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: every checkpoint needs its config.json.")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not valid JSON: {err}.") from None
    if not isinstance(raw, dict) or raw.get("model_type") != "mor":
        got = raw.get("model_type") if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{path} has model_type {got!r}; expected 'mor'.")
    try:
        return MoRConfig.from_dict({k: v for k, v in raw.items() if k != "transformers_version"})
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{path} holds an invalid configuration: {err}") from None


def load_weights(folder: Path) -> dict[str, torch.Tensor]:
    path = folder / WEIGHTS
    if not path.is_file():
        pickles = [name for name in PICKLE_WEIGHTS if (folder / name).exists()]
        hint = (f" Found {', '.join(pickles)}, a pickle format this project never loads (it can run "
                f"arbitrary code); convert it to safetensors in a trusted environment.") if pickles else ""
        raise CheckpointError(f"{path} is missing.{hint}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated, corrupt, or another "
                              f"format such as a pickle): {err}") from None


def check_weights(model: MoRForCausalLM, state: dict[str, torch.Tensor], path: Path) -> None:
    """Every expected tensor present with the right shape, nothing unexpected."""
    expected = model.state_dict()
    if model.config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
        state.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
             for k in expected if k in state and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {', '.join(missing[:3])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {', '.join(unexpected[:3])})")
        if wrong:
            parts.append(f"shape mismatches: {'; '.join(wrong[:3])}")
        raise CheckpointError(f"{path} does not match config.json: {'; '.join(parts)}.")


def load_generation_config(folder: Path) -> GenerationConfig:
    """The checkpoint's generation_config.json (read as JSON, like every other file here)."""
    path = folder / GENERATION_CONFIG
    try:
        return GenerationConfig.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, TypeError) as err:  # bad JSON, a non-object, invalid values
        raise CheckpointError(f"{path} could not be read as a generation config: {err}") from None


def load_tokenizer(folder: Path, vocab_size: int):
    from transformers import PreTrainedTokenizerFast

    path = folder / "tokenizer.json"
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: the checkpoint ships its own tokenizer.")
    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder), local_files_only=True)
    except Exception as err:  # the tokenizers library raises several exception types
        raise CheckpointError(f"{path} could not be read as a tokenizer: {err}") from None
    size = max(tokenizer.get_vocab().values()) + 1
    if size > vocab_size:
        raise CheckpointError(f"{path} has {size} tokens but the model's vocab_size is "
                              f"{vocab_size}: the tokenizer does not belong to these weights.")
    return tokenizer


def read_training_info(name_or_path: str | os.PathLike) -> dict | None:
    """A checkpoint's training.json (how it was trained), or None when it has none."""
    path = resolve_checkpoint(name_or_path) / "training.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path} is not readable JSON: {err}") from None


def load(name_or_path: str | os.PathLike, device: str | torch.device = "auto", with_tokenizer: bool = True):
    """Load a checkpoint as (model, tokenizer), the model in eval mode, float32, on `device`, with
    `model.generation_config` from generation_config.json when the folder has one.

    `name_or_path`: a checkpoint folder, or the name of one under checkpoints/."""
    folder = resolve_checkpoint(name_or_path)
    config = load_config(folder)
    state = load_weights(folder)
    model = MoRForCausalLM(config)
    check_weights(model, state, folder / WEIGHTS)
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    model.tie_weights()
    if (folder / GENERATION_CONFIG).is_file():  # else the defaults derived from config.json stay
        model.generation_config = load_generation_config(folder)
    model.to(pick_device(device)).eval()
    tokenizer = load_tokenizer(folder, config.vocab_size) if with_tokenizer else None
    return model, tokenizer


def save_checkpoint(model: MoRForCausalLM, tokenizer, folder: str | os.PathLike,
                    dtype: torch.dtype = torch.float16) -> Path:
    """Write config, generation config, weights (safetensors, `dtype`, the tied head omitted) and tokenizer."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.config.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    state = {k: v.detach().to("cpu", dtype).contiguous() for k, v in model.state_dict().items()
             if not (model.config.tie_word_embeddings and k == "lm_head.weight")}
    save_file(state, str(folder / WEIGHTS), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return folder
