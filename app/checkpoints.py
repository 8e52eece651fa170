"""The checkpoints the app can show: which there are, the cached loader every page shares, and the
one summary of a checkpoint's facts (`checkpoint_info`) that pages build their controls from."""

from __future__ import annotations

import streamlit as st

import mor
from mor.model.configuration import MoRConfig
from mor.model.loading import load_config


def checkpoint_names() -> list[str]:
    return [p.name for p in mor.list_checkpoints()]


@st.cache_resource(show_spinner="Loading checkpoint…")
def _load_model(name: str):
    return mor.load(name, device="auto")


def get_model(name: str):
    """(model, tokenizer), loaded once per server and shared by every session: never mutate it.
    A checkpoint that cannot be loaded stops the page with the loader's message (which names the
    file and the problem) instead of a traceback; failures are not cached, so a fixed folder loads
    on the next rerun."""
    try:
        return _load_model(name)
    except mor.CheckpointError as err:
        st.error(f"Checkpoint {name!r} cannot be loaded: {err}")
        st.stop()


def _facts(cfg: MoRConfig) -> dict:
    return {"routing": cfg.routing, "num_recursions": cfg.num_recursions, "context": cfg.max_position_embeddings,
            "kv_cache": cfg.kv_cache, "sharing": cfg.sharing, "layers": cfg.num_hidden_layers,
            "unique_layers": cfg.num_unique_layers, "tied": cfg.tie_word_embeddings}


@st.cache_data(show_spinner=False)
def _config_facts(name: str) -> dict:
    return _facts(load_config(mor.resolve_checkpoint(name)))


def checkpoint_info(name: str, load: bool = True) -> dict:
    """The facts of a checkpoint the pages need: routing, num_recursions, context (the window),
    kv_cache, sharing, layers, unique_layers and tied (embeddings).

    load=True (the checkpoint a page shows): the model is loaded first, through `get_model`, so one
    that cannot be loaded stops the page with the loader's message before its controls are drawn.
    load=False (checkpoints only listed or offered): read from config.json alone, without loading
    weights; raises `mor.CheckpointError` when that file cannot be read."""
    if load:
        return _facts(get_model(name)[0].config)
    return _config_facts(name)


def readable_infos(names: list[str]) -> dict[str, dict]:
    """`checkpoint_info(name, load=False)` of each checkpoint whose config can be read; the others
    (say, one still being written by a training run) are left out rather than breaking the page."""
    out = {}
    for name in names:
        try:
            out[name] = checkpoint_info(name, load=False)
        except mor.CheckpointError:
            continue
    return out


def default_comparison(names: list[str], current: str) -> int:
    """Index into ["(none)", *others] of the first vanilla checkpoint (no router, one
    recursion: a plain Transformer) other than `current`, or 0 for "(none)"."""
    others = [n for n in names if n != current]
    infos = readable_infos(others)
    for i, name in enumerate(others):
        info = infos.get(name)
        if info and info["routing"] == "none" and info["num_recursions"] == 1:
            return i + 1
    return 0


@st.cache_data(show_spinner=False)
def parameter_counts(name: str) -> dict:
    """Parameters stored (each shared layer once) and of the unrolled model (once per use)."""
    model, _ = get_model(name)
    return {"unique": model.num_parameters(), "effective": model.num_effective_parameters()}
