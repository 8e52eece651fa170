"""The `mor` command line: one subcommand per job, each defined next to the code it runs.

    mor list [--json]                     shipped checkpoints and their metadata
    mor data --out data                   build the corpus and tokenizer (mor/data/cli.py)
    mor train --preset mor-ec-r3 ...      train a checkpoint (mor/training/loop.py)
    mor eval / trace / probe              evaluate, trace and probe a checkpoint (mor/analysis/cli.py)
    mor lens / gain / stats               what each recursion changed, where depth helped, depth over a corpus
    mor results --out docs                regenerate docs/results.md (mor/analysis/results.py)
    mor bench --json                      decode/prefill benchmark, docs/performance.md (mor/analysis/bench/)

Errors a user can cause (bad flags, missing files, broken checkpoints) print one clear line on
stderr and exit non-zero; they never show a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from .analysis import bench, cli as analysis_cli, results
from .model import loading
from .training import loop as train
from .data import cli as data_cli


def cmd_list(args: argparse.Namespace) -> int:
    rows = []
    for folder in loading.list_checkpoints():
        try:
            config = loading.load_config(folder)
        except loading.CheckpointError as err:
            rows.append({"name": folder.name, "path": str(folder), "error": str(err)})
            continue
        info = {}
        if (folder / "training.json").is_file():
            info = json.loads((folder / "training.json").read_text(encoding="utf-8"))
        rows.append({
            "name": folder.name, "path": str(folder), "routing": config.routing, "sharing": config.sharing,
            "kv_cache": config.kv_cache, "num_recursions": config.num_recursions,
            "num_hidden_layers": config.num_hidden_layers, "hidden_size": config.hidden_size,
            "unique_parameters": info.get("unique_parameters"), "effective_parameters": info.get("effective_parameters"),
            "tokens_seen": info.get("tokens_seen"), "val_nll": info.get("final_val_nll"),
        })
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("No checkpoints found (looked in: " + ", ".join(map(str, loading.checkpoint_roots())) + ").")
        return 0
    for r in rows:
        if "error" in r:
            print(f"{r['name']:<22} unreadable: {r['error']}")
            continue
        params = f"{r['unique_parameters'] / 1e6:.2f}M" if r["unique_parameters"] else "?"
        nll = f"{r['val_nll']:.3f}" if r["val_nll"] is not None else "?"
        print(f"{r['name']:<22} {r['routing']:<14} {r['sharing']:<16} N_r={r['num_recursions']} "
              f"L={r['num_hidden_layers']} kv={r['kv_cache']:<15} params={params:<7} val_nll={nll}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mor", description="MoR Lens: train, evaluate and trace Mixture-of-Recursions models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = sub.add_parser("list", help="list the checkpoints found under checkpoints/ with their metadata")
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    p.set_defaults(func=cmd_list)
    data_cli.register_cli(sub)
    train.register_cli(sub)
    analysis_cli.register_cli(sub)
    results.register_cli(sub)
    bench.register_cli(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (loading.CheckpointError, ValueError, FileNotFoundError, OSError) as err:
        print(f"mor {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"mor {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
