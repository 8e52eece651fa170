"""An independent, deliberately naive MoR forward for tests.

Full width and dense: every step computes every token, attention is a plain softmax over a
(T, T) mask of the step's active tokens, inactive tokens keep their state through `torch.where`.
No gathering, no cache objects, no shared helpers with `mor.model.modeling`: only the weights are
read from the model. Eval-mode causal routing, float32.
"""

from __future__ import annotations

import torch


def _rms(x, weight, eps):
    return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def _rope(x, pos, theta):
    # x (B, H, T, D), pos (T,): rotate pairs (i, i + D/2) by angle pos * theta^(-2i/D)
    d = x.shape[-1]
    freq = theta ** (-torch.arange(0, d // 2, dtype=torch.float64) * 2 / d)
    ang = (pos[:, None].double() * freq[None]).float()  # (T, D/2)
    cos, sin = ang.cos(), ang.sin()
    a, b = x[..., : d // 2], x[..., d // 2:]
    return torch.cat((a * cos - b * sin, b * cos + a * sin), -1)


def _attend(layer, x, key_mask, cfg, kv=None):
    """x (B, T, C) normed input; key_mask (B, T, T) query->key allowed. Returns (out, (k, v))."""
    B, T, _ = x.shape
    H, G, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    pos = torch.arange(T)
    att = layer.self_attn
    q = _rope((x @ att.q_proj.weight.T).view(B, T, H, D).transpose(1, 2), pos, cfg.rope_theta)
    if kv is None:
        k = _rope((x @ att.k_proj.weight.T).view(B, T, G, D).transpose(1, 2), pos, cfg.rope_theta)
        v = (x @ att.v_proj.weight.T).view(B, T, G, D).transpose(1, 2)
        kv = (k, v)
    k, v = (t.repeat_interleave(H // G, dim=1) for t in kv)  # (B, H, T, D)
    scores = (q @ k.transpose(-1, -2)) / D**0.5
    mask = key_mask[:, None] | ~key_mask.any(-1, keepdim=True)[:, None]  # rows with no key: anything
    scores = scores.masked_fill(~mask, float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * D)
    return out @ att.o_proj.weight.T, kv


def _layer(layer, h, key_mask, cfg, kv=None):
    a, kv = _attend(layer, _rms(h, layer.input_layernorm.weight, cfg.rms_norm_eps), key_mask, cfg, kv)
    h = h + a
    x = _rms(h, layer.post_attention_layernorm.weight, cfg.rms_norm_eps)
    mlp = layer.mlp
    h = h + (torch.nn.functional.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)) @ mlp.down_proj.weight.T
    return h, kv


@torch.no_grad()
def reference_forward(model, ids, depth_cap=None):
    """(logits (B, T, V), depths (B, T)) computed the slow, obvious way."""
    cfg, m = model.config, model.model
    B, T = ids.shape
    R = cfg.num_recursions
    max_depth = depth_cap or R
    causal = torch.ones(T, T, dtype=torch.bool).tril()[None].expand(B, T, T)
    prelude, steps, coda = cfg.layer_plan()
    h = m.embed_tokens.weight[ids]
    for u in prelude:
        h, _ = _layer(m.layers[u], h, causal, cfg)
    h_in = h
    if cfg.routing == "token_choice":
        probs = (h @ m.routers[0].linear.weight.T).softmax(-1)
        top_p, top_i = probs.max(-1)
        chosen = (top_i + 1).clamp(max=max_depth)
    active = torch.ones(B, T, dtype=torch.bool)
    depths = torch.zeros(B, T, dtype=torch.long)
    first_step_kv = {}
    for r, layers in enumerate(steps):
        gate = torch.ones(B, T)
        if r >= max_depth:
            break
        if cfg.routing == "expert_choice":
            score = torch.sigmoid(h @ m.routers[r].linear.weight[0])  # (B, T)
            if r > 0:
                active = active & (score > cfg.router_threshold[r - 1])
            gate = cfg.router_alpha * score
        elif cfg.routing == "token_choice":
            active = chosen > r
        depths += active.long()
        # a query attends to earlier-or-same keys active at this step (shared KV: step 1's keys)
        key_active = torch.ones_like(active) if (cfg.kv_cache == "shared" and r > 0) else active
        mask = causal & key_active[:, None, :]
        x = h
        for j, u in enumerate(layers):
            reuse = first_step_kv.get(j) if (cfg.kv_cache == "shared" and r > 0) else None
            x, kv = _layer(m.layers[u], x, mask, cfg, reuse)
            if r == 0:
                first_step_kv[j] = kv
        if cfg.routing == "expert_choice":
            x = h + gate[..., None] * (x - h)
        h = torch.where(active[..., None], x, h)
    if cfg.routing == "token_choice":
        h = h_in + cfg.router_alpha * top_p[..., None] * (h - h_in)
    for u in coda:
        h, _ = _layer(m.layers[u], h, causal, cfg)
    h = _rms(h, m.norm.weight, cfg.rms_norm_eps)
    return h @ m.embed_tokens.weight.T, depths
