"""`mor eval`, `trace`, `lens`, `gain`, `stats` and `probe`: the analysis functions on the command line.

    mor eval --checkpoint mor-ec-r3 --text-file data/val.txt --depth-cap 2 --json
    mor trace --checkpoint mor-ec-r3 --text "To be, or not to be" --json
    mor lens --checkpoint mor-ec-r3 --text "To be, or not to be" --top 5 --json
    mor gain --checkpoint mor-ec-r3 --text "To be, or not to be" --json
    mor stats --checkpoint mor-ec-r3 --text-file data/val.txt --json
    mor stats --checkpoint mor-ec-r3 --count-tokens data/train.txt   # writes token_counts.json
    mor probe --checkpoint mor-ec-r3-probe --depth-cap 1 --json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .. import analysis
from ..model.loading import load, resolve_checkpoint
from . import probe, stats
from .lens import DEFAULT_TOP_K


def positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return number


def read_text(path: str) -> str:
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file} does not exist or is not a file.")
    return file.read_text(encoding="utf-8", errors="replace")


def cmd_eval(args: argparse.Namespace) -> int:
    model, tokenizer = load(args.checkpoint, device=args.device)
    result = analysis.evaluate(model, tokenizer, read_text(args.text_file), depth_cap=args.depth_cap,
                               fixed_depth=args.fixed_depth, routing_mode=args.routing_mode)
    if args.json:
        print(json.dumps(result))
    else:
        hist = " ".join(f"d{k}:{v}" for k, v in result["depth_histogram"].items())
        print(f"nll {result['nll']:.4f}  ppl {result['ppl']:.2f}  bits/byte {result['bits_per_byte']:.4f}  "
              f"tokens {result['tokens']}  windows {result['windows']}  "
              f"mean depth {result['mean_depth']:.3f}  [{hist}]")
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    text = text_argument(args)
    model, tokenizer = load(args.checkpoint, device=args.device)
    tr = analysis.trace(model, tokenizer, text, depth_cap=args.depth_cap, fixed_depth=args.fixed_depth,
                        routing_mode=args.routing_mode, checkpoint=str(args.checkpoint))
    if args.json:
        keys = ("checkpoint", "num_recursions", "tokens", "depths", "token_nll", "router_scores")
        full = tr.to_json()
        out = {k: full[k] for k in keys}
        out.update(mean_depth=tr.mean_depth, truncated_tokens=tr.truncated_tokens, windows=tr.windows,
                   context=tr.context)
        print(json.dumps(out, ensure_ascii=False))
        return 0
    for token, depth, nll in zip(tr.tokens, tr.depths, tr.token_nll):
        nll_text = "   -  " if nll is None else f"{nll:6.2f}"
        print(f"{depth}  {nll_text}  {token!r}")
    print(f"mean depth {tr.mean_depth:.3f} over {len(tr.depths)} tokens"
          + (f" (traced whole in {tr.windows} overlapping {tr.context}-token windows)" if tr.windows > 1 else ""))
    return 0


def text_argument(args: argparse.Namespace) -> str:
    if args.text is None and args.text_file is None:
        raise ValueError("give --text or --text-file.")
    return args.text if args.text is not None else read_text(args.text_file)


def cmd_lens(args: argparse.Namespace) -> int:
    text = text_argument(args)
    model, tokenizer = load(args.checkpoint, device=args.device)
    result = analysis.lens(model, tokenizer, text, top_k=args.top, depth_cap=args.depth_cap,
                           fixed_depth=args.fixed_depth, routing_mode=args.routing_mode, checkpoint=str(args.checkpoint))
    if args.json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
        return 0
    for token, depth, row in zip(result.tokens, result.depths, result.steps):
        nll = " ".join("   -  " if s["next_token_nll"] is None else f"{s['next_token_nll']:6.2f}" for s in row)
        top = " | ".join(repr(s["top"][0][0]) for s in row)
        print(f"{depth}  NLL of next per step: {nll}  top-1 per step: {top}  {token!r}")
    return 0


def cmd_gain(args: argparse.Namespace) -> int:
    text = text_argument(args)
    model, tokenizer = load(args.checkpoint, device=args.device)
    result = analysis.depth_gain(model, tokenizer, text, routing_mode=args.routing_mode, checkpoint=str(args.checkpoint))
    if args.json:
        print(json.dumps(result.to_json(), ensure_ascii=False))
        return 0
    for token, depth, nll, gain in zip(result.tokens, result.depths, result.next_token_nll, result.gain):
        cells = "-" if nll is None else "  ".join(
            f"cap {k}: {v:6.2f} ({g:+.2f})" for k, (v, g) in enumerate(zip(nll, gain), start=1))
        print(f"{depth}  {cells}  {token!r}")
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    folder = resolve_checkpoint(args.checkpoint)
    model, tokenizer = load(folder, device=args.device)
    if args.count_tokens:
        record = stats.write_token_counts(folder, tokenizer, args.count_tokens)
        print(f"wrote {folder / stats.COUNTS_FILE}: {record['tokens']:,} tokens of {args.count_tokens}")
        if args.text_file is None:
            return 0
    path = Path(args.text_file) if args.text_file else stats.DEFAULT_CORPUS
    if args.text_file is None and not path.is_file():
        raise FileNotFoundError(f"{path} not found: build the validation split with `mor data --out data`, "
                                "or give --text-file.")
    result = stats.corpus_stats(model, tokenizer, read_text(path), checkpoint_folder=folder,
                                routing_mode=args.routing_mode, min_count=args.min_count, top=args.top,
                                checkpoint=str(args.checkpoint))
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
        return 0
    print(f"{result['tokens']:,} tokens of {path}, mean depth {result['mean_depth']:.3f} of {result['num_recursions']}")
    for name, group in [*result["by_class"].items(), *result["by_frequency_band"].items()]:
        mean = "  -  " if group["mean_depth"] is None else f"{group['mean_depth']:.3f}"
        print(f"  {name:<28} {group['tokens']:>8,} tokens  mean depth {mean}")
    for side in ("deepest", "shallowest"):
        print(f"{side}: " + ", ".join(f"{r['token']!r} {r['mean_depth']:.2f} (x{r['count']})" for r in result[side]))
    return 0


def cmd_probe(args: argparse.Namespace) -> int:
    model, tokenizer = load(args.checkpoint, device=args.device)
    if args.depth_cap is not None and args.depth_cap > model.config.num_recursions:
        raise ValueError(f"--depth-cap {args.depth_cap} is above this checkpoint's {model.config.num_recursions} recursions.")
    fmt, trained = probe.checkpoint_format(args.checkpoint)
    result = probe.run_probe(model, tokenizer, fmt, examples=args.examples, seed=args.seed, depth_cap=args.depth_cap)
    result.update(checkpoint=str(args.checkpoint), trained_on_format=trained)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['task']} {fmt.line(47, 586)!r}: accuracy {result['accuracy']:.3f} on {result['examples']} fresh "
              f"problems; mean depth: answer digits {result['mean_depth_answer']:.3f}, prompt digits "
              f"{result['mean_depth_prompt']:.3f}" + ("" if trained else " (not trained on this format)"))
    return 0


def add_common(p: argparse.ArgumentParser, depth: bool = True) -> None:
    """--checkpoint, --routing-mode, --device and --json; with `depth`, --depth-cap / --fixed-depth."""
    p.add_argument("--checkpoint", required=True, help="checkpoint folder, or a name under checkpoints/ (see `mor list`)")
    if depth:
        group = p.add_mutually_exclusive_group()
        group.add_argument("--depth-cap", type=positive_int, help="no token takes more than K recursions")
        group.add_argument("--fixed-depth", type=positive_int, help="every token takes exactly K recursions (router ignored)")
    p.add_argument("--routing-mode", choices=["causal", "capacity"], default="causal",
                   help="causal: each token decides alone (decodable); capacity: top-k over the text (training rule)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:1, ...")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")


def register_cli(subparsers) -> None:
    p = subparsers.add_parser("eval", help="next-token NLL, perplexity and depth statistics of a text file")
    add_common(p)
    p.add_argument("--text-file", required=True, help="UTF-8 text to evaluate (overlapping context-length windows)")
    p.set_defaults(func=cmd_eval)
    p = subparsers.add_parser("trace", help="per-token depths, router scores and NLL of a text")
    add_common(p)
    p.add_argument("--text", help="the text to trace (longer than the context window: traced in overlapping windows)")
    p.add_argument("--text-file", help="read the text from this UTF-8 file instead of --text")
    p.set_defaults(func=cmd_trace)
    p = subparsers.add_parser("lens", help="the recursion lens: each token's next-token prediction after every "
                                           "recursion step")
    add_common(p)
    p.add_argument("--text", help="the text (longer than the context window: read in overlapping windows)")
    p.add_argument("--text-file", help="read the text from this UTF-8 file instead of --text")
    p.add_argument("--top", type=positive_int, default=DEFAULT_TOP_K,
                   help=f"next tokens listed per step (default: {DEFAULT_TOP_K})")
    p.set_defaults(func=cmd_lens)
    p = subparsers.add_parser("gain", help="where depth helped: each next-token NLL at every depth cap, and the "
                                           "gain to full depth")
    add_common(p, depth=False)
    p.add_argument("--text", help="the text (longer than the context window: run in overlapping windows)")
    p.add_argument("--text-file", help="read the text from this UTF-8 file instead of --text")
    p.set_defaults(func=cmd_gain)
    p = subparsers.add_parser("stats", help="depth statistics of a corpus: by token class, frequency band, "
                                            "position and token")
    add_common(p, depth=False)
    p.add_argument("--text-file", help=f"UTF-8 corpus (default: {stats.DEFAULT_CORPUS}, the validation split)")
    p.add_argument("--min-count", type=positive_int, default=3,
                   help="occurrences a token needs to be ranked among the deepest/shallowest (default: 3)")
    p.add_argument("--top", type=positive_int, default=15, help="deepest and shallowest tokens listed (default: 15)")
    p.add_argument("--count-tokens", metavar="TRAIN_TEXT",
                   help=f"first count the tokens of this training text into the checkpoint's {stats.COUNTS_FILE} "
                        "(the frequency bands then use it); without --text-file, only count")
    p.set_defaults(func=cmd_stats)
    p = subparsers.add_parser("probe", help="greedy exact-match accuracy on fresh addition problems (the reasoning probe)")
    p.add_argument("--checkpoint", required=True, help="checkpoint folder, or a name under checkpoints/ (see `mor list`)")
    p.add_argument("--depth-cap", type=positive_int, help="no token takes more than K recursions")
    p.add_argument("--examples", type=positive_int, default=500, help="fresh problems to solve (default: 500)")
    p.add_argument("--seed", type=int, default=1234, help="seed that draws the problems (default: 1234)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:1, ...")
    p.add_argument("--json", action="store_true",
                   help='print {"task", "examples", "accuracy", "mean_depth_answer", "mean_depth_prompt", ...}')
    p.set_defaults(func=cmd_probe)
