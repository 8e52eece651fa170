"""Checkpoints in and out: round trips, transformers' Auto classes, and clear errors."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

import mor
from helpers import tiny_model
from mor import CheckpointError

VOCAB = 300


@pytest.fixture(scope="module")
def tokenizer():
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(["the cat sat on the mat, and the dog sat on the log"] * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>")


@pytest.fixture
def saved(tmp_path, tokenizer):
    model = tiny_model(vocab_size=VOCAB)
    folder = mor.save_checkpoint(model, tokenizer, tmp_path / "ckpt", dtype=torch.float32)
    return model, folder


def test_round_trip_gives_identical_logits(saved):
    model, folder = saved
    loaded, tok = mor.load(folder, device="cpu")
    ids = tok("the cat sat on the log", return_tensors="pt").input_ids
    with torch.no_grad():
        a, b = model(ids), loaded(ids)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.depths, b.depths)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert not loaded.training


def test_auto_model_from_pretrained_gives_identical_logits(saved):
    model, folder = saved
    auto = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    assert isinstance(auto, mor.MoRForCausalLM)
    ids = torch.randint(0, VOCAB, (1, 16))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, auto(ids).logits)


def test_generation_config_is_saved_with_the_checkpoint_and_used_by_generate(tmp_path, tokenizer):
    model = tiny_model(vocab_size=VOCAB, bos_token_id=5)
    model.generation_config.max_new_tokens = 3
    model.generation_config.repetition_penalty = 1.5
    folder = mor.save_checkpoint(model, tokenizer, tmp_path / "gen", dtype=torch.float32)
    assert json.loads((folder / "generation_config.json").read_text())["max_new_tokens"] == 3
    loaded, _ = mor.load(folder, device="cpu")
    auto = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    for m in (loaded, auto):
        assert (m.generation_config.max_new_tokens, m.generation_config.repetition_penalty) == (3, 1.5)
    ids = torch.randint(0, VOCAB, (1, 6))
    seq = loaded.generate(ids)  # the saved defaults: 3 new tokens, repetition penalty 1.5
    assert seq.shape == (1, 9)
    assert torch.equal(seq, model.generate(ids, max_new_tokens=3, repetition_penalty=1.5))
    assert not torch.equal(seq, model.generate(ids, max_new_tokens=3, repetition_penalty=1.0))
    # a checkpoint without one gets the defaults derived from config.json (its special tokens)
    (folder / "generation_config.json").unlink()
    plain, _ = mor.load(folder, device="cpu")
    assert plain.generation_config.max_new_tokens is None and plain.generation_config.bos_token_id == 5


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_broken_generation_config(saved, content):
    (saved[1] / "generation_config.json").write_text(content)
    with pytest.raises(CheckpointError, match="generation_config.json could not be read as a generation config"):
        mor.load(saved[1])


def test_half_precision_checkpoint_upcasts_on_load(tmp_path, tokenizer):
    model = tiny_model(vocab_size=VOCAB)
    folder = mor.save_checkpoint(model, tokenizer, tmp_path / "half")
    loaded, _ = mor.load(folder, device="cpu")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    ids = torch.randint(0, VOCAB, (1, 16))
    with torch.no_grad():
        assert (model(ids, fixed_depth=3).logits - loaded(ids, fixed_depth=3).logits).abs().max() < 5e-2


def test_load_by_name_from_checkpoint_root(saved, monkeypatch):
    _, folder = saved
    monkeypatch.setenv("MOR_CHECKPOINTS", str(folder.parent))
    model, _ = mor.load("ckpt", device="auto")
    assert model.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert folder in mor.list_checkpoints()


def test_missing_folder_names_what_exists(saved, monkeypatch):
    monkeypatch.setenv("MOR_CHECKPOINTS", str(saved[1].parent))
    with pytest.raises(CheckpointError, match="No checkpoint folder named 'nope'.*ckpt"):
        mor.load("nope")


def test_missing_weights(saved):
    (saved[1] / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model.safetensors is missing"):
        mor.load(saved[1])


def test_truncated_weights(saved):
    path = saved[1] / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors is not a readable safetensors file"):
        mor.load(saved[1])


class Boom:
    """Unpickling this would run code; the loader must never do it."""

    def __reduce__(self):
        return (exec, ("raise SystemExit('unpickled!')",))


def test_pickle_is_never_loaded(saved):
    folder = saved[1]
    (folder / "model.safetensors").unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Boom()))
    with pytest.raises(CheckpointError, match="pickle format this project never loads"):
        mor.load(folder)
    # a pickle disguised under the safetensors name is rejected by the parser, not executed
    shutil.move(folder / "pytorch_model.bin", folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        mor.load(folder)


def test_config_that_does_not_match_weights(saved):
    folder = saved[1]
    cfg = json.loads((folder / "config.json").read_text())
    cfg["intermediate_size"] = 48
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match config.json: shape mismatches: .*mlp"):
        mor.load(folder)
    cfg.update(intermediate_size=64, num_hidden_layers=10, num_recursions=4,
               capacities=[1.0, 0.75, 0.5, 0.25], router_threshold=[0.5] * 3)
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match config.json: missing .*router"):
        mor.load(folder)


@pytest.mark.parametrize("content,message", [
    ("{not json", "not valid JSON"),
    ('{"model_type": "llama"}', "model_type 'llama'; expected 'mor'"),
    ('{"model_type": "mor", "sharing": "ring"}', "invalid configuration: sharing='ring'"),
])
def test_broken_config(saved, content, message):
    (saved[1] / "config.json").write_text(content)
    with pytest.raises(CheckpointError, match=message):
        mor.load(saved[1])


def test_tokenizer_that_does_not_match(saved, tmp_path):
    folder = saved[1]
    cfg = json.loads((folder / "config.json").read_text())
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["model"]["vocab"]["zzqx"] = 400  # a token id the model has no embedding for
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(CheckpointError, match="tokenizer.json has .* tokens but the model's vocab_size is 300"):
        mor.load(folder)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer.json is missing"):
        mor.load(folder)
    assert cfg["vocab_size"] == VOCAB


@pytest.mark.parametrize("device,message", [("tpu", "unknown device 'tpu'"), ("meta", "not supported")]
                         + ([] if torch.cuda.is_available() else [("cuda", "asked for CUDA")]))
def test_bad_device_is_a_clear_error(saved, device, message):
    with pytest.raises(ValueError, match=message):
        mor.load(saved[1], device=device)
