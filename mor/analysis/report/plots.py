"""The reports' PNG plots, drawn from the same data as their tables (matplotlib, Agg backend)."""

from __future__ import annotations

from pathlib import Path

SERVING_PLOT = "perf_serving.png"


def figure(width: float = 7, height: float = 4, ncols: int = 1, **kwargs):
    """(fig, ax or axes) on the Agg backend."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(1, ncols, figsize=(width, height), **kwargs)


def save_figure(fig, path: Path) -> str:
    """Lay out, save as PNG, free the figure; returns the file name."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def finish_axes(ax, xlabel: str, ylabel: str) -> None:
    """Labels, legend and grid of one panel."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


# --------------------------------------------------------------------------- mor results


def results_plots(data: dict, out: Path) -> dict[str, str]:
    """NLL against the depth cap, and probe accuracy against the depth cap; {kind: file name}."""
    rows = data["rows"]
    files = {}
    fig, ax = figure()
    for r in rows:
        if r["R"] > 1:
            caps = sorted(r["cap_nll"], key=int)
            ax.plot([int(c) for c in caps], [r["cap_nll"][c] for c in caps], marker="o", label=r["name"])
    for r in rows:
        if r["R"] == 1:
            ax.axhline(r["val_nll"], color="gray", linestyle="--", label=f"{r['name']} (no recursion)")
    ax.set_xticks(range(1, 1 + max(r["R"] for r in rows)))
    finish_axes(ax, "depth cap (max recursions per token)", "validation NLL (nats per token)")
    files["depth_cap"] = save_figure(fig, out / "nll_vs_depth_cap.png")

    fig, ax = figure()
    for r in rows:
        by_cap = r["probe"]["by_cap"]
        caps = sorted(by_cap, key=int)
        style = "-" if r["probe"]["trained_on_format"] else ":"
        ax.plot([int(c) for c in caps], [100 * by_cap[c]["accuracy"] for c in caps], style, marker="o", label=r["name"])
    ax.set_xticks(range(1, 1 + max(r["R"] for r in rows)))
    finish_axes(ax, "depth cap (max recursions per token)", "exact-match accuracy on fresh problems (%)")
    files["probe"] = save_figure(fig, out / "probe_vs_depth_cap.png")
    return files


# --------------------------------------------------------------------------- mor bench


def _by(rows: list[dict], x: str, **match) -> list[dict]:
    """The rows matching every key=value of `match`, sorted by `x`."""
    return sorted((r for r in rows if all(r[k] == v for k, v in match.items())), key=lambda r: r[x])


def decode_vs_batch_plot(report: dict, out_dir: Path) -> str:
    """Decode tokens/s against the batch size, one panel per decoding path."""
    res, m = report["results"], report["meta"]
    names = sorted({r["checkpoint"] for r in res if r["checkpoint"] != "llama"})
    paths = [p for p in m["paths"] if p != "llama"]
    fig, axes = figure(5 * len(paths), 4.2, ncols=len(paths), sharey=True, squeeze=False)
    llama = _by(res, "batch_size", checkpoint="llama")
    for ax, path in zip(axes[0], paths):
        for name in names:
            rows = _by(res, "batch_size", checkpoint=name, path=path)
            ax.plot([r["batch_size"] for r in rows], [r["decode_tokens_per_second"] for r in rows], "o-", label=name)
        if llama:
            ax.plot([r["batch_size"] for r in llama], [r["decode_tokens_per_second"] for r in llama], "k--",
                    label="HF Llama (same dims)")
        ax.set_xscale("log", base=2)
        ax.set_title(m["path_titles"].get(path, path), fontsize=10)
        ax.set_xlabel("batch size")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("decode tokens / s")
    axes[0][0].legend(fontsize=8)
    return save_figure(fig, out_dir / "perf_decode_vs_batch.png")


def cost_growth_plot(report: dict, out_dir: Path) -> str:
    """Trace seconds against sequence length, and engine decode ms per token against context."""
    g, target = report["growth"], report["targets"]["thresholds"]
    fig, axes = figure(11, 4.2, ncols=2)
    for name in sorted({t["checkpoint"] for t in g["trace"]}):
        rows = _by(g["trace"], "seq_len", checkpoint=name)
        axes[0].plot([t["seq_len"] for t in rows], [t["seconds"] for t in rows], "o-", label=name)
    axes[0].axhline(target["trace_seconds"], color="r", ls=":",
                    label=f"{target['trace_seconds']} s target ({target['trace_tokens']:,} tokens)")
    finish_axes(axes[0], "sequence length (tokens)", "trace seconds (forward + depths + scores + NLL)")
    for name in sorted({t["checkpoint"] for t in g["decode"]}):
        for b in sorted({t["batch_size"] for t in g["decode"]}):
            rows = _by(g["decode"], "context", checkpoint=name, batch_size=b)
            axes[1].plot([t["context"] for t in rows], [t["ms_per_token_per_request"] / b for t in rows], "o-",
                         label=f"{name}, batch {b}")
    finish_axes(axes[1], "context length (tokens)", "engine decode ms per token")
    return save_figure(fig, out_dir / "perf_cost_growth.png")


def serving_plot(report: dict, out_dir: Path) -> str:
    """Serving tokens/s (wall, prefill included) against the width: one line per checkpoint on the
    engine, transformers' Llama generate dashed."""
    rows = report["serving"]["rows"]
    fig, ax = figure(7, 4.2)
    for name in sorted({r["checkpoint"] for r in rows if r["checkpoint"] != "llama"}):
        mine = _by(rows, "width", checkpoint=name)
        ax.plot([r["width"] for r in mine], [r["tokens_per_second"] for r in mine], "o-", label=f"{name} (engine)")
    llama = _by(rows, "width", checkpoint="llama")
    if llama:
        ax.plot([r["width"] for r in llama], [r["tokens_per_second"] for r in llama], "k--", marker="s",
                label="HF Llama generate (same dims)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    s = report["serving"]
    ax.set_title(f"{s['requests_per_slot']}W requests, {s['prompt_len']} + {s['new_tokens']} tokens", fontsize=10)
    finish_axes(ax, "width W (rows per pass / static batch)", "tokens / s (wall, prefill included)")
    return save_figure(fig, out_dir / SERVING_PLOT)


def performance_plots(report: dict, out_dir: Path) -> list[str]:
    """The plots of docs/performance.md; their file names."""
    files = [serving_plot(report, out_dir)] if (report.get("serving") or {}).get("rows") else []
    files.append(decode_vs_batch_plot(report, out_dir))
    if report["growth"]["trace"] or report["growth"]["decode"]:
        files.append(cost_growth_plot(report, out_dir))
    return files
