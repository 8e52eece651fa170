"""Shared app plumbing: the cached model loader, cached analysis results, and URL-synced
widgets. Compute happens in `mor`; this module only caches it and wires widgets."""

from __future__ import annotations

import streamlit as st

import mor
from mor import analysis

# Text kept in the URL is capped so links stay shareable.
MAX_URL_TEXT = 1500
SAMPLE_TEXTS = {
    "Shakespeare": "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer "
                   "the slings and arrows of outrageous fortune, or to take arms against a sea of troubles.",
    "Encyclopedia": "Photosynthesis is the process by which green plants and some other organisms use sunlight "
                    "to synthesize foods from carbon dioxide and water. It generally involves the green pigment "
                    "chlorophyll and generates oxygen as a by-product.",
    "Numbers and names": "The Treaty of Westphalia was signed in 1648 in the cities of Osnabrück and Münster, "
                         "ending the Thirty Years' War between the Holy Roman Empire and its rivals.",
}


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


@st.cache_data(show_spinner=False, max_entries=256)
def get_trace(name: str, text: str, depth_cap: int | None = None, fixed_depth: int | None = None,
              routing_mode: str = "causal") -> dict:
    model, tokenizer = get_model(name)
    return analysis.trace(model, tokenizer, text, depth_cap=depth_cap, fixed_depth=fixed_depth,
                          routing_mode=routing_mode, checkpoint=name).to_json()


def query_default(key: str, default, cast=str):
    """A value from the URL query, or `default` when absent or malformed."""
    raw = st.query_params.get(key)
    if raw is None:
        return default
    try:
        return cast(raw)
    except (TypeError, ValueError):
        return default


def sync_query(**values) -> None:
    """Write the view's state into the URL so the link reproduces it."""
    for key, value in values.items():
        if value is None or value == "":
            st.query_params.pop(key, None)
        elif key == "text" and len(str(value)) > MAX_URL_TEXT:
            st.query_params.pop(key, None)
        else:
            st.query_params[key] = str(value)


def checkpoint_picker(label: str = "Checkpoint", key: str = "ckpt", container=None) -> str | None:
    """A selectbox of the checkpoints found, synced to the URL query `key`."""
    names = checkpoint_names()
    where = container or st.sidebar
    if not names:
        where.error("No checkpoints found. Train one with `mor train` or set MOR_CHECKPOINTS.")
        return None
    wanted = query_default(key, names[0])
    index = names.index(wanted) if wanted in names else 0
    return where.selectbox(label, names, index=index, key=f"picker_{key}")


def text_picker(key: str = "text", label: str = "Text", height: int = 140) -> str:
    """A sample chooser plus a text area, seeded from the URL query `key`."""
    default = query_default(key, SAMPLE_TEXTS["Shakespeare"])
    sample = st.selectbox("Sample text", ["(your own)", *SAMPLE_TEXTS], key=f"sample_{key}")
    if sample != "(your own)":
        default = SAMPLE_TEXTS[sample]
    return st.text_area(label, value=default, height=height, key=f"area_{key}_{sample}")
