"""What each recursion step changed, token by token: the recursion lens and "where depth helped".

`lens`: for every token and every recursion step r, the next-token prediction read out of the
token's hidden state after step r through the model's own remaining path (the coda layers, the
final norm, the LM head), over the same context as the full pass: in every coda layer the other
tokens' keys and values are the full pass's, and only the token's own state is the step-r one. At
r = the token's depth this *is* the full pass, so the lens ends on the model's own prediction.

`depth_gain`: the whole model run again with every depth cap k = 1..N_r, and per token the NLL
of the token that follows it at each cap and what going from cap k to full depth gained (this is
test-time scaling, token by token; unlike the lens, a cap also changes every other token's state).

Both return dataclasses of plain numbers and strings (`to_json()`), as `trace` does. Texts longer
than the context run in the overlapping windows of `sliding_windows`, and a token's prediction is
read in the window where `mor trace` scores the token it predicts, so every NLL here equals the
one `mor trace` reports.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from ..data.tokenizer import token_texts
from ..model.modeling import MoRForCausalLM, apply_rotary, rotary_cos_sin
from .trace import sanitize, sliding_windows, windowed_pass

DEFAULT_TOP_K = 5


# ---- reading predictions out of the step states ------------------------------------------------

def _heads(x: torch.Tensor, proj: torch.nn.Linear, n: int, head_dim: int) -> torch.Tensor:
    """(..., T, C) -> (..., n, T, D): one projection split into heads."""
    return proj(x).view(*x.shape[:-1], n, head_dim).transpose(-2, -3)


def _coda_layer(layer, variants: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """One pre-norm decoder layer applied to R variants (R, B, T, C) of the sequence in which only
    each token's *own* state differs: token i attends to the `context` (B, T, C) states of the
    tokens before it (the full pass's keys and values) and to its own variant state (the diagonal,
    replaced). A variant equal to the context gives exactly the layer's causal output."""
    attn = layer.self_attn
    H, G, D = attn.num_heads, attn.num_kv_heads, attn.head_dim
    B, T = context.shape[:2]
    x, ctx = layer.input_layernorm(variants), layer.input_layernorm(context)
    # Positions 0..T-1, as in a fresh full pass over the window.
    pos = torch.arange(T, device=context.device)[None].expand(B, T)
    cos, sin = rotary_cos_sin(pos, D, attn.rope_theta, x.dtype)  # (B, 1, T, D)
    q = apply_rotary(_heads(x, attn.q_proj, H, D), cos, sin)  # (R, B, H, T, D)
    # Key/value head g serves query heads g*H/G .. (g+1)*H/G - 1, as in SDPA's enable_gqa.
    k_self = apply_rotary(_heads(x, attn.k_proj, G, D), cos, sin).repeat_interleave(H // G, dim=-3)
    v_self = _heads(x, attn.v_proj, G, D).repeat_interleave(H // G, dim=-3)  # (R, B, H, T, D)
    k_ctx = apply_rotary(_heads(ctx, attn.k_proj, G, D), cos, sin).repeat_interleave(H // G, dim=-3)
    v_ctx = _heads(ctx, attn.v_proj, G, D).repeat_interleave(H // G, dim=-3)  # (B, H, T, D)
    scale = D ** -0.5
    earlier = torch.ones(T, T, dtype=torch.bool, device=context.device).tril(-1)  # key j < query i
    s_ctx = (q @ k_ctx.transpose(-1, -2) * scale).masked_fill(~earlier, float("-inf"))  # (R, B, H, T, T)
    s_self = (q * k_self).sum(-1, keepdim=True) * scale  # (R, B, H, T, 1)
    weights = torch.cat((s_ctx, s_self), -1).softmax(-1)  # one softmax over the T + 1 keys
    out = weights[..., :T] @ v_ctx + weights[..., T:] * v_self  # (R, B, H, T, D)
    h = variants + attn.o_proj(out.transpose(-2, -3).reshape(*variants.shape[:-1], H * D))
    return h + layer.mlp(layer.post_attention_layernorm(h))


@torch.no_grad()
def readout_logits(model: MoRForCausalLM, step_states: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """(R, B, T, V) float logits of every step state read through the coda, final norm and LM head.

    `step_states` are `MoRModelOutput.step_states` of one full pass (R tensors (B, T, C)); the
    last is the coda's input in that pass, so it is the context every coda layer attends over.
    All R steps run as one batch through each coda layer."""
    m = model.model
    variants = torch.stack(step_states)  # (R, B, T, C)
    for u in m.coda:
        variants = _coda_layer(m.layers[u], variants, variants[-1])
    return model.lm_head(m.norm(variants)).float()


# ---- the lens over a whole text ----------------------------------------------------------------

@dataclass
class Lens:
    """Per token, the next-token prediction after each recursion step."""

    checkpoint: str
    num_recursions: int
    tokens: list[str]
    token_ids: list[int]
    depths: list[int]  # recursions taken in the window the prediction was read in
    # steps[i][r - 1] = {"step": r, "active": r <= depth, "top": [[text, prob], ...],
    #                    "next_token_prob": p, "next_token_nll": -log p}  (None for the last token)
    steps: list[list[dict]]
    top_k: int = DEFAULT_TOP_K
    routing_mode: str = "causal"
    depth_cap: int | None = None
    fixed_depth: int | None = None
    windows: int = 1
    context: int = 0
    replaced_chars: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        return asdict(self)


def prediction_windows(n: int, context: int) -> list[tuple[int, int, int, int]]:
    """(start, end, keep_from, keep_to) per window of `sliding_windows(n, context)`: the window
    reads the predictions made at positions keep_from..keep_to-1. Position i predicts token i + 1,
    which `windowed_pass` scores in the window whose scored range holds i + 1, so i is read there
    (the last token, which predicts nothing, in the last window). The ranges tile 0..n-1."""
    plan = sliding_windows(n, context)
    last = len(plan) - 1
    # first - 1 >= start: windows overlap by context - stride >= 1 token (default stride).
    return [(start, end, max(first - 1, 0), end if w == last else end - 1)
            for w, (start, end, first) in enumerate(plan)]


def _round(x: float) -> float:
    return round(x, 6)


def _round_prob(p: float) -> float:
    """Six significant digits: a probability of 4.2e-07 keeps its value, not 0.0."""
    return float(f"{p:.6g}")


def _window_records(logp: torch.Tensor, next_ids: list[int | None], depths: list[int], top_k: int,
                    text_of: dict[int, str]) -> list[list[dict]]:
    """Records of the positions of one window from its log-probabilities (R, N, V)."""
    R = logp.shape[0]
    top_p, top_i = logp.topk(top_k, dim=-1)  # (R, N, K)
    top_p, top_i = top_p.exp().tolist(), top_i.tolist()
    known = torch.tensor([t if t is not None else 0 for t in next_ids], device=logp.device)
    nxt = logp.gather(2, known[None, :, None].expand(R, -1, 1))[..., 0].tolist()  # (R, N)
    rows = []
    for i, (target, depth) in enumerate(zip(next_ids, depths)):
        rows.append([{
            "step": r + 1, "active": r + 1 <= depth,
            "top": [[text_of[t], _round_prob(p)] for t, p in zip(top_i[r][i], top_p[r][i])],
            "next_token_prob": None if target is None else _round_prob(math.exp(nxt[r][i])),
            "next_token_nll": None if target is None else _round(-nxt[r][i]),
        } for r in range(R)])
    return rows


class _TokenText(dict):
    """Token id -> its text as one piece (`token_texts` of that id alone), computed on first use."""

    def __init__(self, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer

    def __missing__(self, token_id: int) -> str:
        self[token_id] = token_texts(self.tokenizer, [token_id])[0]
        return self[token_id]


@torch.no_grad()
def lens(model: MoRForCausalLM, tokenizer, text: str, *, top_k: int = DEFAULT_TOP_K, depth_cap: int | None = None,
         fixed_depth: int | None = None, routing_mode: str = "causal", checkpoint: str = "") -> Lens:
    """The recursion lens of a whole text (see the module docstring): one full pass per context
    window with every step state kept, then all steps read out in one batched coda pass."""
    text, replaced = sanitize(text)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    cfg = model.config
    if not 1 <= top_k <= cfg.vocab_size:
        raise ValueError(f"top_k={top_k} is outside 1..{cfg.vocab_size} (the vocabulary).")
    result = Lens(checkpoint=checkpoint, num_recursions=cfg.num_recursions, tokens=token_texts(tokenizer, ids),
                  token_ids=ids, depths=[], steps=[], top_k=top_k, routing_mode=routing_mode, depth_cap=depth_cap,
                  fixed_depth=fixed_depth, windows=0, context=cfg.max_position_embeddings, replaced_chars=replaced)
    text_of = _TokenText(tokenizer)
    start_time = time.perf_counter()
    for start, end, keep_from, keep_to in (prediction_windows(len(ids), cfg.max_position_embeddings) if ids else []):
        x = torch.tensor([ids[start:end]], device=model.device)
        out = model.model(x, depth_cap=depth_cap, fixed_depth=fixed_depth, routing_mode=routing_mode,
                          output_step_states=True)
        keep = slice(keep_from - start, keep_to - start)
        logp = torch.log_softmax(readout_logits(model, out.step_states)[:, 0, keep], -1)  # (R, N, V)
        depths = out.depths[0, keep].tolist()
        next_ids = [ids[i + 1] if i + 1 < len(ids) else None for i in range(keep_from, keep_to)]
        result.steps += _window_records(logp, next_ids, depths, top_k, text_of)
        result.depths += depths
        result.windows += 1
    result.seconds = time.perf_counter() - start_time
    return result


# ---- where depth helped --------------------------------------------------------------------------

@dataclass
class DepthGain:
    """Per token, the NLL of the token after it at every depth cap, and the gain to full depth."""

    checkpoint: str
    num_recursions: int
    tokens: list[str]
    token_ids: list[int]
    depths: list[int]  # at full depth (cap N_r: the router's free choice)
    next_token_nll: list[list[float] | None]  # [i][k - 1]: NLL of token i + 1 with depth cap k; None for the last
    gain: list[list[float] | None]  # [i][k - 1]: NLL at cap k minus NLL at full depth (> 0: depth helped)
    routing_mode: str = "causal"
    windows: int = 1
    context: int = 0
    replaced_chars: int = 0
    seconds: float = 0.0

    def to_json(self) -> dict:
        out = asdict(self)
        out["most_changed"] = {str(k): most_changed(self, k) for k in range(1, self.num_recursions)}
        return out


@torch.no_grad()
def depth_gain(model: MoRForCausalLM, tokenizer, text: str, *, routing_mode: str = "causal",
               checkpoint: str = "") -> DepthGain:
    """NLL of every token's next token with depth cap k = 1..N_r (`windowed_pass` at each cap:
    cap N_r is the model as it runs), and the gain from cap k to full depth."""
    text, replaced = sanitize(text)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    R = model.config.num_recursions
    start_time = time.perf_counter()
    runs = [windowed_pass(model, ids, depth_cap=k, routing_mode=routing_mode) for k in range(1, R + 1)] if ids else []
    # token_nll[t] scores token t, predicted at position t - 1: shift it onto the predicting token.
    nll = [[_round(run.token_nll[i + 1]) for run in runs] for i in range(len(ids) - 1)] + ([None] if ids else [])
    gain = [None if row is None else [_round(v - row[-1]) for v in row] for row in nll]
    return DepthGain(checkpoint, R, token_texts(tokenizer, ids), ids, runs[-1].depths if runs else [], nll, gain,
                     routing_mode, runs[-1].windows if runs else 0, model.config.max_position_embeddings, replaced,
                     time.perf_counter() - start_time)


def most_changed(result: DepthGain | dict, cap: int, count: int = 10) -> dict[str, list[dict]]:
    """The tokens whose next-token NLL full depth lowered most ("gained") and raised most ("lost")
    against depth cap `cap`, largest change first; a token appears only on the side it moved to."""
    data = result if isinstance(result, dict) else asdict(result)
    if not 1 <= cap <= data["num_recursions"]:
        raise ValueError(f"cap={cap} is outside 1..{data['num_recursions']} (num_recursions).")
    rows = [{"position": i, "token": data["tokens"][i], "depth": data["depths"][i],
             "nll_at_cap": nll[cap - 1], "nll_full_depth": nll[-1], "gain": gain[cap - 1]}
            for i, (nll, gain) in enumerate(zip(data["next_token_nll"], data["gain"])) if gain is not None]
    gained = sorted((r for r in rows if r["gain"] > 0), key=lambda r: -r["gain"])[:count]
    lost = sorted((r for r in rows if r["gain"] < 0), key=lambda r: r["gain"])[:count]
    return {"gained": gained, "lost": lost}
