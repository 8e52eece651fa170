"""Mixture-of-Recursions causal language model, read top to bottom.

norm -> rotary -> MLP -> attention -> decoder layer -> routers and their losses -> the recursion
loop (MoRModel) -> the causal-LM head and transformers' generation (MoRForCausalLM). Which tokens
take a recursion step is the depth policy's rule (policy.py), shared with the inference engine.

Letters in shape comments: B batch, T sequence (new tokens of this call), N tokens gathered for
one layer application, C hidden size, H query heads, G key/value heads, D head dim, R recursions.

How a forward pass runs: every layer application works on a *gathered* set of tokens (the
non-padding tokens for unique layers, the tokens still active for a recursion step), so tokens
that exited early cost nothing at deeper steps. Attention reads K/V from a `MoRCache` slot whose
entries carry their original positions, so the causal mask is over positions, not over slots.
The same code serves training (fresh cache per call), prefill and token-by-token decoding, which
is why full and incremental forwards agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.generation.utils import GenerateBeamDecoderOnlyOutput, GenerateDecoderOnlyOutput
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.utils import ModelOutput
from transformers.utils.deprecation import deprecate_kwarg

from .cache import MoRCache
from .configuration import MoRConfig
from .policy import DepthPolicy, check_depth_args


class MoRRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


def rotary_cos_sin(pos: torch.Tensor, head_dim: int, theta: float, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (B, 1, N, D) for integer positions (B, N); Llama's half-split layout."""
    inv_freq = 1.0 / (theta ** (torch.arange(0, head_dim, 2, device=pos.device, dtype=torch.float) / head_dim))
    freqs = pos[..., None].float() * inv_freq  # (B, N, D/2)
    emb = torch.cat((freqs, freqs), dim=-1)[:, None]  # (B, 1, N, D)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class MoRMLP(nn.Module):
    """SwiGLU feed-forward."""

    def __init__(self, config: MoRConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


@dataclass
class Tokens:
    """A gathered set of tokens for one layer application: which rows/positions, and which of
    the N slots are real (each row's real tokens form a prefix, in position order)."""

    index: torch.Tensor  # (B, N) sequence index of each gathered token in this call
    pos: torch.Tensor  # (B, N) absolute position (for rotary and the causal mask)
    valid: torch.Tensor  # (B, N) bool

    @classmethod
    def from_mask(cls, mask: torch.Tensor, positions: torch.Tensor) -> "Tokens":
        """Gather the tokens where mask (B, T) is True, keeping position order."""
        counts = mask.sum(1)
        n = int(counts.max()) if mask.numel() else 0
        # A stable sort on "inactive" puts active tokens first, in their original order.
        index = torch.sort((~mask).to(torch.int8), dim=1, stable=True).indices[:, :n]
        valid = torch.arange(n, device=mask.device)[None, :] < counts[:, None]
        return cls(index, positions.gather(1, index), valid)

    def gather(self, h: torch.Tensor) -> torch.Tensor:
        return h.gather(1, self.index[..., None].expand(-1, -1, h.shape[-1]))  # (B, N, C)

    def scatter(self, h: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
        """h with the valid gathered rows replaced by values (out of place, autograd-friendly)."""
        rows = torch.arange(h.shape[0], device=h.device)[:, None].expand_as(self.index)
        return h.index_put((rows[self.valid], self.index[self.valid]), values[self.valid])


class MoRAttention(nn.Module):
    """Grouped-query attention over a cache slot, masked by original positions."""

    def __init__(self, config: MoRConfig):
        super().__init__()
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim, self.rope_theta = config.head_dim, config.rope_theta
        C = config.hidden_size
        self.q_proj = nn.Linear(C, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(C, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(C, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, C, bias=False)

    def forward(self, x: torch.Tensor, tokens: Tokens, kv, write_kv: bool) -> torch.Tensor:
        """x (B, N, C) -> (B, N, C). With write_kv the new K/V go into `kv` first; otherwise
        (recursive KV sharing, deeper steps) only queries are computed and `kv` is read."""
        B, N, _ = x.shape
        cos, sin = rotary_cos_sin(tokens.pos, self.head_dim, self.rope_theta, x.dtype)
        q = apply_rotary(self.q_proj(x).view(B, N, self.num_heads, self.head_dim).transpose(1, 2), cos, sin)
        if write_kv:
            k = self.k_proj(x).view(B, N, self.num_kv_heads, self.head_dim)
            k = apply_rotary(k.transpose(1, 2), cos, sin).transpose(1, 2)  # (B, N, G, D)
            v = self.v_proj(x).view(B, N, self.num_kv_heads, self.head_dim)
            k_all, v_all, k_pos, k_valid = kv.append(k, v, tokens.pos, tokens.valid)
        else:
            k_all, v_all, k_pos, k_valid = kv.view()
        # (B, N, Nk): a query sees cached entries at or before its own position.
        mask = k_valid[:, None, :] & (k_pos[:, None, :] <= tokens.pos[:, :, None])
        # Padding queries would see nothing (NaN rows); let them see everything, they are dropped.
        mask = mask | ~tokens.valid[:, :, None]
        out = F.scaled_dot_product_attention(
            q, k_all.transpose(1, 2), v_all.transpose(1, 2), attn_mask=mask[:, None], enable_gqa=True
        )  # (B, H, N, D)
        return self.o_proj(out.transpose(1, 2).reshape(B, N, -1))


class MoRDecoderLayer(nn.Module):
    """Pre-norm Llama block: x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, config: MoRConfig):
        super().__init__()
        self.self_attn = MoRAttention(config)
        self.mlp = MoRMLP(config)
        self.input_layernorm = MoRRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = MoRRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor, tokens: Tokens, kv, write_kv: bool = True) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), tokens, kv, write_kv)
        return x + self.mlp(self.post_attention_layernorm(x))


# ---- routers ---------------------------------------------------------------------------------


class ExpertChoiceRouter(nn.Module):
    """Router of one recursion step: a linear score per token, (B, T, C) -> logits (B, T) float.
    Whether a token takes the step (top-k over the row, or sigmoid(logit) > threshold) is the
    depth policy's rule (mor/model/policy.py)."""

    def __init__(self, config: MoRConfig):
        super().__init__()
        self.linear = nn.Linear(config.hidden_size, 1, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h).squeeze(-1).float()


class TokenChoiceRouter(nn.Module):
    """One router on the recursion input: (B, T, C) -> logits (B, T, R) float over depths 1..R;
    the depth policy turns them into each token's depth and gate."""

    def __init__(self, config: MoRConfig):
        super().__init__()
        self.linear = nn.Linear(config.hidden_size, config.num_recursions, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.linear(h).float()


def expert_choice_aux_loss(logits: torch.Tensor, candidates: torch.Tensor, selected: torch.Tensor) -> torch.Tensor:
    """BCE between a router's logits and whether top-k selected the token (paper sec. 2.2.1):
    calibrates sigmoid(logit) > 0.5 as the causal stand-in for top-k. Mean over candidates."""
    return F.binary_cross_entropy_with_logits(logits[candidates], selected[candidates].float())


def router_z_loss(logits: torch.Tensor) -> torch.Tensor:
    """Mean squared router logit: keeps logits small so scores stay in sigmoid's sensitive range."""
    return logits.pow(2).mean()


def token_choice_balancing_loss(probs: torch.Tensor, depth: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """Switch-style balance: sum_i P_i * f_i, with P_i the mean probability of depth i and f_i
    R times the fraction of tokens routed to depth i (both over real tokens); 1 when balanced."""
    R = probs.shape[-1]
    p = probs[real].mean(0)  # (R,)
    f = F.one_hot(depth[real] - 1, R).float().mean(0) * R
    return (p * f).sum()


# ---- model -----------------------------------------------------------------------------------


@dataclass
class MoRModelOutput(ModelOutput):
    """What the recursion stack returns (MoRModel.forward).

    last_hidden_state: (B, T, C) after the coda and the final norm.
    depths / router_scores: as in MoRCausalLMOutput.
    aux_losses: the router losses by name ("bce_2", "z_2", "balancing", ...), unweighted.
    step_states: with `output_step_states`, R tensors (B, T, C): the hidden state after recursion
        step r (before the coda); a token that exited at depth d keeps its step-d state.
    """

    last_hidden_state: torch.FloatTensor | None = None
    cache: MoRCache | None = None
    depths: torch.LongTensor | None = None
    router_scores: torch.FloatTensor | None = None
    aux_losses: dict | None = None
    step_states: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class MoRCausalLMOutput(CausalLMOutputWithPast):
    """Causal-LM output plus what the routers did.

    depths: (B, T) recursions each token took, in 1..R (0 for padding).
    router_scores: (B, T, R) sigmoid score per expert-choice step, or token-choice depth
        probabilities; NaN where a router was not evaluated.
    lm_loss / aux_loss: the two parts of `loss` when labels are given.
    """

    depths: torch.LongTensor | None = None
    router_scores: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None
    aux_loss: torch.FloatTensor | None = None


@dataclass
class MoRGenerateOutput(GenerateDecoderOnlyOutput):
    """`generate(..., return_dict_in_generate=True)`: transformers' output plus depths (B, new),
    the recursions each generated token takes (see `MoRForCausalLM.generate`)."""

    depths: torch.LongTensor | None = None


@dataclass
class MoRGenerateBeamOutput(GenerateBeamDecoderOnlyOutput):
    """The beam-search form of `MoRGenerateOutput`: depths (B x num_return_sequences, new), 0 past
    the end of a beam that finished early."""

    depths: torch.LongTensor | None = None


class MoRPreTrainedModel(PreTrainedModel):
    config_class = MoRConfig
    base_model_prefix = "model"
    _no_split_modules = ["MoRDecoderLayer"]

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=std)
        elif isinstance(module, MoRRMSNorm):
            nn.init.ones_(module.weight)


class MoRModel(MoRPreTrainedModel):
    """Embeddings, unique layers arranged by the sharing plan, routers, final norm."""

    def __init__(self, config: MoRConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        # One module per *unique* layer: recursion reuses the same parameter objects.
        self.layers = nn.ModuleList(MoRDecoderLayer(config) for _ in range(config.num_unique_layers))
        self.prelude, self.steps, self.coda = config.layer_plan()
        R = config.num_recursions
        if config.routing == "expert_choice":
            self.routers = nn.ModuleList(ExpertChoiceRouter(config) for _ in range(R))
        elif config.routing == "token_choice":
            self.routers = nn.ModuleList([TokenChoiceRouter(config)])
        else:
            self.routers = nn.ModuleList()
        self.norm = MoRRMSNorm(config.hidden_size, config.rms_norm_eps)
        # slot_of[("prelude", i) | (step, j) | ("coda", i)] -> index of the cache slot that layer application uses
        self.slot_names, self.slot_steps, self.slot_of = self._cache_layout()
        self.post_init()

    # ---- cache layout ------------------------------------------------------------------------
    def _cache_layout(self):
        """Slot names, their recursion step (0 = unique layer), and the slot of each layer
        application keyed ("prelude"/"coda", i) or (step, j). Shared KV: steps > 1 read step 1."""
        names, steps, slot_of = [], [], {}
        for i, _ in enumerate(self.prelude):
            slot_of[("prelude", i)] = len(names)
            names.append(f"prelude layer {i + 1}"), steps.append(0)
        for r, layers in enumerate(self.steps):
            for j, _ in enumerate(layers):
                if r > 0 and self.config.kv_cache == "shared":
                    slot_of[(r, j)] = slot_of[(0, j)]
                    continue
                slot_of[(r, j)] = len(names)
                names.append(f"step {r + 1} layer {j + 1}"), steps.append(r + 1)
        for i, _ in enumerate(self.coda):
            slot_of[("coda", i)] = len(names)
            names.append(f"coda layer {i + 1}"), steps.append(0)
        return names, steps, slot_of

    def new_cache(self, batch_size: int) -> MoRCache:
        return MoRCache(self.slot_names, self.slot_steps, batch_size, self.embed_tokens.weight.device)

    def num_effective_parameters(self) -> int:
        """Parameters of the unrolled model: each unique layer counted once per use."""
        per_layer = [sum(p.numel() for p in layer.parameters()) for layer in self.layers]
        uses = self.prelude + [i for s in self.steps for i in s] + self.coda
        others = sum(p.numel() for n, p in self.named_parameters() if not n.startswith("layers."))
        return others + sum(per_layer[i] for i in uses)

    # ---- forward -----------------------------------------------------------------------------
    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        cache: MoRCache | None = None,
        depth_cap: int | None = None,
        fixed_depth: int | None = None,
        routing_mode: str | None = None,
        output_step_states: bool = False,
    ) -> MoRModelOutput:
        """The recursion stack over input_ids (B, T); see MoRModelOutput for what it returns.
        Without `cache` a fresh one is made (and returned): attention always reads K/V from one."""
        B, T = input_ids.shape
        policy = DepthPolicy(self.config, depth_cap, fixed_depth,
                             routing_mode or ("capacity" if self.training else "causal"))
        if cache is not None and not isinstance(cache, MoRCache):
            raise ValueError(f"MoR keeps K/V per recursion step in a MoRCache, got a {type(cache).__name__}; "
                             f"pass model.model.new_cache(batch_size) or no cache.")
        if cache is not None and policy.mode == "capacity":
            raise ValueError("routing_mode='capacity' ranks tokens over the whole sequence, so it "
                             "cannot decode incrementally; use routing_mode='causal' with a cache.")
        real = torch.ones(B, T, dtype=torch.bool, device=input_ids.device)
        if attention_mask is not None:
            real = attention_mask[:, -T:].bool()  # the mask may also cover cached tokens
        if cache is None:
            cache = self.new_cache(B)
        positions = cache.advance(real)  # (B, T)

        h = self.embed_tokens(input_ids)  # (B, T, C)
        everyone = Tokens.from_mask(real, positions)
        for i, u in enumerate(self.prelude):
            h = everyone.scatter(h, self.layers[u](everyone.gather(h), everyone, cache.slots[self.slot_of[("prelude", i)]]))

        states: list[torch.Tensor] | None = [] if output_step_states else None
        h, depths, scores, aux = self._recurse(h, real, positions, cache, policy, states)

        for i, u in enumerate(self.coda):
            h = everyone.scatter(h, self.layers[u](everyone.gather(h), everyone, cache.slots[self.slot_of[("coda", i)]]))
        return MoRModelOutput(last_hidden_state=self.norm(h), cache=cache, depths=depths, router_scores=scores,
                              aux_losses=aux, step_states=tuple(states) if states is not None else None)

    def _recurse(self, h, real, positions, cache, policy: DepthPolicy, states=None):
        """Apply the shared block up to R times, each token as deep as the depth policy lets it.
        With a `states` list, append the hidden state after every step (R of them, also past an
        early stop)."""
        cfg = self.config
        R = cfg.num_recursions
        B, T, _ = h.shape
        scores = h.new_full((B, T, R), float("nan"), dtype=torch.float)
        depths = torch.zeros(B, T, dtype=torch.long, device=h.device)
        aux: dict[str, torch.Tensor] = {}
        choice = None
        if cfg.routing == "token_choice":
            logits = self.routers[0](h)  # (B, T, R)
            choice = policy.token_choice(logits)
            scores = choice.probs.detach().masked_fill(~real[..., None], float("nan"))
            if real.any():
                aux["balancing"] = token_choice_balancing_loss(choice.probs, choice.chosen, real)
                aux["z"] = router_z_loss(torch.logsumexp(logits[real], -1))
            h_in = h
        active = real
        for r, layers in enumerate(self.steps[: policy.max_depth]):
            candidates, gate = active, None
            if cfg.routing == "expert_choice":
                # the router's gate scales the update even when a fixed depth overrides its decision
                logits = self.routers[r](h)  # (B, T)
                active = policy.takes_step(r, candidates, logits=logits, real=real)
                gate = policy.gate(logits)
                scores[..., r] = torch.where(candidates, torch.sigmoid(logits).detach(), scores[..., r])
                if policy.ranks_by_capacity and candidates.any():
                    aux[f"bce_{r + 1}"] = expert_choice_aux_loss(logits, candidates, active)
                    aux[f"z_{r + 1}"] = router_z_loss(logits[candidates])
            else:
                active = policy.takes_step(r, candidates, target=None if choice is None else choice.target)
            if not active.any():
                break
            depths = depths + active.long()
            tokens = Tokens.from_mask(active, positions)
            x = tokens.gather(h)  # (B, N, C)
            y = x
            for j, u in enumerate(layers):
                slot = self.slot_of[(r, j)]
                y = self.layers[u](y, tokens, cache.slots[slot], write_kv=cfg.kv_cache == "recursion_wise" or r == 0)
            if gate is not None:
                y = x + tokens.gather(gate[..., None].to(h.dtype)) * (y - x)
            h = tokens.scatter(h, y)
            if states is not None:
                states.append(h)
        if choice is not None:
            tc_gate = choice.gate[..., None].to(h.dtype)
            h = h_in + tc_gate * (h - h_in)
            if states is not None:  # token-choice scales the update once, at exit: show each step's state so scaled
                states[:] = [h_in + tc_gate * (state - h_in) for state in states]
        if states is not None:
            states.extend([h] * (R - len(states)))  # steps nobody took: every token keeps its state
        return h, depths, scores, aux


# Options of the continuous-batching engine (mor.inference.engine.Engine) that `generate` does not
# have: named in a clear error rather than transformers' "model_kwargs are not used by the model".
ENGINE_ONLY_OPTIONS = ("max_batch", "max_inflight", "prefill_chunk", "seed", "stop_at_eos", "trace_steps")
# Options of the generate this model had before transformers' drove it, and what replaces each.
REPLACED_OPTIONS = {
    "return_depths": "pass return_dict_in_generate=True and read the output's .depths",
    "generator": "transformers' generate samples with the global generator: call torch.manual_seed(seed) first",
}


class MoRForCausalLM(MoRPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: MoRConfig):
        super().__init__(config)
        self.model = MoRModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self):
        return self.model.embed_tokens

    def set_input_embeddings(self, value):
        self.model.embed_tokens = value

    def num_effective_parameters(self) -> int:
        """Parameters of the unrolled model (embedding counted once, as it is tied)."""
        return self.model.num_effective_parameters()

    def aux_loss(self, parts: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Weighted sum of the router losses, coefficients from the config."""
        if not parts:
            return None
        cfg = self.config
        coef = {"bce": cfg.router_aux_loss_coef, "z": cfg.router_z_loss_coef, "balancing": cfg.balancing_loss_coef}
        return sum(coef[name.split("_")[0]] * value for name, value in parts.items())

    @deprecate_kwarg("past_key_values", "5.40.0", new_name="cache")
    def forward(
        self,
        input_ids: torch.LongTensor,
        attention_mask: torch.Tensor | None = None,
        cache: MoRCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        depth_cap: int | None = None,
        fixed_depth: int | None = None,
        routing_mode: str | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> MoRCausalLMOutput:
        """Causal-LM forward. `depth_cap=k`: no token takes more than k recursions;
        `fixed_depth=k`: every token takes exactly k (router ignored); `routing_mode`:
        "causal" (default in eval: each token decides alone, decodable) or "capacity" (top-k over
        the sequence, the training rule). Pass `cache` (a `MoRCache`) to decode; with `use_cache`
        the cache used (a fresh one when none was passed) is returned. `logits_to_keep=n`: logits
        of the last n columns only (0: all), as transformers' `generate` asks at prefill. Other
        keyword arguments transformers passes (`return_dict`, ...) are accepted and ignored."""
        use_cache = self.config.use_cache if use_cache is None else use_cache
        base = self.model(input_ids, attention_mask=attention_mask, cache=cache, depth_cap=depth_cap,
                          fixed_depth=fixed_depth, routing_mode=routing_mode)
        logits = self.lm_head(base.last_hidden_state[:, -logits_to_keep:]).float()  # (B, T or n, V); -0: all
        loss = lm_loss = aux = None
        if labels is not None:
            lm_loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)
            aux = self.aux_loss(base.aux_losses)
            loss = lm_loss if aux is None else lm_loss + aux
        return MoRCausalLMOutput(
            loss=loss, logits=logits, cache=base.cache if use_cache else None,
            depths=base.depths, router_scores=base.router_scores, lm_loss=lm_loss, aux_loss=aux)

    # ---- generation: transformers' GenerationMixin drives the forward above ------------------
    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        # A DynamicCache cannot hold per-step, position-tagged entries: generate passes no cache to
        # the first forward, which makes a MoRCache and returns it, and generate carries that one.
        return False

    @torch.no_grad()
    def generate(self, inputs: torch.Tensor | None = None, generation_config=None, **kwargs):
        """transformers' `generate` (greedy, sampling, beam search, logits processors, stopping
        criteria, streamers, batched left-padded prompts, `pipeline("text-generation")`), with
        MoR's options passed through to every forward: `depth_cap=k` or `fixed_depth=k`.

        Decoding is always causal (each token's depth decided from its prefix alone), also on a
        model in training mode. Padding comes from `attention_mask` only (a prompt without one is
        all real tokens; see `_prepare_attention_mask_for_generation`).

        With `return_dict_in_generate=True` the output (`MoRGenerateOutput`, or
        `MoRGenerateBeamOutput` for beam search) also has `depths` (B, new): the recursions each
        generated token takes, read from one causal forward over the returned sequences (the depth
        a token took while decoding, as causal routing depends on the prefix only; the last token,
        which decoding never feeds, gets the depth it would take). 0 where a beam ended early.

        For many requests at once use `mor.inference.engine.Engine` (continuous depth-wise batching:
        the same greedy tokens and depths at a higher throughput, see docs/performance.md)."""
        for name, instead in REPLACED_OPTIONS.items():
            if name in kwargs:
                raise ValueError(f"generate has no {name} option any more; {instead}.")
        engine_only = [name for name in ENGINE_ONLY_OPTIONS if name in kwargs]
        if engine_only:
            raise ValueError(f"{', '.join(engine_only)}: option(s) of mor.inference.engine.Engine, not of "
                             f"generate; use Engine(model, ...).generate(prompts, ...) for many requests.")
        if isinstance(kwargs.get("max_new_tokens"), (list, tuple)):
            raise ValueError("max_new_tokens is one number for generate; a budget per prompt is an Engine "
                             "option: Engine(model).generate(prompts, max_new_tokens=[...]).")
        check_depth_args(kwargs.get("depth_cap"), kwargs.get("fixed_depth"), self.config.num_recursions)
        if kwargs.get("routing_mode") not in (None, "causal"):
            raise ValueError(f"generate decodes causally; routing_mode={kwargs['routing_mode']!r} ranks tokens "
                             f"over the whole sequence (use it in a forward pass, not for decoding).")
        kwargs["routing_mode"] = "causal"
        out = super().generate(inputs, generation_config, **kwargs)
        if not isinstance(out, ModelOutput):
            return out
        prompt_mask = kwargs.get("attention_mask")
        if prompt_mask is None:  # every prompt column is real; a prompt-less call starts from one BOS column
            prompt = inputs if inputs is not None else kwargs.get("input_ids")
            prompt_mask = torch.ones_like(prompt) if prompt is not None else out.sequences.new_ones(1, 1)
        depths = self._generated_depths(out.sequences, prompt_mask, kwargs.get("depth_cap"), kwargs.get("fixed_depth"))
        if isinstance(out, GenerateBeamDecoderOnlyOutput):
            return MoRGenerateBeamOutput(**out, depths=depths.masked_fill(out.beam_indices < 0, 0))
        return MoRGenerateOutput(**out, depths=depths)

    def _prepare_attention_mask_for_generation(self, inputs_tensor: torch.Tensor, generation_config,
                                               model_kwargs: dict) -> torch.Tensor:
        # Without an attention_mask every prompt column is a real token. transformers would guess
        # padding from pad_token_id, which the shipped tokenizers share with BOS and end-of-text:
        # a prompt starting with <|endoftext|> (or generation from BOS) would be taken for padding.
        return torch.ones(inputs_tensor.shape[:2], dtype=torch.long, device=inputs_tensor.device)

    def _generated_depths(self, sequences: torch.Tensor, prompt_mask: torch.Tensor, depth_cap: int | None,
                          fixed_depth: int | None) -> torch.Tensor:
        """Depths (N, new) of the tokens after the prompt in sequences (N, L), N a multiple of the
        prompt batch (several returned sequences per prompt); one causal forward, no LM head."""
        N, L = sequences.shape
        P = prompt_mask.shape[1]
        prompt_mask = prompt_mask.to(sequences.device).repeat_interleave(N // prompt_mask.shape[0], 0)
        mask = torch.cat([prompt_mask, prompt_mask.new_ones(N, L - P)], 1)
        base = self.model(sequences, attention_mask=mask, depth_cap=depth_cap, fixed_depth=fixed_depth,
                          routing_mode="causal")
        return base.depths[:, P:]


__all__ = ["MoRForCausalLM", "MoRModel", "MoRPreTrainedModel", "MoRCausalLMOutput", "MoRGenerateBeamOutput",
           "MoRGenerateOutput", "MoRModelOutput"]
