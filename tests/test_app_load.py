"""Load: the heatmap page rerun 100 times with 100 different texts (Streamlit's AppTest, in this
process) must not keep growing the process's memory.

Resident set size (psutil when installed, else VmRSS from /proc/self/status) is read after a
warm-up of 10 reruns and again after the 100 measured ones. Every text is new, so each rerun
runs the model and adds an entry to the page's trace cache (capped at 256 entries); the bound
of 150 MiB is generous on purpose: it catches a leak of models, tensors or pages, not noise.
Run with `-s` to see the numbers (docs/reliability.md records them).
"""

from __future__ import annotations

import gc
import time
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

MAIN = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
WARMUP, RERUNS, BOUND_MIB = 10, 100, 150
WORDS = ("river", "mountain", "engine", "harvest", "lantern", "orbit", "violin", "granite", "meadow", "signal")


def rss_mib() -> float:
    """This process's resident set size in MiB."""
    try:
        import psutil
    except ImportError:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        pytest.skip("no psutil and no /proc/self/status: cannot read the resident set size")
    return psutil.Process().memory_info().rss / 2**20


def text_for(i: int) -> str:
    """A different sentence for every i (roughly 20-40 tokens)."""
    a, b, c = WORDS[i % 10], WORDS[(i // 10) % 10], WORDS[(i * 7 + 3) % 10]
    return (f"Run {i}: the {a} near the {b} was quiet until the {c} began, "
            f"and by evening {i * 37 % 1000} people had come to see it.")


@pytest.mark.slow
def test_heatmap_reruns_do_not_grow_memory(checkpoint_name):
    name = checkpoint_name
    at = AppTest.from_file(MAIN, default_timeout=120)
    at.query_params.update(ckpt=name)
    at.run()
    start_rss = rss_mib()
    for i in range(WARMUP):
        at.text_area[0].set_value(f"Warm-up {i}: " + text_for(1000 + i)).run()
    gc.collect()
    warm_rss = rss_mib()

    samples, started = [], time.perf_counter()
    for i in range(RERUNS):
        text = text_for(i)
        at.text_area[0].set_value(text).run()
        assert not at.exception, f"rerun {i}: {[e.value for e in at.exception]}"
        assert at.query_params["text"] == text, f"rerun {i}: the page shows another text"
        tokens = [m.value for m in at.metric if m.label == "Tokens"]
        assert tokens and int(tokens[0]) == sum(h.proto.body.count('class="mor-tok"') for h in at.html) > 10
        if i % 10 == 9:
            samples.append(round(rss_mib(), 1))
    elapsed = time.perf_counter() - started
    gc.collect()
    end_rss = rss_mib()
    growth = end_rss - warm_rss
    print(f"\nheatmap x{RERUNS} ({name}): RSS {start_rss:.1f} MiB after the first run, {warm_rss:.1f} after "
          f"{WARMUP} warm-up reruns, {end_rss:.1f} after {RERUNS} more (growth {growth:+.1f} MiB); "
          f"every 10 reruns: {samples}; {1000 * elapsed / RERUNS:.0f} ms per rerun")
    assert growth < BOUND_MIB, f"RSS grew {growth:.1f} MiB over {RERUNS} reruns (samples {samples})"
