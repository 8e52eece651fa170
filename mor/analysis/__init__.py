"""What a model does with a text, as plain data (never UI objects): the app and the CLI show these.

`trace` (per-token depth, router scores and NLL over whole texts, evaluation with bits per byte),
`kv` (KV-cache bytes per strategy and step), `probe` (the addition probe), `results` (`mor
results`: docs/results.md), `bench` (`mor bench`: docs/performance.md), `cli` (`mor eval`, `mor
trace`, `mor probe`).
"""

from .kv import KVReport, kv_report, with_kv_cache
from .trace import Trace, encode, evaluate, sanitize, sliding_windows, step_flops, trace, windowed_pass

__all__ = [
    "KVReport", "Trace", "encode", "evaluate", "kv_report", "sanitize", "sliding_windows", "step_flops",
    "trace", "windowed_pass", "with_kv_cache",
]
