"""MoR Lens app entry: `streamlit run app/main.py`. Navigation only; pages live in app_pages/ and
import the package's modules as `from app import ...` (the package convention: app/__init__.py)."""

from pathlib import Path

import streamlit as st

st.set_page_config(page_title="MoR Lens", page_icon="🔁", layout="wide")

PAGES = Path(__file__).resolve().parent / "app_pages"
# The default page is served at "/"; its own url_path only has to differ from the redirect below.
HEATMAP = st.Page(PAGES / "heatmap.py", title="Depth heatmap", icon="🌡️", default=True, url_path="depth-heatmap")
st.navigation({
    "Explore": [
        HEATMAP,
        st.Page(PAGES / "scaling.py", title="Test-time scaling", icon="🎚️", url_path="scaling"),
        st.Page(PAGES / "kv_memory.py", title="KV cache memory", icon="🧠", url_path="kv-memory"),
        st.Page(PAGES / "throughput.py", title="Live throughput", icon="⚡", url_path="throughput"),
        st.Page(PAGES / "compare.py", title="Compare", icon="⚖️", url_path="compare"),
        st.Page(PAGES / "corpus.py", title="Corpus statistics", icon="📊", url_path="corpus-stats"),
    ],
    "Learn": [
        st.Page(PAGES / "learn.py", title="How MoR works", icon="🎓", url_path="learn"),
        # Links to /heatmap open the default page instead of Streamlit's "Page not found".
        st.Page(lambda: st.switch_page(HEATMAP, query_params=st.query_params.to_dict()), title="Depth heatmap",
                url_path="heatmap", visibility="hidden"),
    ],
}).run()
