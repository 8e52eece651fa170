"""The reports, rendered from measured data; nothing here measures.

`results` writes docs/results.md from what `mor results` measured, `performance` writes
docs/performance.md from what `mor bench` measured, `plots` draws both reports' PNGs, and `common`
holds what they share: `Check` (a stated target, the measured value, whether it holds) and number
formatting that keeps words and numbers in agreement. Every sentence that states a result is
built from the numbers it states, so a report cannot say something its own tables contradict.
"""

from .common import Check, checks_heading, relative, shown
from .performance import performance_checks, render_performance
from .plots import figure, performance_plots, results_plots, save_figure
from .results import (PAPER, depth_checks, difficulty_sentence, probe_checks, quality_checks, render_results,
                      router_checks)

__all__ = [
    "PAPER", "Check", "checks_heading", "depth_checks", "difficulty_sentence", "figure", "performance_checks",
    "performance_plots", "probe_checks", "quality_checks", "relative", "render_performance", "render_results",
    "results_plots", "router_checks", "save_figure", "shown",
]
