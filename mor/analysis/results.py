"""Regenerate docs/results.md and its plots from the shipped checkpoints.

    mor results --data data --out docs

For every checkpoint under checkpoints/: parameters, training tokens and FLOPs, validation NLL
and perplexity with causal routing, NLL at every depth cap 1..N_r, mean depth, KV bytes per
strategy on one validation window, and, for routed models, how the router's depths relate to
how hard each token is (its NLL under the vanilla checkpoint). Every number is measured by this
command on the validation split that `mor data` rebuilds.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch

from .. import analysis
from ..model.loading import list_checkpoints, load, load_config
from ..data.windows import TokenData
from ..model.card import model_card

PAPER = {
    "vanilla": "Paper baseline: vanilla 360M Llama (315M params), few-shot avg 42.3% at equal FLOPs.",
    "recursive-r3": "Paper: recursive baselines (sharing without routing) trail vanilla slightly at equal FLOPs.",
    "mor-ec-r3": "Paper (360M, equal FLOPs): MoR expert-choice beats vanilla with ~half the unique params "
                 "(N_r=2: 167M params, NLL ~2.75, 43.1% vs 42.3%); recursion-wise caching ~50% less KV memory.",
    "mor-tc-r3": "Paper: token-choice trails expert-choice (load imbalance), still competitive with vanilla.",
    "mor-ec-r3-kvshare": "Paper: recursive KV sharing saves more memory and prefill compute, small quality drop.",
    "mor-ec-r4": "Paper: N_r=4 gives the largest throughput gain (up to 2.06x) at a small quality cost.",
    "mor-ec-r3-lean": "Not in the paper (its expert-choice capacities for N_r=3 are 3/3, 2/3, 1/3): capacities "
                      "1, 1/3, 1/6 (mean depth 1.5) aim at decode speed; see docs/performance.md.",
    "mor-ec-r3-sparse": "Not in the paper: capacities 1, 1/6, 1/12 (mean depth 1.25), the fastest router here.",
}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties)."""
    def ranks(x):
        order = x.argsort(kind="stable")
        r = np.empty(len(x))
        r[order] = np.arange(len(x))
        for value in np.unique(x):  # average the ranks of tied values
            tied = x == value
            r[tied] = r[tied].mean()
        return r
    ra, rb = ranks(a), ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1]) if ra.std() > 0 and rb.std() > 0 else float("nan")


@torch.no_grad()
def token_nll_and_depths(model, windows: torch.Tensor, batch: int = 16, **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Per-token NLL (N, T-1) and depths (N, T) over fixed windows."""
    nlls, depths = [], []
    for i in range(0, len(windows), batch):
        x = windows[i:i + batch].to(model.device)
        out = model(x, use_cache=False, **kwargs)
        logp = torch.log_softmax(out.logits[:, :-1], -1)
        nlls.append((-logp.gather(-1, x[:, 1:, None])[..., 0]).cpu())
        depths.append(out.depths.cpu())
    return torch.cat(nlls).numpy(), torch.cat(depths).numpy()


def measure(name: str, windows: torch.Tensor, kv_text: str, vanilla_nll: np.ndarray | None) -> tuple[dict, np.ndarray]:
    """One checkpoint's table row, and its per-token validation NLL."""
    model, tokenizer = load(name, device="cpu")
    cfg = model.config
    R = cfg.num_recursions
    nll, depth = token_nll_and_depths(model, windows)
    row = {"name": name, "routing": cfg.routing, "sharing": cfg.sharing, "kv_cache": cfg.kv_cache, "R": R,
           "L": cfg.num_hidden_layers, "unique_params": model.num_parameters(),
           "effective_params": model.num_effective_parameters(), "val_nll": float(nll.mean()),
           "mean_depth": float(depth.mean()), "depth_hist": [int((depth == d).sum()) for d in range(1, R + 1)]}
    row["cap_nll"] = {}
    for cap in range(1, R + 1):
        row["cap_nll"][cap] = float(token_nll_and_depths(model, windows, depth_cap=cap)[0].mean())
    if cfg.routing != "none":
        row["fixed_full_nll"] = float(token_nll_and_depths(model, windows, fixed_depth=R)[0].mean())
        cap_nll, cap_depth = token_nll_and_depths(model, windows, routing_mode="capacity")
        row["capacity_mode_nll"] = float(cap_nll.mean())
        row["causal_capacity_agreement"] = float((cap_depth == depth).mean())
        # Two readings of "hard": the token's own surprisal (NLL of predicting it from its prefix),
        # and the difficulty of what the position must predict (the next token's NLL), which is
        # the job the position's recursions actually serve. Both under the model and under vanilla.
        own, nxt = depth[:, 1:].reshape(-1).astype(float), depth[:, :-1].reshape(-1).astype(float)
        row["spearman_depth_own_nll"] = spearman(own, nll.reshape(-1))
        row["spearman_depth_next_nll"] = spearman(nxt, nll.reshape(-1))
        if vanilla_nll is not None:
            row["spearman_depth_vanilla_own_nll"] = spearman(own, vanilla_nll.reshape(-1))
            row["spearman_depth_vanilla_next_nll"] = spearman(nxt, vanilla_nll.reshape(-1))
        # does depth vary within a window (a stand-in for a sentence)?
        row["within_window_depth_std"] = float(depth.std(axis=1).mean())
    kv = analysis.kv_report(model, tokenizer, kv_text)
    row["kv_tokens"] = kv.tokens
    row["kv_bytes"] = kv.totals()
    row["kv_formula_ok"] = all(kv.measured[s] == kv.formula[s] for s in kv.measured)
    return row, nll


def save_figure(fig, path: Path) -> str:
    """Lay out, save as PNG, free the figure; returns the file name (shared with `mor bench`)."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def finish_plot(fig, ax, path: Path) -> str:
    """Legend, grid, then `save_figure`."""
    ax.legend()
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def write_plots(rows: list[dict], out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        info = json.loads((r["path"] / "training.json").read_text())
        curve = np.array(info["loss_curve"], dtype=float)
        if len(curve):
            flops_per_token = info["training_flops"] / max(1, info["tokens_seen"])
            smooth = np.convolve(curve[:, 2], np.ones(9) / 9, mode="valid")
            ax.plot(curve[4:4 + len(smooth), 1] * flops_per_token, smooth, label=r["name"])
    ax.set_xlabel("training FLOPs")
    ax.set_ylabel("training loss (9-point moving average)")
    ax.set_ylim(top=7.0)
    files.append(finish_plot(fig, ax, out / "loss_curves.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in rows:
        if r["R"] > 1:
            caps = sorted(r["cap_nll"])
            ax.plot(caps, [r["cap_nll"][c] for c in caps], marker="o", label=r["name"])
    vanilla = [r for r in rows if r["R"] == 1]
    for r in vanilla:
        ax.axhline(r["val_nll"], color="gray", linestyle="--", label=f"{r['name']} (no recursion)")
    ax.set_xlabel("depth cap (max recursions per token)")
    ax.set_ylabel("validation NLL")
    ax.set_xticks(range(1, 1 + max(r["R"] for r in rows)))
    files.append(finish_plot(fig, ax, out / "nll_vs_depth_cap.png"))
    return files


def claims(rows: list[dict]) -> list[str]:
    """The suite's three claims, each stated as holding or not from the measured rows."""
    def verdict(ok: bool) -> str:
        return "holds" if ok else "does NOT hold"

    out = []
    base = next((r for r in rows if r["name"] == "vanilla"), None)
    for r in rows:
        if r["routing"] == "none":
            continue
        parts = []
        if base:
            gap = r["val_nll"] / base["val_nll"] - 1
            ratio = r["unique_params"] / base["unique_params"]
            parts.append(f"NLL within 2% of vanilla or below: {verdict(gap <= 0.02)} ({100 * gap:+.1f}% with "
                         f"{100 * ratio:.0f}% of vanilla's unique parameters)")
        caps = [r["cap_nll"][k] for k in sorted(r["cap_nll"])]
        falling = all(b <= a + 1e-4 for a, b in zip(caps, caps[1:])) and caps[-1] < caps[0]
        parts.append(f"NLL falls as the depth cap rises: {verdict(falling)} ({' > '.join(f'{c:.3f}' for c in caps)})")
        own, nxt = r.get("spearman_depth_vanilla_own_nll"), r.get("spearman_depth_vanilla_next_nll")
        strongest = max((c for c in (own, nxt) if c is not None), key=abs, default=None)
        nontrivial = r["within_window_depth_std"] > 0.3 and strongest is not None and abs(strongest) > 0.1
        parts.append("router not trivial (depth varies within windows and |Spearman| of depth with the vanilla "
                     f"NLL of the token or of its next token > 0.1): {verdict(nontrivial)} (std "
                     f"{r['within_window_depth_std']:.2f}, own {own:+.2f}, next {nxt:+.2f})"
                     if own is not None else f"router not trivial: n/a (no vanilla checkpoint)")
        out.append(f"- **{r['name']}**: " + "; ".join(parts) + ".")
    return out


def render(rows: list[dict], val_tokens: int, kv_tokens: int) -> str:
    lines = [
        "# Results", "",
        "Regenerated by `mor results --data data --out docs` from the checkpoints in `checkpoints/` "
        f"(validation: {val_tokens:,} tokens of `data/val.txt` in 256-token windows, causal routing unless "
        "stated). The training runs come from `bash scripts/train_suite.sh`: every model gets the same "
        "training-FLOPs budget on the same data and tokenizer.", "",
        "## Summary", "",
        "| checkpoint | routing | N_r | unique params | effective params | tokens seen | training FLOPs | val NLL | vs vanilla | val PPL | mean depth |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base = next((r["val_nll"] for r in rows if r["name"] == "vanilla"), None)
    for r in rows:
        delta = f"{100 * (r['val_nll'] / base - 1):+.1f}%" if base else "n/a"
        lines.append(f"| {r['name']} | {r['routing']} | {r['R']} | {r['unique_params'] / 1e6:.2f}M | "
                     f"{r['effective_params'] / 1e6:.2f}M | {r['tokens_seen'] / 1e6:.2f}M | {r['training_flops']:.2e} | "
                     f"{r['val_nll']:.4f} | {delta} | {math.exp(r['val_nll']):.1f} | {r['mean_depth']:.2f} |")
    lines += ["", "![training loss against FLOPs](loss_curves.png)", "",
              "## NLL at every depth cap", "",
              "Test-time scaling: the same weights with no token allowed more than k recursions. "
              "\"full\" forces every token to N_r recursions; \"top-k\" is the training-time capacity routing "
              "(looks at the whole window, so it cannot decode).", "",
              "| checkpoint | " + " | ".join(f"cap {k}" for k in range(1, 5)) + " | router (causal) | full | top-k | causal = top-k depth |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["R"] == 1:
            continue
        caps = [f"{r['cap_nll'][k]:.4f}" if k in r["cap_nll"] else "" for k in range(1, 5)]
        extra = ([f"{r['fixed_full_nll']:.4f}", f"{r['capacity_mode_nll']:.4f}", f"{100 * r['causal_capacity_agreement']:.1f}%"]
                 if "fixed_full_nll" in r else [f"{r['cap_nll'][r['R']]:.4f}", "", ""])
        lines.append(f"| {r['name']} | " + " | ".join(caps) + f" | {r['val_nll']:.4f} | " + " | ".join(extra) + " |")
    lines += ["", "![validation NLL against the depth cap](nll_vs_depth_cap.png)", "",
              "## Do the routers mean anything?", "",
              "Spearman rank correlation between a token's depth and how hard it is, measured by NLL under the "
              "vanilla checkpoint (independent of the router) and under the model itself. *Own*: the surprisal of "
              "the token itself; *next*: the NLL of the token that position has to predict. Within-window std: "
              "how much depth varies inside each 256-token window (0 would mean one depth per text).", "",
              "| checkpoint | depth histogram (1..N_r) | within-window depth std | own, vanilla NLL | next, vanilla NLL | own, model NLL | next, model NLL |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["routing"] == "none":
            continue
        hist = " / ".join(f"{100 * h / sum(r['depth_hist']):.0f}%" for h in r["depth_hist"])
        cells = [r.get(k) for k in ("spearman_depth_vanilla_own_nll", "spearman_depth_vanilla_next_nll",
                                    "spearman_depth_own_nll", "spearman_depth_next_nll")]
        lines.append(f"| {r['name']} | {hist} | {r['within_window_depth_std']:.3f} | "
                     + " | ".join("n/a" if c is None else f"{c:+.3f}" for c in cells) + " |")
    lines += ["", "## KV-cache bytes per strategy", "",
              f"Measured after a prefill of one {kv_tokens}-token validation window (float32), by reading the cache; "
              "\"full\" is every token at full depth (the recursive baseline), \"recursion-wise\" and \"shared\" "
              "use the router's depths. The closed-form count from the token counts matches every measurement "
              "where marked ✓.", "",
              "| checkpoint | full | recursion-wise | shared | recursion-wise / full | formula |", "|---|---|---|---|---|---|"]
    for r in rows:
        kv = r["kv_bytes"]
        lines.append(f"| {r['name']} | {kv['full'] / 1024:.0f} KiB | {kv['recursion_wise'] / 1024:.0f} KiB | "
                     f"{kv['shared'] / 1024:.0f} KiB | {kv['recursion_wise'] / kv['full']:.2f} | "
                     f"{'✓' if r['kv_formula_ok'] else '✗'} |")
    lines += ["", "## Claims checked on these numbers", ""] + claims(rows)
    lines += ["", "## Choices behind these checkpoints", "",
              "- All models: d_model 256, 4 query / 2 key-value heads, SwiGLU 704, vocab 8192 (byte-level BPE), "
              "8 effective layers (10 for N_r = 4), Middle-Cycle sharing for the recursive ones, 256-token "
              "sequences (also their context window), AdamW (0.9, 0.95), weight decay 0.1, peak lr 2e-3, "
              "warmup-stable-decay, batch 16, one CPU thread each.",
              "- Routed models use `router_gate=straight_through`: a kept token's update is applied at full "
              "size while the router still gets the gate's gradient. With the paper's 0.1 x sigmoid gate a "
              "straightforward run at this scale damped the recursions so much that depth stopped mattering "
              "(see shared/mor-facts.md); the paper's gate is still available (`router_gate=scaled`).",
              "- Expert-choice BCE weight 0.01 (paper 0.001), and after training each causal threshold is "
              "calibrated on validation windows so that the fraction of candidates passing it equals the "
              "trained capacity ratio (stored in config.json, `router_threshold`); the column "
              "\"causal = top-k depth\" above shows how often the causal rule reproduces top-k.",
              "- mor-ec-r3-lean and mor-ec-r3-sparse are mor-ec-r3 with capacities 1, 1/3, 1/6 and 1, 1/6, 1/12 "
              "instead of 1, 2/3, 1/3 (one token in three, or six, takes a second recursion), so decoding runs "
              "fewer passes per token (the speed side is in docs/performance.md). At this budget every model "
              "sees less than one epoch, so a cheaper token buys more training steps: the shallower routers "
              "reach lower NLL mostly because they see more tokens (compare their cap-1 NLL, which already "
              "beats mor-ec-r3's full router), not because fewer recursions are better per token.",
              "- Equal training FLOPs (3 x forward, active tokens only, attention included) means models that "
              "skip work see more tokens: compare the \"tokens seen\" column."]
    lines += ["", "## What the paper reports for the same comparisons", ""]
    for r in rows:
        if r["name"] in PAPER:
            lines.append(f"- **{r['name']}**: {PAPER[r['name']]}")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    from transformers import PreTrainedTokenizerFast

    folders = list_checkpoints()
    if not folders:
        raise ValueError("no checkpoints found under checkpoints/.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folders[0]), local_files_only=True)
    val = TokenData.from_text_file(Path(args.data) / "val.txt", tokenizer)
    windows = val.fixed_windows(args.windows, 256)
    kv_text = tokenizer.decode(val.ids[: args.kv_tokens].tolist())
    if args.threads:
        torch.set_num_threads(args.threads)
    vanilla_nll = None
    order = sorted(folders, key=lambda p: (p.name != "vanilla", p.name))
    rows = []
    for folder in order:
        row, nll = measure(folder.name, windows, kv_text, vanilla_nll)
        info = json.loads((folder / "training.json").read_text())
        row.update(path=folder, tokens_seen=info["tokens_seen"], training_flops=info["training_flops"])
        if folder.name == "vanilla":
            vanilla_nll = nll
        # keep the model cards in step with this code
        (folder / "README.md").write_text(model_card(folder.name, load_config(folder), info))
        rows.append(row)
        print(f"{folder.name}: val nll {row['val_nll']:.4f}, mean depth {row['mean_depth']:.2f}")
    plots = write_plots(rows, out)
    (out / "results.md").write_text(render(rows, int(windows[:, 1:].numel()), args.kv_tokens), encoding="utf-8")
    (out / "results.json").write_text(json.dumps([{k: v for k, v in r.items() if k != "path"} for r in rows], indent=2))
    print(f"wrote {out / 'results.md'}, {out / 'results.json'} and {', '.join(plots)}")
    return 0


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("results", help="regenerate docs/results.md and plots from the shipped checkpoints",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="data", help="folder written by `mor data` (val.txt is used)")
    p.add_argument("--out", default="docs", help="where results.md, results.json and the PNG plots go")
    p.add_argument("--windows", type=int, default=128, help="validation windows of 256 tokens")
    p.add_argument("--kv-tokens", type=int, default=512, help="tokens in the window used for KV-cache bytes")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.set_defaults(func=run)
