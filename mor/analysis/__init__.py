"""What a model does with a text, as plain data (never UI objects): the app and the CLI show these.

`trace` (per-token depth, router scores and NLL over whole texts, evaluation with bits per byte),
`lens` (the recursion lens: each token's prediction after every recursion step; where depth
helped: next-token NLL at every depth cap), `stats` (depth statistics over a corpus by token
class, frequency band, position and token), `kv` (KV-cache bytes per strategy and step), `probe`
(the addition probe), `results` (`mor results`: the suite's measurements), `bench` (`mor bench`: speed, memory and
FLOPs), `report` (renders docs/results.md and docs/performance.md from those two's data, with the
shared plots; it measures nothing), `naive` (the masked full-width decoding path the benchmark
compares against), `cli` (`mor eval`, `mor trace`, `mor lens`, `mor gain`, `mor stats`, `mor probe`).
"""

from .kv import KVReport, kv_report, with_kv_cache
from .lens import DepthGain, Lens, depth_gain, lens, most_changed, readout_logits
from .stats import CorpusPass, corpus_pass, corpus_stats, write_token_counts
from .trace import Trace, encode, evaluate, sanitize, sliding_windows, step_flops, trace, windowed_pass

__all__ = [
    "CorpusPass", "DepthGain", "KVReport", "Lens", "Trace", "corpus_pass", "corpus_stats", "depth_gain", "encode", "evaluate", "kv_report", "lens",
    "most_changed", "readout_logits", "sanitize", "sliding_windows", "step_flops", "trace", "windowed_pass",
    "with_kv_cache", "write_token_counts",
]
