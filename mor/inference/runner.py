"""The engine's runner: fused weights, the K/V and hidden-state buffers, and the three kinds of pass.

A pass is one stage's layers run once over a batch of items (mor/inference/plan.py builds its
inputs): `entry` (embedding, the unique first layers, the entry routing and recursion step 1,
which every token takes), `block` (one shared-block application to items at any later recursion
step) and `exit` (the unique last layers, then the final norm and the LM head for the items that
need logits). After a recursion step each item's routing decision for its next step is taken.
What runs when is the scheduler's business (mor/inference/engine.py); the runner only computes,
and counts its weight passes.

Items keep their hidden state in a pool, (pool rows, C), between passes; a pass reads its items'
rows, runs its layers and writes them back.

Weights: every matmul weight is pre-transposed to (in, out) and contiguous (x @ W beats F.linear by
up to 2x at decoding's small row counts on CPU), Q/K/V and gate/up are fused (K and V interleaved
per head to match the cache layout), the RMSNorm weights and the attention scale are folded into
the following matrices, and residual adds ride on addmm.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..model.modeling import MoRForCausalLM, rotary_cos_sin
from ..model.policy import DepthPolicy, check_depth_args
from .plan import PassInput, attend


class Runner:
    """Computes passes for one `MoRForCausalLM` under one depth rule (`depth_cap` / `fixed_depth`).

    groups: the shared block's steps batched together, as (unique-layer list, steps): one group
    under cycle sharing (every step applies the same layers), one per step under sequence sharing.
    passes / rows: weight passes made (one per decoder-layer call and per LM-head call, whatever
    their row count) and the rows they carried, by "prelude", "block", "coda", "head"."""

    def __init__(self, model: MoRForCausalLM, depth_cap: int | None = None, fixed_depth: int | None = None):
        cfg = model.config
        self.max_depth = check_depth_args(depth_cap, fixed_depth, cfg.num_recursions)
        self.model, self.config = model, cfg
        self.depth_cap, self.fixed_depth = depth_cap, fixed_depth
        self.R = cfg.num_recursions
        self.H, self.G, self.D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.C, self.I = cfg.hidden_size, cfg.intermediate_size
        m = model.model
        self.prelude_layers, self.steps, self.coda_layers = m.prelude, m.steps, m.coda
        self.slot_of = dict(m.slot_of)
        self.n_slots = len(m.slot_names)
        self.shared_kv = cfg.kv_cache == "shared"
        self.routing = cfg.routing
        # Without routers, or expert-choice at a fixed depth, whether an item takes its next step is
        # known on the host (the policy's rule is then "step < max_depth"): block passes then need no
        # device read. (Token-choice reads its target on the device, where its exit gate needs it.)
        self.decided_on_host = self.routing == "none" or (fixed_depth is not None and self.routing == "expert_choice")
        groups: dict[tuple[int, ...], list[int]] = {}
        for r, layers in enumerate(self.steps[: self.max_depth]):
            groups.setdefault(tuple(layers), []).append(r)
        self.groups = list(groups.items())
        self.group_of_step = {r: g for g, (_, steps) in enumerate(self.groups) for r in steps}
        # cache slot of layer j per key: the recursion step for block layers, 0 for unique layers
        self.prelude_table = [[self.slot_of[("prelude", i)]] for i in range(len(self.prelude_layers))]
        self.coda_table = [[self.slot_of[("coda", i)]] for i in range(len(self.coda_layers))]
        self.group_tables = [[[self.slot_of[(r, j)] for r in range(self.R)] for j in range(len(layers))]
                             for layers, _ in self.groups]
        # an entry pass runs the prelude, then step 1's layers; its items all read and write key 0
        self.entry_group = self.group_of_step[0]
        self.entry_table = self.prelude_table + [[t[0]] for t in self.group_tables[self.entry_group]]
        self.reset_counters()
        self.refresh()

    def reset_counters(self) -> None:
        self.passes = {"prelude": 0, "block": 0, "coda": 0, "head": 0}
        self.rows = dict.fromkeys(self.passes, 0)

    def _count(self, kind: str, layers: int, rows: int) -> None:
        self.passes[kind] += layers
        self.rows[kind] += layers * rows

    # ---- weights ---------------------------------------------------------------------------------
    @torch.no_grad()
    def refresh(self) -> None:
        """(Re)build the fused weight matrices from the model's parameters, and the depth policy
        (it reads the config's router thresholds)."""
        self.policy = DepthPolicy(self.config, self.depth_cap, self.fixed_depth)
        # A straight-through gate is exactly 1 in the forward pass: x + 1 * (y - x) is y (up to
        # rounding), so the gate's arithmetic is skipped.
        self.gated = self.policy.scales_updates
        m = self.model.model
        self.device, self.dtype = m.embed_tokens.weight.device, m.embed_tokens.weight.dtype

        def t(w, scale_in=None):
            w = w.t()
            return (w if scale_in is None else scale_in[:, None] * w).contiguous()

        G, D, C = self.G, self.D, self.C
        self.layer_w = []
        for layer in m.layers:
            a, mlp = layer.self_attn, layer.mlp
            ln1, ln2 = layer.input_layernorm, layer.post_attention_layernorm
            # K and V rows interleaved per KV head (k_0, v_0, k_1, v_1, ...): a layer's new K/V is one
            # (N, G, 2, D) block, written with a single index_put; 1/sqrt(D) folded into the queries
            kv = torch.stack([a.k_proj.weight.view(G, D, C), a.v_proj.weight.view(G, D, C)], 1)
            qkv = torch.cat([a.q_proj.weight / math.sqrt(D), kv.reshape(2 * G * D, C)], 0)
            self.layer_w.append((
                ln1.eps, t(qkv, ln1.weight), t(a.o_proj.weight),
                ln2.eps, t(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight], 0), ln2.weight),
                t(mlp.down_proj.weight),
            ))
        self.embed = m.embed_tokens.weight
        self.norm_eps = m.norm.eps
        self.head_t = t(self.model.lm_head.weight, m.norm.weight)  # (C, V), final norm folded in
        if self.routing == "expert_choice":
            self.router_t = torch.cat([r.linear.weight for r in m.routers], 0).t().contiguous()  # (C, R)
        elif self.routing == "token_choice":
            self.router_t = m.routers[0].linear.weight.t().contiguous()  # (C, R)

    # ---- buffers ---------------------------------------------------------------------------------
    def allocate(self, slots: int, pool: int, capacity: int) -> None:
        """K/V for `slots` requests of up to `capacity` positions, and `pool` hidden-state rows."""
        G, D, dev, dt = self.G, self.D, self.device, self.dtype
        self.M, self.capacity = slots, capacity
        # K and V side by side, (rows, G, 2, capacity, D): one write and one gather per layer; zeros,
        # because masked entries still meet a softmax weight of 0 (garbage there could be NaN)
        self.kv = torch.zeros(self.n_slots * slots, G, 2, capacity, D, device=dev, dtype=dt)
        self.h = torch.zeros(pool, self.C, device=dev, dtype=dt)
        self.h_in = torch.zeros_like(self.h) if self.routing == "token_choice" else None
        self.gate = torch.ones(pool, device=dev, dtype=torch.float)
        self.target = torch.zeros(pool, dtype=torch.long, device=dev)
        cos, sin = rotary_cos_sin(torch.arange(capacity, device=dev)[None], D, self.config.rope_theta, dt)
        cos, sin = cos[0, 0], sin[0, 0]  # (capacity, D)
        # x * cos + cat(-x2, x1) * sin == x * cos + roll(x) * cat(-sin1, sin2): one roll, no cat.
        # Tables cover every head of the fused projection, (capacity, H + 2G, D): rotary on the H
        # query and G key heads, identity (cos 1, sin 0) on the G value heads, which sit between the
        # keys (k_0, v_0, k_1, ...), so q, k and v rotate in one pass.
        sin = torch.cat((-sin[:, : D // 2], sin[:, D // 2:]), -1)
        rotary = torch.zeros(capacity, 2, self.H + 2 * G, D, device=dev, dtype=dt)
        rotary[:, 0] = 1.0
        rotated = list(range(self.H)) + [self.H + 2 * g for g in range(G)]
        rotary[:, 0, rotated] = cos[:, None]
        rotary[:, 1, rotated] = sin[:, None]
        self.cos, self.sin = rotary[:, 0], rotary[:, 1]
        self.arange = torch.arange(capacity, device=dev)

    def kv_entry_bytes(self) -> int:
        """Bytes of one K/V entry of one layer: K and V of every KV head."""
        return 2 * self.G * self.D * self.kv.element_size()

    # ---- one layer call --------------------------------------------------------------------------
    def _layer(self, u: int, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, p: PassInput, j: int):
        """Decoder layer u over the pass's N items as its j-th layer: x (N, C) -> (N, C). The items
        write their K/V (`p.write_*`) before any of them attends (`p.read`)."""
        eps1, wqkv, wo, eps2, wgu, wdown = self.layer_w[u]
        H, G, D = self.H, self.G, self.D
        N = x.shape[0]
        qkv = torch.mm(F.rms_norm(x, (self.C,), None, eps1), wqkv).view(N, H + 2 * G, D)
        qkv = torch.addcmul(qkv * cos, qkv.roll(D // 2, -1), sin)  # rotary; sin carries the half-split sign
        if p.write_rows is not None:
            new = qkv[:, H:].view(N, G, 2, D)
            self.kv[p.write_rows[j], :, :, p.write_idx] = new if p.writers is None else new[p.writers]
        att = attend(self.kv, qkv[:, :H].view(N, G, H // G, D), p.read, j).view(N, H * D)
        x = torch.addmm(x, att, wo)
        gu = torch.mm(F.rms_norm(x, (self.C,), None, eps2), wgu)
        return torch.addmm(x, F.silu(gu[:, : self.I]) * gu[:, self.I:], wdown)

    def _stack(self, kind: str, layers: list[int], x: torch.Tensor, p: PassInput, first: int = 0) -> torch.Tensor:
        """Layers `layers` over the pass's items, as the pass's layers first, first + 1, ..."""
        if not layers:
            return x
        self._count(kind, len(layers), p.n)
        if p.cos is None:
            p.cos, p.sin = self.cos[p.pos], self.sin[p.pos]  # (N, H + 2G, D), for every layer of the pass
        for j, u in enumerate(layers, start=first):
            x = self._layer(u, x, p.cos, p.sin, p, j)
        return x

    # ---- the three passes ------------------------------------------------------------------------
    def entry(self, p: PassInput) -> torch.Tensor | None:
        """Embed `p.extra["tokens"]`, run the prelude, take the entry routing decision (expert-choice:
        step 1's gate; token-choice: each item's depth and gate), then recursion step 1 (`step`).
        Returns what `step` returns."""
        x = self._stack("prelude", self.prelude_layers, F.embedding(p.extra["tokens"], self.embed), p)
        if self.routing == "expert_choice" and self.gated:
            self.gate[p.rows] = self.policy.gate(torch.mm(x, self.router_t[:, :1]).squeeze(-1).float())
        elif self.routing == "token_choice":
            choice = self.policy.token_choice(torch.mm(x, self.router_t).float())
            self.gate[p.rows] = choice.gate
            self.target[p.rows] = choice.target
            self.h_in[p.rows] = x
        return self.step(p, self.entry_group, x, first=len(self.prelude_layers))

    def block(self, p: PassInput, group: int) -> torch.Tensor | None:
        """One application of a group's shared layers to items at any of its steps (after step 1)."""
        return self.step(p, group, self.h[p.rows])

    def step(self, p: PassInput, group: int, x: torch.Tensor, first: int = 0) -> torch.Tensor | None:
        """A recursion step of a group's shared layers over x (N, C), the items' hidden states, as
        the pass's layers `first`, ...; then each item's routing decision for its next step
        (`p.extra["next_step"]`, 0-based), asked of the model's depth policy. Stores the items'
        hidden states; returns (N,) bool "takes the next step" on the device, or None when the
        decision is known on the host (`decided_on_host`)."""
        y = self._stack("block", list(self.groups[group][0]), x, p, first)
        if self.routing == "expert_choice" and self.gated:
            y = x + self.gate[p.rows][:, None].to(y.dtype) * (y - x)
        nr = p.extra["next_step"]
        cont = None
        if self.routing == "expert_choice" and (self.gated or not self.decided_on_host):
            # router nr's logit (an item leaving after the last step reads the last router; it exits anyway)
            logits = torch.mm(y, self.router_t).float().gather(1, nr.clamp(max=self.R - 1)[:, None]).squeeze(1)
            if not self.decided_on_host:
                cont = self.policy.takes_step(nr, logits=logits)
            if self.gated:
                self.gate[p.rows] = self.policy.gate(logits)
        elif self.routing == "token_choice":
            cont = self.policy.takes_step(nr, target=self.target[p.rows])
            if self.gated:  # token-choice scales the whole recursion's update once, at exit
                g, h_in = self.gate[p.rows][:, None].to(y.dtype), self.h_in[p.rows]
                y = torch.where(cont[:, None], y, h_in + g * (y - h_in))
        self.h[p.rows] = y
        return cont

    def exit(self, p: PassInput) -> torch.Tensor | None:
        """The coda over the pass's items, then the final norm and the LM head over the items
        `p.extra["want"]` (positions in the pass): (len(want), V) float logits, None without any."""
        x = self._stack("coda", self.coda_layers, self.h[p.rows], p)
        want = p.extra["want"]
        if not want.numel():
            return None
        self._count("head", 1, want.numel())
        return torch.mm(F.rms_norm(x[want], (self.C,), None, self.norm_eps), self.head_t).float()


__all__ = ["Runner"]
