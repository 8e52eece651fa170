"""Configuration of a Mixture-of-Recursions causal language model.

A MoR model is a Llama-style decoder whose L effective layers (`num_hidden_layers`) are built
from a smaller set of unique layers applied `num_recursions` (N_r) times. `sharing` says how
effective layers map onto unique ones, `routing` how many recursions each token takes, and
`kv_cache` what the attention cache keeps at each recursion step.
"""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

SHARING_STRATEGIES = ("cycle", "sequence", "middle_cycle", "middle_sequence")
ROUTING_STRATEGIES = ("none", "expert_choice", "token_choice")
KV_CACHE_STRATEGIES = ("recursion_wise", "shared")
ROUTER_GATES = ("scaled", "straight_through")
ROUTING_MODES = ("causal", "capacity")


@strict
class MoRConfig(PreTrainedConfig):
    r"""Configuration for [`MoRForCausalLM`].

    Model size (Llama conventions): `vocab_size`, `hidden_size`, `intermediate_size`,
    `num_attention_heads`, `num_key_value_heads` (grouped-query attention), `head_dim`,
    `max_position_embeddings`, `rope_theta`, `rms_norm_eps`, `initializer_range`.

    Recursion:
        num_hidden_layers: effective depth L of the equivalent vanilla stack.
        num_recursions: N_r, how many times the shared block can be applied.
        sharing: "cycle" (ABCABC), "sequence" (AABBCC), "middle_cycle" / "middle_sequence"
            (first and last layer unique, the middle L-2 layers shared as cycle / sequence).
        routing: "none" (every token takes every recursion: the recursive baseline, or the
            vanilla model when N_r = 1), "expert_choice" or "token_choice".
        kv_cache: "recursion_wise" (each recursion caches and attends over only its own active
            tokens) or "shared" (K/V of the first recursion reused by every deeper one).

    Routers:
        capacities: expert-choice fraction of tokens kept at each step; default
            (N_r - r + 1) / N_r for step r = 1..N_r. The first must be 1.0 (every token takes
            at least one recursion) and they must not increase.
        router_alpha: scale of the router gate (default 0.1 expert-choice, 1.0 token-choice).
        router_gate: "scaled" multiplies a kept token's update by the gate value (paper);
            "straight_through" applies the update at full size but keeps the gate's gradient,
            so the router still learns from the language-model loss without damping.
        router_threshold: causal inference rule for expert-choice: a token continues to step
            r (r >= 2) iff sigmoid(router logit) > threshold; one float or one per step 2..N_r.
        router_aux_loss_coef: weight of the BCE loss teaching each expert-choice router to
            predict whether top-k selected its token.
        router_z_loss_coef: weight of the squared-logit penalty on router logits.
        balancing_loss_coef: weight of the token-choice load-balancing loss.
    """

    model_type = "mor"
    keys_to_ignore_at_inference = ["cache"]

    vocab_size: int = 8192
    hidden_size: int = 256
    intermediate_size: int = 704
    num_hidden_layers: int = 8
    num_attention_heads: int = 4
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    max_position_embeddings: int = 1024
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    initializer_range: float = 0.02
    tie_word_embeddings: bool = True
    use_cache: bool = True
    bos_token_id: int | None = None
    eos_token_id: int | None = None
    pad_token_id: int | None = None

    num_recursions: int = 3
    sharing: str = "middle_cycle"
    routing: str = "expert_choice"
    kv_cache: str = "recursion_wise"
    capacities: list[float] | None = None
    router_alpha: float | None = None
    router_gate: str = "scaled"
    router_threshold: float | list[float] = 0.5
    router_aux_loss_coef: float = 0.001
    router_z_loss_coef: float = 1e-5
    balancing_loss_coef: float = 0.1

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None and self.num_attention_heads > 0:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.router_alpha is None:
            self.router_alpha = 1.0 if self.routing == "token_choice" else 0.1
        if self.capacities is None and self.routing == "expert_choice":
            n = self.num_recursions
            self.capacities = [(n - r) / n for r in range(n)]
        if isinstance(self.router_threshold, (int, float)):
            self.router_threshold = [float(self.router_threshold)] * max(self.num_recursions - 1, 0)
        self._validate()
        super().__post_init__(**kwargs)

    # Raised directly (not through the strict-dataclass validator) so callers get a ValueError.
    def _validate(self) -> None:
        def choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
            if value not in allowed:
                raise ValueError(f"{name}={value!r} is not supported; use one of {', '.join(allowed)}.")

        choice("sharing", self.sharing, SHARING_STRATEGIES)
        choice("routing", self.routing, ROUTING_STRATEGIES)
        choice("kv_cache", self.kv_cache, KV_CACHE_STRATEGIES)
        choice("router_gate", self.router_gate, ROUTER_GATES)
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_recursions", "max_position_embeddings"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        if self.hidden_size != self.num_attention_heads * self.head_dim:
            raise ValueError(
                f"hidden_size ({self.hidden_size}) must equal num_attention_heads "
                f"({self.num_attention_heads}) x head_dim ({self.head_dim}).")
        if self.head_dim % 2:
            raise ValueError(f"head_dim must be even for rotary embeddings, got {self.head_dim}.")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads ({self.num_attention_heads}) must be a multiple of "
                f"num_key_value_heads ({self.num_key_value_heads}).")
        L, n = self.num_hidden_layers, self.num_recursions
        if self.sharing.startswith("middle"):
            if L < 2 + n or (L - 2) % n:
                raise ValueError(
                    f"sharing={self.sharing!r} keeps the first and last layer unique, so "
                    f"num_hidden_layers - 2 ({L - 2}) must be a positive multiple of num_recursions "
                    f"({n}); try num_hidden_layers={2 + n * max(1, math.ceil((L - 2) / n))}.")
        elif L % n:
            raise ValueError(
                f"sharing={self.sharing!r} needs num_hidden_layers ({L}) to be a multiple of "
                f"num_recursions ({n}); try num_hidden_layers={n * math.ceil(L / n)}.")
        if self.routing != "none" and n < 2:
            raise ValueError(f"routing={self.routing!r} needs num_recursions >= 2, or use routing='none'.")
        if self.routing == "expert_choice":
            caps = self.capacities
            if len(caps) != n:
                raise ValueError(f"capacities has {len(caps)} entries; it needs one per recursion ({n}).")
            if caps[0] != 1.0:
                raise ValueError("capacities[0] must be 1.0: every token takes at least one recursion.")
            if any(not 0.0 < c <= 1.0 for c in caps) or any(b > a for a, b in zip(caps, caps[1:])):
                raise ValueError(f"capacities must lie in (0, 1] and not increase, got {caps}.")
        elif self.capacities is not None:
            raise ValueError(f"capacities only apply to routing='expert_choice', not {self.routing!r}; drop them.")
        if len(self.router_threshold) != max(n - 1, 0):
            raise ValueError(
                f"router_threshold needs one value per step 2..N_r ({n - 1}), got {len(self.router_threshold)}.")
        if any(not 0.0 < t < 1.0 for t in self.router_threshold):
            raise ValueError(f"router_threshold values must lie in (0, 1), got {self.router_threshold}.")
        if self.router_alpha <= 0:
            raise ValueError(f"router_alpha must be positive, got {self.router_alpha}.")

    # ---- the sharing map -------------------------------------------------------------------
    @property
    def num_unique_layers(self) -> int:
        """How many distinct layers hold parameters."""
        middle = self.sharing.startswith("middle")
        inner = self.num_hidden_layers - 2 if middle else self.num_hidden_layers
        return inner // self.num_recursions + (2 if middle else 0)

    @property
    def layers_per_recursion(self) -> int:
        """B: effective layers in one recursion step."""
        inner = self.num_hidden_layers - (2 if self.sharing.startswith("middle") else 0)
        return inner // self.num_recursions

    def layer_plan(self) -> tuple[list[int], list[list[int]], list[int]]:
        """(prelude, steps, coda): unique-layer indices applied before, in each recursion step
        and after. Flattened in order they give the unique layer of every effective layer."""
        n, B = self.num_recursions, self.layers_per_recursion
        middle = self.sharing.startswith("middle")
        offset = 1 if middle else 0
        cycle = self.sharing.endswith("cycle")
        inner = [offset + (m % B if cycle else m // n) for m in range(n * B)]
        steps = [inner[r * B:(r + 1) * B] for r in range(n)]
        if middle:
            return [0], steps, [self.num_unique_layers - 1]
        return [], steps, []


__all__ = ["MoRConfig"]
