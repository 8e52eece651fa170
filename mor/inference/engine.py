"""Continuous depth-wise batching: many MoR generation requests decoded together.

Run example::

    import mor
    from mor.inference.engine import Engine
    model, tok = mor.load("mor-ec-r3", device="cpu")
    engine = Engine(model, max_batch=16)
    prompts = [tok(t).input_ids for t in ["The king", "Once upon a time", "In 1990 the"]]
    for ids, depths in engine.generate(prompts, max_new_tokens=32):  # the new tokens only
        print(tok.decode(ids), depths)
    for event in engine.stream(prompts, max_new_tokens=[8, 16, 32]):   # live progress
        print(event.tokens_generated, f"{event.tokens_per_second:.0f} tok/s")

How it works. Every request in flight has exactly one *item*: the token it is currently pushing
through the model (a request decodes one token at a time). An engine iteration is:

1. admit waiting requests into free slots (`max_batch` of them): the prompts admitted together
   are prefilled through the model's own forward and `MoRCache` (one left-padded batch), copied
   into the engine's preallocated K/V buffers, and each first token picked from the prefill logits;
2. items that hold a new token run the embedding and the prelude (unique first layers), then the
   entry routing (expert-choice step-1 gate, or the token-choice depth decision);
3. the shared recursion block runs ONCE over every item in flight, whatever its recursion step
   and request: one matmul per weight for all of them. Under sharing "cycle"/"middle_cycle"
   every step applies the same unique layers, so all items form one batch. Under
   "sequence"/"middle_sequence" different steps apply different unique layers, so items are
   grouped per unique-layer list (items whose step uses the same layers batch together; with
   N_r steps that is up to N_r groups per iteration);
4. each item asks the model's depth policy (`mor.model.policy.DepthPolicy`, the rule the model's
   own forward uses) whether to take another step (expert-choice: the causal rule
   sigmoid(logit) > threshold, with `depth_cap` / `fixed_depth` respected; token-choice: the
   depth chosen at entry; routing "none": every step up to the cap);
5. exiting items run the coda (unique last layers), the final norm and the LM head, and pick
   their next token with `mor.model.sampling.pick_next`; that token re-enters at step 2 of the
   next iteration. A request that has its `max_new_tokens` (or emitted end-of-text) leaves, and
   its slot goes to the next waiting request.

So a shallow token finishes in fewer iterations and its request moves on, while the block always
runs over a full batch of items: this is what turns early exits into throughput.

K/V layout (like nanochat / gpt-fast): one preallocated buffer holding K and V side by side,
(cache slots x max_batch, G, 2, capacity, D), so a layer writes its new K/V with one index_put
and gathers them with one index_select. The cache slots are the model's own
(`MoRModel.slot_names`: prelude layers, each recursion step's layers under recursion-wise
caching or only step 1's under recursive sharing, coda layers). Entries of a (slot, request) row
are in position order, so during decoding (one query per item, every cached entry earlier than
it) the causal mask is just "entry index < entries held"; an item at step r reads row
(slot of (r, layer), its batch slot) and appends its own K/V there first (under sharing, steps > 1
only read step 1's rows). Rows are trimmed to the longest one in the group. When most items
read one cache slot (vanilla; every step under recursive KV sharing; step 1 or the prelude/coda
under a shallow router) that slot's S rows are attended in place, each item's query at its batch
slot, and only the other items' rows are gathered (copied side by side); otherwise every row is
gathered (`_Plan`). (A layout with one row per request holding every step's entries, tagged by
step and masked, avoids the gather but attends over ~mean-depth times more entries; it measured
4-7% slower here.)

Work counters: `passes` counts the weight passes of the last stream (one per decoder-layer call,
one per LM-head call) and `pass_rows` the items they carried; docs/performance.md shows that
passes per decoded token, not FLOPs, predict decode speed on a CPU at these batch sizes.

Weights: every matmul weight is pre-transposed to (in, out) and contiguous (x @ W beats
F.linear by up to 2x at decoding's small row counts on CPU), Q/K/V and gate/up are fused (K and
V interleaved per head to match the cache layout), the RMSNorm weights and the attention scale
are folded into the following matrices, residual adds ride on addmm, and greedy
picking uses max(-1).indices (argmax's first-maximum rule, several times faster on CPU).

Correctness: greedy outputs (tokens and per-token depths) equal `model.generate(prompt,
max_new_tokens=n, return_dict_in_generate=True)` (`.sequences`, `.depths`) run alone for every
request; sampling with `seed=s` draws for request i what `torch.manual_seed(s + i);
model.generate(..., do_sample=True)` draws (each request owns its generator, so results do not
depend on batching).
Matmuls run at a different batch width than a lone `generate`, so logits agree to float rounding
(~1e-6), not bit for bit: a token whose two best logits, or a router score and its threshold,
are closer than that could in principle differ; tests/test_engine.py checks identity.

`naive_generate` is the comparison point of the benchmark: the "naive path (full width,
masked)", where every recursion step computes every token of the batch and masks the update of
tokens that exited, as the reference implementation does. It gives the same tokens.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ..model.modeling import MoRForCausalLM, Tokens, rotary_cos_sin
from ..model.policy import DepthPolicy, check_depth_args
from ..model.sampling import pick_next, sampling_warpers


# Attend a cache slot's rows in place when more than this share of the batch slots read it. A
# gathered row costs about twice an in-place one (copy, then attend), but the in-place block
# carries every slot plus a few scatter operators; measured on the shipped checkpoints at batch
# 32-64, 0.5 cost mor-ec-r3 (mean depth ~2.1) 6% while 0.7 left it unchanged and still gave
# mor-ec-r3-lean (mean depth ~1.3) up to 6%.
IN_PLACE_SHARE = 0.7


# ---- requests and progress events ---------------------------------------------------------------


@dataclass
class _Request:
    index: int
    prompt: list[int]
    max_new: int
    generator: torch.Generator | None
    tokens: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)


@dataclass
class _Plan:
    """How the N items of one layer group read their cache rows in one iteration (the same for
    every layer of the group; only the cache slot changes from layer to layer).

    Gathering an item's row copies it (index_select), which costs about twice what attending over
    a row in place does. So when more than `IN_PLACE_SHARE` of the batch slots hold items reading one cache
    slot (the "major" one: recursion step 1 under a shallow router, the prelude, the coda, every
    step under recursive KV sharing), all S rows of that slot are attended in place, with each
    item's query at its batch slot, and only the other items' rows are gathered.

    L: entries attended (the longest row). mask: (N, 1, 1, L), True where an entry is hidden.
    major: the recursion step whose cache slot is read in place, 0 when every item reads one slot
        (None: gather every row).
    slots: (N,) the items' batch slots (None: the items are slots 0..S-1, in order).
    block_mask: (S, 1, 1, L) the mask in batch-slot order (rows of other items are overwritten).
    minor: (M,) positions of the items that read another slot (None: none), minor_mask their mask.
    """

    L: int
    mask: torch.Tensor
    major: int | None = None
    slots: torch.Tensor | None = None
    block_mask: torch.Tensor | None = None
    minor: torch.Tensor | None = None
    minor_mask: torch.Tensor | None = None


@dataclass
class EngineEvent:
    """Progress after one engine iteration.

    iteration: 1-based count of block runs so far.
    new_tokens: (request index, token id) picked in this iteration (a request's first token is
        picked at its prefill).
    new_depths: (request index, depth) of tokens whose recursion ended in this iteration.
    finished: request indices that completed in this iteration.
    tokens_generated: tokens picked so far over all requests.
    elapsed: seconds spent inside the engine since the stream started (prefills included; the
        caller's time between events is not counted, so a slow UI does not make it look slow).
    prefill_seconds: part of `elapsed` spent prefilling prompts.
    tokens_per_second: tokens_generated / elapsed.
    in_flight / waiting: requests holding a slot / still queued.
    block_items: items the shared block processed in this iteration (batch utilisation).
    block_steps: with `stream(..., trace_steps=True)`, (request index, recursion step, 1-based)
        of every item the block ran in this iteration; else empty.
    """

    iteration: int
    new_tokens: list[tuple[int, int]]
    new_depths: list[tuple[int, int]]
    finished: list[int]
    tokens_generated: int
    elapsed: float
    prefill_seconds: float
    tokens_per_second: float
    in_flight: int
    waiting: int
    block_items: int
    block_steps: list[tuple[int, int]] = field(default_factory=list)


def _eos_ids(model: MoRForCausalLM, eos_token_id: int | Sequence[int] | None, stop_at_eos: bool) -> set[int]:
    """The end-of-text ids a request stops at: `eos_token_id`, else the model's generation config's
    (the one `generate` uses); none without `stop_at_eos`."""
    eos = model.generation_config.eos_token_id if eos_token_id is None else eos_token_id
    if not stop_at_eos or eos is None:
        return set()
    return {int(eos)} if isinstance(eos, int) else {int(e) for e in eos}


def _per_request(max_new_tokens, n):
    if isinstance(max_new_tokens, int):
        values = [max_new_tokens] * n
    else:
        values = [int(v) for v in max_new_tokens]
        if len(values) != n:
            raise ValueError(f"max_new_tokens has {len(values)} entries for {n} prompts.")
    if any(v < 0 for v in values):
        raise ValueError("max_new_tokens must be >= 0.")
    return values


def _prompts(prompts) -> list[list[int]]:
    out = []
    for p in prompts:
        ids = p.reshape(-1).tolist() if isinstance(p, torch.Tensor) else [int(t) for t in p]
        if not ids:
            raise ValueError("a prompt is empty: it needs at least one token.")
        out.append(ids)
    return out


# ---- the engine ------------------------------------------------------------------------------------


class Engine:
    """Continuous depth-wise batching for `MoRForCausalLM` (any routing, sharing and KV mode).

    model: the model (float32 or other; its weights are snapshotted into fused matrices at
        construction: call `refresh()` after changing them).
    max_batch: slots, i.e. requests in flight at once.
    depth_cap / fixed_depth: as in `model.generate` (the model's depth policy decides every step).
    prefill_together: prompts admitted in the same iteration share one (left-padded) prefill
        forward; False prefills each alone, exactly as a lone `generate` does.
    """

    def __init__(self, model: MoRForCausalLM, max_batch: int = 16, depth_cap: int | None = None,
                 fixed_depth: int | None = None, prefill_together: bool = True):
        if max_batch < 1:
            raise ValueError("max_batch must be >= 1.")
        cfg = model.config
        self.max_depth = check_depth_args(depth_cap, fixed_depth, cfg.num_recursions)
        self.model, self.config, self.max_batch = model, cfg, max_batch
        self.depth_cap, self.fixed_depth = depth_cap, fixed_depth
        self.prefill_together = prefill_together
        self.R = cfg.num_recursions
        self.H, self.G, self.D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        self.C, self.I = cfg.hidden_size, cfg.intermediate_size
        m = model.model
        self.prelude, self.steps, self.coda = m.prelude, m.steps, m.coda
        # The model's cache layout: slot of each layer application, ("prelude", i), (r, j), ("coda", i).
        self.slot_of = dict(m.slot_of)
        self.n_slots = len(m.slot_names)
        self.shared_kv = cfg.kv_cache == "shared"
        self.routing = cfg.routing
        # Items are batched per unique-layer list: one group for cycle sharing, one per step for sequence.
        groups: dict[tuple[int, ...], list[int]] = {}
        for r, layers in enumerate(self.steps[: self.max_depth]):
            groups.setdefault(tuple(layers), []).append(r)
        self.groups = list(groups.items())
        self.refresh()

    # ---- weights -----------------------------------------------------------------------------------
    @torch.no_grad()
    def refresh(self) -> None:
        """(Re)build the engine's weight matrices from the model's parameters.

        Every matmul weight is stored transposed and contiguous, (in, out), because x @ W^T
        with a pre-transposed W runs up to twice as fast as F.linear at the small row counts of
        decoding; Q/K/V and gate/up projections are fused; the RMSNorm weights are folded into
        the matrix that follows each norm. The depth policy is rebuilt too (it reads the config's
        router thresholds)."""
        self.policy = DepthPolicy(self.config, self.depth_cap, self.fixed_depth)
        # A straight-through gate is exactly 1 in the forward pass: x + 1 * (y - x) is y (up to
        # rounding), so the gate's arithmetic is skipped.
        self.gated = self.policy.scales_updates
        m = self.model.model
        dev = m.embed_tokens.weight.device
        self.device, self.dtype = dev, m.embed_tokens.weight.dtype

        def t(w, scale_in=None):
            w = w.t()
            return (w if scale_in is None else scale_in[:, None] * w).contiguous()

        self.layer_w = []
        for layer in m.layers:
            a, mlp = layer.self_attn, layer.mlp
            ln1, ln2 = layer.input_layernorm, layer.post_attention_layernorm
            # the attention scale 1/sqrt(D) is folded into the query columns (exact when D is a power of 4)
            # K and V rows interleaved per KV head (k_0, v_0, k_1, v_1, ...): a layer's new K/V is
            # then one (N, G, 2, D) block, written to the cache with a single index_put
            D = self.D
            kv = torch.stack([a.k_proj.weight.view(self.G, D, self.C), a.v_proj.weight.view(self.G, D, self.C)], 1)
            qkv = torch.cat([a.q_proj.weight / math.sqrt(D), kv.reshape(2 * self.G * D, self.C)], 0)
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
        # cache slot of layer j at step r, per group: (J, R) long
        self.group_slots = []
        for layers, steps in self.groups:
            table = torch.zeros(len(layers), self.R, dtype=torch.long)
            for j in range(len(layers)):
                for r in steps:
                    table[j, r] = self.slot_of[(r, j)]
            self.group_slots.append(table.to(dev))
        self.group_slot_ints = [t.tolist() for t in self.group_slots]  # [j][r] -> cache slot

    # ---- public API --------------------------------------------------------------------------------
    def generate(self, prompts: Sequence[Sequence[int]] | Sequence[torch.Tensor],
                 max_new_tokens: int | Sequence[int] = 32, **kwargs) -> list[tuple[list[int], list[int]]]:
        """Decode every prompt; returns, in prompt order, (new token ids, their depths).

        `max_new_tokens`: one int, or one per prompt. Keyword arguments as in `stream`."""
        for _ in self.stream(prompts, max_new_tokens, **kwargs):
            pass
        return self.results

    @torch.inference_mode()
    def stream(self, prompts, max_new_tokens: int | Sequence[int] = 32, do_sample: bool = False,
               temperature: float = 1.0, top_k: int | None = None, top_p: float | None = None,
               seed: int = 0, eos_token_id: int | Sequence[int] | None = None, stop_at_eos: bool = True,
               trace_steps: bool = False) -> Iterator[EngineEvent]:
        """Decode every prompt, yielding an `EngineEvent` after every iteration.

        trace_steps: report which request's item ran at which recursion step in each iteration
        (`EngineEvent.block_steps`; one extra device-to-host copy per iteration).

        Sampling: request i uses `torch.Generator().manual_seed(seed + i)` and transformers'
        warpers for temperature / top-k / top-p (`mor.model.sampling`). End-of-text:
        `eos_token_id` (one id or several; default the model's generation config's); a request
        stops after emitting it (its depth is still measured), as `model.generate` does, unless
        `stop_at_eos=False`. When the stream ends, `self.results` holds (tokens, depths) per request."""
        plist = _prompts(prompts)
        news = _per_request(max_new_tokens, len(plist))
        eos = _eos_ids(self.model, eos_token_id, stop_at_eos)
        warpers = sampling_warpers(temperature, top_k, top_p) if do_sample else None
        reqs = [_Request(i, p, n, torch.Generator(device=self.device).manual_seed(seed + i) if do_sample else None)
                for i, (p, n) in enumerate(zip(plist, news))]
        self.results = [([], []) for _ in reqs]
        self.request_kv_bytes: list[int] = []  # K/V bytes each finished request held
        # weight passes of this stream: one per decoder-layer call (whatever its row count) and
        # per LM-head call; at small batches on a CPU each costs about the same however many
        # items it carries, so passes per decoded token predict decode speed (docs/performance.md)
        self.passes = {"prelude": 0, "block": 0, "coda": 0, "head": 0}
        self.pass_rows = 0  # items carried by those passes, summed
        self._allocate(max(len(p) + n for p, n in zip(plist, news)) + 1)
        S = self.max_batch
        waiting = deque(reqs)
        slots: list[_Request | None] = [None] * S
        entering: list[int] = []  # slots whose item holds a new token (prelude next)
        t0 = time.perf_counter()
        busy = 0.0  # seconds spent inside the engine (prefills included)
        prefill_time = 0.0
        produced = 0
        iteration = 0
        while True:
            new_tokens, new_depths, finished = [], [], []
            # 1. admissions
            admitted = []
            for s in range(S):
                while slots[s] is None and waiting:
                    req = waiting.popleft()
                    if req.max_new == 0:
                        finished.append(req.index)
                        continue
                    slots[s] = req
                    admitted.append(s)
            if admitted:
                ts = time.perf_counter()
                chunks = [admitted] if self.prefill_together else [[s] for s in admitted]
                for chunk in chunks:
                    tokens = self._prefill([slots[s] for s in chunk], chunk, warpers)
                    for s, token in zip(chunk, tokens):
                        slots[s].tokens.append(token)
                        new_tokens.append((slots[s].index, token))
                prefill_time += time.perf_counter() - ts
                produced += len(admitted)
                entering += admitted
            if not any(r is not None for r in slots):
                if new_tokens or finished:
                    elapsed = busy + time.perf_counter() - t0
                    yield EngineEvent(iteration, new_tokens, new_depths, finished, produced, elapsed,
                                      prefill_time, produced / max(elapsed, 1e-9), 0, 0, 0)
                break
            iteration += 1
            ent = torch.tensor(sorted(entering), dtype=torch.long, device=self.device) if entering else None
            busy_slots = [s for s in range(S) if slots[s] is not None]
            block_steps = []
            if trace_steps:  # entering items start at step 1; the others are at their stored step
                now, fresh = self.step.tolist(), set(entering)
                block_steps = [(slots[s].index, 1 if s in fresh else now[s] + 1) for s in busy_slots]
            entering = []
            items = torch.tensor(busy_slots, dtype=torch.long, device=self.device)
            # 2-4. prelude, block, routing
            exit_slots, exit_depths = self._iterate(ent, items)
            # 5. exits
            head_slots = []
            for s, d in zip(exit_slots, exit_depths):
                req = slots[s]
                req.depths.append(d)
                new_depths.append((req.index, d))
                last = req.tokens[-1]
                if len(req.tokens) >= req.max_new or last in eos:
                    self.results[req.index] = (req.tokens, req.depths)
                    self.request_kv_bytes.append(self._kv_bytes_of(s))
                    finished.append(req.index)
                    slots[s] = None
                else:
                    head_slots.append(s)
            if head_slots:
                hs = torch.tensor(head_slots, dtype=torch.long, device=self.device)
                logits = self._head(hs)
                if do_sample:  # one draw per request, from its own generator
                    picked = [int(pick_next(logits[i:i + 1], warpers, slots[s].generator))
                              for i, s in enumerate(head_slots)]
                    nxt = torch.tensor(picked, dtype=torch.long, device=self.device)
                else:
                    nxt = pick_next(logits)
                    picked = nxt.tolist()
                self.tok[hs] = nxt
                self.pos[hs] += 1
                for s, t in zip(head_slots, picked):
                    slots[s].tokens.append(t)
                    new_tokens.append((slots[s].index, t))
                produced += len(head_slots)
                entering = head_slots
            busy += time.perf_counter() - t0
            yield EngineEvent(iteration, new_tokens, new_depths, finished, produced, busy, prefill_time,
                              produced / max(busy, 1e-9), sum(r is not None for r in slots), len(waiting),
                              int(items.numel()), block_steps)
            t0 = time.perf_counter()  # the caller's time between events is not counted

    # ---- buffers -----------------------------------------------------------------------------------
    def _allocate(self, capacity: int) -> None:
        S, G, D, dev, dt = self.max_batch, self.G, self.D, self.device, self.dtype
        self.capacity = capacity
        # K and V side by side, (rows, G, 2, capacity, D): one write and one gather per layer
        self.kv = torch.zeros(self.n_slots * S, G, 2, capacity, D, device=dev, dtype=dt)
        # entries held by each (recursion step, batch slot) cache row (index 0 under shared KV)
        self.steplen = torch.zeros(self.R, S, dtype=torch.long, device=dev)
        self.h = torch.zeros(S, self.C, device=dev, dtype=dt)
        self.h_in = torch.zeros_like(self.h)
        self.gate = torch.ones(S, device=dev, dtype=torch.float)
        self.target = torch.zeros(S, dtype=torch.long, device=dev)
        self.step = torch.zeros(S, dtype=torch.long, device=dev)
        self.pos = torch.zeros(S, dtype=torch.long, device=dev)
        self.tok = torch.zeros(S, dtype=torch.long, device=dev)
        cos, sin = rotary_cos_sin(torch.arange(capacity, device=dev)[None], D, self.config.rope_theta, dt)
        cos, sin = cos[0, 0], sin[0, 0]  # (capacity, D)
        # x * cos + cat(-x2, x1) * sin == x * cos + roll(x) * cat(-sin1, sin2): one roll, no cat.
        # Tables cover every head of the fused projection, (capacity, H + 2G, D): rotary on the
        # H query and G key heads, identity (cos 1, sin 0) on the G value heads, which sit
        # between the keys (k_0, v_0, k_1, ...), so q, k and v rotate in one pass.
        sin = torch.cat((-sin[:, : D // 2], sin[:, D // 2:]), -1)
        rotary = torch.zeros(capacity, 2, self.H + 2 * G, D, device=dev, dtype=dt)
        rotary[:, 0] = 1.0
        rotated = list(range(self.H)) + [self.H + 2 * g for g in range(G)]
        rotary[:, 0, rotated] = cos[:, None]
        rotary[:, 1, rotated] = sin[:, None]
        self.cos, self.sin = rotary[:, 0], rotary[:, 1]
        self.arange_cap = torch.arange(capacity, device=dev)

    def kv_bytes(self) -> dict[str, int]:
        """K/V bytes: 'allocated' (the preallocated buffers of the last stream)."""
        if not hasattr(self, "kv"):
            return {"allocated": 0}
        return {"allocated": self.kv.numel() * self.kv.element_size()}

    def _kv_bytes_of(self, s: int) -> int:
        """K/V bytes held by the request in slot s: entries stored x 2 (K, V) x G x D x element size."""
        n = int(self.pos[s])  # tokens fed before the in-flight one
        entries = len(self.prelude) * (n + 1) + len(self.coda) * n  # a finishing token skips the coda
        for r, layers in enumerate(self.steps):
            if not self.shared_kv or r == 0:
                entries += len(layers) * int(self.steplen[r, s])
        return entries * 2 * self.G * self.D * self.kv.element_size()

    # ---- prefill -----------------------------------------------------------------------------------
    def _prefill(self, reqs: list[_Request], slots: list[int], warpers) -> list[int]:
        """Prefill prompts with the model's own forward and `MoRCache` (together, left-padded,
        or one by one with `prefill_together=False`), copy each cache row into its slot, and
        return each request's first token (`warpers`: None for greedy, else the sampling warpers)."""
        B = len(reqs)
        T = max(len(r.prompt) for r in reqs)
        ids = torch.zeros(B, T, dtype=torch.long)
        mask = torch.zeros(B, T, dtype=torch.long)
        for b, r in enumerate(reqs):
            ids[b, T - len(r.prompt):] = torch.tensor(r.prompt)
            mask[b, T - len(r.prompt):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        cache = self.model.model.new_cache(B)
        out = self.model(ids, attention_mask=mask if B > 1 else None, cache=cache,
                         depth_cap=self.depth_cap, fixed_depth=self.fixed_depth, routing_mode="causal",
                         use_cache=True, logits_to_keep=1)
        S = self.max_batch
        idx = torch.tensor(slots, dtype=torch.long, device=self.device)
        self.steplen[:, idx] = 0
        for c, slot in enumerate(cache.slots):
            if not slot.is_initialized:
                continue
            lengths = slot.length.tolist()
            for b, s in enumerate(slots):  # each row holds a prefix of valid entries
                n = lengths[b]
                self.kv[c * S + s, :, 0, :n] = slot.keys[b, :n].transpose(0, 1)
                self.kv[c * S + s, :, 1, :n] = slot.values[b, :n].transpose(0, 1)
        for r in range(self.R):
            key = (r, 0)
            if key in self.slot_of and (not self.shared_kv or r == 0):
                slot = cache.slots[self.slot_of[key]]
                if slot.length is not None:
                    self.steplen[r, idx] = slot.length
        self.pos[idx] = torch.tensor([len(r.prompt) for r in reqs], device=self.device)
        last = out.logits[:, -1]  # left padding: the last column is every row's last prompt token
        if warpers is not None:
            tokens = [int(pick_next(last[b:b + 1], warpers, r.generator)) for b, r in enumerate(reqs)]
        else:
            tokens = pick_next(last).tolist()
        self.tok[idx] = torch.tensor(tokens, device=self.device)
        return tokens

    # ---- one iteration -----------------------------------------------------------------------------
    def _layer(self, u, x, cos, sin, wrows, widx, plan, base, rows, kw=None):
        """One decoder layer over N single-token items.

        x (N, C); cos/sin (N, H + 2G, D); wrows/widx the cache rows and indices written (None: no
        write), kw the subset of items that write (None: all); plan/base/rows where the items
        read (`_attend`)."""
        eps1, wqkv, wo, eps2, wgu, wdown = self.layer_w[u]
        H, G, D = self.H, self.G, self.D
        N = x.shape[0]
        qkv = torch.mm(F.rms_norm(x, (self.C,), None, eps1), wqkv).view(N, H + 2 * G, D)
        qkv = torch.addcmul(qkv * cos, qkv.roll(D // 2, -1), sin)  # rotary; sin carries the half-split sign
        if wrows is not None:
            new = qkv[:, H:].view(N, G, 2, D)
            self.kv[wrows, :, :, widx] = new if kw is None else new[kw]
        att = self._attend(qkv[:, :H].view(N, G, H // G, D), plan, base, rows).view(N, H * D)
        x = torch.addmm(x, att, wo)
        gu = torch.mm(F.rms_norm(x, (self.C,), None, eps2), wgu)
        return torch.addmm(x, F.silu(gu[:, : self.I]) * gu[:, self.I:], wdown)

    def _attend(self, q, plan: _Plan, base: int | None, rows: torch.Tensor | None):
        """Attention of q (N, G, H/G, D) over the items' cache rows: the S-row block starting at
        row `base` in place (items at their batch slots) when the plan has a major slot, and a
        gather of `rows` for the others (every item when there is no major slot)."""
        L = plan.L
        if plan.major is None:
            return _attention(q, self.kv[:, :, :, :L].index_select(0, rows), plan.mask)
        S = self.max_batch
        if plan.slots is None:
            qb = q
        else:
            qb = q.new_zeros((S, *q.shape[1:]))
            qb[plan.slots] = q
        out = _attention(qb, self.kv[base:base + S, :, :, :L], plan.block_mask)  # (S, G, H/G, D)
        if plan.slots is not None:
            out = out[plan.slots]
        if plan.minor is not None:
            out[plan.minor] = _attention(q[plan.minor], self.kv[:, :, :, :L].index_select(0, rows), plan.minor_mask)
        return out

    def _plan(self, items, full, mask, L, step_of_item=None) -> _Plan:
        """The read plan of N items (batch slots `items`; `full`: they are every slot, in order).
        step_of_item: (N,) the recursion step whose cache slot each item reads (None: all items
        read one slot)."""
        S, N = self.max_batch, mask.shape[0]
        if step_of_item is None:
            major, count = 0, N
        else:
            counts = torch.bincount(step_of_item)
            major = int(counts.argmax())
            count = int(counts[major])
        if count <= IN_PLACE_SHARE * S:
            return _Plan(L, mask)
        plan = _Plan(L, mask, major)
        if full:
            plan.block_mask = mask
        else:
            plan.slots = items
            plan.block_mask = mask.new_zeros((S, *mask.shape[1:]))
            plan.block_mask[items] = mask
        if count < N:
            plan.minor = (step_of_item != major).nonzero().squeeze(1)
            plan.minor_mask = mask[plan.minor]
        return plan

    def _unique_layers(self, which, x, items, cos, sin):
        layers = self.prelude if which == "prelude" else self.coda
        if not layers:
            return x
        self.passes[which] += len(layers)
        self.pass_rows += len(layers) * items.numel()
        S = self.max_batch
        p = self.pos[items]
        L = int(p.max()) + 1
        mask = (self.arange_cap[:L][None, :] > p[:, None])[:, None, None, :]
        plan = self._plan(items, items.numel() == S, mask, L)
        for i, u in enumerate(layers):
            base = self.slot_of[(which, i)] * S
            rows = base + items
            x = self._layer(u, x, cos, sin, rows, p, plan, base, None if plan.major is not None else rows)
        return x

    def _iterate(self, ent, items):
        """Prelude for entering items, one block run over all items, routing decisions.
        Returns (exiting slots, their depths) as lists."""
        S, R = self.max_batch, self.R
        h = self.h
        if ent is not None:
            p = self.pos[ent]
            cos, sin = self.cos[p], self.sin[p]
            x = F.embedding(self.tok[ent], self.embed)
            x = self._unique_layers("prelude", x, ent, cos, sin)
            self.step[ent] = 0
            if self.routing == "expert_choice" and self.gated:  # step 1's gate (everyone takes step 1)
                self.gate[ent] = self.policy.gate(torch.mm(x, self.router_t[:, :1]).squeeze(-1).float())
            elif self.routing == "token_choice":
                choice = self.policy.token_choice(torch.mm(x, self.router_t).float())
                self.gate[ent] = choice.gate
                self.target[ent] = choice.target
                self.h_in[ent] = x
            h[ent] = x
        # Every slot busy (the steady state): per-slot state is read and written whole, no indexing.
        full = items.numel() == S

        def take(t, idx):
            return t if idx is None else t[idx]

        everyone = None if full else items
        p = take(self.pos, everyone)
        cos_all, sin_all = self.cos[p], self.sin[p]
        step = take(self.step, everyone)
        single = len(self.groups) == 1
        y = None
        # the block: once over every item, grouped by unique-layer list
        for gi, ((layers, steps), table) in enumerate(zip(self.groups, self.group_slots)):
            if single:
                sel, it, r, cos, sin = everyone, items, step, cos_all, sin_all
            else:
                sel = torch.isin(step, torch.tensor(steps, device=self.device))
                if not bool(sel.any()):
                    continue
                it, r, cos, sin = items[sel], step[sel], cos_all[sel], sin_all[sel]
                sel = it
            x = take(h, sel)
            if self.shared_kv:
                kw = r == 0
                wslots = it[kw]
                widx = self.steplen[0, wslots]
                self.steplen[0, wslots] += 1
                rlen = take(self.steplen[0], sel)
                if bool(kw.all()):
                    kw = None
            else:
                kw = None
                widx = self.steplen[r, it]
                rlen = widx + 1
                self.steplen[r, it] = rlen
            L = int(rlen.max())
            mask = (self.arange_cap[:L][None, :] >= rlen[:, None])[:, None, None, :]
            rows_all = table[:, r] * S + it  # (J, N)
            # which cache slot each item reads: its step's, or step 1's under recursive KV sharing
            reads = None if (len(steps) == 1 or self.shared_kv) else r
            plan = self._plan(it, it.numel() == S, mask, L, reads)
            slot_ints = self.group_slot_ints[gi]
            y = x
            self.passes["block"] += len(layers)
            self.pass_rows += len(layers) * it.numel()
            for j, u in enumerate(layers):
                rows = rows_all[j]
                wrows = rows if kw is None else rows[kw]
                if plan.major is None:
                    base, read_rows = None, rows
                else:
                    base = slot_ints[j][steps[0] if reads is None else plan.major] * S
                    read_rows = None if plan.minor is None else rows[plan.minor]
                y = self._layer(u, y, cos, sin, wrows, widx, plan, base, read_rows, kw)
            if self.routing == "expert_choice" and self.gated:
                y = x + take(self.gate, sel)[:, None].to(y.dtype) * (y - x)
            if sel is None:
                h.copy_(y)
            else:
                h[sel] = y
        # routing: does each item take its next step (nr, 0-based)? The policy decides per item.
        nr = step + 1
        if self.routing == "expert_choice":
            hx = y if single else take(h, everyone)
            logits = torch.mm(hx, self.router_t).float()  # (N, R)
            # router nr's logit (an item leaving after the last step reads the last router; it exits anyway)
            logits = logits.gather(1, nr.clamp(max=R - 1)[:, None]).squeeze(1)  # (N,)
            cont = self.policy.takes_step(nr, logits=logits)
            if self.gated:
                gate = self.policy.gate(logits)
                if full:
                    self.gate.copy_(gate)
                else:
                    self.gate[items] = gate
        elif self.routing == "token_choice":
            cont = self.policy.takes_step(nr, target=take(self.target, everyone))
        else:
            cont = self.policy.takes_step(nr)
        new_step = torch.where(cont, nr, step)
        if full:
            self.step.copy_(new_step)
        else:
            self.step[items] = new_step
        done = ~cont
        ex = items[done]
        if self.routing == "token_choice" and self.gated and ex.numel():
            g = self.gate[ex][:, None].to(h.dtype)
            h[ex] = self.h_in[ex] + g * (h[ex] - self.h_in[ex])
        return ex.tolist(), nr[done].tolist()

    def _head(self, hs):
        """Coda, final norm and LM head for the exiting items in slots hs: logits (N, V) float."""
        self.passes["head"] += 1
        self.pass_rows += hs.numel()
        p = self.pos[hs]
        cos, sin = self.cos[p], self.sin[p]
        x = self._unique_layers("coda", self.h[hs], hs, cos, sin)
        return torch.mm(F.rms_norm(x, (self.C,), None, self.norm_eps), self.head_t).float()


def _attention(q, kv, mask):
    """Single-query attention: q (N, G, H/G, D) over kv (N, G, 2, L, D) (keys, values; the
    scale is folded into q), mask (N, 1, 1, L) True where hidden; returns (N, G, H/G, D)."""
    scores = torch.matmul(q, kv[:, :, 0].transpose(-1, -2)).masked_fill(mask, float("-inf"))
    return torch.matmul(scores.softmax(-1), kv[:, :, 1])


# ---- the naive path: full width, masked ----------------------------------------------------------


class _DenseKV:
    """A dense per-column K/V store with per-entry validity (the naive path's cache): column t
    holds the token at column t of the left-padded batch, valid if it was active when written."""

    def __init__(self, B: int, capacity: int, G: int, D: int, device, dtype):
        self.k = torch.zeros(B, capacity, G, D, device=device, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.pos = torch.zeros(B, capacity, dtype=torch.long, device=device)
        self.valid = torch.zeros(B, capacity, dtype=torch.bool, device=device)
        self.n = 0

    def append(self, k, v, pos, valid):
        T = k.shape[1]
        self.k[:, self.n:self.n + T] = k
        self.v[:, self.n:self.n + T] = v
        self.pos[:, self.n:self.n + T] = pos
        self.valid[:, self.n:self.n + T] = valid
        self.n += T
        return self.view()

    def view(self):
        n = self.n
        return self.k[:, :n], self.v[:, :n], self.pos[:, :n], self.valid[:, :n]


@torch.inference_mode()
def naive_generate(model: MoRForCausalLM, prompts, max_new_tokens: int | Sequence[int] = 32,
                   batch_size: int | None = None, depth_cap: int | None = None, fixed_depth: int | None = None,
                   eos_token_id: int | Sequence[int] | None = None, stop_at_eos: bool = True,
                   timings: dict | None = None) -> list[tuple[list[int], list[int]]]:
    """Greedy decoding on the naive path: static batches of `batch_size` prompts (left-padded),
    and every layer application computes every token of the batch at full width; a token that
    exited (or was never selected) at a recursion step has its update masked out and its K/V
    entry marked invalid. Uses the model's own decoder layers and depth policy. Returns (new
    token ids, depths) per prompt, equal to `model.generate` run alone. `timings`, if given,
    receives prefill_seconds, decode_seconds and kv_bytes_per_request (the dense caches' bytes)."""
    plist = _prompts(prompts)
    news = _per_request(max_new_tokens, len(plist))
    policy = DepthPolicy(model.config, depth_cap, fixed_depth)
    eos = _eos_ids(model, eos_token_id, stop_at_eos)
    bs = batch_size or len(plist)
    results = []
    clock = {"prefill_seconds": 0.0, "decode_seconds": 0.0, "kv_bytes": 0}
    for start in range(0, len(plist), bs):
        results += _naive_batch(model, plist[start:start + bs], news[start:start + bs], policy, eos, clock)
    if timings is not None:
        timings.update(prefill_seconds=clock["prefill_seconds"], decode_seconds=clock["decode_seconds"],
                       kv_bytes_per_request=clock["kv_bytes"] / len(plist))
    return results


def _naive_forward(model, ids, real, pos, caches, policy: DepthPolicy):
    """Full-width forward of (B, T) tokens: every layer sees every token; returns (logits of the
    last column (B, V), depths (B, T))."""
    m, cfg = model.model, model.config
    B, T = ids.shape
    index = torch.arange(T, device=ids.device)[None].expand(B, T)
    everyone = Tokens(index, pos, real)
    h = m.embed_tokens(ids)
    for i, u in enumerate(m.prelude):
        h = m.layers[u](h, everyone, caches[m.slot_of[("prelude", i)]])
    depths = torch.zeros(B, T, dtype=torch.long, device=ids.device)
    active = real
    choice = None
    if cfg.routing == "token_choice":
        choice = policy.token_choice(m.routers[0](h))
        h_in = h
    for r, layers in enumerate(m.steps[:policy.max_depth]):
        gate = None
        if cfg.routing == "expert_choice":
            logits = m.routers[r](h)
            active = policy.takes_step(r, active, logits=logits)
            gate = policy.gate(logits)
        else:
            active = policy.takes_step(r, active, target=None if choice is None else choice.target)
        tokens = Tokens(index, pos, active)
        y = h
        for j, u in enumerate(layers):
            write = cfg.kv_cache == "recursion_wise" or r == 0
            y = m.layers[u](y, tokens, caches[m.slot_of[(r, j)]], write_kv=write)
        if gate is not None:
            y = h + gate[..., None].to(h.dtype) * (y - h)
        h = torch.where(active[..., None], y, h)
        depths = depths + active.long()
    if choice is not None:
        h = h_in + choice.gate[..., None].to(h.dtype) * (h - h_in)
    for i, u in enumerate(m.coda):
        h = m.layers[u](h, everyone, caches[m.slot_of[("coda", i)]])
    h = m.norm(h[:, -1])
    return model.lm_head(h).float(), depths


def _naive_batch(model, plist, news, policy: DepthPolicy, eos: set[int], clock):
    cfg = model.config
    dev, dt = model.device, model.dtype
    B, T = len(plist), max(len(p) for p in plist)
    n_max = max(news)
    if n_max == 0:
        return [([], []) for _ in plist]
    ids = torch.zeros(B, T, dtype=torch.long, device=dev)
    real = torch.zeros(B, T, dtype=torch.bool, device=dev)
    for b, p in enumerate(plist):
        ids[b, T - len(p):] = torch.tensor(p, device=dev)
        real[b, T - len(p):] = True
    pos = (real.long().cumsum(1) - 1).clamp(min=0)
    caches = [_DenseKV(B, T + n_max, cfg.num_key_value_heads, cfg.head_dim, dev, dt)
              for _ in model.model.slot_names]
    t0 = time.perf_counter()
    logits, _ = _naive_forward(model, ids, real, pos, caches, policy)
    t1 = time.perf_counter()
    next_pos = pos[:, -1] + 1
    tokens = [[] for _ in plist]
    depths = [[] for _ in plist]
    done = [n == 0 for n in news]
    ones = torch.ones(B, 1, dtype=torch.bool, device=dev)
    for _ in range(n_max):
        nxt = pick_next(logits)
        for b, t in enumerate(nxt.tolist()):
            if not done[b]:
                tokens[b].append(t)
        logits, d = _naive_forward(model, nxt[:, None], ones, next_pos[:, None], caches, policy)
        next_pos = next_pos + 1
        for b, dd in enumerate(d[:, 0].tolist()):
            if not done[b]:
                depths[b].append(dd)
                if len(tokens[b]) >= news[b] or tokens[b][-1] in eos:
                    done[b] = True
        if all(done):
            break
    clock["prefill_seconds"] += t1 - t0
    clock["decode_seconds"] += time.perf_counter() - t1
    clock["kv_bytes"] += sum(2 * c.k[:, :c.n].numel() * c.k.element_size() for c in caches)
    return list(zip(tokens, depths))


__all__ = ["Engine", "EngineEvent", "naive_generate"]
