"""The model card (README.md) of a checkpoint folder, written from its config and training.json."""

from __future__ import annotations

from .configuration import MoRConfig


def model_card(name: str, cfg: MoRConfig, info: dict) -> str:
    """A short README for a checkpoint folder, from its config and training.json."""
    lines = [
        f"# {name}", "",
        f"A {'Mixture-of-Recursions' if cfg.routing != 'none' else 'baseline'} causal LM trained on the CPU by "
        f"`mor train --preset {info['preset']}` (MoR Lens).", "",
        "| | |", "|---|---|",
        f"| routing | {cfg.routing} |", f"| sharing | {cfg.sharing} |", f"| KV cache | {cfg.kv_cache} |",
        f"| recursions N_r | {cfg.num_recursions} |", f"| effective layers L | {cfg.num_hidden_layers} |",
        f"| hidden size | {cfg.hidden_size} |",
        f"| unique / effective parameters | {info['unique_parameters']:,} / {info['effective_parameters']:,} |",
        f"| tokens seen | {info['tokens_seen']:,} |", f"| training FLOPs | {info['training_flops']:.3g} |",
        f"| wall time | {info['wall_seconds'] / 60:.1f} min |", f"| validation NLL | {info['final_val_nll']:.4f} |",
        "", "## Training data", "",
    ]
    sources = ((info["corpus"].get("sources") or {}).get("sources")) or {}
    for key, src in sources.items():
        licence = src.get("licence", {})
        lines.append(f"- {key}: `{src['package']}` {src['version']}, {src['used']}. Text licence: "
                     f"{licence.get('text', '?')}; package licence {licence.get('package', '?')}.")
    if not sources:
        lines.append(f"- {info['corpus']['train']}")
    if info.get("probe"):
        probe = info["probe"]
        layout = (", in short runs between snippets of the row's own text (addition_layout in_text)"
                  if info.get("addition_layout") == "in_text" else "")
        lines.append(f"- addition slice: {100 * info.get('addition_share', 0):.0f}% of the training rows are "
                     f"{probe['digits']}-digit addition problems written `{probe['prompt_format']}{probe['answer_format']}`"
                     f"{' (answer reversed)' if probe['answer_reversed'] else ''}{layout}, generated fresh "
                     "(mor/data/addition.py); operands are masked out of the loss. `mor probe` measures it.")
    lines += ["", "A small research model trained for hours on two CPU cores: expect fluent-looking but "
              "unreliable text.", ""]
    return "\n".join(lines)
