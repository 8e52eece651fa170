"""Train a MoR (or baseline) checkpoint on the corpus built by `mor data`.

    mor data --out data                                   # once: corpus + tokenizer
    mor train --preset mor-ec-r3 --out checkpoints/mor-ec-r3 --flops-budget 1.2e14
    mor train --preset vanilla --out checkpoints/vanilla --flops-budget 1.2e14
    torchrun --nproc-per-node 2 -m mor.cli train --preset tiny --out runs/ddp --max-steps 5

A run is resumable: it writes `resume.safetensors` + `resume.json` into `--out` every
`--save-every` steps and at the end, and picks them up when started again with the same `--out`
(after a crash, or with a larger budget to train on). No pickles: the optimizer state is stored
as named tensors. The resume files are not part of the shipped checkpoint (git ignores them). Training stops at whichever budget comes first
(`--flops-budget`, `--max-steps`, `--time-budget`); the learning-rate schedule follows the
fraction of that budget used, so it is correct for any of them.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from ..model.configuration import MoRConfig
from ..data.addition import ADDITION_LAYOUTS, AdditionFormat, AdditionStream
from ..data.windows import TokenData
from ..model.flops import forward_flops
from ..model.loading import save_checkpoint
from ..model.modeling import MoRForCausalLM
from ..model.card import model_card
from .presets import PRESETS, preset_model, preset_train

def lr_at(progress: float, peak: float, warmup: float, schedule: str, decay_fraction: float = 0.2) -> float:
    """Learning rate at `progress` in [0, 1] of the budget: linear warmup then cosine to 10%,
    or warmup-stable-decay with a linear decay to 0 over the last `decay_fraction`."""
    if progress < warmup:
        return peak * progress / warmup
    if schedule == "cosine":
        t = (progress - warmup) / max(1e-9, 1 - warmup)
        return peak * (0.1 + 0.45 * (1 + math.cos(math.pi * min(t, 1.0))))
    if progress < 1 - decay_fraction:
        return peak
    return peak * max(0.0, (1 - progress) / decay_fraction)


@torch.no_grad()
def validation_nll(model: MoRForCausalLM, windows: torch.Tensor, batch_size: int, **forward_kwargs) -> tuple[float, float]:
    """(mean next-token NLL, mean depth) over fixed windows, in eval mode with causal routing."""
    was_training = model.training
    model.eval()
    total, count, depth_sum, depth_count = 0.0, 0, 0.0, 0
    for start in range(0, len(windows), batch_size):
        x = windows[start:start + batch_size]
        out = model(x, use_cache=False, **forward_kwargs)
        nll = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]),
                                                x[:, 1:].reshape(-1), reduction="sum")
        total, count = total + nll.item(), count + x[:, 1:].numel()
        depth_sum, depth_count = depth_sum + out.depths.sum().item(), depth_count + out.depths.numel()
    model.train(was_training)
    return total / count, depth_sum / depth_count


@torch.no_grad()
def calibrate_thresholds(model: MoRForCausalLM, windows: torch.Tensor, batch_size: int) -> dict:
    """Set each expert-choice router's causal threshold so that, on held-out windows, the
    fraction of step-r candidates whose score passes it equals the fraction top-k keeps
    (capacity_r / capacity_{r-1}). Returns the thresholds and the causal/top-k agreement
    before and after."""
    cfg = model.config
    if cfg.routing != "expert_choice":
        return {}
    model.eval()
    outs = [model(windows[i:i + batch_size], routing_mode="capacity", use_cache=False)
            for i in range(0, len(windows), batch_size)]
    scores = torch.cat([o.router_scores for o in outs])  # (N, T, R)
    depths = torch.cat([o.depths for o in outs])

    def agreement() -> float:
        causal = torch.cat([model(windows[i:i + batch_size], use_cache=False).depths
                            for i in range(0, len(windows), batch_size)])
        return (causal == depths).float().mean().item()

    before = agreement()
    thresholds = []
    for r in range(1, cfg.num_recursions):
        candidate_scores = scores[..., r][depths >= r]  # candidates of step r+1 = took step r
        keep = cfg.capacities[r] / cfg.capacities[r - 1]
        t = torch.quantile(candidate_scores.double(), 1 - keep).item() if candidate_scores.numel() else 0.5
        thresholds.append(float(min(max(t, 1e-6), 1 - 1e-6)))
    old = list(cfg.router_threshold)
    cfg.router_threshold = thresholds  # the depth policy reads the thresholds from the config
    return {"thresholds_before": old, "thresholds": thresholds,
            "causal_topk_depth_agreement_before": before, "causal_topk_depth_agreement": agreement()}


# ---- resumable state (safetensors + JSON, never pickle) --------------------------------------

def save_resume(out: Path, model, optimizer, state: dict) -> None:
    names = {id(p): n for n, p in model.named_parameters()}
    tensors = {f"model.{k}": v.detach().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    steps = {}
    for group in optimizer.param_groups:
        for p in group["params"]:
            st = optimizer.state.get(p)
            if st:
                n = names[id(p)]
                tensors[f"adam.{n}.exp_avg"] = st["exp_avg"].contiguous()
                tensors[f"adam.{n}.exp_avg_sq"] = st["exp_avg_sq"].contiguous()
                steps[n] = float(st["step"])
    tmp = out / "resume.safetensors.tmp"
    save_file(tensors, str(tmp))
    (out / "resume.json.tmp").write_text(json.dumps({**state, "adam_steps": steps}))
    os.replace(tmp, out / "resume.safetensors")  # replace both only when both are written
    os.replace(out / "resume.json.tmp", out / "resume.json")


def load_resume(out: Path, model, optimizer) -> dict | None:
    if not (out / "resume.json").is_file():
        return None
    state = json.loads((out / "resume.json").read_text())
    tensors = load_file(str(out / "resume.safetensors"))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")}, strict=False)
    model.tie_weights()
    params = dict(model.named_parameters())
    for n, step in state.pop("adam_steps").items():
        optimizer.state[params[n]] = {"step": torch.tensor(step), "exp_avg": tensors[f"adam.{n}.exp_avg"],
                                      "exp_avg_sq": tensors[f"adam.{n}.exp_avg_sq"]}
    return state


# ---- the run ---------------------------------------------------------------------------------

def build_config(args, vocab_size: int, tokenizer) -> MoRConfig:
    # The context window is what the model was trained on: RoPE positions beyond it were never seen.
    kwargs = dict(preset_model(args.preset), max_position_embeddings=args.seq_len, vocab_size=vocab_size,
                  eos_token_id=tokenizer.eos_token_id,
                  bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id)
    for item in args.set or []:
        key, _, value = item.partition("=")
        if not _:
            raise ValueError(f"--set takes KEY=VALUE, got {item!r}.")
        try:
            kwargs[key] = json.loads(value)  # numbers, lists, true/false/null
        except json.JSONDecodeError:
            kwargs[key] = value  # a bare word: a string
    return MoRConfig(**kwargs)


def resolve_settings(args: argparse.Namespace) -> argparse.Namespace:
    """Fill every run setting the command line left out (None) from the preset."""
    for key, value in preset_train(args.preset).items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    for key in ("addition_share", "depth_cap_prob", "fixed_depth_prob"):
        if not 0 <= getattr(args, key) <= 1:
            raise ValueError(f"--{key.replace('_', '-')} must be in [0, 1], got {getattr(args, key)}.")
    if args.addition_layout not in ADDITION_LAYOUTS:
        raise ValueError(f"--addition-layout must be one of {', '.join(ADDITION_LAYOUTS)}, got {args.addition_layout!r}.")
    return args


def addition_format(args) -> AdditionFormat | None:
    """The addition slice's format, or None when the run has no addition rows."""
    if not args.addition_share:
        return None
    return AdditionFormat.zero_padded(args.addition_digits, reversed_answer=args.addition_reversed)


def training_batch(train_data: TokenData, stream: AdditionStream | None, share: float, batch_size: int,
                   seq_len: int, gen: torch.Generator, layout: str = "rows") -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, labels) of one step: text windows, and on average `share` of the rows addition problems
    (their operands masked out of the labels), laid out as `layout` says (`AdditionStream`; "in_text"
    takes its snippets from the row's own text window). Everything is drawn from `gen`, so a resumed
    run sees the same rows."""
    x = train_data.batch(batch_size, seq_len, gen)
    labels = x.clone()
    if stream is not None:
        rows = (torch.rand(batch_size, generator=gen) < share).nonzero().flatten().tolist()
        rng = random.Random(int(torch.randint(0, 2**62, (1,), generator=gen)))
        for row in rows:
            ids, row_labels = stream.row(seq_len, rng, x[row].tolist() if layout == "in_text" else None)
            x[row], labels[row] = torch.tensor(ids), torch.tensor(row_labels)
    return x, labels


def coin(config: MoRConfig, probability: float, gen: torch.Generator) -> bool:
    """True with `probability` for a recursive model (a draw from `gen` only then)."""
    return config.num_recursions >= 2 and bool(probability) and torch.rand(1, generator=gen).item() < probability


def sample_depth_cap(config: MoRConfig, probability: float, gen: torch.Generator) -> int | None:
    """With `probability`, a depth cap drawn uniformly from 1..N_r-1 for this step ("anytime"
    training: the readout learns to work after any number of recursions); else None."""
    if not coin(config, probability, gen):
        return None
    return int(torch.randint(1, config.num_recursions, (1,), generator=gen))


def sample_fixed_depth(config: MoRConfig, probability: float, gen: torch.Generator) -> int | None:
    """With `probability`, N_r: this step sends every token through every recursion (routers
    ignored for the decision), so the deep recursions also learn the tokens the routers skip; else None."""
    return config.num_recursions if coin(config, probability, gen) else None


def run(args: argparse.Namespace) -> int:
    """`mor train`: one training run, resumable. Longer than this package's other functions on
    purpose: like nanoGPT's train.py it reads top to bottom (set-up, resume, the step loop with its
    logging, evaluation and resume saves, the final save), and the loop shares the model, optimizer,
    data and `state` with every part of it; the parts that stand alone (settings, the batch, the
    learning rate, the depth cap, validation, saving) are functions of their own above."""
    from transformers import PreTrainedTokenizerFast

    resolve_settings(args)
    torch.set_flush_denormal(True)  # denormals in small updates slow CPU matmuls ~5x
    ddp = int(os.environ.get("WORLD_SIZE", "1")) > 1
    rank = 0
    if ddp:
        dist.init_process_group("gloo" if not torch.cuda.is_available() else "nccl")
        rank = dist.get_rank()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    out = Path(args.out)
    data_dir = Path(args.data)
    tok_dir = Path(args.tokenizer or data_dir / "tokenizer")
    if not (tok_dir / "tokenizer.json").is_file():
        raise FileNotFoundError(f"{tok_dir / 'tokenizer.json'} not found; run `mor data --out {data_dir}` first.")
    tokenizer = PreTrainedTokenizerFast.from_pretrained(str(tok_dir), local_files_only=True)
    train_data = TokenData.from_text_file(Path(args.train_file or data_dir / "train.txt"), tokenizer)
    val_data = TokenData.from_text_file(Path(args.val_file or data_dir / "val.txt"), tokenizer)
    config = build_config(args, len(tokenizer), tokenizer)
    fmt = addition_format(args)
    stream = AdditionStream(fmt, tokenizer, balanced=args.addition_balanced) if fmt else None
    model = MoRForCausalLM(config)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and "router" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or "router" in n]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": args.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=args.lr, betas=(0.9, 0.95))
    out.mkdir(parents=True, exist_ok=True)
    state = load_resume(out, model, optimizer) or {"step": 0, "tokens": 0, "flops": 0.0, "seconds": 0.0,
                                                    "curve": [], "val_curve": []}
    if state["step"] and rank == 0:
        print(f"resuming {out} at step {state['step']} ({state['tokens']:,} tokens)", file=sys.stderr)
    wrapped = torch.nn.parallel.DistributedDataParallel(model) if ddp else model
    world = dist.get_world_size() if ddp else 1
    val_windows = val_data.fixed_windows(args.val_windows, args.seq_len)
    model.train()
    started = time.time() - state["seconds"]

    def progress() -> float:
        fractions = [state["step"] / args.max_steps if args.max_steps else 0.0,
                     state["flops"] / args.flops_budget if args.flops_budget else 0.0,
                     (time.time() - started) / (60 * args.time_budget) if args.time_budget else 0.0]
        return max(fractions)

    if not (args.max_steps or args.flops_budget or args.time_budget):
        raise ValueError("give a budget: --max-steps, --flops-budget or --time-budget.")
    window_t0, window_tokens = time.time(), 0
    while progress() < 1.0:
        lr = lr_at(progress(), args.lr, args.warmup, args.schedule)
        for group in optimizer.param_groups:
            group["lr"] = lr
        gen = torch.Generator().manual_seed(args.seed * 1_000_003 + state["step"] * world + rank)
        x, labels = training_batch(train_data, stream, args.addition_share, args.batch_size, args.seq_len, gen,
                                   args.addition_layout)
        cap = sample_depth_cap(config, args.depth_cap_prob, gen)
        fixed = None if cap else sample_fixed_depth(config, args.fixed_depth_prob, gen)
        result = wrapped(x, labels=labels, use_cache=False, depth_cap=cap, fixed_depth=fixed)
        optimizer.zero_grad(set_to_none=True)
        result.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.grad_clip)
        optimizer.step()
        per_step = [(result.depths >= r + 1).sum().item() / args.batch_size for r in range(config.num_recursions)]
        step_flops = 3 * forward_flops(config, args.seq_len, per_step) * args.batch_size * world
        state["step"] += 1
        state["tokens"] += x.numel() * world
        state["flops"] += step_flops
        window_tokens += x.numel() * world
        state["curve"].append([state["step"], state["tokens"], round(result.lm_loss.item(), 4)])
        if rank == 0 and (state["step"] % args.log_every == 0 or state["step"] == 1):
            rate = window_tokens / max(1e-9, time.time() - window_t0)
            window_t0, window_tokens = time.time(), 0
            aux = f" aux {result.aux_loss.item():.4f}" if result.aux_loss is not None else ""
            print(f"step {state['step']:>6} {100 * progress():5.1f}% loss {result.lm_loss.item():.4f}{aux} "
                  f"depth {result.depths.float().mean().item():.2f} lr {lr:.2e} {rate:,.0f} tok/s", file=sys.stderr, flush=True)
        if rank == 0 and args.eval_every and state["step"] % args.eval_every == 0:
            nll, depth = validation_nll(model, val_windows, args.batch_size)
            state["val_curve"].append([state["step"], state["tokens"], round(nll, 4), round(depth, 3)])
            print(f"  validation nll {nll:.4f} mean depth {depth:.2f}", file=sys.stderr, flush=True)
        if rank == 0 and args.save_every and state["step"] % args.save_every == 0:
            state["seconds"] = time.time() - started
            save_resume(out, model, optimizer, state)
    state["seconds"] = time.time() - started
    if rank == 0:
        if args.save_every:  # a later run with a larger budget continues from here
            save_resume(out, model, optimizer, state)
        finish(args, model, tokenizer, val_windows, state, out, world)
    if ddp:
        dist.barrier()
        dist.destroy_process_group()
    return 0


def finish(args, model, tokenizer, val_windows, state, out: Path, world: int) -> None:
    """Calibrate causal thresholds, measure validation NLL, write the checkpoint folder."""
    calibration = calibrate_thresholds(model, val_windows, args.batch_size) if args.calibrate else {}
    nll, depth = validation_nll(model, val_windows, args.batch_size)
    save_checkpoint(model, tokenizer, out)
    sources = Path(args.data) / "sources.json"
    info = {
        "preset": args.preset, "arguments": {k: v for k, v in vars(args).items() if k != "func"},
        "world_size": world, "steps": state["step"], "tokens_seen": state["tokens"],
        "training_flops": state["flops"], "wall_seconds": round(state["seconds"], 1),
        "unique_parameters": model.num_parameters(), "effective_parameters": model.num_effective_parameters(),
        "final_val_nll": round(nll, 5), "final_val_mean_depth": round(depth, 4),
        "val_tokens": int(val_windows[:, 1:].numel()), "calibration": calibration,
        "probe": fmt.record() if (fmt := addition_format(args)) else None,
        "addition_share": args.addition_share, "addition_layout": args.addition_layout,
        "depth_cap_prob": args.depth_cap_prob, "fixed_depth_prob": args.fixed_depth_prob,
        "loss_curve": state["curve"][:: max(1, len(state["curve"]) // 400)], "val_curve": state["val_curve"],
        "corpus": {"train": str(args.train_file or Path(args.data) / "train.txt"),
                   "sources": json.loads(sources.read_text()) if sources.is_file() else None},
    }
    (out / "training.json").write_text(json.dumps(info, indent=2))
    (out / "README.md").write_text(model_card(out.name, model.config, info))
    print(f"wrote {out}: val nll {nll:.4f}, mean depth {depth:.2f}, {state['tokens']:,} tokens, "
          f"{state['flops']:.3g} FLOPs, {state['seconds'] / 60:.1f} min", file=sys.stderr)


def register_cli(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("train", help="train a checkpoint (see `mor train --help`)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    # what to train
    p.add_argument("--preset", default="mor-ec-r3", help=f"model preset: {', '.join(PRESETS)}")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field, e.g. --set router_gate=straight_through (repeatable; JSON values)")
    p.add_argument("--out", required=True, help="checkpoint folder to write (and resume from)")
    # data
    p.add_argument("--data", default="data", help="folder written by `mor data` (train.txt, val.txt, tokenizer/)")
    p.add_argument("--tokenizer", help="tokenizer folder (default: DATA/tokenizer)")
    p.add_argument("--train-file", help="training text (default: DATA/train.txt)")
    p.add_argument("--val-file", help="validation text (default: DATA/val.txt)")
    # budget: the first one reached stops the run; flags left out come from the preset
    # (mor/training/presets.py), so `mor train --preset NAME` alone reproduces checkpoint NAME
    p.add_argument("--flops-budget", type=float, help="stop after this many training FLOPs (3x forward, active tokens only)")
    p.add_argument("--max-steps", type=int, help="stop after this many optimizer steps")
    p.add_argument("--time-budget", type=float, help="stop after this many minutes of wall time")
    # optimisation
    p.add_argument("--batch-size", type=int, help="sequences per step (per process under torchrun)")
    p.add_argument("--seq-len", type=int, help="tokens per training sequence (the checkpoint's context window)")
    p.add_argument("--lr", type=float, help="peak learning rate (AdamW, betas 0.9/0.95)")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay on matrices (not norms, routers)")
    p.add_argument("--warmup", type=float, help="warmup as a fraction of the budget")
    p.add_argument("--schedule", choices=["wsd", "cosine"],
                   help="wsd: warmup-stable-decay (last 20%% decays to 0); cosine: decays to 10%% of peak")
    # what the stream holds and how depth is trained
    p.add_argument("--addition-share", type=float,
                   help="fraction of training rows that are addition problems (mor/data/addition.py); 0: none")
    p.add_argument("--addition-digits", type=int, help="digits of each addition operand (zero-padded)")
    p.add_argument("--addition-reversed", action=argparse.BooleanOptionalAction, default=None,
                   help="write the sums last digit first")
    p.add_argument("--addition-balanced", action=argparse.BooleanOptionalAction, default=None,
                   help="draw operand lengths uniformly (short operands as common as long ones) instead of uniform numbers")
    p.add_argument("--addition-layout", choices=ADDITION_LAYOUTS,
                   help="rows: addition rows hold problems only; in_text: runs of 1-4 problems between snippets "
                        "of the row's text, so most problems have no solved one in view (mor/data/addition.py)")
    p.add_argument("--depth-cap-prob", type=float,
                   help="probability that a step trains under a random depth cap in 1..N_r-1 (anytime readout)")
    p.add_argument("--fixed-depth-prob", type=float,
                   help="probability that a step sends every token through all N_r recursions (routers ignored)")
    p.add_argument("--grad-clip", type=float, default=1.0, help="clip the global gradient norm to this")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation and batch sampling")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    # bookkeeping
    p.add_argument("--log-every", type=int, default=20, help="print a progress line every N steps")
    p.add_argument("--eval-every", type=int, default=200, help="validation every N steps (0: only at the end)")
    p.add_argument("--val-windows", type=int, default=64, help="validation windows of --seq-len tokens")
    p.add_argument("--save-every", type=int, default=100, help="write resumable state every N steps (0: never)")
    p.add_argument("--no-calibrate", dest="calibrate", action="store_false",
                   help="keep the config's router thresholds instead of calibrating them on validation data")
    p.set_defaults(func=run)
    return p
