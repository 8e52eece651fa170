"""MoR Lens, the Streamlit app: `streamlit run app/main.py` (from any folder, once `pip install -e .`
has made `app` importable beside `mor`).

One convention holds for every page and module:

- `main.py` is navigation only: `st.navigation` over the files of `app_pages/`.
- Each page, `app_pages/<page>.py`, is a `main()` of widgets and layout, called on the file's last
  line (Streamlit runs a page file as a script). Its helpers take what they need as arguments; no
  page keeps state in module globals and no page computes.
- Everything a page shows is computed in a module of this package named for what it holds (or in
  `mor.analysis`), so it imports and tests without a running page:

  | module | holds |
  |---|---|
  | `checkpoints` | the checkpoints found, the cached loader, the one summary of a checkpoint's facts |
  | `samples` | the sample texts the text pickers offer |
  | `widgets` | URL-synced widgets (pickers) and the display blocks several pages share |
  | `render` | every piece of HTML the app draws (pure: data in, escaped HTML out), one renderer per kind |
  | `traces` | cached traces and what is derived from them: numbers, tables, the comparison, the scaling sweep |
  | `kv_cache` | KV-cache measurements and the one derivation of which token is cached at which step |
  | `lens_gain` | the recursion lens and "where depth helped": cached calls, tables, value heatmaps, charts |
  | `corpus_stats` | the Corpus statistics page's corpus choice, cached `mor stats` pass, tables and charts |
  | `mechanisms` | the "How MoR works" demonstrations: sharing plans, the two routing rules, depth-wise batching |
  | `live_decode` | the Live throughput page's decode stream and side-by-side speed measurement |

Pages import these as `from app import render, traces` (never through `sys.path` edits).
"""
